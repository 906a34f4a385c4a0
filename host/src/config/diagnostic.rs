//! The error a user sees for a bad pipeline file: what, where, and what to do.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The key path, e.g. `sink.config.url`.
    pub key: Option<String>,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": at `{key}`")?;
        }
        write!(f, ": {}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// serde_yaml's message without the position the diagnostic shows itself (`at`); any other
/// position it names (where an unclosed bracket was opened) has its column mapped by `column`
/// back through variable substitution.
pub(crate) fn serde_yaml_message(
    message: &str,
    at: Option<(usize, usize)>,
    column: impl Fn(usize, usize) -> usize,
) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(p) = rest.find(" at line ") {
        out.push_str(&rest[..p]);
        let tail = &rest[p + " at line ".len()..];
        let parsed = tail.split_once(" column ").and_then(|(line, after)| {
            let digits = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            Some((
                line.parse::<usize>().ok()?,
                after[..digits].parse::<usize>().ok()?,
                &after[digits..],
            ))
        });
        match parsed {
            Some((line, col, after)) => {
                if at != Some((line, col)) {
                    out.push_str(&format!(" at line {line} column {}", column(line, col)));
                }
                rest = after;
            }
            None => {
                out.push_str(" at line ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shown_position_is_dropped_and_others_are_mapped() {
        let m = "did not find expected ',' or ']' at line 4 column 9, while parsing a flow sequence at line 3 column 11";
        assert_eq!(
            super::serde_yaml_message(m, Some((4, 9)), |_, c| c + 1),
            "did not find expected ',' or ']', while parsing a flow sequence at line 3 column 12"
        );
    }
}
