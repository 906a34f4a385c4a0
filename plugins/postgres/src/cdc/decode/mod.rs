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
mod tests;
