//! Forwards the plugin's `tracing` events to the host.
//!
//! `tracing`'s global subscriber lives in a static, and every plugin library has its own copy
//! of that static, so events emitted in plugin code would go nowhere. At initialisation the SDK
//! installs, inside the library, a subscriber that formats each event and hands it to the
//! host's callback. Events above the host's level are filtered here, before they cross.

use std::fmt::Write as _;
use std::sync::OnceLock;

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::ffi::{HostContext, LogEvent};

static HOST: OnceLock<(HostContext, &'static str)> = OnceLock::new();

fn level_code(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn level_filter(code: u8) -> LevelFilter {
    match code {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

struct ForwardToHost;

impl<S: Subscriber> Layer<S> for ForwardToHost {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some((host, plugin)) = HOST.get() else {
            return;
        };
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        visitor.message.push_str(&visitor.fields);
        let meta = event.metadata();
        (host.log)(&LogEvent {
            level: level_code(meta.level()),
            plugin: RStr::from_str(plugin),
            target: RStr::from_str(meta.target()),
            message: RStr::from_str(&visitor.message),
        });
    }
}

pub(crate) fn install(host: HostContext, plugin: &'static str) {
    if HOST.set((host, plugin)).is_err() {
        return; // initialised already (the host loaded this library once before)
    }
    let subscriber = tracing_subscriber::registry()
        .with(level_filter(host.max_level))
        .with(ForwardToHost);
    // Fails only if plugin code installed its own subscriber first; keep theirs.
    let _ = tracing::subscriber::set_global_default(subscriber);
}
