//! The admin API on arbitrary requests: method, path and query, token and body, against a
//! host with a token set and no pipelines.
//!
//! Properties beyond "does not panic": no 5xx; a mutating request without the token is 401
//! and changes nothing; every error is a JSON object with `error` and `hint`.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use orbit_host::admin;
use orbit_host::supervisor::{HostSettings, Supervisor};
use orbit_host::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";

#[derive(Debug, Arbitrary)]
struct Input {
    method: u8,
    path: String,
    /// 0: none, 1: the right token, 2: `auth` as the header's value.
    auth_kind: u8,
    auth: String,
    json: bool,
    body: Vec<u8>,
}

const METHODS: [Method; 7] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn supervisor() -> &'static Supervisor {
    static SUP: OnceLock<Supervisor> = OnceLock::new();
    SUP.get_or_init(|| {
        let state = std::env::temp_dir().join(format!("orbit-fuzz-{}", std::process::id()));
        let settings = HostSettings {
            state_dir: state,
            grace: Duration::from_secs(1),
            progress_every: Duration::ZERO,
        };
        let _guard = runtime().enter();
        Supervisor::new(settings, Telemetry::new(), CancellationToken::new())
    })
}

fuzz_target!(|input: Input| {
    let method = METHODS[usize::from(input.method) % METHODS.len()].clone();
    let mut request = Request::builder().method(method.clone()).uri(&input.path);
    let authorized = match input.auth_kind % 3 {
        0 => false,
        1 => {
            request = request.header("authorization", format!("Bearer {TOKEN}"));
            true
        }
        _ => {
            request = request.header("authorization", input.auth.as_str());
            input.auth == format!("Bearer {TOKEN}")
        }
    };
    if input.json {
        request = request.header("content-type", "application/json");
    }
    let Ok(request) = request.body(Body::from(input.body)) else {
        return; // not a request the HTTP layer would have parsed
    };
    let app = admin::app(supervisor().clone(), Some(TOKEN.to_string()));
    runtime().block_on(async move {
        let response = app
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        assert!(
            !status.is_server_error(),
            "{method} {}: {status}",
            input.path
        );
        let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
        if mutating && !authorized {
            assert_eq!(
                status.as_u16(),
                401,
                "{method} {} without the token",
                input.path
            );
        }
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        if (status.is_client_error()) && method != Method::HEAD {
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {body:?}"));
            assert!(v.get("error").is_some() && v.get("hint").is_some(), "{v}");
        }
    });
});
