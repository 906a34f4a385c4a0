//! `orbit-host`: run, validate and list.

// See lib.rs: diagnostics are cold-path values.
#![allow(clippy::result_large_err)]

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use orbit_host::admin::{AdminConfig, AdminServer};
use orbit_host::plugin::{Registry, SearchPath};
use orbit_host::supervisor::{load_pipelines, watch_files, HostSettings, Reloader, Supervisor};
use orbit_host::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "orbit-host",
    version,
    about = "Runs Orbit pipelines: YAML files that connect source, transform and sink plugins",
    args_conflicts_with_subcommands = true,
    after_help = "Plugin search path, first given wins: --plugin-dir, ORBIT_PLUGIN_PATH, then the \
                  binary's own directory, its plugins/ and ../lib/orbit/plugins."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Pipeline files, or directories whose *.yaml / *.yml files are all run.
    #[arg(value_name = "FILE|DIR")]
    paths: Vec<PathBuf>,

    #[command(flatten)]
    common: Common,

    /// Where offsets are kept (`<state-dir>/offsets/<pipeline>.json`).
    #[arg(long, env = "ORBIT_STATE_DIR", default_value = ".orbit", global = true)]
    state_dir: PathBuf,

    /// How long a shutdown waits for in-flight batches to be delivered.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace_period: Duration,

    /// How often a progress line is logged (0s for never).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    progress: Duration,

    /// The admin server's address (health, metrics, REST API): HOST:PORT, port 0 for any free
    /// port, or `none` to run without it.
    #[arg(long, env = "ORBIT_ADMIN_ADDR", default_value = "127.0.0.1:9100", value_parser = parse_admin)]
    admin: AdminAddr,

    /// Watch the given files and directories and reload on every change (as SIGHUP and
    /// `POST /reload` do once); the host stays up while it watches.
    #[arg(long)]
    watch: bool,

    /// `text` (for people) or `json` (one object per line, with pipeline, stage and plugin).
    #[arg(long, env = "ORBIT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,

    /// Token required (`Authorization: Bearer TOKEN`) by every request that changes something;
    /// required when the admin address is not loopback.
    #[arg(long, env = "ORBIT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum AdminAddr {
    None,
    At(SocketAddr),
}

fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(AdminAddr::None);
    }
    s.parse()
        .map(AdminAddr::At)
        .map_err(|_| format!("`{s}` is not HOST:PORT (like 127.0.0.1:9100, 0.0.0.0:0) or `none`"))
}

