//! PostgreSQL for the tests: the server on 127.0.0.1:5432 (trust auth, database `test`), an
//! independent client (the `postgres` crate, not the plugin's code), unique names, and guards
//! that drop what a test created: a leftover replication slot pins WAL on a small disk.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn url_for(db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{db}")
}

pub fn client() -> postgres::Client {
    client_for("test")
}

pub fn client_for(db: &str) -> postgres::Client {
    postgres::Client::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        postgres::NoTls,
    )
    .expect("PostgreSQL on 127.0.0.1:5432 (scripts/test starts it)")
}

/// A lowercase name no other test or run uses: `prefix_<pid>_<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test restarts the server: it takes the lock exclusively, the others share it.
static SERVER: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    SERVER.read().unwrap_or_else(|e| e.into_inner())
}

pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERVER.write().unwrap_or_else(|e| e.into_inner())
}

/// Drops, when the test ends however it ends, the slots, publications, tables and databases it
/// names.
#[derive(Default)]
pub struct Cleanup {
    pub slots: Vec<String>,
    pub publications: Vec<String>,
    pub tables: Vec<String>,
    pub databases: Vec<String>,
}

impl Cleanup {
    pub fn tables(tables: &[&str]) -> Self {
        Cleanup {
            slots: Vec::new(),
            publications: Vec::new(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            databases: Vec::new(),
        }
    }

    /// A change data capture test's slot, its publication of the same name, and its tables.
    pub fn cdc(slot: &str, tables: &[&str]) -> Self {
        let mut c = Cleanup::tables(tables);
        c.slots.push(slot.to_string());
        c.publications.push(slot.to_string());
        c
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(mut c) = postgres::Client::connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test",
            postgres::NoTls,
        ) else {
            return;
        };
        for s in &self.slots {
            let _ = c.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[s],
            );
            for _ in 0..50 {
                let gone = c
                    .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[s])
                    .is_ok();
                if gone {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        for p in &self.publications {
            let _ = c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {p}"));
        }
        for t in &self.tables {
            let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {t} CASCADE"));
        }
        for d in &self.databases {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)"));
        }
    }
}

/// The slot's `confirmed_flush_lsn`, as a number.
pub fn confirmed_flush(c: &mut postgres::Client, slot: &str) -> Option<u64> {
    let row = c
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .ok()??;
    parse_lsn(&row.get::<_, Option<String>>(0)?)
}

pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn current_lsn(c: &mut postgres::Client) -> u64 {
    let row = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap();
    parse_lsn(&row.get::<_, String>(0)).unwrap()
}
