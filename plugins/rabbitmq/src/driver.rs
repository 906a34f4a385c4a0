//! A current-thread tokio runtime for one source's lapin connection, driven by whoever needs
//! it: the host's calling thread during `poll`/`ack`/`close`, a background thread in between.
//!
//! Why: lapin's I/O thread learns that its socket is readable from the runtime's reactor. On a
//! multi-thread runtime a worker sits in `epoll_wait` and wakes that thread for every segment
//! that arrives; when the thread that consumes deliveries also drives the reactor, readiness is
//! handled only when the consumer looks, so the I/O thread reads and parses in larger gulps.
//! Measured with a bare lapin consumer (1 KB messages, prefetch 2000): 33k msg/s on a
//! current-thread runtime against 23–27k on a multi-thread one (docs/BENCHMARKS.md). Between
//! host calls someone must still drive the reactor (lapin's I/O, heartbeats), hence the
//! background thread, which steps aside whenever a host call wants the runtime.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    /// Host calls that want the runtime (or hold it).
    wanted: usize,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Asks the background thread to give the runtime up.
    step_aside: Notify,
}

pub struct Driver {
    runtime: Arc<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    background: Option<JoinHandle<()>>,
}

impl Driver {
    pub fn new(name: &str) -> std::io::Result<Self> {
        let runtime = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        );
        let shared = Arc::new(Shared::default());
        let background = {
            let runtime = runtime.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || loop {
                    {
                        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                        while state.wanted > 0 && !state.stop {
                            state = shared
                                .changed
                                .wait(state)
                                .unwrap_or_else(|e| e.into_inner());
                        }
                        if state.stop {
                            return;
                        }
                    }
                    // Drives the runtime until a host call asks for it (a permit stored by
                    // `notify_one` before this point ends the wait at once).
                    runtime.block_on(shared.step_aside.notified());
                })?
        };
        Ok(Driver {
            runtime,
            shared,
            background: Some(background),
        })
    }

    /// Runs `future` to completion on the calling thread, which drives the runtime meanwhile.
    pub fn run<F: Future>(&self, future: F) -> F::Output {
        /// Hands the runtime back to the background thread, also if `future` panics.
        struct Release<'a>(&'a Shared);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .wanted -= 1;
                self.0.changed.notify_all();
            }
        }
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wanted += 1;
        let _release = Release(&self.shared);
        self.shared.step_aside.notify_one();
        self.runtime.block_on(future)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop = true;
        self.shared.changed.notify_all();
        self.shared.step_aside.notify_one();
        if let Some(t) = self.background.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tasks_progress_between_calls_and_calls_get_the_runtime() {
        let driver = Driver::new("test-driver").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // A task spawned during a call keeps running after the call returns: the background
        // thread drives it (as it drives lapin's heartbeats between host calls).
        driver.run(async move {
            tokio::spawn(async move {
                for i in 0..5u32 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let _ = tx.send(i);
                }
            });
        });
        let got: Vec<u32> = (0..5)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(5))
                    .expect("the task ran")
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        // A later call still gets the runtime (the background thread steps aside).
        assert_eq!(
            driver.run(async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                7
            }),
            7
        );
    }
}
