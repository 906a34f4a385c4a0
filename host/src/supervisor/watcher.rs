//! `--watch`: the given files and directories are watched (notify, debounced, so an editor that
//! saves by writing a temporary file and renaming it over the old one is one change), and any
//! change to a pipeline file reloads (see [`super::reload`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use tokio::sync::mpsc;

use super::load::is_pipeline_file;
use super::Supervisor;

/// How long changes settle before a reload.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches `paths` and reloads on every change until the host shuts down.
pub async fn watch_files(supervisor: Supervisor, paths: Vec<PathBuf>) -> Result<(), String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let files: Vec<PathBuf> = paths.iter().filter(|p| !p.is_dir()).cloned().collect();
    let dirs: Vec<PathBuf> = paths.iter().filter(|p| p.is_dir()).cloned().collect();
    let relevant = {
        let (files, dirs) = (files.clone(), dirs.clone());
        move |p: &Path| {
            files.iter().any(|f| same_file(f, p))
                || dirs.iter().any(|d| {
                    p.parent().is_some_and(|parent| same_file(parent, d)) && is_pipeline_file(p)
                })
        }
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let Ok(events) = result else { return };
        if events.iter().any(|e| e.paths.iter().any(|p| relevant(p))) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot watch the pipeline files: {e}"))?;
    // A file is watched through its directory: an editor's rename replaces the file itself.
    let mut watched: Vec<PathBuf> = dirs;
    for f in &files {
        let dir = f
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        watched.push(dir.to_path_buf());
    }
    watched.sort();
    watched.dedup();
    for dir in &watched {
        debouncer
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    }
    tracing::info!(
        dirs = %watched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(","),
        "watching the pipeline files for changes"
    );
    let shutdown = supervisor.inner.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = rx.recv() => {
                if changed.is_none() {
                    return Ok(());
                }
                while rx.try_recv().is_ok() {}
                if let Some(report) = supervisor.reload().await {
                    tracing::info!(
                        started = report.started.len(),
                        restarted = report.restarted.len(),
                        removed = report.removed.len(),
                        errors = report.errors.len(),
                        "reloaded after a file change"
                    );
                }
            }
        }
    }
}

/// The same path, compared after resolving `.`/symlinks where possible (a relative path given
/// on the command line against the absolute one notify reports).
fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| absolute(p));
    a == b || canon(a) == canon(b)
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
