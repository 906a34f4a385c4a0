//! The HTTP server shared by the `http` source and the `sse` sink: bound in `open` (so a port in
//! use is an error at start, naming the address), served by axum on the library's runtime,
//! optionally over TLS (rustls, certificate and key from PEM files), shut down gracefully on
//! `close`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use axum_server::Handle;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use orbit_plugin_api::{runtime, ConfigError, PluginError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::connections::Limited;

/// `tls: { cert_file, key_file }`: serve HTTPS instead of plain HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file with the server certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Checks an `address` (`host:port`) and `tls` block without binding or reading anything.
pub fn validate_listen(address: &str, tls: Option<&TlsFiles>) -> Result<(), ConfigError> {
    let (host, port) = address.rsplit_once(':').ok_or_else(|| {
        ConfigError::new(
            "address",
            format!("`{address}` is not `host:port`; write e.g. `127.0.0.1:8080`"),
        )
    })?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(ConfigError::new(
            "address",
            format!("`{address}` is not `host:port` with a port from 0 to 65535; write e.g. `127.0.0.1:8080`"),
        ));
    }
    if let Some(t) = tls {
        if t.cert_file.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "tls.cert_file",
                "is empty; give the PEM file holding the server certificate",
            ));
        }
        if t.key_file.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "tls.key_file",
                "is empty; give the PEM file holding the private key",
            ));
        }
    }
    Ok(())
}

pub fn validate_path(path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') {
        return Err(ConfigError::new(
            "path",
            format!("`{path}` must start with `/`, e.g. `/ingest`"),
        ));
    }
    if path.contains('{') || path.contains('*') {
        return Err(ConfigError::new(
            "path",
            "must be a literal path: `{` and `*` are not allowed",
        ));
    }
    Ok(())
}

/// Reads the certificate chain and key and builds a rustls server config (ring provider).
pub fn tls_config(t: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, PluginError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            PluginError::config(format!(
                "`tls.cert_file`: cannot read certificates from {}: {e}; give a PEM file with the server certificate chain",
                t.cert_file.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(PluginError::config(format!(
            "`tls.cert_file`: {} holds no PEM certificate; give a PEM file with the server certificate chain",
            t.cert_file.display()
        )));
    }
    // The key's bytes never appear in a message; only the file name does.
    let key = PrivateKeyDer::from_pem_file(&t.key_file).map_err(|e| {
        PluginError::config(format!(
            "`tls.key_file`: cannot read a private key from {}: {e}; give a PEM file with a PKCS#8, PKCS#1 or SEC1 key",
            t.key_file.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PluginError::fatal(format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            PluginError::config(format!(
                "`tls`: the certificate in {} and the key in {} do not make a usable pair: {e}",
                t.cert_file.display(),
                t.key_file.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Bounds on what clients may hold: connections, and the time to send a request's headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// At most this many connections at once; more get 503 and are closed.
    pub max_connections: Option<usize>,
    /// A TLS handshake, the first bytes of a connection's first request, then a request's
    /// headers must each arrive within this time (after the handshake, after the first bytes,
    /// after the previous answer); the connection is closed otherwise. An idle keep-alive
    /// connection is closed after it too. Set, it also limits the server to HTTP/1.
    pub header_timeout: Option<Duration>,
    /// The `Retry-After` of the 503 to connections over `max_connections`.
    pub retry_after: Duration,
    /// hyper's buffer for a connection, at most (from 8192): a request's head must fit in it,
    /// and bodies are read in pieces of at most this size. hyper's default is ~400 KiB.
    pub connection_buffer: Option<usize>,
}

/// A running server. Dropping it stops it at once; [`Server::shutdown`] stops it gracefully.
pub struct Server {
    handle: Handle,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Binds `address` now and serves `router` on the library's runtime.
pub fn start(
    what: &'static str,
    address: &str,
    tls: Option<&TlsFiles>,
    router: Router,
    limits: Limits,
) -> Result<Server, PluginError> {
    let tls = tls.map(tls_config).transpose()?;
    let addr = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            PluginError::config(format!(
                "`address`: `{address}` does not resolve to a socket address"
            ))
        })?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "another process (or another pipeline) uses this port; stop it or choose another `address`"
            }
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges; choose a port from 1024 up"
            }
            _ => "check `address`",
        };
        PluginError::config(format!("{what}: cannot listen on {address}: {e}; {hint}"))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| PluginError::fatal(format!("{what}: cannot set up the listener: {e}")))?;
    let addr = listener.local_addr().unwrap_or(addr);
    let handle = Handle::new();
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let task = match tls {
        None => {
            let mut server = axum_server::from_tcp(listener)
                .handle(handle.clone())
                .map(|plain| {
                    Limited::new(
                        what,
                        plain,
                        limits.max_connections,
                        limits.header_timeout,
                        limits.retry_after,
                    )
                });
            configure(server.http_builder(), &limits);
            runtime().spawn(async move {
                if let Err(e) = server.serve(service).await {
                    tracing::error!("{what}: server stopped: {e}");
                }
            })
        }
        Some(config) => {
            let mut server =
                axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(config))
                    .handle(handle.clone())
                    .map(|tls| {
                        let tls = match limits.header_timeout {
                            Some(t) => tls.handshake_timeout(t),
                            None => tls,
                        };
                        Limited::new(
                            what,
                            tls,
                            limits.max_connections,
                            limits.header_timeout,
                            limits.retry_after,
                        )
                    });
            configure(server.http_builder(), &limits);
            runtime().spawn(async move {
                if let Err(e) = server.serve(service).await {
                    tracing::error!("{what}: server stopped: {e}");
                }
            })
        }
    };
    tracing::info!("{what}: listening on {scheme}://{addr}");
    Ok(Server {
        handle,
        task: Some(task),
    })
}

fn configure(builder: &mut auto::Builder<TokioExecutor>, limits: &Limits) {
    let mut http1 = builder.http1();
    if let Some(n) = limits.connection_buffer {
        http1.max_buf_size(n.max(8192));
    }
    if let Some(t) = limits.header_timeout {
        http1.timer(TokioTimer::new()).header_read_timeout(t);
    }
}

impl Server {
    /// Stops accepting, lets open requests finish for up to `grace`, then closes the rest.
    pub fn shutdown(&mut self, grace: Duration) {
        self.handle.graceful_shutdown(Some(grace));
        if let Some(task) = self.task.take() {
            runtime().block_on(async move {
                let _ = tokio::time::timeout(grace + Duration::from_secs(1), task).await;
            });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.handle.shutdown();
        }
    }
}
