//! Tests of `${VAR}` placeholders, substitution and scrubbing.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "HOST" => Some("kafka.local".into()),
        "PORT" => Some("9092".into()),
        "EMPTY" => Some(String::new()),
        "MULTI" => Some("a\nb".into()),
        "SECRET" => Some("123456789".into()),
        "HASH" => Some("abc #def".into()),
        "NULL" => Some("null".into()),
        "EVIL" => Some("x\", stream: \"evil".into()),
        _ => None,
    }
}

fn doc(text: &str) -> Result<(serde_yaml::Value, Substituted), InterpolationError> {
    let p = placehold(text);
    let mut v: serde_yaml::Value = serde_yaml::from_str(&p.text).unwrap();
    let s = p.substitute(&mut v, &env)?;
    Ok((v, s))
}

fn s(v: &serde_yaml::Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key}: {v:?}"))
        .to_string()
}

#[test]
fn values_are_the_strings_they_hold_never_yaml() {
    let (v, _) = doc(concat!(
        "a: ${SECRET}\nb: ${HASH}\nc: ${NULL}\nd: \"${EVIL}\"\ne: ${EVIL}\n",
        "f: { g: ${MULTI}, h: [${PORT}] }\n",
    ))
    .unwrap();
    assert_eq!(s(&v, "a"), "123456789");
    assert_eq!(s(&v, "b"), "abc #def");
    assert_eq!(s(&v, "c"), "null");
    assert_eq!(s(&v, "d"), "x\", stream: \"evil");
    assert_eq!(s(&v, "e"), "x\", stream: \"evil");
    assert!(v.get("stream").is_none());
    assert_eq!(v["f"]["g"].as_str(), Some("a\nb"));
    assert_eq!(v["f"]["h"][0].as_str(), Some("9092"));
}

#[test]
fn defaults_escapes_comments_and_empty_values() {
    let (v, _) = doc(concat!(
        "a: ${HOST}:${PORT}\nb: ${NOPE:-x}\nc: $${HOST}\n# ${UNSET}\n",
        "d: ${EMPTY:-dflt}\ne: ${EMPTY}\nf: ${EMPTY-dflt}\ng: ${NOPE-dflt}\n",
        "h: 'it''s ${HOST}' # ${UNSET}\n",
    ))
    .unwrap();
    assert_eq!(s(&v, "a"), "kafka.local:9092");
    assert_eq!(s(&v, "b"), "x");
    assert_eq!(s(&v, "c"), "${HOST}");
    assert_eq!(s(&v, "d"), "dflt");
    assert_eq!(s(&v, "e"), "");
    assert_eq!(s(&v, "f"), "");
    assert_eq!(s(&v, "g"), "dflt");
    assert_eq!(s(&v, "h"), "it's kafka.local");
}

#[test]
fn unset_variable_names_it_its_position_and_key() {
    let e = doc("a: 1\nb: x ${MISSING}\n").unwrap_err();
    assert_eq!((e.line, e.column), (2, 6));
    assert_eq!(e.key.as_deref(), Some("b"));
    assert!(e.message.contains("`MISSING` is not set"), "{}", e.message);
    let e = doc("a: ${EMPTY:?give it a value}\n").unwrap_err();
    assert!(e.message.ends_with("give it a value"), "{}", e.message);
    assert!(doc("a: ${EMPTY?m}\n").is_ok());
}

#[test]
fn refuses_bad_names_and_unterminated_references() {
    assert!(doc("a: ${1X}").is_err());
    assert!(doc("a: ${X Y}").is_err());
    let e = doc("a: ${HOST} and ${X\n").unwrap_err();
    assert_eq!(e.message, "unterminated `${`");
    assert_eq!((e.line, e.column), (1, 16));
    // In a comment nothing is evaluated.
    assert!(doc("a: 1 # ${X\n").is_ok());
}

#[test]
fn errors_scrub_substituted_values() {
    let (_, subs) = doc("a: ${SECRET}\nb: ${PORT}\n").unwrap();
    assert_eq!(
        subs.scrub("invalid value: string \"123456789\" at 9092"),
        "invalid value: string \"${SECRET}\" at ${PORT}"
    );
    let (_, subs) = doc("a: ${EVIL}\n").unwrap();
    let quoted = format!("string {:?}", "x\", stream: \"evil");
    assert_eq!(subs.scrub(&quoted), "string \"${EVIL}\"");
}

#[test]
fn maps_columns_back_to_the_original() {
    let p = placehold("x: ${HOST} b");
    // The placeholder is 3 + 1 + 3 = 7 bytes (two 3-byte characters around "0"), the
    // reference 7: `b` is at column 12 in both.
    assert_eq!(p.original_column(1, 12), 12);
    let p = placehold("x: ${HOSTNAME} b");
    assert_eq!(p.original_column(1, 12), 16);
    // Inside a placeholder: the `${` itself.
    assert_eq!(p.original_column(1, 6), 4);
    // Before any substitution, or on another line: unchanged.
    assert_eq!(p.original_column(1, 2), 2);
    assert_eq!(p.original_column(2, 7), 7);
}
