//! A check of a library file before the dynamic loader maps it.
//!
//! `dlopen` maps a library's segments straight from the file; a segment that runs past the end
//! of a truncated file (a half-copied `.so` during a deploy) is mapped anyway, and the first
//! touch of its missing pages kills the host with SIGBUS, with no message. So the ELF header,
//! the program headers and the section header table are checked against the file's size first,
//! and such a file is refused like any other bad plugin. Files that are not ELF at all are left
//! to the loader, which refuses them cleanly. (A file that is cut short after this check, while
//! the host starts, can still crash it: copy plugins into place with a rename.)

use std::fs::File;
use std::io::Read;
use std::path::Path;

const MAGIC: &[u8; 4] = b"\x7fELF";
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;

/// Reads fields of one ELF class and byte order.
struct Fields<'a> {
    bytes: &'a [u8],
    wide: bool,
    little: bool,
}

impl Fields<'_> {
    fn u16(&self, at: usize) -> Option<u64> {
        let b: [u8; 2] = self.bytes.get(at..at + 2)?.try_into().ok()?;
        Some(u64::from(if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }))
    }
    fn u32(&self, at: usize) -> Option<u64> {
        let b: [u8; 4] = self.bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u64::from(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }))
    }
    fn u64(&self, at: usize) -> Option<u64> {
        let b: [u8; 8] = self.bytes.get(at..at + 8)?.try_into().ok()?;
        Some(if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }
    /// An address-sized field: 8 bytes in ELF64, 4 in ELF32.
    fn word(&self, wide_at: usize, narrow_at: usize) -> Option<u64> {
        if self.wide {
            self.u64(wide_at)
        } else {
            self.u32(narrow_at)
        }
    }
}

/// `Err(reason)` when `path` is an ELF file whose headers point past its end.
pub fn check(path: &Path) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    let mut header = [0u8; 64];
    let n = read_up_to(&mut file, &mut header).map_err(|e| format!("cannot read it: {e}"))?;
    if n < 4 || &header[..4] != MAGIC {
        return Ok(()); // not ELF: the loader says so
    }
    let truncated = |what: &str| {
        format!(
            "it is truncated ({len} bytes, but its {what} lies beyond that): a partial copy? \
             copy the whole file again (copy to a temporary name, then rename it into place)"
        )
    };
    let f = Fields {
        bytes: &header[..n],
        wide: header[4] == 2,
        little: header[5] != 2,
    };
    let (phoff, shoff) = match (f.word(32, 28), f.word(40, 32)) {
        (Some(p), Some(s)) => (p, s),
        _ => return Err(truncated("ELF header")),
    };
    let at = |wide: usize, narrow: usize| if f.wide { wide } else { narrow };
    let (Some(phentsize), Some(phnum), Some(shentsize), Some(shnum)) = (
        f.u16(at(54, 42)),
        f.u16(at(56, 44)),
        f.u16(at(58, 46)),
        f.u16(at(60, 48)),
    ) else {
        return Err(truncated("ELF header"));
    };
    let ph_end = phoff.saturating_add(phentsize * phnum);
    if ph_end > len {
        return Err(truncated("program header table"));
    }
    if shoff.saturating_add(shentsize * shnum) > len {
        return Err(truncated("section header table"));
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|e| format!("cannot read its program headers: {e}"))?;
    for i in 0..phnum as usize {
        let entry = &table[i * phentsize as usize..(i + 1) * phentsize as usize];
        let p = Fields { bytes: entry, ..f };
        let kind = p.u32(0).unwrap_or(0) as u32;
        if kind != PT_LOAD && kind != PT_DYNAMIC {
            continue;
        }
        let (Some(offset), Some(size)) = (p.word(8, 4), p.word(32, 16)) else {
            return Err(truncated("program header table"));
        };
        if offset.saturating_add(size) > len {
            return Err(truncated(&format!("segment {i}")));
        }
    }
    Ok(())
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_elf_file_passes_and_a_truncated_one_is_refused() {
        // The test binary itself is an ELF file with segments and section headers.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.so");
        std::fs::write(&whole, &me).unwrap();
        assert_eq!(check(&whole), Ok(()));
        for cut in [4096, me.len() / 2, me.len() - 1] {
            let part = dir.path().join(format!("cut{cut}.so"));
            std::fs::write(&part, &me[..cut]).unwrap();
            let e = check(&part).unwrap_err();
            assert!(e.contains("truncated"), "{cut}: {e}");
        }
        let tiny = dir.path().join("tiny.so");
        std::fs::write(&tiny, b"\x7fELF\x02\x01").unwrap();
        assert!(check(&tiny).unwrap_err().contains("ELF header"));
        let text = dir.path().join("text.so");
        std::fs::write(&text, b"not a library").unwrap();
        assert_eq!(
            check(&text),
            Ok(()),
            "non-ELF files are the loader's to refuse"
        );
    }
}
