//! What a pipeline file may be before it is parsed: its size, its encoding, its nesting.
//!
//! The YAML scanner takes time quadratic in the nesting depth (100,000 nested `[` took 40 s to
//! refuse), so depth and size are checked on the raw text first, in one linear pass.

use std::io::Read;
use std::path::Path;

use super::Diagnostic;

/// The largest pipeline file read. Pipelines are a few kilobytes; a bigger file is a mistake
/// (a log or a binary given by accident).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The deepest nesting of mappings and sequences (block indentation levels plus flow brackets).
/// A pipeline needs about six.
pub const MAX_DEPTH: usize = 64;

fn diagnostic(path: &Path, at: Option<(usize, usize)>, message: String, hint: &str) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        line: at.map(|a| a.0),
        column: at.map(|a| a.1),
        key: None,
        message,
        hint: hint.into(),
    }
}

/// The file's text: at most [`MAX_FILE_BYTES`], UTF-8 (the position of the first byte that is
/// not), without a leading byte-order mark.
pub fn read(path: &Path) -> Result<String, Diagnostic> {
    let file = std::fs::File::open(path).map_err(|e| {
        diagnostic(
            path,
            None,
            format!("cannot read the pipeline file: {e}"),
            "check the path and its permissions",
        )
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            diagnostic(
                path,
                None,
                format!("cannot read the pipeline file: {e}"),
                "check that it is a regular file and readable",
            )
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(diagnostic(
            path,
            None,
            format!(
                "the file is larger than {MAX_FILE_BYTES} bytes, the most a pipeline file may be"
            ),
            "is this the pipeline file you meant? pipelines are a few kilobytes",
        ));
    }
    text(path, bytes)
}

/// `bytes` as text, or where they stop being UTF-8.
pub fn text(path: &Path, bytes: Vec<u8>) -> Result<String, Diagnostic> {
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let before = &bytes[..at];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        diagnostic(
            path,
            Some((line, column)),
            format!(
                "the file is not UTF-8: byte {at} (0x{:02x}) is not valid UTF-8",
                bytes[at]
            ),
            "save the file as UTF-8 (iconv -f LATIN1 -t UTF-8, or your editor's encoding menu)",
        )
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// Refuses text nested deeper than [`MAX_DEPTH`], naming where the limit is passed. Counts
/// flow brackets outside quotes and comments, plus the block indentation levels open at each
/// line; an approximation of YAML's structure that never undercounts by more than a level.
pub fn check_depth(path: &Path, text: &str) -> Result<(), Diagnostic> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (n, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        if flow == 0 && !body.is_empty() && !body.starts_with('#') {
            while indents.last().is_some_and(|i| *i >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut quote = None;
        for (col, c) in body.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if col == 0 || body[..col].ends_with([' ', '\t']) => break,
                (None, '[' | '{') => flow += 1,
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            if flow + indents.len() > MAX_DEPTH {
                return Err(diagnostic(
                    path,
                    Some((n + 1, indent + body[..col].chars().count() + 1)),
                    format!("the file nests deeper than {MAX_DEPTH} levels"),
                    "a pipeline needs a few levels; is this the file you meant?",
                ));
            }
        }
        if flow + indents.len() > MAX_DEPTH {
            return Err(diagnostic(
                path,
                Some((n + 1, indent + 1)),
                format!("the file nests deeper than {MAX_DEPTH} levels"),
                "a pipeline needs a few levels; is this the file you meant?",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("p.yaml")
    }

    #[test]
    fn deep_flow_and_block_nesting_are_refused_with_the_position() {
        let deep = "a: ".to_string() + &"[".repeat(100_000);
        let e = check_depth(p(), &deep).unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("deeper than 64"), "{e}");
        let block: String = (0..80)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect();
        let e = check_depth(p(), &block).unwrap_err();
        assert_eq!(e.line, Some(MAX_DEPTH + 1), "{e}");
    }

    #[test]
    fn usual_files_and_brackets_in_strings_or_comments_pass() {
        let ok = "name: p\nsource: { plugin: g, config: { a: [1, [2, {b: 3}]] } }\nsink:\n  plugin: x\n  config:\n    s: \"[[[[\"\n    # {{{{{{\n";
        check_depth(p(), ok).unwrap();
        let many: String = (0..10_000).map(|i| format!("k{i}: [1]\n")).collect();
        check_depth(p(), &many).unwrap();
    }

    #[test]
    fn a_bom_is_dropped_and_bad_utf8_is_located() {
        let t = text(p(), b"\xef\xbb\xbfname: p\n".to_vec()).unwrap();
        assert_eq!(t, "name: p\n");
        let e = text(p(), b"name: p\nsink: caf\xe9\n".to_vec()).unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(10)));
        assert!(e.message.contains("byte 17 (0xe9)"), "{e}");
    }
}
