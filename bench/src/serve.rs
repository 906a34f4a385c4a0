//! Serving a benchmark's axum app on 127.0.0.1 until SIGTERM or Ctrl-C (shared by the bins
//! under src/bin through `#[path]`).

/// Serves `app` on 127.0.0.1:`port` until SIGTERM or Ctrl-C; panics on a bind failure.
pub async fn until_signal(port: u16, app: axum::Router) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
        .expect("serve");
}
