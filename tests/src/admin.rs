//! Talking to a running host's admin server over HTTP (ureq, a real client) and reading its
//! `/metrics` with a Prometheus text parser.

use std::time::Duration;

use serde_json::Value;

use crate::{wait_for_explained, Scratch};

/// The admin server of a host started with `--admin 127.0.0.1:0`.
pub struct Admin {
    pub base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Admin {
    /// Waits for the host's `admin listening on ADDR` line in the log file `log`.
    pub fn from_log(s: &Scratch, log: &str) -> Admin {
        let mut addr = None;
        wait_for_explained(
            "the admin server to listen",
            Duration::from_secs(60),
            || {
                addr = s
                    .read(log)
                    .lines()
                    .find_map(|l| l.split("admin listening on ").nth(1))
                    .map(|a| a.trim().to_string());
                addr.is_some()
            },
            || s.tail(log, 20),
        );
        Admin::at(&addr.expect("found"))
    }

    pub fn at(addr: &str) -> Admin {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Admin {
            base: format!("http://{addr}"),
            agent,
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Admin {
        self.token = Some(token.to_string());
        self
    }

    fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut r = r.expect("the admin server answers");
        Answer {
            status: r.status().as_u16(),
            body: r.body_mut().read_to_string().expect("a text body"),
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        Self::answer(self.agent.get(format!("{}{path}", self.base)).call())
    }

    /// A mutating request (`PUT`, `POST`, `DELETE`, `PATCH`) with the token, if any.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req.body(body.unwrap_or("").to_string()).expect("a request");
        Self::answer(self.agent.run(req))
    }

    pub fn state(&self, pipeline: &str) -> String {
        let a = self.get(&format!("/pipelines/{pipeline}/status"));
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()["state"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until `pipeline` is in `state`.
    pub fn wait_state(&self, pipeline: &str, state: &str, timeout: Duration) {
        let last = std::cell::RefCell::new(String::new());
        crate::wait_for_explained(
            &format!("pipeline `{pipeline}` to be {state}"),
            timeout,
            || {
                let body = self.get(&format!("/pipelines/{pipeline}/status")).body;
                let ok = serde_json::from_str::<Value>(&body)
                    .is_ok_and(|v| v["state"].as_str() == Some(state));
                *last.borrow_mut() = body;
                ok
            },
            || last.borrow().clone(),
        );
    }

    pub fn metrics(&self) -> Metrics {
        let a = self.get("/metrics");
        assert_eq!(a.status, 200, "{}", a.body);
        let lines = a.body.lines().map(|l| Ok(l.to_string()));
        Metrics(prometheus_parse::Scrape::parse(lines).expect("Prometheus text"))
    }
}

/// A parsed `/metrics` page.
pub struct Metrics(pub prometheus_parse::Scrape);

impl Metrics {
    /// The value of the sample `name` whose labels include every pair of `labels`; `None` when
    /// there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name} is not a single value: {other:?}"),
            })
    }

    /// The buckets of the histogram `name` with `labels`: (upper bound, cumulative count).
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .find_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) => {
                    Some(b.iter().map(|c| (c.less_than, c.count)).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    }
}
