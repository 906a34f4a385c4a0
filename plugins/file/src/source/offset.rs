//! The file source's offset bytes: which file a position belongs to, and the position.
//!
//! Format 1 (35 bytes, big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, `1` |
//! | 8 | device of the file |
//! | 8 | inode of the file |
//! | 2 | fingerprint length: how many of the file's first bytes the fingerprint covers |
//! | 8 | fingerprint: FNV-1a 64 of those bytes |
//! | 8 | position: the byte after the last delivered line |
//!
//! The first byte is a version so the format can evolve; a later format must not be 8 bytes
//! long: exactly 8 bytes is the format of earlier Orbit versions, a bare big-endian position
//! with no file identity ([`Stored::Legacy`]).

use super::identity::{FileId, Fingerprint, HEAD_LEN};

/// The current format's version byte.
const V1: u8 = 1;
const V1_LEN: usize = 1 + 8 + 8 + 2 + 8 + 8;
/// Earlier versions stored the position alone.
const LEGACY_LEN: usize = 8;

/// A position and the file it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    pub file: FileId,
    pub fingerprint: Fingerprint,
    pub position: u64,
}

/// What the host handed back when the source opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written by an earlier version: a position in a file whose identity is unknown.
    Legacy {
        position: u64,
    },
    Current(Offset),
}

impl Offset {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(V1_LEN);
        b.push(V1);
        b.extend_from_slice(&self.file.dev.to_be_bytes());
        b.extend_from_slice(&self.file.ino.to_be_bytes());
        b.extend_from_slice(&self.fingerprint.len.to_be_bytes());
        b.extend_from_slice(&self.fingerprint.hash.to_be_bytes());
        b.extend_from_slice(&self.position.to_be_bytes());
        b
    }
}

/// Reads stored offset bytes; the error says what is wrong with them.
pub fn decode(bytes: &[u8]) -> Result<Stored, String> {
    if bytes.len() == LEGACY_LEN {
        let position = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
        return Ok(Stored::Legacy { position });
    }
    match bytes.first() {
        None => Err("the stored offset is empty".into()),
        Some(&V1) if bytes.len() == V1_LEN => {
            let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8"));
            let fingerprint = Fingerprint {
                len: u16::from_be_bytes([bytes[17], bytes[18]]),
                hash: u64_at(19),
            };
            let offset = Offset {
                file: FileId {
                    dev: u64_at(1),
                    ino: u64_at(9),
                },
                fingerprint,
                position: u64_at(27),
            };
            let covered = usize::from(fingerprint.len);
            if covered > HEAD_LEN || covered as u64 > offset.position {
                return Err(format!(
                    "the stored offset's fingerprint covers {covered} bytes, more than \
                     {HEAD_LEN} or than its position {}",
                    offset.position
                ));
            }
            Ok(Stored::Current(offset))
        }
        Some(&V1) => Err(format!(
            "the stored offset has format 1 but {} bytes instead of {V1_LEN}",
            bytes.len()
        )),
        Some(v) => Err(format!(
            "the stored offset has format {v}, which this version of the file plugin does not \
             know (written by a newer version?)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset() -> Offset {
        Offset {
            file: FileId {
                dev: 0x0102_0304_0506_0708,
                ino: u64::MAX - 1,
            },
            fingerprint: Fingerprint {
                len: 256,
                hash: 0xdead_beef_cafe_f00d,
            },
            position: 1 << 40,
        }
    }

    #[test]
    fn an_offset_round_trips_through_its_bytes() {
        let o = offset();
        let bytes = o.encode();
        assert_eq!(bytes.len(), V1_LEN);
        assert_eq!(bytes[0], 1, "the version comes first");
        assert_eq!(
            &bytes[27..],
            &(1u64 << 40).to_be_bytes(),
            "the position last"
        );
        assert_eq!(decode(&bytes), Ok(Stored::Current(o)));
    }

    #[test]
    fn eight_bytes_are_the_position_stored_by_earlier_versions() {
        assert_eq!(
            decode(&1234u64.to_be_bytes()),
            Ok(Stored::Legacy { position: 1234 })
        );
        assert_eq!(decode(&[0; 8]), Ok(Stored::Legacy { position: 0 }));
    }

    #[test]
    fn unknown_versions_and_damaged_offsets_are_refused_with_the_reason() {
        let e = decode(&[]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let mut newer = offset().encode();
        newer[0] = 2;
        let e = decode(&newer).unwrap_err();
        assert!(e.contains("format 2") && e.contains("newer"), "{e}");
        let e = decode(&offset().encode()[..20]).unwrap_err();
        assert!(e.contains("20 bytes instead of 35"), "{e}");
        // A fingerprint longer than the bytes before the position cannot have been written.
        let mut o = offset();
        o.position = 10;
        let e = decode(&o.encode()).unwrap_err();
        assert!(e.contains("covers 256 bytes"), "{e}");
        o.fingerprint.len = 300;
        o.position = 1000;
        assert!(decode(&o.encode()).is_err());
    }
}
