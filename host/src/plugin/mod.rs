//! Plugin libraries: where they are searched, how they are loaded, the registry of the
//! components they provide, and how a component is instantiated ([`factory`]) and called
//! ([`StageInstance`]).

mod elf;
mod factory;
mod instance;
mod loader;
mod logging;
mod search_path;
mod sink;

pub use factory::{sink_factory, source_factory, transform_factory, StageConfig};
pub use instance::{Factory, StageId, StageInstance};
pub use loader::{load_library, Library, LoadError};
pub use search_path::{SearchPath, SearchPathSource};
pub use sink::HostSink;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use orbit_plugin_api::ffi::ComponentKind;

/// A component found in a library: what the pipeline YAML names in `plugin:`.
#[derive(Clone)]
pub struct Component {
    pub name: String,
    pub kind: ComponentKind,
    pub description: String,
    pub library: Arc<Library>,
}

/// A file on the search path that is not a usable plugin, and why.
#[derive(Debug, Clone)]
pub struct RefusedFile {
    pub path: PathBuf,
    pub reason: String,
}

/// Every component of every library on the search path.
#[derive(Default)]
pub struct Registry {
    pub libraries: Vec<Arc<Library>>,
    components: BTreeMap<(ComponentKind, String), Component>,
    pub refused: Vec<RefusedFile>,
    pub search_path: SearchPath,
}

impl Registry {
    /// Loads every library in the search path's directories. Files that are not usable plugins
    /// are collected in `refused`; a component name claimed twice is refused in the second file.
    pub fn load(search_path: SearchPath) -> Registry {
        let mut registry = Registry {
            search_path,
            ..Registry::default()
        };
        for file in registry.search_path.library_files() {
            match load_library(&file) {
                Ok(lib) => registry.add(Arc::new(lib)),
                Err(e) => registry.refused.push(RefusedFile {
                    path: file,
                    reason: e.to_string(),
                }),
            }
        }
        registry
    }

    fn add(&mut self, lib: Arc<Library>) {
        for c in &lib.manifest.components {
            let key = (c.kind, c.name.to_string());
            if let Some(existing) = self.components.get(&key) {
                self.refused.push(RefusedFile {
                    path: lib.path.clone(),
                    reason: format!(
                        "it provides {} `{}`, which {} already provides; remove one of the two files",
                        c.kind,
                        c.name,
                        existing.library.path.display()
                    ),
                });
                return;
            }
        }
        for c in &lib.manifest.components {
            self.components.insert(
                (c.kind, c.name.to_string()),
                Component {
                    name: c.name.to_string(),
                    kind: c.kind,
                    description: c.description.to_string(),
                    library: lib.clone(),
                },
            );
        }
        self.libraries.push(lib);
    }

    pub fn get(&self, kind: ComponentKind, name: &str) -> Option<&Component> {
        self.components.get(&(kind, name.to_string()))
    }

    /// Names of the components of one kind, for "unknown plugin" errors.
    pub fn names(&self, kind: ComponentKind) -> Vec<&str> {
        self.components
            .values()
            .filter(|c| c.kind == kind)
            .map(|c| c.name.as_str())
            .collect()
    }

    /// The kinds under which a name exists, for "a sink used as a source" errors.
    pub fn kinds_of(&self, name: &str) -> Vec<ComponentKind> {
        self.components
            .values()
            .filter(|c| c.name == name)
            .map(|c| c.kind)
            .collect()
    }

    pub fn components(&self) -> impl Iterator<Item = &Component> {
        self.components.values()
    }
}
