//! The baseline for bench/latency.sh: what a hand-written ingest service would do instead of
//! `http source (ack_mode: delivered) → file sink`. For each POST it appends the body and a
//! newline to FILE and fsyncs (`sync_data`) before answering 200, so a 200 means "on disk", as
//! Orbit's does. There is no batching across requests: one write and one fsync per request.
//!
//!   latency-baseline PORT FILE

use std::fs::File;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

#[path = "../serve.rs"]
mod serve;

async fn append(State(file): State<Arc<Mutex<File>>>, body: Bytes) -> StatusCode {
    // File I/O blocks; a plain service would hand it to the blocking pool (as tokio::fs does)
    // so that the async workers keep serving other connections during the fsync.
    let written = tokio::task::spawn_blocking(move || {
        let mut line = Vec::with_capacity(body.len() + 1);
        line.extend_from_slice(&body);
        line.push(b'\n');
        // One lock around write + fsync keeps lines whole and every acknowledged line synced.
        let mut f = file.lock().unwrap();
        f.write_all(&line)?;
        f.sync_data()
    })
    .await;
    match written {
        Ok(Ok(())) => StatusCode::OK,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

// The default runtime (one worker per core), as a service written with #[tokio::main] gets.
#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [port, path] = a.as_slice() else {
        panic!("usage: latency-baseline PORT FILE");
    };
    let port: u16 = port.parse().expect("PORT is a number");
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .expect("open FILE");
    let app = Router::new()
        .route("/{*path}", post(append))
        .route("/", post(append))
        .with_state(Arc::new(Mutex::new(file)));
    serve::until_signal(port, app).await;
}
