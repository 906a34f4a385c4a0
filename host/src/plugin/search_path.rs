//! The plugin search path.
//!
//! The first of these that is given wins, whole:
//! 1. `--plugin-dir DIR` (repeatable),
//! 2. `ORBIT_PLUGIN_PATH` (directories separated by `:`),
//! 3. beside the binary: its own directory, `plugins/` in it, and `../lib/orbit/plugins`.
//!
//! So `cargo build --release` followed by `target/release/orbit-host` finds the plugins built
//! into `target/release/` with no flag. To add a directory to the defaults, list both.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchPathSource {
    Flag,
    Environment,
    #[default]
    BesideBinary,
}

impl std::fmt::Display for SearchPathSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SearchPathSource::Flag => "--plugin-dir",
            SearchPathSource::Environment => "ORBIT_PLUGIN_PATH",
            SearchPathSource::BesideBinary => "the directory of the orbit-host binary",
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct SearchPath {
    pub dirs: Vec<PathBuf>,
    pub source: SearchPathSource,
}

/// The file name ending of a loadable library on this platform.
pub const LIBRARY_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

impl SearchPath {
    pub fn resolve(flag_dirs: &[PathBuf], env: Option<&str>) -> SearchPath {
        if !flag_dirs.is_empty() {
            return SearchPath {
                dirs: flag_dirs.to_vec(),
                source: SearchPathSource::Flag,
            };
        }
        if let Some(env) = env.filter(|e| !e.trim().is_empty()) {
            return SearchPath {
                dirs: std::env::split_paths(env).collect(),
                source: SearchPathSource::Environment,
            };
        }
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.canonicalize().ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        SearchPath {
            dirs: vec![
                exe_dir.clone(),
                exe_dir.join("plugins"),
                exe_dir.join("../lib/orbit/plugins"),
            ],
            source: SearchPathSource::BesideBinary,
        }
    }

    /// The entries named like libraries (`*.so`) in the search path's directories, in order,
    /// sorted by name within a directory. Missing directories are skipped.
    pub fn library_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                // Not only regular files: a directory or a broken link named like a library is
                // refused with a reason, never skipped in silence.
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(LIBRARY_EXTENSION))
                .collect();
            found.sort();
            files.extend(found);
        }
        files
    }
}
