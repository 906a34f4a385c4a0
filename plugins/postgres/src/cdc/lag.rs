//! The slot's lag, measured on the server every heartbeat: how much WAL the slot holds behind
//! the server's current position, and the position last confirmed, as plugin metrics; a
//! warning while the lag is above `lag_warn_bytes`.

use std::time::{Duration, Instant};

use orbit_plugin_api::{runtime, Metrics};
use tokio::task::JoinHandle;

use super::lsn::{fmt_lsn, parse_lsn};
use crate::client::connect;

pub struct LagWatch {
    pub url: String,
    pub slot: String,
    pub interval: Duration,
    pub warn_bytes: u64,
    pub connect_timeout: Duration,
    pub metrics: Metrics,
}

const WARN_EVERY: Duration = Duration::from_secs(60);

impl LagWatch {
    pub fn spawn(self) -> JoinHandle<()> {
        runtime().spawn(async move {
            let mut client = None;
            let mut warned: Option<Instant> = None;
            loop {
                if client.is_none() {
                    client = connect(&self.url, self.connect_timeout).await.ok();
                }
                if let Some(c) = &client {
                    let row = c
                        .query_opt(
                            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8, \
                             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8, confirmed_flush_lsn::text \
                             FROM pg_replication_slots WHERE slot_name = $1",
                            &[&self.slot],
                        )
                        .await;
                    match row {
                        Ok(Some(row)) => self.report(row.get(0), row.get(1), row.get(2), &mut warned),
                        Ok(None) => {}
                        Err(_) => client = None,
                    }
                }
                tokio::time::sleep(self.interval).await;
            }
        })
    }

    fn report(
        &self,
        lag: Option<f64>,
        retained: Option<f64>,
        confirmed: Option<String>,
        warned: &mut Option<Instant>,
    ) {
        let m = &self.metrics;
        if let Some(lag) = lag {
            m.gauge(
                "slot_lag_bytes",
                "WAL bytes between the server's position and the slot's confirmed position",
                lag,
            );
            if lag > self.warn_bytes as f64 {
                if warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        slot = %self.slot,
                        lag_bytes = lag,
                        "the replication slot is {lag} bytes behind (lag_warn_bytes {}): the server keeps that WAL until the pipeline catches up",
                        self.warn_bytes
                    );
                    *warned = Some(Instant::now());
                }
            } else {
                *warned = None;
            }
        }
        if let Some(r) = retained {
            m.gauge(
                "slot_retained_wal_bytes",
                "WAL bytes the slot keeps on the server",
                r,
            );
        }
        if let Some(lsn) = confirmed.as_deref().and_then(parse_lsn) {
            m.gauge(
                "confirmed_flush_lsn",
                "The slot's confirmed position (LSN as a number)",
                lsn as f64,
            );
            tracing::trace!(slot = %self.slot, confirmed = %fmt_lsn(lsn), "slot position");
        }
    }
}
