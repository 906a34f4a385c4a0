//! The cost of calling a plugin: one `write` of a batch to the `blackhole` sink (it only
//! counts) through the stable ABI, bare and through the host's `StageInstance::call` (a hop to
//! the instance's runner thread and back), beside a plain Rust `dyn` call doing the same
//! nothing. Per-record cost = time / batch size.
//!
//! Needs the release plugins: `cargo build --release --workspace && cargo bench -p orbit-host`.

use std::hint::black_box;
use std::path::PathBuf;

use abi_stable::std_types::{RSlice, RString, RVec};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use orbit_host::config::{PolicySpec, RateLimitSpec};
use orbit_host::plugin::load_library;
use orbit_host::plugin::{StageId, StageInstance};
use orbit_host::policy::{PolicyStack, ResolvedPolicy};
use orbit_plugin_api::ffi::{SinkBox, StageContextFfi};
use orbit_plugin_api::Record;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn blackhole_sink() -> SinkBox {
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release/liborbit_plugin_generate.so");
    let lib = load_library(&lib).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `cargo build --release --workspace` first",
            lib.display()
        )
    });
    (lib.module.create_sink())(
        "blackhole".into(),
        StageContextFfi {
            pipeline: RString::from("bench"),
            stage: RString::from("sink"),
            config: RString::from("{}"),
        },
    )
    .into_result()
    .expect("blackhole sink")
}

fn batch(n: usize) -> RVec<Record> {
    (0..n)
        .map(|i| Record::new(vec![b'x'; 250]).with_position("bench", 0, (i as u64).to_be_bytes()))
        .collect()
}

trait PlainSink {
    fn write(&mut self, batch: &[Record]) -> usize;
}

struct Noop;

impl PlainSink for Noop {
    #[inline(never)]
    fn write(&mut self, batch: &[Record]) -> usize {
        batch.len()
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sink_write_call");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let mut sink = blackhole_sink();
    let mut staged = rt.block_on(StageInstance::with_instance(
        StageId {
            stage: "sink".into(),
            plugin: "blackhole".into(),
        },
        blackhole_sink(),
        std::sync::Arc::new(|| Ok(blackhole_sink())),
    ));
    let mut plain: Box<dyn PlainSink> = Box::new(Noop);
    for n in [1usize, 64, 1024] {
        let records = batch(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("rust_dyn", n), &records, |b, r| {
            b.iter(|| black_box(plain.write(black_box(r.as_slice()))))
        });
        group.bench_with_input(BenchmarkId::new("abi_stable", n), &records, |b, r| {
            b.iter(|| black_box(sink.write(RSlice::from_slice(black_box(r.as_slice())))))
        });
        let shared = std::sync::Arc::new(records.clone());
        // As the pipeline does it: awaited from a task on the runtime, one call after another.
        group.bench_with_input(BenchmarkId::new("host_stage_call", n), &shared, |b, r| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        let r = r.clone();
                        black_box(
                            staged
                                .call(move |s| {
                                    Ok(s.write(RSlice::from_slice(r.as_slice())).is_ok())
                                })
                                .await
                                .expect("blackhole accepts"),
                        );
                    }
                    start.elapsed()
                })
            })
        });
        // The full policy stack (retry, breaker, rate limit, timeout) around the same call,
        // with nothing failing and a rate limit far above what is offered.
        let policy = ResolvedPolicy::resolve(&PolicySpec {
            rate_limit: Some(RateLimitSpec {
                records_per_second: Some(1e9),
                burst: Some(1_000_000),
                ..RateLimitSpec::default()
            }),
            timeout: Some(Duration::from_secs(60)),
            ..PolicySpec::default()
        });
        let mut stack = PolicyStack::new(&policy, Default::default());
        let stop = CancellationToken::new();
        group.bench_with_input(
            BenchmarkId::new("host_policy_stack_call", n),
            &shared,
            |b, r| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = std::time::Instant::now();
                        for _ in 0..iters {
                            let r = r.clone();
                            black_box(
                                stack
                                    .call(&mut staged, r.len(), &stop, move |s| {
                                        s.write(RSlice::from_slice(r.as_slice())).into_result()
                                    })
                                    .await
                                    .map(|(outcome, _attempts)| outcome.failures.len())
                                    .expect("blackhole accepts"),
                            );
                        }
                        start.elapsed()
                    })
                })
            },
        );
    }
    group.finish();
}

/// The layers alone, without the plugin call and the blocking-pool hop they wrap: what each
/// adds per call (and so per record at a given batch size).
fn layers(c: &mut Criterion) {
    use orbit_host::policy::breaker::{BreakerPolicy, CircuitBreaker};
    use orbit_host::policy::rate_limit::{OnLimit, RateLimitPolicy, RateLimiter};
    use orbit_host::policy::retry::RetryPolicy;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("policy_layer");
    let mut breaker = CircuitBreaker::new(BreakerPolicy::default());
    group.bench_function("circuit_breaker", |b| {
        b.iter(|| {
            let now = std::time::Instant::now();
            black_box(breaker.before_call(now).ok());
            black_box(breaker.on_success());
        })
    });
    let retry = RetryPolicy::default();
    group.bench_function("retry_decision", |b| {
        b.iter(|| black_box(retry.may_retry(black_box(1), Duration::ZERO)))
    });
    group.bench_function("timeout", |b| {
        b.iter(|| {
            rt.block_on(orbit_host::policy::timeout::within(
                Some(Duration::from_secs(60)),
                std::future::ready(1),
            ))
        })
    });
    let limiter = RateLimiter::new(&RateLimitPolicy {
        records_per_second: Some(1e9),
        batches_per_second: None,
        burst: Some(1_000_000),
        on_limit: OnLimit::Wait,
    })
    .unwrap();
    for n in [1usize, 64, 1024] {
        group.bench_with_input(BenchmarkId::new("rate_limit", n), &n, |b, &n| {
            b.iter(|| rt.block_on(limiter.admit(black_box(n))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, layers);
criterion_main!(benches);
