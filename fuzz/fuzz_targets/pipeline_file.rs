//! The pipeline loader on arbitrary text: YAML, `${VAR}` interpolation, typing and checks.
//!
//! Properties beyond "does not panic, does not hang": an error names the file and, when it
//! has a position, one inside the text; a secret from the environment never appears in an
//! error unless the text itself holds it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use orbit_host::config::PipelineFile;

const SECRET: &str = "hunter2-Zq7";

fn env(name: &str) -> Option<String> {
    match name {
        "A" => Some("1".into()),
        "PASSWORD" => Some(SECRET.into()),
        "URL" => Some(format!("amqp://guest:{SECRET}@127.0.0.1:5672/%2f")),
        "EMPTY" => Some(String::new()),
        "YAML" => Some("a: [b, {c: d}]\n- e".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.yaml");
    match PipelineFile::parse(path, text, env) {
        Ok(file) => {
            assert!(
                !file.spec.name.is_empty(),
                "a pipeline without a name was accepted"
            );
        }
        Err(d) => {
            assert_eq!(d.file, path);
            // Line breaks as YAML counts them (the loader turns CR and CRLF into LF first).
            let breaks = text
                .replace("\r\n", "\n")
                .matches(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
                .count();
            let lines = breaks + 1;
            if let Some(line) = d.line {
                assert!(line >= 1 && line <= lines, "line {line} of {lines}: {d}");
            }
            if let Some(column) = d.column {
                assert!(column >= 1, "column {column}: {d}");
            }
            let shown = d.to_string();
            assert!(!shown.is_empty());
            if !text.contains(SECRET) && !text.contains("hunter2") {
                assert!(!shown.contains(SECRET), "the secret leaked: {shown}");
            }
        }
    }
});
