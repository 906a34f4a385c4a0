//! PostgreSQL text-format values → JSON, chosen by type OID.
//!
//! Assumes the session settings of the CDC walsender: `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=iso_8601`, `bytea_output=hex`, `extra_float_digits=1`.
//! Never panics: anything unexpected becomes the text as a JSON string.

use base64::Engine as _;
use serde_json::{Number, Value};

use super::decode::Col;

/// Stands in for an unchanged TOASTed value the server did not send.
pub const UNCHANGED_TOAST: &str = "__orbit_unchanged_toast__";

/// Deepest array nesting accepted (PostgreSQL's MAXDIM).
const MAX_DIMS: usize = 6;

/// One column's text value as JSON.
pub fn to_json(type_oid: u32, text: &str) -> Value {
    let string = || Value::String(text.to_owned());
    match type_oid {
        16 => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => string(),
        },
        20 | 21 | 23 => text.parse::<i64>().map_or_else(|_| string(), Value::from),
        26 => text.parse::<u64>().map_or_else(|_| string(), Value::from),
        // NaN and ±Infinity parse but have no JSON number: from_f64 gives None.
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(string, Value::Number),
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| string()),
        17 => bytea(text).map_or_else(string, Value::String),
        1114 => Value::String(timestamp(text, false)),
        1184 => Value::String(timestamp(text, true)),
        _ => match array_element(type_oid) {
            Some(elem) => parse_array(elem, text).unwrap_or_else(string),
            None => string(),
        },
    }
}

/// For a [`Col`] from the decoder: Null → null, Unchanged → [`UNCHANGED_TOAST`], Text → [`to_json`]
/// (invalid UTF-8 → lossy string).
pub fn col_to_json(type_oid: u32, col: &Col) -> Value {
    match col {
        Col::Null => Value::Null,
        Col::Unchanged => Value::String(UNCHANGED_TOAST.to_owned()),
        Col::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => to_json(type_oid, text),
            Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        },
    }
}

/// The element type of an array type OID, if it is one we know.
pub fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => 16,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1028 => 26,
        1021 => 700,
        1022 => 701,
        1231 => 1700,
        1009 => 25,
        1015 => 1043,
        1014 => 1042,
        2951 => 2950,
        199 => 114,
        3807 => 3802,
        1001 => 17,
        1182 => 1082,
        1115 => 1114,
        1185 => 1184,
        1183 => 1083,
        1187 => 1186,
        1019 => 19,
        _ => return None,
    })
}

