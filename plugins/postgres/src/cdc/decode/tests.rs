//! The decoder on hand-built messages, every truncation of them, and random bytes.

use super::Col::{Null, Text, Unchanged};
use super::*;

/// Builds a message from `kind:value` tokens: `c` ASCII bytes, `s` nul-terminated string,
/// `t` text column ('t', Int32 length, bytes), `x` hex bytes, `u8`/`i16`/`i32`/`u32` numbers.
fn msg(spec: &str) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for tok in spec.split_whitespace() {
        let (kind, v) = tok.split_once(':').expect("kind:value");
        match kind {
            "c" => out.extend(v.bytes()),
            "s" => out.extend(v.bytes().chain([0])),
            "t" => {
                out.push(b't');
                out.extend((v.len() as i32).to_be_bytes());
                out.extend(v.bytes());
            }
            "x" => out.extend(
                (0..v.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(v.get(i..i + 2).unwrap(), 16).unwrap()),
            ),
            "u8" => out.push(v.parse().unwrap()),
            "i16" => out.extend(v.parse::<i16>().unwrap().to_be_bytes()),
            "i32" => out.extend(v.parse::<i32>().unwrap().to_be_bytes()),
            "u32" => out.extend(v.parse::<u32>().unwrap().to_be_bytes()),
            _ => panic!("bad token {tok}"),
        }
    }
    out
}

const REL: &str =
    "c:R u32:7 s: s:users c:d i16:2 u8:1 s:id u32:23 i32:-1 u8:0 s:name u32:1043 i32:36";
const INS: &str = "c:I u32:7 c:N i16:5 t:42 t: c:n c:u c:b i32:2 x:00ff";
const UPD_K: &str = "c:U u32:7 c:K i16:1 t:1 c:N i16:2 t:2 c:u";
const UPD_O: &str = "c:U u32:7 c:O i16:1 t:1 c:N i16:2 t:2 c:u";
const UPD_N: &str = "c:U u32:3 c:N i16:1 t:x";
const DEL_K: &str = "c:D u32:9 c:K i16:2 t:5 c:n";
const DEL_O: &str = "c:D u32:9 c:O i16:2 t:5 c:n";
const TRUNC: &str = "c:T i32:2 u8:3 u32:10 u32:11";

fn t(s: &str) -> Col {
    Text(s.as_bytes().to_vec())
}

#[test]
fn relation() {
    let Ok(Decoded::Relation(mut rel)) = decode(&msg(REL)) else {
        panic!("not a relation")
    };
    assert_eq!((rel.oid, rel.replica_identity), (7, b'd'));
    let cols: Vec<_> = rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.type_mod, c.is_key))
        .collect();
    assert_eq!(cols, [("id", 23, -1, true), ("name", 1043, 36, false)]);
    assert_eq!(rel.qualified(), "pg_catalog.users");
    rel.schema = "public".into();
    assert_eq!(rel.qualified(), "public.users");
}

#[test]
fn changes() {
    let new = vec![t("42"), t(""), Null, Unchanged, Text(vec![0, 255])];
    assert_eq!(decode(&msg(INS)), Ok(Decoded::Insert { rel: 7, new }));
    for (spec, kind) in [(UPD_K, OldKind::Key), (UPD_O, OldKind::Full)] {
        let (old, new) = (Some((kind, vec![t("1")])), vec![t("2"), Unchanged]);
        assert_eq!(decode(&msg(spec)), Ok(Decoded::Update { rel: 7, old, new }));
    }
    let (old, new) = (None, vec![t("x")]);
    assert_eq!(
        decode(&msg(UPD_N)),
        Ok(Decoded::Update { rel: 3, old, new })
    );
    for (spec, kind) in [(DEL_K, OldKind::Key), (DEL_O, OldKind::Full)] {
        let old = (kind, vec![t("5"), Null]);
        assert_eq!(decode(&msg(spec)), Ok(Decoded::Delete { rel: 9, old }));
    }
}

#[test]
fn truncate() {
    let want = Decoded::Truncate {
        rels: vec![10, 11],
        cascade: true,
        restart_identity: true,
    };
    assert_eq!(decode(&msg(TRUNC)), Ok(want));
    let want = Decoded::Truncate {
        rels: vec![],
        cascade: false,
        restart_identity: true,
    };
    assert_eq!(decode(&msg("c:T i32:0 u8:2")), Ok(want));
}

#[test]
fn others() {
    for tag in ["B", "C", "Y", "O", "M"] {
        assert_eq!(decode(tag.as_bytes()), Ok(Decoded::Other));
        assert_eq!(decode(&msg(&format!("c:{tag} u32:1"))), Ok(Decoded::Other));
    }
}

#[test]
fn every_truncation_is_an_error() {
    for spec in [REL, INS, UPD_K, UPD_O, UPD_N, DEL_K, DEL_O, TRUNC] {
        let full = msg(spec);
        assert!(decode(&full).is_ok(), "{spec}");
        for n in 0..full.len() {
            assert!(decode(&full[..n]).is_err(), "{spec} cut at {n}");
        }
    }
}

#[test]
fn bad_input() {
    let unknown = decode(b"Z").unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "pgoutput: unknown message tag 0x5a at byte 0"
    );
    let kind = decode(&msg("c:I u32:1 c:N i16:1 c:x")).unwrap_err();
    assert_eq!(kind.0, "unknown column kind 0x78 at byte 8");
    let trailing = decode(&msg("c:I u32:1 c:N i16:0 u8:0")).unwrap_err();
    assert_eq!(trailing.0, "trailing bytes at byte 8");
    let utf8 = decode(&msg("c:R u32:1 s:s x:fffe00 c:d i16:0")).unwrap_err();
    assert_eq!(utf8.0, "invalid UTF-8 in relation name at byte 7");
    for spec in [
        "",
        "c:I u32:1 c:N i16:1 c:t i32:2147483647",
        "c:I u32:1 c:N i16:1 c:t i32:-1",
        "c:I u32:1 c:N i16:-1",
        "c:I u32:1 c:N i16:32767",
        "c:I u32:1 c:K i16:0",
        "c:U u32:1 c:X i16:0",
        "c:U u32:1 c:K i16:0 c:K i16:0",
        "c:D u32:1 c:N i16:0",
        "c:T i32:2147483647 u8:0",
        "c:T i32:-1 u8:0",
        "c:R u32:1 s:s c:noterminator",
    ] {
        assert!(decode(&msg(spec)).is_err(), "{spec}");
    }
}

#[test]
fn garbage_never_panics() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) as u8
    };
    for i in 0..5_000 {
        let mut data = vec![b"RIUDT"[i % 5]];
        for _ in 0..next() % 40 {
            let b = next();
            data.push(match b % 4 {
                0 => 0,
                1 => b"NKOntub"[usize::from(b % 7)],
                _ => next(),
            });
        }
        let _ = decode(&data);
    }
}
