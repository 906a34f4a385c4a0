//! The baseline for bench/http.sh: a bare reqwest loop doing what `generate → http sink` does
//! with the same settings: records built from the same template, batches of BATCH records, each
//! split into JSON-array requests of CHUNK records sent CONCURRENCY at a time, the next batch
//! after the previous one's answers (as the host calls the sink one batch at a time).
//!
//!   baseline-http URL COUNT BATCH CHUNK CONCURRENCY PAD
//!
//! Prints records per second.

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt as _};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let url = a[0].clone();
    let count: u64 = a[1].parse().unwrap();
    let batch: u64 = a[2].parse().unwrap();
    let chunk: usize = a[3].parse().unwrap();
    let concurrency: usize = a[4].parse().unwrap();
    let pad = "x".repeat(a[5].parse().unwrap());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(concurrency * 2)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < count {
        let n = batch.min(count - seq);
        let values: Vec<String> = (seq..seq + n)
            .map(|s| format!("{{\"seq\":{s},\"pad\":\"{pad}\"}}"))
            .collect();
        seq += n;
        let bodies: Vec<Vec<u8>> = values
            .chunks(chunk)
            .map(|c| {
                let mut body = Vec::with_capacity(c.iter().map(|v| v.len() + 1).sum::<usize>() + 2);
                body.push(b'[');
                for (i, v) in c.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(v.as_bytes());
                }
                body.push(b']');
                body
            })
            .collect();
        let results: Vec<bool> = stream::iter(bodies.into_iter().map(|b| {
            let req = client
                .post(&url)
                .header("content-type", "application/json")
                .body(b);
            async move {
                match req.send().await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let _ = r.bytes().await;
                        ok
                    }
                    Err(_) => false,
                }
            }
        }))
        .buffer_unordered(concurrency)
        .collect()
        .await;
        assert!(results.iter().all(|&ok| ok), "a request failed");
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    println!("{rate:.0}");
}
