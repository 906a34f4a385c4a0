//! Baselines for bench/rabbitmq.sh: a bare lapin publisher and consumer doing what the Orbit
//! pipelines do, with the same settings.
//!
//!   baseline-rabbitmq purge QUEUE
//!   baseline-rabbitmq publish QUEUE COUNT SIZE WINDOW [pipelined]  # persistent, mandatory, confirms
//!   baseline-rabbitmq consume QUEUE COUNT FILE PREFETCH BATCH  # file + fsync, then ack multiple
//!
//! Prints messages per second, connecting included (as in Orbit's own figure).

#[path = "rt.rs"]
mod rt;

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use futures_lite::StreamExt as _;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn main() {
    // LAPIN_WORKERS=N runs lapin on a multi-thread runtime with N workers (the consumer
    // loop on the main thread, as a plugin's calls are), to compare with the default
    // current-thread runtime.
    let rt = rt::runtime("LAPIN_WORKERS");
    rt.block_on(amain());
}

async fn amain() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The clock includes connecting, as Orbit's own figure does.
    let start = Instant::now();
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let queue = args[1].as_str();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    match args[0].as_str() {
        "purge" => {
            ch.queue_purge(queue.into(), QueuePurgeOptions::default())
                .await
                .expect("purge");
        }
        "publish" => {
            let count: usize = args[2].parse().unwrap();
            let size: usize = args[3].parse().unwrap();
            let window: usize = args[4].parse().unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let payload = vec![b'x'; size];
            // `pipelined`: poll each publish once (lapin queues its frames and takes its
            // delivery tag then) and await the socket writes later, as Orbit's sink does;
            // otherwise the usual loop that awaits each publish before the next.
            let pipelined = args.get(5).map(String::as_str) == Some("pipelined");
            let mut pending = VecDeque::new();
            for _ in 0..count {
                let mut publish = Box::pin(ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &payload,
                    BasicProperties::default().with_delivery_mode(2),
                ));
                if pipelined {
                    match futures_lite::future::poll_once(&mut publish).await {
                        Some(written) => pending.push_back(InFlight::Written(written.unwrap())),
                        None => pending.push_back(InFlight::Writing(publish)),
                    }
                } else {
                    pending.push_back(InFlight::Written(publish.await.unwrap()));
                }
                if pending.len() >= window {
                    confirmed(pending.pop_front().unwrap()).await;
                }
            }
            for c in pending {
                confirmed(c).await;
            }
            println!("{:.0}", count as f64 / start.elapsed().as_secs_f64());
        }
        "consume" => {
            let count: usize = args[2].parse().unwrap();
            let mut file = std::fs::File::create(&args[3]).unwrap();
            let prefetch: u16 = args[4].parse().unwrap();
            let batch: usize = args[5].parse().unwrap();
            ch.basic_qos(prefetch, BasicQosOptions::default())
                .await
                .unwrap();
            let mut consumer = ch
                .basic_consume(
                    queue.into(),
                    "bench".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let mut done = 0;
            let mut buf = Vec::new();
            while done < count {
                let mut last = 0;
                let mut n = 0;
                buf.clear();
                while n < batch && done + n < count {
                    let wait = if n == 0 {
                        Duration::from_secs(30)
                    } else {
                        Duration::ZERO
                    };
                    match tokio::time::timeout(wait, consumer.next()).await {
                        Ok(Some(Ok(d))) => {
                            buf.extend_from_slice(&d.data);
                            buf.push(b'\n');
                            last = d.delivery_tag;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                file.write_all(&buf).unwrap();
                file.sync_data().unwrap();
                ch.basic_ack(last, BasicAckOptions { multiple: true })
                    .await
                    .unwrap();
                done += n;
            }
            println!("{:.0}", count as f64 / start.elapsed().as_secs_f64());
        }
        other => panic!("unknown mode {other}"),
    }
    let _ = conn.close(200, "done".into()).await;
}

/// A publish whose frames are still being written, or written and awaiting its confirm.
enum InFlight<F, C> {
    Writing(std::pin::Pin<Box<F>>),
    Written(C),
}

async fn confirmed<F, C>(publish: InFlight<F, C>)
where
    F: std::future::Future<Output = lapin::Result<C>>,
    C: std::future::Future<Output = lapin::Result<lapin::Confirmation>>,
{
    let confirm = match publish {
        InFlight::Writing(writing) => writing.await.unwrap(),
        InFlight::Written(written) => written,
    };
    confirm.await.unwrap();
}