/// `\x0aff…` → standard base64; None if not hex form.
fn bytea(text: &str) -> Option<String> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    let pairs = hex.chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    let bytes = pairs
        .map(|pair| match pair {
            [hi, lo] => Some((hex_digit(*hi)? << 4) | hex_digit(*lo)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// ISO timestamp → RFC 3339: 'T' separator; with a zone, UTC becomes "Z" and "+hh" becomes
/// "+hh:00". Infinities and BC dates pass through.
fn timestamp(text: &str, with_zone: bool) -> String {
    if text == "infinity" || text == "-infinity" || text.ends_with(" BC") {
        return text.to_owned();
    }
    let Some((date, time)) = text.split_once(' ') else {
        return text.to_owned();
    };
    let zone = if with_zone {
        time.rfind(['+', '-'])
    } else {
        None
    };
    let Some(at) = zone else {
        return format!("{date}T{time}");
    };
    let (clock, offset) = time.split_at(at);
    let (sign, digits) = offset.split_at(1);
    if !digits.is_empty() && digits.bytes().all(|b| b == b'0' || b == b':') {
        format!("{date}T{clock}Z")
    } else if digits.len() == 2 {
        format!("{date}T{clock}{sign}{digits}:00")
    } else {
        format!("{date}T{time}")
    }
}

/// Parses an array literal (`[lo:hi]={…}` prefix allowed); None if malformed.
fn parse_array(elem: u32, text: &str) -> Option<Value> {
    let body = if text.starts_with('[') {
        text.split_once('=')?.1
    } else {
        text
    };
    let mut p = ArrayParser {
        s: body.as_bytes(),
        pos: 0,
        elem,
    };
    p.skip_ws();
    let value = p.array(1)?;
    p.skip_ws();
    (p.pos == p.s.len()).then_some(value)
}

struct ArrayParser<'a> {
    s: &'a [u8],
    pos: usize,
    elem: u32,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// `{…}` at the cursor, `depth` levels deep.
    fn array(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DIMS || self.peek()? != b'{' {
            return None;
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(Value::Array(items));
        }
        loop {
            self.skip_ws();
            let item = match self.peek()? {
                b'{' => self.array(depth + 1)?,
                b'"' => to_json(self.elem, &self.quoted()?),
                _ => self.unquoted()?,
            };
            items.push(item);
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(Value::Array(items));
                }
                _ => return None,
            }
        }
    }

    /// A double-quoted element with backslash escapes; never NULL.
    fn quoted(&mut self) -> Option<String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    out.push(self.peek()?);
                    self.pos += 1;
                }
                _ => out.push(b),
            }
        }
    }

    /// An unquoted element up to ',' or '}', trailing whitespace trimmed; `NULL` → null.
    fn unquoted(&mut self) -> Option<Value> {
        let mut out = Vec::new();
        let mut keep = 0; // Escaped bytes survive trimming.
        let mut escaped = false;
        while let Some(b) = self.peek() {
            match b {
                b',' | b'}' => break,
                b'{' | b'"' => return None,
                b'\\' => {
                    self.pos += 1;
                    out.push(self.peek()?);
                    keep = out.len();
                    escaped = true;
                }
                _ => out.push(b),
            }
            self.pos += 1;
        }
        while out.len() > keep && out.last().is_some_and(u8::is_ascii_whitespace) {
            out.pop();
        }
        if out.is_empty() {
            return None;
        }
        let text = String::from_utf8(out).ok()?;
        if !escaped && text.eq_ignore_ascii_case("NULL") {
            return Some(Value::Null);
        }
        Some(to_json(self.elem, &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `oid | text | expected JSON`, one case a line; `=` expects the text itself as a string.
    const CASES: &str = r#"
16 | t | true
16 | f | false
16 | x | =
23 | 42 | 42
21 | -7 | -7
20 | -9223372036854775808 | -9223372036854775808
20 | 12abc | =
26 | 4294967295 | 4294967295
701 | 1.5 | 1.5
700 | 1e+30 | 1e30
701 | -0.1 | -0.1
701 | NaN | =
700 | Infinity | =
701 | -Infinity | =
1700 | 123.4500000000000000001 | =
790 | $1,000.00 | =
3802 | {"a": [1, null]} | {"a": [1, null]}
114 | [1, 2] | [1, 2]
114 | not json | =
17 | \x00ff10 | "AP8Q"
17 | \xDEADbeef | "3q2+7w=="
17 | \x | ""
17 | \x0 | =
17 | \xzz | =
17 | abc | =
1184 | 2024-05-01 12:34:56.5+00 | "2024-05-01T12:34:56.5Z"
1184 | 2024-05-01 12:34:56+00:00 | "2024-05-01T12:34:56Z"
1184 | 2024-05-01 12:34:56+05:30 | "2024-05-01T12:34:56+05:30"
1184 | 2024-05-01 12:34:56+05 | "2024-05-01T12:34:56+05:00"
1184 | 2024-05-01 12:34:56.123456-08 | "2024-05-01T12:34:56.123456-08:00"
1184 | 2024-05-01 12:34:56+05:30:15 | "2024-05-01T12:34:56+05:30:15"
1184 | infinity | =
1184 | -infinity | =
1184 | 0044-03-15 12:00:00+00 BC | =
1114 | 2024-05-01 12:34:56.123456 | "2024-05-01T12:34:56.123456"
1114 | -infinity | =
1114 | 0044-03-15 12:00:00 BC | =
1082 | 2024-05-01 | =
1083 | 12:34:56 | =
1266 | 12:34:56+02 | =
1186 | P1Y2M3DT4H5M6S | =
2950 | a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 | =
25 | hello world | =
1043 | x | =
19 | name | =
869 | 10.0.0.1/32 | =
123456 | whatever | =
1007 | {1,2,3} | [1,2,3]
1007 | {{1,2},{3,4}} | [[1,2],[3,4]]
1007 | {1,NULL,null, Null } | [1,null,null,null]
1007 | {} | []
1009 | { } | []
1007 | [0:1]={5,6} | [5,6]
1007 | [1:2][1:1]={{1},{2}} | [[1],[2]]
1007 | {{{{{{1}}}}}} | [[[[[[1]]]]]]
1009 | {"a\"b","x,y","NULL",plain,  spaced  ,"",é} | ["a\"b","x,y","NULL","plain","spaced","","é"]
1009 | {"\\",a\,b,c\ } | ["\\","a,b","c "]
1000 | {t,f,NULL} | [true,false,null]
1022 | {1.5,NaN,-Infinity} | [1.5,"NaN","-Infinity"]
1231 | {1.10,2} | ["1.10","2"]
1001 | {"\\x00ff10",NULL} | ["AP8Q",null]
3807 | {"{\"a\": 1}","[1, 2]"} | [{"a":1},[1,2]]
1185 | {"2024-05-01 12:34:56+00","2024-05-01 12:34:56+05"} | ["2024-05-01T12:34:56Z","2024-05-01T12:34:56+05:00"]
1115 | {"2024-05-01 00:00:00"} | ["2024-05-01T00:00:00"]
1019 | {pg_catalog,public} | ["pg_catalog","public"]
1007 |  | =
1007 | { | =
1007 | } | =
1007 | {1,2 | =
1007 | 1,2} | =
1007 | {1,,2} | =
1007 | {,} | =
1007 | {1}x | =
1007 | {1}} | =
1007 | {{1} | =
1007 | {"a} | =
1007 | {a"b} | =
1007 | {a\} | =
1007 | [0:1] | =
1007 | [0:1]{1} | =
1007 | {{{{{{{1}}}}}}} | =
"#;

    #[test]
    fn table() {
        for line in CASES.lines().filter(|l| !l.is_empty()) {
            let parts: Vec<&str> = line.splitn(3, " | ").collect();
            let [oid, text, want] = parts[..] else {
                panic!("bad case {line}")
            };
            let want = match want {
                "=" => json!(text),
                _ => serde_json::from_str(want).expect(line),
            };
            assert_eq!(to_json(oid.parse().unwrap(), text), want, "{line}");
        }
    }

    #[test]
    fn array_prefixes_never_panic() {
        let full = r#"[1:2]={{"a\"b",NULL},{ c , "é\\"}}"#;
        for (i, _) in full.char_indices() {
            assert!(to_json(1009, &full[..i]).is_string());
        }
        assert_eq!(to_json(1009, full), json!([["a\"b", null], ["c", "é\\"]]));
    }

    #[test]
    fn elements_and_cols() {
        assert_eq!(array_element(1007), Some(23));
        assert_eq!(array_element(1185), Some(1184));
        assert_eq!(array_element(23), None);
        assert_eq!(col_to_json(23, &Col::Null), Value::Null);
        assert_eq!(col_to_json(23, &Col::Unchanged), json!(UNCHANGED_TOAST));
        assert_eq!(col_to_json(23, &Col::Text(b"12".to_vec())), json!(12));
        let lossy = col_to_json(25, &Col::Text(vec![b'a', 0xff]));
        assert_eq!(lossy, json!("a\u{fffd}"));
    }
}
