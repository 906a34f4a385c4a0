//! The admin server: health, readiness, Prometheus metrics and the REST API over the
//! supervisor's pipelines (Kafka Connect's shape). Loopback by default; a token guards every
//! mutating request (`PUT`, `POST`, `PATCH`, `DELETE`) and is required on any other address.

mod auth;
mod routes;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;

/// Where and how the admin server listens.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    /// Required (as `Authorization: Bearer …`) for every mutating request when set.
    pub token: Option<String>,
}

/// Why the admin server did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin server: {addr} is not a loopback address and no admin token is set; anyone who \
         can reach it could stop pipelines"
    )]
    NoToken { addr: SocketAddr },
    #[error("admin server: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl AdminError {
    pub fn hint(&self) -> &'static str {
        match self {
            AdminError::NoToken { .. } => {
                "set --admin-token (or ORBIT_ADMIN_TOKEN), or listen on 127.0.0.1"
            }
            AdminError::Bind { .. } => {
                "another process holds the port: choose another with --admin 127.0.0.1:PORT \
                 (port 0 picks a free one), or --admin none to run without it"
            }
        }
    }
}

/// The admin API as a service, without a listener (the server below, tests, fuzzing).
pub fn app(supervisor: Supervisor, token: Option<String>) -> axum::Router {
    routes::router(supervisor, token)
}

/// A bound admin server, not yet serving.
pub struct AdminServer {
    listener: TcpListener,
    config: AdminConfig,
}

impl AdminServer {
    pub async fn bind(config: AdminConfig) -> Result<AdminServer, AdminError> {
        if !config.addr.ip().is_loopback() && config.token.is_none() {
            return Err(AdminError::NoToken { addr: config.addr });
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| AdminError::Bind {
                addr: config.addr,
                source,
            })?;
        Ok(AdminServer { listener, config })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.addr)
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, supervisor: Supervisor, stop: CancellationToken) {
        let app = app(supervisor, self.config.token);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("admin server stopped: {e}");
        }
    }
}
