//! Loading one plugin library.
//!
//! `RootModule::load_from_file` caches one module per Rust type, so a second library would
//! silently be the first one again. Each file is loaded on its own with
//! `lib_header_from_path(path)?.init_root_module()`, which also checks the layout of every type
//! reachable from the root module against the host's and the plugin-api version. Libraries are
//! leaked: never unloaded, so their code stays valid for the life of the process.

use std::path::{Path, PathBuf};

use abi_stable::library::RootModule;
use abi_stable::library::{lib_header_from_path, AbiHeaderRef, LibraryError, RawLibrary};
use orbit_plugin_api::ffi::ext::EXT_SYMBOL;
use orbit_plugin_api::ffi::metrics::EXT_V2_SYMBOL;
use orbit_plugin_api::ffi::{
    HostContext, Manifest, MetricsHost, PluginExtRef, PluginExtV2Ref, PluginModuleRef,
};
use orbit_plugin_api::API_VERSION;

/// A loaded plugin library.
pub struct Library {
    pub path: PathBuf,
    pub module: PluginModuleRef,
    /// The capabilities added after plugin-api 0.1.0; `None` for a library built before them.
    pub ext: Option<PluginExtRef>,
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
        "it was built against an incompatible orbit-plugin-api (the plugin has {plugin}, the \
         host has {host}): {detail}; rebuild the plugin against orbit-plugin-api {host}"
    )]
    Incompatible {
        host: &'static str,
        plugin: String,
        detail: String,
    },
    #[error("{0}")]
    Unusable(String),
    #[error("loading it failed: {0}")]
    Other(String),
}

/// Refuses what the dynamic loader must not be handed: something that is not a regular file
/// (a directory, a dangling symlink, a symlink loop) or a truncated ELF file.
fn check_file(path: &Path) -> Result<(), LoadError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(LoadError::Unusable(
                "it is a directory (or another non-file), not a library; move it out of the plugin directory".into(),
            ))
        }
        Err(e) => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(LoadError::Unusable(if link {
                format!("it is a symbolic link that leads to no file (dangling, or a loop: {e}); fix the link or remove it")
            } else {
                format!("cannot read it: {e}")
            }));
        }
    }
    super::elf::check(path).map_err(LoadError::Unusable)
}

fn classify(e: LibraryError, plugin_api: &str) -> LoadError {
    let plugin = plugin_api.to_string();
    match e {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary(err.to_string()),
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin,
        e @ LibraryError::AbiInstability(_) => {
            let full = e.to_string();
            tracing::debug!("abi_stable's full layout report: {full}");
            LoadError::Incompatible {
                host: API_VERSION,
                plugin,
                detail: summarize_layout_report(&full),
            }
        }
        e @ (LibraryError::ParseVersionError(_)
        | LibraryError::IncompatibleVersionNumber { .. }
        | LibraryError::InvalidAbiHeader(_)
        | LibraryError::InvalidCAbi { .. }) => LoadError::Incompatible {
            host: API_VERSION,
            plugin,
            detail: one_line(&e.to_string()),
        },
        e => LoadError::Other(one_line(&e.to_string())),
    }
}

/// abi_stable's layout report runs to hundreds of lines (both layouts in full). Keep what a
/// person needs: which types differ (the path from the root module down) and abi_stable's
/// error lines with expected and found values. The full report is logged at debug level.
fn summarize_layout_report(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let mut types: Vec<&str> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut in_error_path = false;
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if let Some(n) = l.strip_suffix("error(s)inside:") {
            in_error_path = n.trim().parse::<usize>().is_ok_and(|n| n > 0);
        } else if l.starts_with("Layout of expected type") {
            in_error_path = false;
        } else if in_error_path {
            if let Some(t) = l.strip_prefix("type:") {
                if !t.starts_with("AFunctionPointer") && !types.contains(&t) {
                    types.push(t);
                }
            }
        }
        if let Some(e) = l.strip_prefix("Error:") {
            let value_after = |label: &str| {
                lines[i + 1..]
                    .iter()
                    .take(4)
                    .position(|x| *x == label)
                    .and_then(|p| lines.get(i + 2 + p))
                    .copied()
                    .unwrap_or("?")
            };
            errors.push(format!(
                "{e} (expected {}, found {})",
                value_after("Expected:"),
                value_after("Found:")
            ));
        }
        i += 1;
    }
    if errors.is_empty() {
        return one_line(report);
    }
    format!(
        "the layout of {} differs: {}",
        if types.is_empty() {
            "the root module".to_string()
        } else {
            types.join(" → ")
        },
        errors.join("; ")
    )
}

/// Keeps a multi-line message readable in one paragraph.
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
    check_file(path)?;
    let header = lib_header_from_path(path).map_err(|e| classify(e, "?"))?;
    let plugin_api = header.version_strings().version.as_str();
    let module = header
        .init_root_module::<PluginModuleRef>()
        .map_err(|e| classify(e, plugin_api))?;
    (module.init())(HostContext {
        log: super::logging::host_log,
        max_level: super::logging::max_level(),
    });
    let manifest = (module.manifest())();
    let ext = load_ext::<PluginExtRef>(path, EXT_SYMBOL).map_err(|e| classify(e, plugin_api))?;
    if let Some(v2) =
        load_ext::<PluginExtV2Ref>(path, EXT_V2_SYMBOL).map_err(|e| classify(e, plugin_api))?
    {
        (v2.init_metrics())(MetricsHost {
            report: crate::telemetry::report_plugin_metric,
        });
    }
    Ok(Library {
        path: path.to_path_buf(),
        module,
        ext,
        manifest,
    })
}

/// A root module added after plugin-api 0.1.0 ([`PluginExtRef`], [`PluginExtV2Ref`]), checked
/// like the first one, if the library exports its symbol (a library built before it does not).
fn load_ext<M: RootModule>(path: &Path, symbol: &str) -> Result<Option<M>, LibraryError> {
    let raw = RawLibrary::load_at(path)?;
    let symbol = format!("{symbol}\0");
    // SAFETY: the symbol, when present, is the `LibHeader` static `export_plugin!` defines;
    // the library is leaked below, so the `'static` references in it stay valid.
    let Ok(header) = (unsafe { raw.get::<AbiHeaderRef>(symbol.as_bytes()) }) else {
        return Ok(None);
    };
    let header = (*header).upgrade()?;
    std::mem::forget(raw);
    header.init_root_module::<M>().map(Some)
}
