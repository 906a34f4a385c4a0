//! One tokio runtime per plugin library.
//!
//! Each library carries its own copy of tokio's thread-locals, so a plugin can never use the
//! host's runtime; one that does async I/O (rdkafka, lapin, reqwest) uses this one, created on
//! first use and kept for the life of the process (libraries are never unloaded).

use std::sync::OnceLock;

/// The library's runtime: two worker threads, I/O and timers enabled.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("orbit-plugin-rt")
            .enable_all()
            .build()
            .expect("a plugin's tokio runtime could not be created")
    })
}
