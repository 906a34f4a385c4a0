//! The load generator of bench/latency.sh: POSTs one JSON record of 100 bytes per request and
//! measures each request's latency until its answer is read in full.
//!
//!   latency-load open URL RATE SECS       # open loop: RATE requests/s on schedule for SECS
//!   latency-load closed URL CLIENTS SECS  # closed loop: CLIENTS keep-alive clients, back to back
//!
//! Before measuring, each client sends WARMUP requests one by one (connections opened, the
//! server's first write done), which are not measured but are counted in `answered_200`, the
//! number the script compares with the lines written. Prints one line of key=value pairs:
//!
//!   open requests=1000 answered_200=1010 errors=0 rps=100.0 p50_ms=0.412 p99_ms=1.230 max_ms=3.100
//!
//! Exits with 1 if any answer was not 200 (the first failure is printed on stderr).

use std::error::Error as _;
use std::time::{Duration, Instant};

/// Requests each client sends before measuring.
const WARMUP: u64 = 10;
/// Size of every request body (one JSON object).
const RECORD_BYTES: usize = 100;

/// `{"client":C,"seq":N,"pad":"xx…"}`, padded to RECORD_BYTES so every request is the same size.
fn record(client: usize, seq: u64) -> String {
    let mut s = format!("{{\"client\":{client},\"seq\":{seq},\"pad\":\"");
    let pad = RECORD_BYTES.saturating_sub(s.len() + 2);
    s.push_str(&"x".repeat(pad));
    s.push_str("\"}");
    s
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        // A proxy from the environment must not sit between us and 127.0.0.1.
        .no_proxy()
        // Longer than the http source's `delivery_timeout` (30 s), so that a late delivery is
        // seen as the 503 the server sends rather than as our own timeout.
        .timeout(Duration::from_secs(60))
        // Shorter than the http source's `read_timeout` (10 s), after which it closes an idle
        // keep-alive connection: we drop it first instead of racing the server's close.
        .pool_idle_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .build()
        .expect("HTTP client")
}

/// One POST; the latency runs from `from` (its scheduled time in the open loop) until the whole
/// answer was read. Anything but 200 is an error.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: String,
    from: Instant,
) -> Result<Duration, String> {
    let answer = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = answer.status();
    let text = answer.bytes().await.map_err(|e| describe(&e))?;
    let took = from.elapsed();
    if status != reqwest::StatusCode::OK {
        let text = String::from_utf8_lossy(&text[..text.len().min(300)]).into_owned();
        return Err(format!("HTTP {status}: {text}"));
    }
    Ok(took)
}

/// reqwest's message alone ("error sending request") hides the cause; add the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

async fn warm_up(client: &reqwest::Client, url: &str, id: usize) -> Result<(), String> {
    for seq in 0..WARMUP {
        post(client, url, record(id, seq), Instant::now()).await?;
    }
    Ok(())
}

/// What one mode measured: latencies of the requests answered 200 and the failures.
struct Outcome {
    latencies: Vec<Duration>,
    failures: Vec<String>,
    elapsed: Duration,
    warmed_up: u64,
}

impl Outcome {
    fn from_results(
        results: Vec<Result<Duration, String>>,
        elapsed: Duration,
        warmed_up: u64,
    ) -> Self {
        let (mut latencies, mut failures) = (Vec::new(), Vec::new());
        for r in results {
            match r {
                Ok(d) => latencies.push(d),
                Err(e) => failures.push(e),
            }
        }
        Outcome {
            latencies,
            failures,
            elapsed,
            warmed_up,
        }
    }

