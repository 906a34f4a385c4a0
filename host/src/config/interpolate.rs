//! `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}` and `${VAR?message}` in
//! pipeline files.
//!
//! A variable's value is always the string it holds, never YAML: substitution happens in two
//! steps. Before parsing, [`placehold`] replaces each `${…}` in the text with a placeholder (two
//! private-use characters around its index), which is plain-scalar text in any YAML context.
//! After parsing, [`Placeheld::substitute`] replaces the placeholders left in string scalars and
//! keys with the values; those in comments went with the comments. So `${SECRET}` holding
//! `123456789`, `abc #def`, `null` or `x", stream: "evil` is that string, and a value may span
//! lines. Where a typed key wants a number or a boolean, the string is read as one
//! (`orbit_plugin_api::coerce`). `$${` is a literal `${`.
//!
//! Shell rules for defaults: `:-` and `:?` treat an empty variable as unset, `-` and `?` do not,
//! and a plain `${VAR}` set to the empty string is the empty string.

use std::collections::HashMap;

/// Opens a placeholder: `OPEN index CLOSE`.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// A failed substitution, with the 1-based line and column of its `${`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    pub line: usize,
    pub column: usize,
    /// The key path whose value holds the variable, when known.
    pub key: Option<String>,
    pub message: String,
    pub hint: String,
}

/// One `${…}` of the text: what it says and where it stood.
#[derive(Debug)]
struct Var {
    kind: Kind,
    line: usize,
    column: usize,
}

#[derive(Debug)]
enum Kind {
    /// `${expr}`: the text between `${` and `}`.
    Ref(String),
    /// `$${`, a literal `${`.
    Escape,
    /// A `${` with no `}` after it on its line.
    Unterminated,
}

/// The text with placeholders, the variables they stand for, and a way back to original columns.
#[derive(Debug, Default)]
pub struct Placeheld {
    pub text: String,
    vars: Vec<Var>,
    /// Per 0-based line: (column in new text, length in new text, packed old column and length)
    /// of each replacement, in order.
    shifts: HashMap<usize, Vec<(usize, usize, usize)>>,
}

/// The variables substituted into a document: name and value, to keep values out of errors.
#[derive(Debug, Default)]
pub struct Substituted {
    values: Vec<(String, String)>,
}

impl Substituted {
    /// `text` with each substituted value of 3 or more characters replaced by `${NAME}`, longest
    /// first. Any value may be a secret; shorter ones would garble the text they occur in.
    pub fn scrub(&self, text: &str) -> String {
        // Each value as written and as an error quotes it (escaped, as `{:?}` does).
        let mut values: Vec<(&str, String)> = self
            .values
            .iter()
            .filter(|(_, v)| v.len() >= 3)
            .flat_map(|(n, v)| {
                [
                    (n.as_str(), v.clone()),
                    (n.as_str(), v.escape_debug().to_string()),
                ]
            })
            .collect();
        values.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        let mut out = text.to_string();
        for (name, value) in values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("${{{name}}}"));
            }
        }
        out
    }
}

/// Replaces every `${…}`, `$${` and unterminated `${` of `text` with a placeholder; which of them
/// are errors is decided by [`Placeheld::substitute`], for those that end up in a value.
pub fn placehold(text: &str) -> Placeheld {
    let mut out = Placeheld {
        text: String::with_capacity(text.len()),
        ..Placeheld::default()
    };
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let line_start = out.text.len();
        let mut rest = line;
        let mut col = 0;
        while let Some(at) = rest.find("${") {
            let escaped = at > 0 && rest.as_bytes()[at - 1] == b'$';
            let (start, len, kind) = if escaped {
                (at - 1, 3, Kind::Escape)
            } else {
                match rest[at..].find('}') {
                    Some(end) => (at, end + 1, Kind::Ref(rest[at + 2..at + end].to_string())),
                    None => (at, 2, Kind::Unterminated),
                }
            };
            out.text.push_str(&rest[..start]);
            let placeholder = format!("{OPEN}{}{CLOSE}", out.vars.len());
            out.vars.push(Var {
                kind,
                line: line_no + 1,
                column: col + start + 1,
            });
            out.shifts.entry(line_no).or_default().push((
                out.text.len() - line_start,
                placeholder.len(),
                pack(col + start, len),
            ));
            out.text.push_str(&placeholder);
            col += start + len;
            rest = &rest[start + len..];
        }
        out.text.push_str(rest);
    }
    out
}

