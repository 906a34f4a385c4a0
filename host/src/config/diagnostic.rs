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

/// serde_yaml ends its messages with " at line L column C"; the diagnostic shows the position
/// itself (mapped back through variable substitution).
pub(crate) fn strip_serde_yaml_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(p) if message[p..].contains(" column ") => message[..p].to_string(),
        _ => message.to_string(),
    }
}