#[derive(clap::Args)]
struct Common {
    /// A directory of plugin libraries; repeat for several. Replaces the default search path.
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    plugin_dirs: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Checks pipeline files, plugin configs included, without connecting anywhere.
    Validate {
        #[arg(value_name = "FILE|DIR", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Lists the plugins on the search path: name, version, kinds, file.
    Plugins,
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("ORBIT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if format == "json" {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(orbit_host::logging::JsonLines)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let search_path = SearchPath::resolve(
        &cli.common.plugin_dirs,
        std::env::var("ORBIT_PLUGIN_PATH").ok().as_deref(),
    );
    let registry = Registry::load(search_path);
    match &cli.command {
        Some(Command::Plugins) => list_plugins(&registry),
        Some(Command::Validate { paths }) => match load_all(paths, &registry) {
            Ok(loaded) => {
                for (file, _) in &loaded {
                    println!(
                        "ok: {} (pipeline `{}`)",
                        file.path.display(),
                        file.spec.name
                    );
                }
                ExitCode::SUCCESS
            }
            Err(()) => ExitCode::FAILURE,
        },
        None => {
            if cli.paths.is_empty() {
                eprintln!("error: no pipeline given\n  hint: orbit-host pipelines/quickstart.yaml, or orbit-host --help");
                return ExitCode::from(2);
            }
            let Ok(loaded) = load_all(&cli.paths, &registry) else {
                return ExitCode::FAILURE;
            };
            let settings = HostSettings {
                state_dir: cli.state_dir.clone(),
                grace: cli.grace_period,
                progress_every: cli.progress,
            };
            let admin = match cli.admin {
                AdminAddr::None => None,
                AdminAddr::At(addr) => Some(AdminConfig {
                    addr,
                    token: cli.admin_token.clone().filter(|t| !t.is_empty()),
                }),
            };
            let reloader = Reloader {
                paths: cli.paths.clone(),
                registry,
            };
            run(loaded, settings, admin, reloader, cli.watch)
        }
    }
}

fn report_refused(registry: &Registry) -> bool {
    for r in &registry.refused {
        eprintln!(
            "error: plugin file {} refused: {}",
            r.path.display(),
            r.reason
        );
    }
    registry.refused.is_empty()
}

fn list_plugins(registry: &Registry) -> ExitCode {
    println!(
        "search path ({}): {}",
        registry.search_path.source,
        registry
            .search_path
            .dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    );
    println!(
        "{:<12} {:<10} {:<10} {:<48} FILE",
        "NAME", "VERSION", "KIND", "DESCRIPTION"
    );
    for c in registry.components() {
        println!(
            "{:<12} {:<10} {:<10} {:<48} {}",
            c.name,
            c.library.manifest.version.as_str(),
            c.kind.as_str(),
            c.description,
            c.library.path.display()
        );
    }
    if report_refused(registry) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Expands directories, loads and resolves every pipeline, printing every error found.
type Loaded = Vec<orbit_host::supervisor::Loaded>;

/// Loads every pipeline, printing every error found; `Err` if any.
fn load_all(paths: &[PathBuf], registry: &Registry) -> Result<Loaded, ()> {
    let ok = report_refused(registry);
    let (loaded, errors) = load_pipelines(paths, registry);
    for d in &errors {
        eprintln!("error: {d}");
    }
    if ok && errors.is_empty() {
        Ok(loaded)
    } else {
        Err(())
    }
}

fn run(
    loaded: Loaded,
    settings: HostSettings,
    admin: Option<AdminConfig>,
    reloader: Reloader,
    watch: bool,
) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("orbit-host")
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(settings, Telemetry::new(), shutdown.clone());
        let paths = reloader.paths.clone();
        supervisor.set_reloader(reloader);
        let admin_stop = CancellationToken::new();
        let mut admin_task = None;
        if let Some(config) = admin {
            let server = match AdminServer::bind(config).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}\n  hint: {}", e.hint());
                    return ExitCode::from(2);
                }
            };
            tracing::info!("admin listening on {}", server.local_addr());
            admin_task = Some(tokio::spawn(
                server.serve(supervisor.clone(), admin_stop.clone()),
            ));
        }
        tokio::spawn(watch_signals(shutdown.clone()));
        tokio::spawn(reload_on_hangup(supervisor.clone()));
        for (file, stages) in loaded {
            supervisor.start(file, stages);
        }
        if watch {
            supervisor.keep_running();
            let sup = supervisor.clone();
            tokio::spawn(async move {
                if let Err(e) = watch_files(sup, paths).await {
                    tracing::error!("{e}; reload with SIGHUP or POST /reload instead");
                }
            });
        }
        let ok = supervisor.wait().await;
        admin_stop.cancel();
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    });
    // A call abandoned after a timeout may still be running on a blocking thread; it holds
    // nothing that is acknowledged, so do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

/// SIGHUP: read the pipeline files again and apply the difference.
async fn reload_on_hangup(supervisor: Supervisor) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the pipeline files");
        if let Some(r) = supervisor.reload().await {
            tracing::info!(
                started = r.started.len(),
                restarted = r.restarted.len(),
                removed = r.removed.len(),
                unchanged = r.unchanged.len(),
                errors = r.errors.len(),
                "reloaded"
            );
        }
    }
}

/// First SIGINT or SIGTERM: drain and stop. Second: exit at once (offsets already persisted
/// stay valid; what was in flight is read again).
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: draining in-flight batches (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    eprintln!("second signal: exiting without draining");
    std::process::exit(130);
}
