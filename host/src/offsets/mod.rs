//! Offset stores: the last acknowledged position of each source partition, per pipeline, so
//! that a restarted pipeline resumes where it stopped.
//!
//! The embedded store is one JSON file per pipeline under `<state-dir>/offsets/`, replaced
//! atomically (write a temporary file, fsync it, rename it over the old one, fsync the
//! directory): a crash leaves either the old or the new file, never a torn one.

mod ledger;

pub use ledger::{Ledger, LedgerReader};

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use orbit_plugin_api::Position;
use serde::{Deserialize, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Last acknowledged offset per (stream, partition).
pub type Offsets = BTreeMap<(String, i32), Vec<u8>>;

pub fn to_positions(offsets: &Offsets) -> Vec<Position> {
    offsets
        .iter()
        .map(|((s, p), o)| Position::new(s.clone(), *p, o.clone()))
        .collect()
}

#[derive(Serialize, Deserialize)]
struct StoredFile {
    pipeline: String,
    offsets: Vec<StoredOffset>,
}

#[derive(Serialize, Deserialize)]
struct StoredOffset {
    stream: String,
    partition: i32,
    /// The source's opaque offset bytes, base64.
    offset: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OffsetStoreError {
    #[error("offset store {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("offset store {path} is corrupt: {detail}; move it away to start this pipeline from its source's beginning")]
    Corrupt { path: PathBuf, detail: String },
}

/// The file store of one pipeline.
#[derive(Debug, Clone)]
pub struct FileOffsetStore {
    pipeline: String,
    path: PathBuf,
}

impl FileOffsetStore {
    pub fn new(state_dir: &Path, pipeline: &str) -> Self {
        FileOffsetStore {
            pipeline: pipeline.to_string(),
            path: state_dir.join("offsets").join(format!("{pipeline}.json")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> OffsetStoreError + '_ {
        move |source| OffsetStoreError::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// The stored offsets; empty when the pipeline never acknowledged anything.
    pub fn load(&self) -> Result<Offsets, OffsetStoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Offsets::new()),
            Err(e) => return Err(self.io("cannot read")(e)),
        };
        let corrupt = |detail: String| OffsetStoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let stored: StoredFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut offsets = Offsets::new();
        for o in stored.offsets {
            let bytes = B64
                .decode(o.offset.as_bytes())
                .map_err(|e| corrupt(e.to_string()))?;
            offsets.insert((o.stream, o.partition), bytes);
        }
        Ok(offsets)
    }

    /// Replaces the stored offsets atomically and durably.
    pub fn save(&self, offsets: &Offsets) -> Result<(), OffsetStoreError> {
        let dir = self.path.parent().expect("the store path has a directory");
        std::fs::create_dir_all(dir).map_err(self.io("cannot create the directory"))?;
        let stored = StoredFile {
            pipeline: self.pipeline.clone(),
            offsets: offsets
                .iter()
                .map(|((stream, partition), o)| StoredOffset {
                    stream: stream.clone(),
                    partition: *partition,
                    offset: B64.encode(o),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&stored).expect("offsets serialize");
        let tmp = self.path.with_extension("json.tmp");
        let mut f =
            std::fs::File::create(&tmp).map_err(self.io("cannot create a temporary file"))?;
        f.write_all(&json).map_err(self.io("cannot write"))?;
        f.sync_all().map_err(self.io("cannot fsync"))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(self.io("cannot replace"))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("cannot fsync the directory"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_binary_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileOffsetStore::new(dir.path(), "p1");
        assert!(store.load().unwrap().is_empty());
        let mut o = Offsets::new();
        o.insert(("orders".into(), 3), vec![0, 255, 7]);
        o.insert(("in.txt".into(), 0), 1234u64.to_be_bytes().to_vec());
        store.save(&o).unwrap();
        assert_eq!(store.load().unwrap(), o);
        o.insert(("orders".into(), 3), vec![9]);
        store.save(&o).unwrap();
        assert_eq!(store.load().unwrap(), o);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileOffsetStore::new(dir.path(), "p1");
        std::fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        std::fs::write(store.path(), b"{not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("p1.json") && e.contains("corrupt"), "{e}");
    }
}
