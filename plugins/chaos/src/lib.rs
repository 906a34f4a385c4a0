//! `chaos`: a source, transform and sink that fail on command, for testing the host's
//! policies. Not for production pipelines.
//!
//! Every component takes the same fault keys. Call numbers count from 1 per `counter` (default:
//! the component kind) across all instances in the process, so "panic on call 3" happens once
//! even when the host recreates the instance afterwards.
//!
//! ```yaml
//! sink:
//!   plugin: chaos
//!   config:
//!     path: out.txt              # sink: append values here (fsync), so tests can count them
//!     fail_calls: 3              # calls 1..=3 fail with a retriable error
//!     retry_after: 200ms         # …carrying this retry-after
//!     fail_probability: 0.3      # any call fails (retriable) with this probability
//!     seed: 7                    #   from this seed
//!     panic_on_call: 5           # call 5 panics
//!     panic_from_call: 5         # call 5 and every later call panics
//!     hang_on_call: 6            # call 6 sleeps for `hang_for` (default 1h)
//!     fatal_on_call: 9           # call 9 fails with a fatal error
//!     reject_where: { field: bad, eq: true }   # records matching are rejected
//!     finish_after: 20ms         # a begun batch is confirmed this long after it began
//!     lose_batch: 3              # call 3 writes nothing and its batch fails when finished
//! ```
//!
//! The sink keeps up to 64 batches in flight (`begin_write` appends, `finish_write` confirms
//! the oldest), so it exercises the host's window; the calls above count `write` and
//! `begin_write` calls, not `finish_write`.
//!
//! The source emits `count` records `{"seq":N}` (add `poison_every: K` to make every K-th
//! record not JSON) and resumes from its stored offset like `generate`. With
//! `instance_positions: true` its positions also name the instance that polled them, as AMQP
//! delivery tags do, and an acknowledgement of another instance's position fails the pipeline
//! (fatal): the host must acknowledge a batch only to the instance that polled it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use orbit_plugin_api::{
    export_plugin, Metrics, PluginBuilder, PluginError, Position, Record, Source, SourceBatch,
    SourceContext, Transform, TransformContext, TransformOutput,
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    counter: Option<String>,
    #[serde(default)]
    fail_calls: u64,
    #[serde(default, with = "humantime_serde")]
    retry_after: Option<Duration>,
    #[serde(default)]
    fail_probability: f64,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    panic_on_call: Option<u64>,
    /// Panics on this call and every one after it.
    #[serde(default)]
    panic_from_call: Option<u64>,
    #[serde(default)]
    hang_on_call: Option<u64>,
    #[serde(default = "one_hour", with = "humantime_serde")]
    hang_for: Duration,
    #[serde(default)]
    fatal_on_call: Option<u64>,
    #[serde(default)]
    reject_where: Option<Match>,
    // Source only.
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    poison_every: Option<u64>,
    #[serde(default)]
    instance_positions: bool,
    /// Listens on this address for the instance's life (as the http source does), refusing to
    /// open while another instance holds it.
    #[serde(default)]
    listen: Option<String>,
    // Sink only.
    #[serde(default)]
    pub(crate) path: Option<PathBuf>,
    /// Fails every k-th record of a batch (counting from 1) once, retriably, reporting those
    /// failures last first; the same record is written when it comes again.
    #[serde(default)]
    pub(crate) retry_once_every: Option<u64>,
    /// A begun batch is confirmed only this long after `begin_write`.
    #[serde(default, with = "humantime_serde")]
    pub(crate) finish_after: Option<Duration>,
    /// This call (a `begin_write` or `write`) appends nothing; its batch fails retriably when
    /// it is finished, after the batches begun before it.
    #[serde(default)]
    pub(crate) lose_batch: Option<u64>,
}

fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    field: String,
    eq: Value,
}

static CALLS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

fn next_call(counter: &str) -> u64 {
    let mut guard = CALLS.lock().unwrap_or_else(|e| e.into_inner());
    let n = guard
        .get_or_insert_with(HashMap::new)
        .entry(counter.to_string())
        .or_insert(0);
    *n += 1;
    *n
}

