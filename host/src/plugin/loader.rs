//! Loading one plugin library.
//!
//! `RootModule::load_from_file` caches one module per Rust type, so a second library would
//! silently be the first one again. Each file is loaded on its own with
//! `lib_header_from_path(path)?.init_root_module()`, which also checks the layout of every type
//! reachable from the root module against the host's and the plugin-api version. Libraries are
//! leaked: never unloaded, so their code stays valid for the life of the process.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use orbit_plugin_api::ffi::{HostContext, Manifest, PluginModuleRef};
use orbit_plugin_api::API_VERSION;

/// A loaded plugin library.
pub struct Library {
    pub path: PathBuf,
    pub module: PluginModuleRef,
    pub manifest: Manifest,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("it is not a loadable library ({0}); remove it from the plugin directory")]
    NotALibrary(String),
    #[error(
        "it is a library but not an Orbit plugin (no Orbit root module); remove it from the \
         plugin directory"
    )]
    NotAPlugin,
    #[error(
        "it was built against an incompatible orbit-plugin-api (the host has {host}): {detail}; \
         rebuild the plugin against orbit-plugin-api {host}"
    )]
    Incompatible { host: &'static str, detail: String },
    #[error("loading it failed: {0}")]
    Other(String),
}

fn classify(e: LibraryError) -> LoadError {
    match e {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary(err.to_string()),
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin,
        e @ (LibraryError::ParseVersionError(_)
        | LibraryError::IncompatibleVersionNumber { .. }
        | LibraryError::AbiInstability(_)
        | LibraryError::InvalidAbiHeader(_)
        | LibraryError::InvalidCAbi { .. }) => LoadError::Incompatible {
            host: API_VERSION,
            detail: one_line(&e.to_string()),
        },
        e => LoadError::Other(one_line(&e.to_string())),
    }
}

/// abi_stable's layout reports span many lines; keep them readable in one paragraph.
fn one_line(s: &str) -> String {
    let mut out = String::new();
    for part in s.split('\n').map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(" | ");
        }
        out.push_str(part);
        if out.len() > 1500 {
            out.push_str(" …");
            break;
        }
    }
    out
}

pub fn load_library(path: &Path) -> Result<Library, LoadError> {
    let header = lib_header_from_path(path).map_err(classify)?;
    let module = header
        .init_root_module::<PluginModuleRef>()
        .map_err(classify)?;
    let _ = PluginModuleRef::NAME;
    (module.init())(HostContext {
        log: super::logging::host_log,
        max_level: super::logging::max_level(),
    });
    let manifest = (module.manifest())();
    Ok(Library {
        path: path.to_path_buf(),
        module,
        manifest,
    })
}
