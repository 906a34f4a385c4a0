//! The baseline for bench/generate-json-file.sh: the work of the pipeline
//! generate → json (set one field) → file, as one hand-written single-threaded loop.
//! Same template, same JSON library and settings, same batch size and fsync per batch.
//!
//! Usage: baseline-generate-json-file COUNT OUTPUT_FILE

use std::io::Write;
use std::time::{Instant, SystemTime};

/// Must match bench/generate-json-file.yaml.
const TEMPLATE: (&str, &str, &str) = (
    r#"{"id":"#,
    r#","ts":""#,
    r#"","customer":"cust-000123","status":"paid","currency":"EUR","amount":1234.56,"items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}],"note":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"}"#,
);
const BATCH: u64 = 1000;

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().and_then(|a| a.parse().ok()).expect("COUNT");
    let path = args.next().expect("OUTPUT_FILE");
    let mut file = std::fs::File::create(&path).expect("create output");
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut seq = 0;
    while seq < count {
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        buf.clear();
        let end = (seq + BATCH).min(count);
        for s in seq..end {
            let mut value = Vec::with_capacity(256);
            value.extend_from_slice(TEMPLATE.0.as_bytes());
            value.extend_from_slice(s.to_string().as_bytes());
            value.extend_from_slice(TEMPLATE.1.as_bytes());
            value.extend_from_slice(ts.as_bytes());
            value.extend_from_slice(TEMPLATE.2.as_bytes());
            let mut doc: serde_json::Value = serde_json::from_slice(&value).expect("valid JSON");
            doc.as_object_mut()
                .expect("an object")
                .insert("processed".into(), serde_json::Value::Bool(true));
            serde_json::to_writer(&mut buf, &doc).expect("serialize");
            buf.push(b'\n');
        }
        file.write_all(&buf).expect("write");
        file.sync_data().expect("fsync");
        seq = end;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{:.0}", count as f64 / secs);
}
