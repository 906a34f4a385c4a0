//! Errors a plugin returns to the host. The kind decides what the host does with it.

use abi_stable::{
    std_types::{ROption, RString},
    StableAbi,
};

/// What the host does with an error (DESIGN.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Transient: back off and try the same call again. Counts towards the circuit breaker.
    Retriable,
    /// The input itself is bad: never retried; the record goes to the dead-letter sink.
    Rejected,
    /// The configuration is wrong: stop and tell the user.
    Config,
    /// Anything else that cannot be retried: stop the stage.
    Fatal,
    /// The plugin panicked (set by the SDK, not by plugin code): recreate the instance.
    Panicked,
}

impl ErrorKind {
    fn code(self) -> u8 {
        match self {
            ErrorKind::Retriable => 1,
            ErrorKind::Rejected => 2,
            ErrorKind::Config => 3,
            ErrorKind::Fatal => 4,
            ErrorKind::Panicked => 5,
        }
    }

    /// Unknown codes (from a newer plugin-api) are fatal: the host must not guess.
    fn from_code(code: u8) -> ErrorKind {
        match code {
            1 => ErrorKind::Retriable,
            2 => ErrorKind::Rejected,
            3 => ErrorKind::Config,
            5 => ErrorKind::Panicked,
            _ => ErrorKind::Fatal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Retriable => "retriable",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Config => "config",
            ErrorKind::Fatal => "fatal",
            ErrorKind::Panicked => "panicked",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error crossing the boundary. The kind travels as a code so that a kind added later
/// reaches an older host as `Fatal` instead of as undefined behaviour.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct PluginError {
    kind: u8,
    message: RString,
    retry_after_ms: ROption<u64>,
}

impl PluginError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind: kind.code(),
            message: RString::from(message.into()),
            retry_after_ms: ROption::RNone,
        }
    }
    /// A transient failure (connection lost, broker busy): the host retries with backoff.
    pub fn retriable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retriable, message)
    }
    /// Bad input that will never succeed: the record is dead-lettered.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Rejected, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }
    pub(crate) fn panicked(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Panicked, message)
    }
    /// Ask the host to wait at least this long before retrying (e.g. HTTP `Retry-After`).
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after_ms = ROption::RSome(after.as_millis().min(u64::MAX as u128) as u64);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        ErrorKind::from_code(self.kind)
    }
    pub fn message(&self) -> &str {
        self.message.as_str()
    }
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after_ms
            .into_option()
            .map(std::time::Duration::from_millis)
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error: {}", self.kind(), self.message)
    }
}

impl std::error::Error for PluginError {}

/// A config a plugin refused, with the path of the offending key inside its `config:` block
/// (`brokers`, `tls.ca_file`, or empty for the block as a whole) so that the host can point at
/// the line in the pipeline file.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: RString,
    pub message: RString,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: RString::from(path.into()),
            message: RString::from(message.into()),
        }
    }

    /// Checks a size or count against its bounds at validation, so that a value which parses
    /// (`18446744073709551615`) never reaches an allocation or a channel that would panic.
    pub fn check_range(
        path: &str,
        value: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<(), ConfigError> {
        if range.contains(&value) {
            return Ok(());
        }
        Err(ConfigError::new(
            path,
            format!(
                "{value} is out of range: it must be from {} to {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "`{}`: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for PluginError {
    fn from(e: ConfigError) -> Self {
        PluginError::config(e.to_string())
    }
}