    /// Prints the summary line; returns whether every request got 200.
    fn report(mut self, mode: &str) -> bool {
        self.latencies.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // Nearest rank: the smallest latency at or above which a fraction q of requests lie.
        let rank = |q: f64| {
            let n = self.latencies.len();
            let i = ((q * n as f64).ceil() as usize).clamp(1, n.max(1)) - 1;
            self.latencies.get(i).copied().map_or(f64::NAN, ms)
        };
        let requests = self.latencies.len() + self.failures.len();
        println!(
            "{mode} requests={requests} answered_200={} errors={} rps={:.1} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
            self.latencies.len() as u64 + self.warmed_up,
            self.failures.len(),
            self.latencies.len() as f64 / self.elapsed.as_secs_f64(),
            rank(0.50),
            rank(0.99),
            rank(1.0),
        );
        if let Some(first) = self.failures.first() {
            eprintln!(
                "latency-load: {} of {requests} requests failed; first: {first}",
                self.failures.len()
            );
        }
        self.failures.is_empty() && requests > 0
    }
}

/// RATE requests/s for SECS, each sent at its slot whether or not earlier ones were answered
/// (a busy connection makes the pool open another), and timed from its slot: a stalled server
/// then shows in the figures instead of silently lowering the load (coordinated omission).
fn open_loop(url: String, rate: f64, secs: f64) -> Result<Outcome, String> {
    // One thread serves every request: 100 requests/s needs little, and it leaves the second
    // core to the server under test.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = client();
    rt.block_on(warm_up(&client, &url, 0))?;
    let slots = (rate * secs).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let handle = rt.handle().clone();
    let start = Instant::now();
    let results = rt.block_on(async move {
        // tokio's timer has 1 ms granularity, which would add up to 1 ms to every request; the
        // slots are kept by a plain thread sleeping (kernel high-resolution timers) instead.
        let schedule = tokio::task::spawn_blocking(move || {
            let mut sent = Vec::with_capacity(slots as usize);
            for i in 0..slots {
                let at = start + period.mul_f64(i as f64);
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (client, url) = (client.clone(), url.clone());
                let body = record(0, WARMUP + i);
                sent.push(handle.spawn(async move { post(&client, &url, body, at).await }));
            }
            sent
        });
        let mut results = Vec::with_capacity(slots as usize);
        for request in schedule.await.expect("scheduler") {
            results.push(request.await.expect("request task"));
        }
        results
    });
    Ok(Outcome::from_results(results, start.elapsed(), WARMUP))
}

/// CLIENTS clients, each with its own connection, each sending its next request as soon as the
/// previous one is answered, for SECS: the most the server sustains with that many in flight.
fn closed_loop(url: String, clients: usize, secs: f64) -> Result<Outcome, String> {
    // Two workers so that the load generator is not what limits the rate.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let clients: Vec<reqwest::Client> = (0..clients).map(|_| client()).collect();
    rt.block_on(async {
        let warm = clients
            .iter()
            .enumerate()
            .map(|(id, c)| warm_up(c, &url, id));
        futures_util::future::try_join_all(warm).await
    })?;
    let warmed_up = WARMUP * clients.len() as u64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let results = rt.block_on(async {
        let loops = clients.into_iter().enumerate().map(|(id, client)| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                let mut seq = WARMUP;
                while Instant::now() < end {
                    results.push(post(&client, &url, record(id, seq), Instant::now()).await);
                    seq += 1;
                }
                results
            })
        });
        let mut all = Vec::new();
        for results in futures_util::future::join_all(loops).await {
            all.extend(results.expect("client task"));
        }
        all
    });
    Ok(Outcome::from_results(results, start.elapsed(), warmed_up))
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: latency-load open URL RATE SECS | latency-load closed URL CLIENTS SECS";
    let [mode, url, n, secs] = a.as_slice() else {
        panic!("{usage}");
    };
    let secs: f64 = secs.parse().expect(usage);
    let outcome = match mode.as_str() {
        "open" => open_loop(url.clone(), n.parse().expect(usage), secs),
        "closed" => closed_loop(url.clone(), n.parse().expect(usage), secs),
        _ => panic!("{usage}"),
    };
    let ok = match outcome {
        Ok(o) => o.report(mode),
        Err(e) => {
            eprintln!("latency-load: warm-up failed: {e}");
            false
        }
    };
    std::process::exit(if ok { 0 } else { 1 });
}
