//! Decoder for `pgoutput` logical replication messages (protocol version 1).
//!
//! Panic-free: every read is bounds-checked, so truncated or garbage input yields a
//! [`DecodeError`]. Length fields never size an allocation beyond the bytes present.

use std::fmt;

/// A malformed message: what was wrong and the byte offset where it was noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pgoutput: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// One column value of a TupleData.
#[derive(Debug, Clone, PartialEq)]
pub enum Col {
    Null,
    /// An unchanged TOASTed value: the server did not send it.
    Unchanged,
    /// Text (or binary) bytes as sent; not guaranteed to be UTF-8.
    Text(Vec<u8>),
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_mod: i32,
    /// Part of the replica identity key.
    pub is_key: bool,
}

/// A Relation ('R') message: the schema of the tuples that follow for `oid`.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub oid: u32,
    /// Empty means `pg_catalog`.
    pub schema: String,
    pub name: String,
    /// `relreplident`: b'd' default, b'n' nothing, b'f' full, b'i' index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.name`, with `pg_catalog` when the schema is empty.
    pub fn qualified(&self) -> String {
        let schema = if self.schema.is_empty() {
            "pg_catalog"
        } else {
            &self.schema
        };
        format!("{schema}.{}", self.name)
    }
}

/// Which old tuple an Update or Delete carries: 'K' (key columns only) or 'O' (full row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    Key,
    Full,
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Relation(Relation),
    Insert {
        rel: u32,
        new: Vec<Col>,
    },
    Update {
        rel: u32,
        old: Option<(OldKind, Vec<Col>)>,
        new: Vec<Col>,
    },
    Delete {
        rel: u32,
        old: (OldKind, Vec<Col>),
    },
    Truncate {
        rels: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// Begin, Commit, Type, Origin or Message: not parsed.
    Other,
}

/// Decodes the payload of one XLogData message. Trailing bytes are an error.
pub fn decode(data: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader { buf: data, pos: 0 };
    let out = match r.byte("message tag")? {
        b'B' | b'C' | b'Y' | b'O' | b'M' => return Ok(Decoded::Other),
        b'R' => Decoded::Relation(relation(&mut r)?),
        b'I' => {
            let rel = r.uint32("relation oid")?;
            r.expect(b'N', "new tuple marker")?;
            let new = tuple(&mut r)?;
            Decoded::Insert { rel, new }
        }
        b'U' => {
            let rel = r.uint32("relation oid")?;
            let old = match marker(&mut r)? {
                Some(kind) => {
                    let cols = tuple(&mut r)?;
                    r.expect(b'N', "new tuple marker")?;
                    Some((kind, cols))
                }
                None => None,
            };
            let new = tuple(&mut r)?;
            Decoded::Update { rel, old, new }
        }
        b'D' => {
            let rel = r.uint32("relation oid")?;
            let Some(kind) = marker(&mut r)? else {
                return Err(err_at(r.pos.saturating_sub(1), "missing old tuple"));
            };
            let old = (kind, tuple(&mut r)?);
            Decoded::Delete { rel, old }
        }
        b'T' => {
            let n = r.count(true, "relation count")?;
            let options = r.byte("truncate options")?;
            let mut rels = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                rels.push(r.uint32("truncated relation oid")?);
            }
            let (cascade, restart_identity) = (options & 1 != 0, options & 2 != 0);
            Decoded::Truncate {
                rels,
                cascade,
                restart_identity,
            }
        }
        tag => return Err(err_at(0, &format!("unknown message tag 0x{tag:02x}"))),
    };
    if r.remaining() != 0 {
        return Err(err_at(r.pos, "trailing bytes"));
    }
    Ok(out)
}

fn err_at(pos: usize, what: &str) -> DecodeError {
    DecodeError(format!("{what} at byte {pos}"))
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.uint32("relation oid")?;
    let schema = r.cstr("namespace")?;
    let name = r.cstr("relation name")?;
    let replica_identity = r.byte("replica identity")?;
    let n = r.count(false, "column count")?;
    let mut columns = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        let is_key = r.byte("column flags")? & 1 != 0;
        let name = r.cstr("column name")?;
        let type_oid = r.uint32("column type oid")?;
        let type_mod = r.int32("column type modifier")?;
        columns.push(Column {
            name,
            type_oid,
            type_mod,
            is_key,
        });
    }
    Ok(Relation {
        oid,
        schema,
        name,
        replica_identity,
        columns,
    })
}

/// The Byte1 before a tuple: 'N' → None, 'K' / 'O' → the old tuple's kind.
fn marker(r: &mut Reader<'_>) -> Result<Option<OldKind>, DecodeError> {
    let at = r.pos;
    match r.byte("tuple marker")? {
        b'N' => Ok(None),
        b'K' => Ok(Some(OldKind::Key)),
        b'O' => Ok(Some(OldKind::Full)),
        b => Err(err_at(at, &format!("bad tuple marker 0x{b:02x}"))),
    }
}

fn tuple(r: &mut Reader<'_>) -> Result<Vec<Col>, DecodeError> {
    let n = r.count(false, "tuple column count")?;
    let mut cols = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        let at = r.pos;
        let col = match r.byte("column kind")? {
            b'n' => Col::Null,
            b'u' => Col::Unchanged,
            b't' | b'b' => {
                let len = r.count(true, "column length")?;
                Col::Text(r.take(len, "column value")?.to_vec())
            }
            k => return Err(err_at(at, &format!("unknown column kind 0x{k:02x}"))),
        };
        cols.push(col);
    }
    Ok(cols)
}

/// A bounds-checked big-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let (buf, at) = (self.buf, self.pos);
        let bytes = at
            .checked_add(n)
            .and_then(|end| buf.get(at..end))
            .ok_or_else(|| err_at(at, &format!("truncated {what}")))?;
        self.pos = at + n;
        Ok(bytes)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let at = self.pos;
        <[u8; N]>::try_from(self.take(N, what)?).map_err(|_| err_at(at, what))
    }

    fn byte(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.fixed(what)?))
    }

    fn expect(&mut self, want: u8, what: &str) -> Result<(), DecodeError> {
        let at = self.pos;
        match self.byte(what)? {
            b if b == want => Ok(()),
            b => Err(err_at(at, &format!("bad {what} 0x{b:02x}"))),
        }
    }

    fn int32(&mut self, what: &str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.fixed(what)?))
    }

    fn uint32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.fixed(what)?))
    }

    /// An Int32 (`wide`) or Int16 count or length; negative is an error.
    fn count(&mut self, wide: bool, what: &str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = if wide {
            self.int32(what)?
        } else {
            i16::from_be_bytes(self.fixed(what)?).into()
        };
        usize::try_from(n).map_err(|_| err_at(at, &format!("negative {what} {n}")))
    }

    /// A nul-terminated UTF-8 string.
    fn cstr(&mut self, what: &str) -> Result<String, DecodeError> {
        let at = self.pos;
        let len = self
            .buf
            .get(at..)
            .and_then(|rest| rest.iter().position(|&b| b == 0))
            .ok_or_else(|| err_at(at, &format!("unterminated {what}")))?;
        let bytes = self.take(len, what)?;
        self.take(1, what)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| err_at(at, &format!("invalid UTF-8 in {what}")))?;
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
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
}
