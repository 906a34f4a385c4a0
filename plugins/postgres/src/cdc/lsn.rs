//! LSNs as PostgreSQL writes them, and the source's offset bytes.
//!
//! * streaming: `[1, b'S', commit_lsn u64, index u32, end_lsn u64]` (big-endian): the change's
//!   transaction commit LSN, its index among the transaction's emitted records, and the
//!   transaction's end LSN on its last emitted record (0 on the others);
//! * snapshot: `[1, b'N', consistent_point u64, table u16, row u64, last u8]`: `last` is 1 on
//!   the snapshot's final record.

/// `0/16B3748`: uppercase hex halves, no padding.
pub fn fmt_lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v as u32)
}

/// Parses `0/16B3748`; each half at most 8 hex digits.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some(((hi as u64) << 32) | lo as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    Stream {
        commit: u64,
        index: u32,
        end: u64,
    },
    Snapshot {
        consistent: u64,
        table: u16,
        row: u64,
        last: bool,
    },
}

impl Offset {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(22);
        b.push(1);
        match *self {
            Offset::Stream { commit, index, end } => {
                b.push(b'S');
                b.extend_from_slice(&commit.to_be_bytes());
                b.extend_from_slice(&index.to_be_bytes());
                b.extend_from_slice(&end.to_be_bytes());
            }
            Offset::Snapshot {
                consistent,
                table,
                row,
                last,
            } => {
                b.push(b'N');
                b.extend_from_slice(&consistent.to_be_bytes());
                b.extend_from_slice(&table.to_be_bytes());
                b.extend_from_slice(&row.to_be_bytes());
                b.push(last as u8);
            }
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Offset> {
        let u64_at = |i: usize| Some(u64::from_be_bytes(b.get(i..i + 8)?.try_into().ok()?));
        match b {
            [1, b'S', ..] if b.len() == 22 => Some(Offset::Stream {
                commit: u64_at(2)?,
                index: u32::from_be_bytes(b[10..14].try_into().ok()?),
                end: u64_at(14)?,
            }),
            [1, b'N', ..] if b.len() == 21 => Some(Offset::Snapshot {
                consistent: u64_at(2)?,
                table: u16::from_be_bytes(b[10..12].try_into().ok()?),
                row: u64_at(12)?,
                last: b[20] == 1,
            }),
            _ => None,
        }
    }

    /// The position to confirm to the server once this record (and all before it) is
    /// delivered: the transaction's end when the record is its last, else its commit LSN (the
    /// server sends a transaction again when confirmed at its commit LSN). None for snapshot
    /// rows, which confirm nothing.
    pub fn flush(&self) -> Option<u64> {
        match *self {
            Offset::Stream { end, .. } if end != 0 => Some(end),
            Offset::Stream { commit, .. } => Some(commit),
            Offset::Snapshot { .. } => None,
        }
    }

    /// For the resume filter: `(commit, index)` of a streamed change.
    pub fn stream_key(&self) -> Option<(u64, u32)> {
        match *self {
            Offset::Stream { commit, index, .. } => Some((commit, index)),
            Offset::Snapshot { .. } => None,
        }
    }

    /// Whether a stored offset shows the snapshot finished (and was delivered).
    pub fn snapshot_done(&self) -> bool {
        matches!(
            self,
            Offset::Stream { .. } | Offset::Snapshot { last: true, .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_print_and_parse_as_postgres_does() {
        assert_eq!(fmt_lsn(0x16B3748), "0/16B3748");
        assert_eq!(fmt_lsn((3 << 32) | 0xA), "3/A");
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("3/a"), Some((3 << 32) | 0xA));
        assert_eq!(parse_lsn("123456789/0"), None);
        assert_eq!(parse_lsn("0/"), None);
        assert_eq!(parse_lsn("x/1"), None);
    }

    #[test]
    fn offsets_round_trip_and_give_the_flush_position() {
        let s = Offset::Stream {
            commit: 100,
            index: 7,
            end: 0,
        };
        assert_eq!(Offset::decode(&s.encode()), Some(s));
        assert_eq!(s.flush(), Some(100));
        let last = Offset::Stream {
            commit: 100,
            index: 8,
            end: 140,
        };
        assert_eq!(last.flush(), Some(140));
        let n = Offset::Snapshot {
            consistent: 9,
            table: 1,
            row: 5,
            last: true,
        };
        assert_eq!(Offset::decode(&n.encode()), Some(n));
        assert!(n.snapshot_done());
        assert!(!Offset::Snapshot {
            consistent: 9,
            table: 1,
            row: 5,
            last: false
        }
        .snapshot_done());
        assert_eq!(Offset::decode(b"garbage"), None);
        assert_eq!(Offset::decode(&[]), None);
    }
}
