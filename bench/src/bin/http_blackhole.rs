//! A local webhook receiver for bench/http.sh: answers every POST with 200 after reading the
//! body, and counts requests and bytes (printed on SIGTERM/SIGINT).
//!
//!   http-blackhole PORT

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

#[path = "../serve.rs"]
mod serve;

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

async fn hole(State(c): State<Arc<Counts>>, body: Bytes) -> StatusCode {
    c.requests.fetch_add(1, Relaxed);
    c.bytes.fetch_add(body.len() as u64, Relaxed);
    StatusCode::OK
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: http-blackhole PORT");
    let counts = Arc::new(Counts::default());
    let app = Router::new()
        .route("/{*path}", post(hole))
        .route("/", post(hole))
        .with_state(counts.clone());
    serve::until_signal(port, app).await;
    eprintln!(
        "http-blackhole: {} requests, {} bytes",
        counts.requests.load(Relaxed),
        counts.bytes.load(Relaxed)
    );
}
