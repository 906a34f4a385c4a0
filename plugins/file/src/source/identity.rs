//! Which file is this? A file is its device and inode (what a rename moves, and what a new file
//! at the same path does not have) plus a fingerprint of its first bytes (what a truncation and
//! rewrite in place, or a reused inode, changes). Log shippers do the same: Filebeat keys its
//! registry by device and inode, Vector fingerprints the first bytes or line.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};

use super::offset::{Offset, Stored};

/// How many of a file's first bytes its fingerprint covers at most.
pub const HEAD_LEN: usize = 256;

/// Device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

/// FNV-1a 64 of a file's first `len` bytes. Stable across builds and Rust versions (std's
/// `DefaultHasher` is not), and the bytes it covers are only ever bytes already delivered: the
/// first `min(position, HEAD_LEN)`, so it does not change while the file grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub len: u16,
    pub hash: u64,
}

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let bytes = &bytes[..bytes.len().min(HEAD_LEN)];
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Fingerprint {
            len: bytes.len() as u16,
            hash,
        }
    }
}

/// The first bytes of the file that have been delivered, up to [`HEAD_LEN`].
#[derive(Debug, Default)]
pub struct Head {
    bytes: Vec<u8>,
    fingerprint: Fingerprint,
}

impl Head {
    pub fn new(mut bytes: Vec<u8>) -> Head {
        bytes.truncate(HEAD_LEN);
        let fingerprint = Fingerprint::of(&bytes);
        Head { bytes, fingerprint }
    }

    /// Takes in the next delivered line, while the head is not full.
    pub fn extend(&mut self, line: &[u8]) {
        let room = HEAD_LEN - self.bytes.len();
        if room > 0 && !line.is_empty() {
            self.bytes.extend_from_slice(&line[..line.len().min(room)]);
            self.fingerprint = Fingerprint::of(&self.bytes);
        }
    }

