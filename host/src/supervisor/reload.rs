//! Reloading the pipeline files (SIGHUP, `POST /reload`, `--watch`): pipelines are diffed by
//! their resolved spec. Unchanged ones keep running untouched; changed ones drain and run the
//! new version from their stored offsets; those whose file is gone drain and are removed; new
//! ones start. A file that no longer loads keeps its running version, with the error (file,
//! line, column) logged and shown on `/status` as `reload_error`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use super::{load_pipelines, Command, Loaded, Supervisor};
use crate::config::{Diagnostic, PipelineFile};
use crate::pipeline::ResolvedStage;
use crate::plugin::Registry;
use crate::telemetry::PipelineState;

/// What a reload reads: the paths the host was given, resolved with its plugin registry.
pub struct Reloader {
    pub paths: Vec<PathBuf>,
    pub registry: Registry,
}

impl Reloader {
    fn load(&self) -> (Vec<Loaded>, Vec<Diagnostic>) {
        load_pipelines(&self.paths, &self.registry)
    }
}

/// What a reload did, by pipeline name.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Files that did not load: `file:line:col: message`.
    pub errors: Vec<String>,
}

impl Supervisor {
    pub fn set_reloader(&self, reloader: Reloader) {
        *self.inner.reloader.lock().expect("reloader") = Some(Arc::new(reloader));
    }

    /// Reads the files again and applies the difference. `None` when the host has no reloader.
    pub async fn reload(&self) -> Option<ReloadReport> {
        let reloader = self.inner.reloader.lock().expect("reloader").clone()?;
        let (loaded, errors) = tokio::task::spawn_blocking(move || reloader.load())
            .await
            .ok()?;
        Some(self.apply(loaded, errors))
    }

    fn apply(&self, loaded: Vec<Loaded>, errors: Vec<Diagnostic>) -> ReloadReport {
        let mut report = ReloadReport::default();
        let running = self.all();
        let failed_files: Vec<&PathBuf> = errors.iter().map(|d| &d.file).collect();
        for d in &errors {
            tracing::error!("reload: {d}; the running version (if any) goes on");
            report.errors.push(d.to_string());
            if let Some(m) = running.iter().find(|m| m.definition().file == d.file) {
                m.status.lock().expect("status").reload_error = Some(d.to_string());
            }
        }
        let loaded_names: Vec<String> = loaded.iter().map(|(f, _)| f.spec.name.clone()).collect();
        for (file, stages) in loaded {
            let name = file.spec.name.clone();
            let Some(m) = running.iter().find(|m| m.name == name) else {
                tracing::info!(pipeline = %name, file = %file.path.display(), "reload: new pipeline");
                self.start(file, stages);
                report.started.push(name);
                continue;
            };
            m.status.lock().expect("status").reload_error = None;
            if m.removing.load(Ordering::SeqCst) {
                // Its file went away and came back while it drains for removal.
                match self.keep(m, file, stages) {
                    None => report.restarted.push(name),
                    Some((file, stages)) => {
                        self.start(file, stages);
                        report.started.push(name);
                    }
                }
                continue;
            }
            let current = m.definition();
            if current.spec == file.spec && current.file == file.path {
                report.unchanged.push(name);
                continue;
            }
            *m.definition.lock().expect("definition") = self.definition(file, stages);
            let command = match m.state() {
                PipelineState::Failed => Some(Command::Resume),
                PipelineState::Stopped | PipelineState::Finished => None,
                _ => Some(Command::Restart),
            };
            tracing::info!(pipeline = %name, "reload: changed; {}", if command.is_some() {
                "draining and running the new version from the stored offsets"
            } else {
                "the new version runs when it is resumed"
            });
            if let Some(c) = command {
                let _ = m.commands.send(c);
            }
            report.restarted.push(name);
        }
        for m in &running {
            let file = m.definition().file.clone();
            if loaded_names.contains(&m.name) || failed_files.contains(&&file) {
                continue;
            }
            tracing::info!(pipeline = %m.name, file = %file.display(), "reload: file gone; draining and removing the pipeline");
            {
                let _pipelines = self.inner.pipelines.lock().expect("pipelines");
                m.removing.store(true, Ordering::SeqCst);
            }
            let _ = m.commands.send(Command::Remove);
            report.removed.push(m.name.clone());
        }
        report
    }

    /// A pipeline draining for removal whose file is back: it gets the new definition and its
    /// driver runs it instead of removing it. Gives the definition back when the driver has
    /// removed the pipeline already (then it starts anew).
    fn keep(
        &self,
        m: &super::Managed,
        file: PipelineFile,
        stages: Vec<ResolvedStage>,
    ) -> Option<Loaded> {
        let pipelines = self.inner.pipelines.lock().expect("pipelines");
        let present = pipelines
            .get(&m.name)
            .is_some_and(|x| std::ptr::eq(x.as_ref(), m));
        if !present || !m.removing.load(Ordering::SeqCst) {
            return Some((file, stages));
        }
        tracing::info!(pipeline = %m.name, "reload: its file is back; running the new version after the drain");
        *m.definition.lock().expect("definition") = self.definition(file, stages);
        m.removing.store(false, Ordering::SeqCst);
        None
    }

    /// Forgets a pipeline whose driver ended for good (removed by a reload); false when its
    /// file came back meanwhile ([`Supervisor::keep`]) and it must run again instead.
    pub(super) fn remove(&self, m: &super::Managed) -> bool {
        let mut pipelines = self.inner.pipelines.lock().expect("pipelines");
        let present = pipelines
            .get(&m.name)
            .is_some_and(|x| std::ptr::eq(x.as_ref(), m));
        if !present {
            // Another pipeline of this name runs now: its metrics stay.
            return true;
        }
        if !m.removing.load(Ordering::SeqCst) {
            return false;
        }
        pipelines.remove(&m.name);
        drop(pipelines);
        self.inner.telemetry.remove_pipeline(&m.name);
        self.inner.changed.notify_waiters();
        true
    }
}
