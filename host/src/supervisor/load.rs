//! Reading the pipeline files a host was given (files, or directories of `*.yaml`/`*.yml`):
//! each one loaded, checked and resolved against the plugin registry, with an error per file
//! that is not usable, so that a reload can keep the others.

use std::path::{Path, PathBuf};

use crate::config::{Diagnostic, PipelineFile};
use crate::pipeline::{resolve, ResolvedStage};
use crate::plugin::Registry;

/// A usable pipeline file, resolved.
pub type Loaded = (PipelineFile, Vec<ResolvedStage>);

/// Every pipeline in `paths`: those that load, and the errors of those that do not.
pub fn load_pipelines(paths: &[PathBuf], registry: &Registry) -> (Vec<Loaded>, Vec<Diagnostic>) {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        match expand(p) {
            Ok(found) => files.extend(found),
            Err(d) => errors.push(d),
        }
    }
    let mut loaded: Vec<Loaded> = Vec::new();
    for f in files {
        let result = PipelineFile::load(&f).and_then(|file| {
            if let Some((other, _)) = loaded.iter().find(|(o, _)| o.spec.name == file.spec.name) {
                return Err(file.error_at(
                    "name",
                    format!(
                        "pipeline name `{}` is already used by {}",
                        file.spec.name,
                        other.path.display()
                    ),
                    "names must be unique per host: they key the offsets",
                ));
            }
            let stages = resolve(&file, registry)?;
            Ok((file, stages))
        });
        match result {
            Ok(l) => loaded.push(l),
            Err(d) => errors.push(d),
        }
    }
    (loaded, errors)
}

/// A file as itself, a directory as its `*.yaml` and `*.yml` files in name order.
fn expand(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let not_found = |e: std::io::Error| Diagnostic {
        file: path.to_path_buf(),
        line: None,
        column: None,
        key: None,
        message: format!("cannot read: {e}"),
        hint: "give a pipeline file or a directory of them".into(),
    };
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(not_found)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_pipeline_file(p))
            .collect();
        v.sort();
        Ok(v)
    } else {
        std::fs::metadata(path).map_err(not_found)?;
        Ok(vec![path.to_path_buf()])
    }
}

/// Whether a file in a pipeline directory is a pipeline (editors' temporary files are not).
pub(crate) fn is_pipeline_file(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    !hidden && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}
