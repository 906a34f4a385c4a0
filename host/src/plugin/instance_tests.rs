//! The runner: one thread per instance for its whole life, and what happens to an instance
//! whose call was abandoned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use super::*;

/// An instance that records the threads it was made, called and dropped on.
struct Probe {
    log: Arc<Mutex<Vec<(&'static str, ThreadId)>>>,
}

impl Probe {
    fn note(&self, what: &'static str) {
        self.log
            .lock()
            .unwrap()
            .push((what, std::thread::current().id()));
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.note("drop");
    }
}

fn id() -> StageId {
    StageId {
        stage: "sink".into(),
        plugin: "probe".into(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_instance_is_made_called_and_dropped_on_one_thread_of_its_own() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let made = log.clone();
    let mut stage = StageInstance::new(
        id(),
        Arc::new(move || {
            let p = Probe { log: made.clone() };
            p.note("make");
            Ok(p)
        }),
    );
    assert!(stage.is_lost());
    stage.recreate().await.unwrap();
    for _ in 0..3 {
        stage
            .call(|p: &mut Probe| {
                p.note("call");
                Ok(())
            })
            .await
            .unwrap();
    }
    stage
        .close(|p| {
            p.note("close");
            Ok(())
        })
        .await;
    let log = log.lock().unwrap().clone();
    let what: Vec<_> = log.iter().map(|(w, _)| *w).collect();
    assert_eq!(what, ["make", "call", "call", "call", "close", "drop"]);
    let runner = log[0].1;
    assert!(log.iter().all(|(_, t)| *t == runner), "{log:?}");
    assert_ne!(runner, std::thread::current().id());
}

#[tokio::test(flavor = "current_thread")]
async fn an_abandoned_call_loses_the_instance_and_its_replacement_waits_for_the_drop() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let made = log.clone();
    let mut stage = StageInstance::new(id(), Arc::new(move || Ok(Probe { log: made.clone() })));
    stage.recreate().await.unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let hold = release.clone();
    let hung = stage.call(move |_p: &mut Probe| {
        while !hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    });
    // The host gives up on the call (a timeout drops its future).
    assert!(tokio::time::timeout(Duration::from_millis(50), hung)
        .await
        .is_err());
    assert!(
        stage.is_lost(),
        "a call whose result never came loses the instance"
    );
    stage.abandon();
    assert!(matches!(
        stage.abandoned.as_mut().expect("kept").try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert!(
        log.lock().unwrap().is_empty(),
        "dropped while its call runs"
    );
    // The hung call returns: the runner drops the instance, then a waiting replacement goes on.
    release.store(true, Ordering::SeqCst);
    assert!(stage.release_abandoned(Duration::from_secs(30)).await);
    let what: Vec<_> = log.lock().unwrap().iter().map(|(w, _)| *w).collect();
    assert_eq!(what, ["drop"]);
    assert!(stage.is_lost());
    let err = stage.call(|_p: &mut Probe| Ok(())).await.unwrap_err();
    assert!(err.to_string().contains("no instance"), "{err}");
    stage.recreate().await.unwrap();
    assert_eq!(stage.generation(), 2);
    assert!(!stage.is_lost());
}
