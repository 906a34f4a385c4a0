//! `${VAR}`, `${VAR:-default}` and `${VAR:?message}` in pipeline files.
//!
//! Substitution happens on the text, before YAML parsing, so that a variable can stand for any
//! scalar (`max_records: ${BATCH:-500}` is a number). Comments are left alone, `$${` is a literal
//! `${`, and a value containing a newline is refused: it could change the document's structure.
//! Every substitution is recorded so that a position in the substituted text maps back to the
//! column the user wrote.

use std::collections::HashMap;

/// A failed substitution, with the 1-based line and column of its `${`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: String,
}

/// The substituted text and a way back to original columns.
#[derive(Debug, Default)]
pub struct Interpolated {
    pub text: String,
    /// Per 0-based line: (column in new text, column in original text) at each substitution
    /// boundary, in order.
    shifts: HashMap<usize, Vec<(usize, usize, usize)>>,
}

impl Interpolated {
    /// Maps a 1-based column in the substituted text of a 1-based line to the original column.
    pub fn original_column(&self, line: usize, column: usize) -> usize {
        let Some(shifts) = self.shifts.get(&line.saturating_sub(1)) else {
            return column;
        };
        let col = column.saturating_sub(1);
        let mut result = col;
        // (new_start, new_end, old_start, old_end) encoded as (new_start, new_len, old_start)
        // plus the running delta after each substitution.
        let mut delta: isize = 0;
        for &(new_start, new_len, old_start_and_len) in shifts {
            let (old_start, old_len) = unpack(old_start_and_len);
            if col < new_start {
                break;
            }
            if col < new_start + new_len {
                return old_start + 1;
            }
            delta += old_len as isize - new_len as isize;
            result = (col as isize + delta) as usize;
        }
        result + 1
    }
}

fn pack(start: usize, len: usize) -> usize {
    (start << 20) | len
}

fn unpack(v: usize) -> (usize, usize) {
    (v >> 20, v & ((1 << 20) - 1))
}

/// Substitutes variables from `lookup` (normally the process environment).
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpolationError> {
    let mut out = Interpolated {
        text: String::with_capacity(text.len()),
        shifts: HashMap::new(),
    };
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let mut i = 0;
        let bytes = line.as_bytes();
        let mut quote: Option<u8> = None;
        let line_start = out.text.len();
        while i < bytes.len() {
            let c = bytes[i];
            match quote {
                Some(q) if c == q => quote = None,
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None if c == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                    out.text.push_str(&line[i..]);
                    break;
                }
                _ => {}
            }
            if c == b'$' && line[i..].starts_with("$${") {
                record(&mut out, line_no, line_start, i, 3, "${");
                i += 3;
                continue;
            }
            if c == b'$' && line[i..].starts_with("${") {
                let column = i + 1;
                let err = |message: String, hint: &str| InterpolationError {
                    line: line_no + 1,
                    column,
                    message,
                    hint: hint.to_string(),
                };
                let Some(end) = line[i..].find('}') else {
                    return Err(err(
                        "unterminated `${`".into(),
                        "close the variable with `}`, or write `$${` for a literal `${`",
                    ));
                };
                let expr = &line[i + 2..i + end];
                let value = evaluate(expr, &lookup).map_err(|(m, h)| err(m, h))?;
                if value.contains('\n') {
                    return Err(err(
                        format!("the value of `{}` contains a newline", var_name(expr)),
                        "variables must hold single-line values; put multi-line text in a file",
                    ));
                }
                record(&mut out, line_no, line_start, i, end + 1, &value);
                i += end + 1;
                continue;
            }
            let ch_len = utf8_len(c);
            out.text.push_str(&line[i..i + ch_len]);
            i += ch_len;
        }
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn record(
    out: &mut Interpolated,
    line_no: usize,
    line_start: usize,
    old_col: usize,
    old_len: usize,
    value: &str,
) {
    let new_col = out.text.len() - line_start;
    out.text.push_str(value);
    out.shifts
        .entry(line_no)
        .or_default()
        .push((new_col, value.len(), pack(old_col, old_len)));
}

fn var_name(expr: &str) -> &str {
    expr.split([':']).next().unwrap_or(expr)
}

fn evaluate(
    expr: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, (String, &'static str)> {
    let (name, rest) = match expr.find(':') {
        Some(p) => (&expr[..p], Some(&expr[p..])),
        None => (expr, None),
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err((
            format!("`${{{expr}}}` is not a valid variable reference"),
            "write ${NAME}, ${NAME:-default} or ${NAME:?message}; NAME is letters, digits and _",
        ));
    }
    let value = lookup(name).filter(|v| !v.is_empty());
    match rest {
        None => value.ok_or_else(|| {
            (
                format!("environment variable `{name}` is not set"),
                "set it, or give a default with ${NAME:-default}",
            )
        }),
        Some(r) if r.starts_with(":-") => Ok(value.unwrap_or_else(|| r[2..].to_string())),
        Some(r) if r.starts_with(":?") => value.ok_or_else(|| {
            let msg = &r[2..];
            (
                format!("environment variable `{name}` is not set: {msg}"),
                "set the variable before starting the pipeline",
            )
        }),
        Some(_) => Err((
            format!("`${{{expr}}}` is not a valid variable reference"),
            "write ${NAME}, ${NAME:-default} or ${NAME:?message}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("kafka.local".into()),
            "PORT" => Some("9092".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let r = interpolate(
            "a: ${HOST}:${PORT}\nb: ${NOPE:-x}\nc: $${HOST}\n# ${UNSET}\nd: ${EMPTY:-dflt}\n",
            env,
        )
        .unwrap();
        assert_eq!(
            r.text,
            "a: kafka.local:9092\nb: x\nc: ${HOST}\n# ${UNSET}\nd: dflt\n"
        );
    }

    #[test]
    fn unset_variable_names_it_and_its_position() {
        let e = interpolate("a: 1\nb: x ${MISSING}\n", env).unwrap_err();
        assert_eq!((e.line, e.column), (2, 6));
        assert!(e.message.contains("`MISSING` is not set"), "{}", e.message);
    }

    #[test]
    fn required_variable_carries_the_users_message() {
        let e = interpolate("a: ${MISSING:?set the broker list}\n", env).unwrap_err();
        assert!(e.message.ends_with("set the broker list"), "{}", e.message);
    }

    #[test]
    fn refuses_newlines_and_bad_names() {
        assert!(interpolate("a: ${MULTI}", env).is_err());
        assert!(interpolate("a: ${1X}", env).is_err());
        assert!(interpolate("a: ${X", env).is_err());
    }

    #[test]
    fn maps_columns_back_to_the_original() {
        // `b` sits at column 24 in the substituted text and at column 12 in the original.
        let r = interpolate("x: ${HOST} b", env).unwrap();
        assert_eq!(r.text, "x: kafka.local b");
        assert_eq!(r.original_column(1, 16), 12);
        // Inside a substituted value: the `${` itself.
        assert_eq!(r.original_column(1, 6), 4);
        // Before any substitution: unchanged.
        assert_eq!(r.original_column(1, 2), 2);
        assert_eq!(r.original_column(2, 7), 7);
    }
}