impl Placeheld {
    /// Maps a 1-based column in the placeholder text of a 1-based line to the original column.
    pub fn original_column(&self, line: usize, column: usize) -> usize {
        let Some(shifts) = self.shifts.get(&line.saturating_sub(1)) else {
            return column;
        };
        let col = column.saturating_sub(1);
        let mut result = col;
        let mut delta: isize = 0;
        for &(new_start, new_len, old) in shifts {
            let (old_start, old_len) = unpack(old);
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

    /// Replaces the placeholders in the string scalars and keys of `doc` with the variables'
    /// values from `lookup` (normally the process environment).
    pub fn substitute(
        &self,
        doc: &mut serde_yaml::Value,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Substituted, InterpolationError> {
        let mut done = Substituted::default();
        self.walk(doc, "", lookup, &mut done)?;
        Ok(done)
    }

    fn walk(
        &self,
        v: &mut serde_yaml::Value,
        path: &str,
        lookup: &impl Fn(&str) -> Option<String>,
        done: &mut Substituted,
    ) -> Result<(), InterpolationError> {
        use serde_yaml::Value;
        match v {
            Value::String(s) => {
                if let Some(new) = self.replace(s, path, lookup, done)? {
                    *s = new;
                }
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.walk(item, &format!("{path}[{i}]"), lookup, done)?;
                }
            }
            Value::Mapping(map) => {
                for (mut key, mut value) in std::mem::take(map) {
                    let name = match &key {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim_end()
                            .to_string(),
                    };
                    let child = if path.is_empty() {
                        name
                    } else {
                        format!("{path}.{name}")
                    };
                    self.walk(&mut key, &child, lookup, done)?;
                    self.walk(&mut value, &child, lookup, done)?;
                    map.insert(key, value);
                }
            }
            Value::Tagged(t) => self.walk(&mut t.value, path, lookup, done)?,
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }

    /// `s` with its placeholders replaced, or `None` if it has none.
    fn replace(
        &self,
        s: &str,
        path: &str,
        lookup: &impl Fn(&str) -> Option<String>,
        done: &mut Substituted,
    ) -> Result<Option<String>, InterpolationError> {
        if !s.contains(OPEN) {
            return Ok(None);
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(o) = rest.find(OPEN) {
            let after = &rest[o + OPEN.len_utf8()..];
            let Some(c) = after.find(CLOSE) else { break };
            let Some(var) = after[..c]
                .parse::<usize>()
                .ok()
                .and_then(|i| self.vars.get(i))
            else {
                break;
            };
            out.push_str(&rest[..o]);
            let error = |message: String, hint: &str| InterpolationError {
                line: var.line,
                column: var.column,
                key: Some(path.to_string()),
                message,
                hint: hint.into(),
            };
            match &var.kind {
                Kind::Escape => out.push_str("${"),
                Kind::Unterminated => {
                    return Err(error(
                        "unterminated `${`".into(),
                        "close the variable with `}`, or write `$${` for a literal `${`",
                    ))
                }
                Kind::Ref(expr) => {
                    let (name, value) =
                        evaluate(expr, lookup).map_err(|(message, hint)| error(message, hint))?;
                    out.push_str(&value);
                    done.values.push((name.to_string(), value));
                }
            }
            rest = &after[c + CLOSE.len_utf8()..];
        }
        out.push_str(rest);
        Ok(Some(out))
    }
}

fn pack(start: usize, len: usize) -> usize {
    (start << 20) | len
}

fn unpack(v: usize) -> (usize, usize) {
    (v >> 20, v & ((1 << 20) - 1))
}

/// The variable's name and its value by the shell's rules.
fn evaluate<'e>(
    expr: &'e str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(&'e str, String), (String, &'static str)> {
    let bad = || {
        (
            format!("`${{{expr}}}` is not a valid variable reference"),
            "write ${NAME}, ${NAME:-default} or ${NAME:?message}; NAME is letters, digits and _",
        )
    };
    let end = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let (name, rest) = expr.split_at(end);
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
    {
        return Err(bad());
    }
    let value = lookup(name);
    let present =
        |empty_is_unset: bool| value.clone().filter(|v| !(empty_is_unset && v.is_empty()));
    let unset = |msg: &str| {
        let message = if msg.is_empty() {
            format!("environment variable `{name}` is not set")
        } else {
            format!("environment variable `{name}` is not set: {msg}")
        };
        (message, "set it, or give a default with ${NAME:-default}")
    };
    let value = if rest.is_empty() {
        present(false).ok_or_else(|| unset(""))?
    } else if let Some(d) = rest.strip_prefix(":-") {
        present(true).unwrap_or_else(|| d.to_string())
    } else if let Some(d) = rest.strip_prefix('-') {
        present(false).unwrap_or_else(|| d.to_string())
    } else if let Some(m) = rest.strip_prefix(":?") {
        present(true).ok_or_else(|| unset(m))?
    } else if let Some(m) = rest.strip_prefix('?') {
        present(false).ok_or_else(|| unset(m))?
    } else {
        return Err(bad());
    };
    Ok((name, value))
}

#[cfg(test)]
mod tests;
