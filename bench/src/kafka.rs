//! Bare rdkafka baselines for bench/kafka.sh:
//!
//! * `fill BROKERS TOPIC COUNT SIZE`: produce COUNT records of SIZE bytes (keyed) and wait.
//! * `relay BROKERS IN OUT COUNT`: a BaseConsumer in a fresh group reading IN from the start,
//!   producing every record to OUT with an idempotent producer (acks=all, linger 5 ms) — the
//!   settings the Orbit sink uses — until COUNT records were delivered; prints records/s.
//! * `count BROKERS TOPIC`: the records in TOPIC (sum of the partitions' watermarks).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

fn send(p: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                p.poll(Duration::from_millis(1));
                record = back;
            }
        }
    }
}

fn count(brokers: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return 0;
    };
    md.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .filter_map(|p| {
            c.fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .ok()
        })
        .map(|(l, h)| h - l)
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(1) {
        "fill" => {
            let (brokers, topic) = (arg(2), arg(3));
            let n: usize = arg(4).parse().expect("COUNT");
            let size: usize = arg(5).parse().expect("SIZE");
            let p = producer(brokers);
            let value = vec![b'x'; size];
            for i in 0..n {
                let key = format!("k{}", i % 1000);
                send(
                    &p,
                    BaseRecord::to(topic)
                        .key(key.as_bytes())
                        .payload(&value[..]),
                );
            }
            p.flush(Duration::from_secs(120)).expect("flushed");
        }
        "relay" => {
            let (brokers, input, output) = (arg(2), arg(3), arg(4));
            let n: usize = arg(5).parse().expect("COUNT");
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", format!("bare-relay-{}", std::process::id()))
                .set("auto.offset.reset", "earliest")
                .create()
                .expect("consumer");
            c.subscribe(&[input]).expect("subscribe");
            let p = producer(brokers);
            let started = Instant::now();
            let mut relayed = 0;
            while relayed < n {
                match c.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let mut r = BaseRecord::to(output).payload(m.payload().unwrap_or_default());
                        if let Some(k) = m.key() {
                            r = r.key(k);
                        }
                        send(&p, r);
                        relayed += 1;
                        p.poll(Duration::ZERO);
                    }
                    Some(Err(e)) => eprintln!("consumer: {e}"),
                    None => {}
                }
            }
            p.flush(Duration::from_secs(120)).expect("flushed");
            let secs = started.elapsed().as_secs_f64();
            println!("{:.0}", n as f64 / secs);
        }
        "count" => println!("{}", count(arg(2), arg(3))),
        _ => {
            eprintln!("usage: baseline-kafka fill|relay|count ...");
            std::process::exit(2);
        }
    }
}