/// Faults injected so far per stage (`pipeline/stage`) and fault, across instances: the
/// `injected_faults` counter a stage reports never goes back when it is recreated.
static INJECTED: Mutex<Option<HashMap<(String, &'static str), u64>>> = Mutex::new(None);

pub(crate) struct Injector {
    pub(crate) faults: Faults,
    counter: String,
    rng: u64,
    metrics: Metrics,
    stage: String,
}

impl Injector {
    pub(crate) fn new(faults: Faults, kind: &str, metrics: Metrics, stage: String) -> Self {
        let counter = faults.counter.clone().unwrap_or_else(|| kind.to_string());
        let rng = faults.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Injector {
            faults,
            counter,
            rng,
            metrics,
            stage,
        }
    }

    /// Counts one injected fault and reports the stage's total (a plugin metric).
    pub(crate) fn injected(&self, fault: &'static str) {
        let total = {
            let mut guard = INJECTED.lock().unwrap_or_else(|e| e.into_inner());
            let n = guard
                .get_or_insert_with(HashMap::new)
                .entry((self.stage.clone(), fault))
                .or_insert(0);
            *n += 1;
            *n
        };
        self.metrics.counter_with(
            "injected_faults",
            "Faults the chaos plugin injected, by fault",
            &[("fault", fault)],
            total as f64,
        );
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: reproducible from the seed, good enough for fault injection.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Applies call-level faults; Ok means the call proceeds.
    pub(crate) fn before_call(&mut self) -> Result<u64, PluginError> {
        let call = next_call(&self.counter);
        if self.faults.panic_on_call == Some(call)
            || self.faults.panic_from_call.is_some_and(|n| call >= n)
        {
            self.injected("panic");
            panic!("chaos: panic on call {call}");
        }
        if self.faults.hang_on_call == Some(call) {
            self.injected("hang");
            tracing::warn!(call, "chaos: hanging");
            std::thread::sleep(self.faults.hang_for);
        }
        if self.faults.fatal_on_call == Some(call) {
            self.injected("fatal");
            return Err(PluginError::fatal(format!(
                "chaos: fatal error on call {call}"
            )));
        }
        let random_failure =
            self.faults.fail_probability > 0.0 && self.random() < self.faults.fail_probability;
        if call <= self.faults.fail_calls || random_failure {
            self.injected("retriable");
            let mut e = PluginError::retriable(format!("chaos: transient failure on call {call}"));
            if let Some(after) = self.faults.retry_after {
                e = e.with_retry_after(after);
            }
            return Err(e);
        }
        Ok(call)
    }

    pub(crate) fn rejects(&self, r: &Record) -> bool {
        let Some(m) = &self.faults.reject_where else {
            return false;
        };
        let Ok(v) = serde_json::from_slice::<Value>(r.value()) else {
            return false;
        };
        m.field
            .split('.')
            .try_fold(&v, |v, k| v.get(k))
            .is_some_and(|x| *x == m.eq)
    }
}

pub struct ChaosSource {
    injector: Injector,
    next: u64,
    count: u64,
    poison_every: Option<u64>,
    /// With `instance_positions`: this instance's number, the first 8 bytes of its positions.
    instance: Option<u64>,
    _listener: Option<std::net::TcpListener>,
}

/// Numbers of source instances in the process.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Source for ChaosSource {
    type Config = Faults;

    fn open(faults: Faults, ctx: SourceContext) -> Result<Self, PluginError> {
        // The sequence is the last 8 bytes, with or without an instance number before it.
        let next = ctx
            .offset("chaos", 0)
            .and_then(|b| b.get(b.len().checked_sub(8)?..)?.try_into().ok())
            .map(|b: [u8; 8]| u64::from_be_bytes(b) + 1)
            .unwrap_or(0);
        let instance = faults
            .instance_positions
            .then(|| INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let listener = match &faults.listen {
            Some(address) => Some(std::net::TcpListener::bind(address).map_err(|e| {
                PluginError::config(format!("chaos: cannot listen on {address}: {e}"))
            })?),
            None => None,
        };
        Ok(ChaosSource {
            _listener: listener,
            count: faults.count.unwrap_or(u64::MAX),
            poison_every: faults.poison_every.filter(|k| *k > 0),
            injector: Injector::new(
                faults,
                "source",
                ctx.metrics(),
                format!("{}/{}", ctx.pipeline, ctx.stage),
            ),
            next,
            instance,
        })
    }

    fn poll(
        &mut self,
        max_records: usize,
        _max_wait: Duration,
    ) -> Result<SourceBatch, PluginError> {
        self.injector.before_call()?;
        let n = (max_records as u64).min(self.count.saturating_sub(self.next));
        let mut batch = SourceBatch::with_capacity(n as usize);
        for _ in 0..n {
            let seq = self.next;
            let value = match self.poison_every {
                Some(k) if (seq + 1) % k == 0 => format!("poison {seq}"),
                _ => format!("{{\"seq\":{seq}}}"),
            };
            let mut offset = self
                .instance
                .map_or(Vec::new(), |i| i.to_be_bytes().to_vec());
            offset.extend_from_slice(&seq.to_be_bytes());
            batch.push(Record::new(value).with_position("chaos", 0, offset));
            self.next += 1;
        }
        if self.next >= self.count {
            batch.end_of_stream();
        }
        Ok(batch)
    }

    fn ack(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        let Some(me) = self.instance else {
            return Ok(());
        };
        for p in positions {
            let polled_by = p
                .offset
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            if polled_by != Some(me) {
                return Err(PluginError::fatal(format!(
                    "chaos: instance {me} was acknowledged a position polled by instance {polled_by:?}"
                )));
            }
        }
        Ok(())
    }
}

pub struct ChaosTransform {
    injector: Injector,
}

impl Transform for ChaosTransform {
    type Config = Faults;

    fn open(faults: Faults, ctx: TransformContext) -> Result<Self, PluginError> {
        Ok(ChaosTransform {
            injector: Injector::new(
                faults,
                "transform",
                ctx.metrics(),
                format!("{}/{}", ctx.pipeline, ctx.stage),
            ),
        })
    }

    fn process(&mut self, batch: &[Record], out: &mut TransformOutput) -> Result<(), PluginError> {
        self.injector.before_call()?;
        for (i, r) in batch.iter().enumerate() {
            if self.injector.rejects(r) {
                out.fail(
                    i,
                    PluginError::rejected("chaos: record matches reject_where"),
                );
            } else {
                out.push(r.clone());
            }
        }
        Ok(())
    }
}

mod sink;

pub use sink::ChaosSink;

export_plugin!(PluginBuilder::new("chaos", env!("CARGO_PKG_VERSION"))
    .source::<ChaosSource>("chaos", "test source that fails on command")
    .transform::<ChaosTransform>("chaos", "test transform that fails on command")
    .pipelined_sink::<ChaosSink>("chaos", "test sink that fails on command"));