    /// Forgets what lies at `len` and after (a line taken back).
    pub fn truncate(&mut self, len: u64) {
        if len < self.bytes.len() as u64 {
            self.bytes.truncate(len as usize);
            self.fingerprint = Fingerprint::of(&self.bytes);
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// Where to start reading the file at the source's path, given the stored offset.
#[derive(Debug)]
pub struct Resume {
    pub position: u64,
    /// The file's first `min(position, HEAD_LEN)` bytes.
    pub head: Vec<u8>,
    /// Why a stored position was not used (the file is read from its start): for a warning.
    pub restart_reason: Option<String>,
}

impl Resume {
    fn start(reason: Option<String>) -> std::io::Result<Resume> {
        Ok(Resume {
            position: 0,
            head: Vec::new(),
            restart_reason: reason,
        })
    }
}

/// Checks that `stored` is a position in `file` (device and inode `id`, `len` bytes long) that
/// starts a line, and says where to read from. A position written by an earlier version
/// ([`Stored::Legacy`]) has no identity to compare: it is accepted if it is within the file and
/// at the start of a line. A position after a last line without a newline is accepted only
/// when it is the end of the file and the source does not `follow` it (in follow mode what is
/// appended next may be the rest of that line, which must not become a record of its own).
pub fn resume(
    stored: Option<Stored>,
    file: &File,
    id: FileId,
    len: u64,
    follow: bool,
) -> std::io::Result<Resume> {
    let (position, expected): (u64, Option<Offset>) = match stored {
        None => return Resume::start(None),
        Some(Stored::Legacy { position }) => (position, None),
        Some(Stored::Current(o)) => (o.position, Some(o)),
    };
    if position == 0 {
        return Resume::start(None);
    }
    if let Some(o) = expected {
        if o.file != id {
            return Resume::start(Some(format!(
                "not the file the stored position {position} belongs to (device:inode {} then, \
                 {id} now): replaced or rotated",
                o.file
            )));
        }
    }
    if position > len {
        return Resume::start(Some(format!(
            "shorter ({len} bytes) than the stored position {position}: truncated or replaced"
        )));
    }
    let mut head = vec![0; (position as usize).min(HEAD_LEN)];
    file.read_exact_at(&mut head, 0)?;
    if let Some(o) = expected {
        let covered = usize::from(o.fingerprint.len);
        if Fingerprint::of(&head[..covered]) != o.fingerprint {
            return Resume::start(Some(format!(
                "its first {covered} bytes are not the ones read before: rewritten in place \
                 (truncated and written again) or another file on a reused inode"
            )));
        }
    }
    let mut before = [0u8];
    file.read_exact_at(&mut before, position - 1)?;
    let unterminated_end = position == len && !follow;
    if before[0] != b'\n' && !unterminated_end {
        return Resume::start(Some(format!(
            "the stored position {position} is not at the start of a line"
        )));
    }
    Ok(Resume {
        position,
        head,
        restart_reason: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(content: &[u8]) -> (tempfile::NamedTempFile, FileId, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        let meta = f.as_file().metadata().unwrap();
        (f, FileId::of(&meta), meta.len())
    }

    fn current(id: FileId, content: &[u8], position: u64) -> Option<Stored> {
        Some(Stored::Current(Offset {
            file: id,
            fingerprint: Fingerprint::of(&content[..position as usize]),
            position,
        }))
    }

    #[test]
    fn the_fingerprint_is_fnv1a_of_at_most_the_first_256_bytes() {
        assert_eq!(Fingerprint::of(b"").hash, 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fingerprint::of(b"a").hash, 0xaf63_dc4c_8601_ec8c);
        let long = vec![b'x'; 1000];
        assert_eq!(Fingerprint::of(&long), Fingerprint::of(&long[..256]));
        assert_eq!(Fingerprint::of(&long).len, 256);
    }

    #[test]
    fn the_head_grows_line_by_line_up_to_256_bytes() {
        let mut head = Head::default();
        let line = b"0123456789abcdefghijklmnopqrstuvwxyz\n"; // 37 bytes
        let mut all = Vec::new();
        for _ in 0..10 {
            head.extend(line);
            all.extend_from_slice(line);
            let n = all.len().min(HEAD_LEN);
            assert_eq!(head.bytes(), &all[..n]);
            assert_eq!(head.fingerprint(), Fingerprint::of(&all[..n]));
        }
        assert_eq!(head.bytes().len(), 256);
    }

    #[test]
    fn a_position_in_the_same_file_at_a_line_start_is_resumed() {
        let content = b"one\ntwo\nthree\n";
        let (f, id, len) = file_with(content);
        let r = resume(current(id, content, 8), f.as_file(), id, len, true).unwrap();
        assert_eq!((r.position, r.restart_reason), (8, None));
        assert_eq!(r.head, b"one\ntwo\n");
        let r = resume(None, f.as_file(), id, len, true).unwrap();
        assert_eq!((r.position, r.restart_reason), (0, None));
    }

    #[test]
    fn another_file_at_the_path_is_read_from_its_start() {
        let content = b"one\ntwo\nthree\n";
        let (f, id, len) = file_with(content);
        let other = FileId {
            dev: id.dev,
            ino: id.ino + 1,
        };
        let r = resume(current(other, content, 8), f.as_file(), id, len, true).unwrap();
        assert_eq!(r.position, 0);
        let why = r.restart_reason.unwrap();
        assert!(
            why.contains("not the file") && why.contains("rotated"),
            "{why}"
        );
    }

    #[test]
    fn a_file_rewritten_in_place_is_read_from_its_start() {
        // Same inode, long enough, a newline before the position: only the fingerprint tells.
        let (f, id, len) = file_with(b"new\nxyz\nlonger content\n");
        let r = resume(current(id, b"one\ntwo\n", 8), f.as_file(), id, len, true).unwrap();
        assert_eq!(r.position, 0);
        let why = r.restart_reason.unwrap();
        assert!(why.contains("first 8 bytes"), "{why}");
    }

    #[test]
    fn a_file_shorter_than_the_position_is_read_from_its_start() {
        let content = b"one\ntwo\n";
        let (f, id, len) = file_with(content);
        let mut stored = current(id, content, 8);
        if let Some(Stored::Current(o)) = &mut stored {
            o.position = 100;
        }
        let r = resume(stored, f.as_file(), id, len, true).unwrap();
        assert_eq!(r.position, 0);
        assert!(r.restart_reason.unwrap().contains("shorter (8 bytes)"));
    }

    #[test]
    fn a_legacy_position_is_trusted_only_at_a_line_start_within_the_file() {
        let (f, id, len) = file_with(b"a1\na2\na-long-third-line\n");
        let legacy = |position| Some(Stored::Legacy { position });
        let r = resume(legacy(6), f.as_file(), id, len, true).unwrap();
        assert_eq!((r.position, r.restart_reason), (6, None));
        assert_eq!(r.head, b"a1\na2\n");
        for (position, why) in [(7, "not at the start of a line"), (99, "shorter")] {
            let r = resume(legacy(position), f.as_file(), id, len, true).unwrap();
            assert_eq!(r.position, 0, "{position}");
            assert!(r.restart_reason.unwrap().contains(why), "{position}");
        }
    }

    #[test]
    fn the_end_after_a_last_line_without_newline_is_resumed_only_when_not_following() {
        let content = b"a\nb";
        let (f, id, len) = file_with(content);
        let r = resume(current(id, content, 3), f.as_file(), id, len, false).unwrap();
        assert_eq!(
            (r.position, r.restart_reason),
            (3, None),
            "nothing after it is read"
        );
        let r = resume(current(id, content, 3), f.as_file(), id, len, true).unwrap();
        assert_eq!(r.position, 0, "what is appended may continue the line");
        let r = resume(current(id, content, 2), f.as_file(), id, len, false).unwrap();
        assert_eq!(r.position, 2);
    }
}
