use super::*;
use std::time::Duration;

fn parse(text: &str) -> Result<PipelineFile, Diagnostic> {
    PipelineFile::parse(Path::new("p.yaml"), text, |n| {
        (n == "OUT").then(|| "out.txt".to_string())
    })
}

const GOOD: &str = "name: t\nsource:\n  plugin: generate\n  config: { count: 10 }\nsink:\n  plugin: file\n  config:\n    path: ${OUT}\n";

#[test]
fn parses_a_minimal_pipeline_with_defaults() {
    let f = parse(GOOD).unwrap();
    assert_eq!(f.spec.batch.max_records, 1000);
    assert_eq!(f.spec.batch.max_wait, Duration::from_millis(20));
    assert_eq!(f.spec.sink.config["path"].as_str(), Some("out.txt"));
}

#[test]
fn unknown_key_names_line_and_column() {
    let e = parse(&GOOD.replace("  plugin: file\n", "  plugin: file\n  confg: 1\n")).unwrap_err();
    assert_eq!((e.line, e.column), (Some(7), Some(3)), "{e}");
    assert!(e.message.contains("unknown field `confg`"), "{e}");
}

/// Found by fuzzing: with lone CRs YAML counted lines the loader's key positions did not.
#[test]
fn cr_and_crlf_line_endings_give_the_line_an_editor_shows() {
    for eol in ["\r\n", "\r"] {
        let text = GOOD.replace("  plugin: file\n", "  plugin: file\n  confg: 1\n");
        let e = parse(&text.replace('\n', eol)).unwrap_err();
        assert_eq!((e.line, e.column), (Some(7), Some(3)), "{eol:?}: {e}");
        let e = parse(&"name: t\nsource: [\n".replace('\n', eol)).unwrap_err();
        assert!(e.line.is_some_and(|l| l <= 3), "{eol:?}: {e}");
    }
    assert!(parse(&GOOD.replace('\n', "\r")).is_ok());
}

/// Found by fuzzing: an error at the end of a text without a final newline.
#[test]
fn an_error_at_the_end_of_the_text_points_inside_it() {
    let e = parse("name: t\nsource: [a,").unwrap_err();
    assert_eq!((e.line, e.column), (Some(2), Some(12)), "{e}");
    let e = parse("-").unwrap_err();
    assert_eq!((e.line, e.column), (Some(1), Some(2)), "{e}");
}

#[test]
fn malformed_yaml_names_the_position() {
    let e = parse("name: t\nsource: [\n").unwrap_err();
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn tolerance_all_needs_a_dead_letter_sink() {
    let e = parse(&format!("{GOOD}errors: {{ tolerance: all }}\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("errors.tolerance"));
    assert_eq!(e.line, Some(9));
}

#[test]
fn sizes_past_their_bounds_are_refused_at_validation() {
    for (key, yaml) in [
        ("batch.buffer", "batch: { buffer: 18446744073709551615 }"),
        ("batch.max_records", "batch: { max_records: 4294967296 }"),
    ] {
        let e = parse(&format!("{GOOD}{yaml}\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.to_string().contains("it must be from 1 to"), "{e}");
    }
}

fn parse_env(text: &str) -> Result<PipelineFile, Diagnostic> {
    PipelineFile::parse(Path::new("p.yaml"), text, |n| match n {
        "OUT" => Some("out.txt".into()),
        "N" => Some("500".into()),
        "WAIT" => Some("50ms".into()),
        "SECRET" => Some("123456789".into()),
        "EVIL" => Some("x\", tolerance: \"all".into()),
        _ => None,
    })
}

#[test]
fn variables_are_strings_read_as_numbers_where_a_key_wants_one() {
    let f = parse_env(&format!(
        "{GOOD}batch: {{ max_records: ${{N}}, max_wait: ${{WAIT}} }}\n\
         errors: {{ tolerance: \"${{EVIL}}\" }}\n"
    ));
    // The value that looks like YAML stays one string: an unknown tolerance, not a new key.
    let e = f.unwrap_err();
    assert_eq!(e.key.as_deref(), Some("errors.tolerance"), "{e}");
    let f = parse_env(&format!(
        "{GOOD}batch: {{ max_records: ${{N}}, max_wait: ${{WAIT}} }}\n"
    ))
    .unwrap();
    assert_eq!(f.spec.batch.max_records, 500);
    assert_eq!(f.spec.batch.max_wait, Duration::from_millis(50));
    let f = parse_env(&GOOD.replace("path: ${OUT}", "path: ${SECRET}")).unwrap();
    assert_eq!(f.spec.sink.config["path"].as_str(), Some("123456789"));
}

#[test]
fn a_substituted_value_never_appears_in_an_error() {
    let e = parse_env(&format!("{GOOD}batch: {{ max_records: ${{SECRET}}x }}\n")).unwrap_err();
    let shown = e.to_string();
    assert!(!shown.contains("123456789"), "{shown}");
    assert!(shown.contains("${SECRET}"), "{shown}");
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(9), Some("batch.max_records"))
    );
    let f = parse_env(&GOOD.replace("path: ${OUT}", "path: ${SECRET}")).unwrap();
    let e = f.error_at("sink.config.path", "cannot open 123456789", "");
    assert_eq!(e.message, "cannot open ${SECRET}");
}

#[test]
fn bad_duration_is_an_error() {
    let e = parse(&format!("{GOOD}batch: {{ max_wait: soon }}\n")).unwrap_err();
    assert_eq!(e.line, Some(9), "{e}");
}
