//! The baselines' tokio runtime: current-thread, or multi-thread with N workers when the
//! environment variable `var` is N (to compare with the runtime a plugin gets).

pub fn runtime(var: &str) -> tokio::runtime::Runtime {
    if let Ok(n) = std::env::var(var) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.parse().unwrap_or_else(|_| panic!("{var} is a number")))
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}
