//! Loading a pipeline file: limits, placeholders, YAML, substitution, typed spec, checks.

use std::path::{Path, PathBuf};

use super::interpolate::{placehold, InterpolationError, Placeheld, Substituted};
use super::{diagnostic, limits, Diagnostic, KeyPositions, PipelineSpec, Tolerance};
use super::{StageRole, MAX_BATCH_BUFFER, MAX_BATCH_RECORDS, MAX_SINK_IN_FLIGHT};

/// A parsed pipeline file, kept with what is needed to point at its keys later.
#[derive(Debug)]
pub struct PipelineFile {
    pub path: PathBuf,
    pub spec: PipelineSpec,
    locator: Locator,
}

/// What maps a key of the document back to the file: positions and substitutions.
#[derive(Debug)]
struct Locator {
    path: PathBuf,
    placeheld: Placeheld,
    substituted: Substituted,
    positions: KeyPositions,
}

impl PipelineFile {
    /// Reads, interpolates from the process environment, parses and checks a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineFile, Diagnostic> {
        let text = limits::read(path)?;
        Self::parse(path, &text, |name| std::env::var(name).ok())
    }

    /// As [`PipelineFile::load`], from text already read, with a given environment.
    ///
    /// Text → placeholders for `${…}` → YAML document → variables substituted into its strings
    /// → typed [`PipelineSpec`] (strings read as numbers where one is wanted; unknown keys are
    /// errors) → checks serde cannot express.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PipelineFile, Diagnostic> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // YAML counts a lone CR as a line break and so do editors; the rest of the loader
        // (key positions, column mapping) counts LF. One convention for all: LF.
        let lf;
        let text = if text.contains('\r') {
            lf = text.replace("\r\n", "\n").replace('\r', "\n");
            lf.as_str()
        } else {
            text
        };
        Self::parse_lf(path, text, env).map_err(|mut d| {
            if let (Some(line), Some(column)) = (d.line, d.column) {
                let (line, column) = within_text(text, line, column);
                (d.line, d.column) = (Some(line), Some(column));
            }
            d
        })
    }

    fn parse_lf(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PipelineFile, Diagnostic> {
        let placeheld = placehold(text);
        limits::check_depth(path, &placeheld.text).map_err(|mut d| {
            if let (Some(line), Some(column)) = (d.line, d.column) {
                d.column = Some(placeheld.original_column(line, column));
            }
            d
        })?;
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&placeheld.text).map_err(|e| {
            let raw = e.location().map(|l| (l.line(), l.column()));
            let column = |line, column| placeheld.original_column(line, column);
            Diagnostic {
                file: path.to_path_buf(),
                line: raw.map(|a| a.0),
                column: raw.map(|(l, c)| column(l, c)),
                key: None,
                message: diagnostic::serde_yaml_message(&e.to_string(), raw, column),
                hint: "fix the YAML syntax at that position".into(),
            }
        })?;
        let substituted = placeheld.substitute(&mut doc, &env).map_err(
            |InterpolationError {
                 line,
                 column,
                 key,
                 message,
                 hint,
             }| Diagnostic {
                file: path.to_path_buf(),
                line: Some(line),
                column: Some(column),
                key,
                message,
                hint,
            },
        )?;
        let locator = Locator {
            path: path.to_path_buf(),
            positions: KeyPositions::read(&placeheld.text),
            placeheld,
            substituted,
        };
        let file = PipelineFile {
            path: path.to_path_buf(),
            spec: locator.typed(doc)?,
            locator,
        };
        file.check()?;
        Ok(file)
    }

    /// A diagnostic pointing at `key` (a path such as `sink.config.url`). Values substituted
    /// from the environment are replaced by their `${NAME}` in the message.
    pub fn error_at(
        &self,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        self.locator.error_at(key, message.into(), hint.into())
    }
}

impl Locator {
    /// The document as a [`PipelineSpec`], or the first error at its key.
    fn typed(&self, doc: serde_yaml::Value) -> Result<PipelineSpec, Diagnostic> {
        let json = serde_json::to_value(&doc).map_err(|e| Diagnostic {
            file: self.path.clone(),
            line: None,
            column: None,
            key: None,
            message: format!("the document cannot be read as a pipeline: {e}"),
            hint: "keys must be strings; docs/CONFIG.md lists every key".into(),
        })?;
        orbit_plugin_api::coerce::from_value(json).map_err(|e| {
            let mut key = e.path().to_string();
            if key == "." {
                key.clear();
            }
            let message = e.into_inner().to_string();
            // An unknown key is reported at the map holding it; point at the key itself.
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
            {
                key = if key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
            }
            let hint = hint_for_type_error(&message);
            if key.is_empty() {
                Diagnostic {
                    file: self.path.clone(),
                    line: None,
                    column: None,
                    key: None,
                    message: self.substituted.scrub(&message),
                    hint,
                }
            } else {
                self.error_at(&key, message, hint)
            }
        })
    }

    fn error_at(&self, key: &str, message: String, hint: String) -> Diagnostic {
        let pos = self.positions.find(key);
        Diagnostic {
            file: self.path.clone(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| self.placeheld.original_column(p.0, p.1)),
            key: Some(key.to_string()),
            message: self.substituted.scrub(&message),
            hint,
        }
    }
}

impl PipelineFile {
    /// Checks that serde cannot express.
    fn check(&self) -> Result<(), Diagnostic> {
        let s = &self.spec;
        if s.name.trim().is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.error_at(
                "name",
                format!("pipeline name `{}` is not usable", s.name),
                "use letters, digits, `-`, `_` and `.`: the name names the offset file",
            ));
        }
        if !(1..=MAX_BATCH_RECORDS).contains(&s.batch.max_records) {
            return Err(self.error_at(
                "batch.max_records",
                format!(
                    "`max_records` is {}: it must be from 1 to {MAX_BATCH_RECORDS}",
                    s.batch.max_records
                ),
                "a typical value is 500 to 5000",
            ));
        }
        if !(1..=MAX_BATCH_BUFFER).contains(&s.batch.buffer) {
            return Err(self.error_at(
                "batch.buffer",
                format!(
                    "`buffer` is {}: it must be from 1 to {MAX_BATCH_BUFFER}",
                    s.batch.buffer
                ),
                "it is the number of batches queued between two stages; 2 to 8 is plenty",
            ));
        }
        for (role, stage) in s.stages() {
            let Some(n) = stage.max_in_flight else {
                continue;
            };
            let key = format!("{}.max_in_flight", role.key_path());
            if role != StageRole::Sink {
                return Err(self.error_at(
                    &key,
                    "`max_in_flight` applies to the sink only".to_string(),
                    "move it to the `sink:` stage, or remove it".to_string(),
                ));
            }
            if !(1..=MAX_SINK_IN_FLIGHT).contains(&n) {
                return Err(self.error_at(
                    &key,
                    format!("`max_in_flight` is {n}: it must be from 1 to {MAX_SINK_IN_FLIGHT}"),
                    "it is the number of batches a sink holds unconfirmed; 2 to 8 is typical"
                        .to_string(),
                ));
            }
        }
        let r = &s.restart;
        if r.backoff.is_zero() || r.max_backoff < r.backoff {
            return Err(self.error_at(
                "restart",
                format!(
                    "`restart` has backoff {} and max_backoff {}",
                    humantime::format_duration(r.backoff),
                    humantime::format_duration(r.max_backoff)
                ),
                "backoff must be above zero and max_backoff at least backoff (1s and 1m by default)",
            ));
        }
        if s.errors.tolerance == Tolerance::All && s.errors.dead_letter.is_none() {
            return Err(self.error_at(
                "errors.tolerance",
                "`tolerance: all` needs a dead-letter sink",
                "add `errors.dead_letter: { plugin: file, config: { path: dlq.jsonl } }`",
            ));
        }
        Ok(())
    }
}

fn hint_for_type_error(message: &str) -> String {
    if message.contains("unknown field") {
        "remove or correct the key; docs/CONFIG.md lists every key".into()
    } else if message.contains("missing field") {
        "add the key; docs/CONFIG.md lists every key".into()
    } else {
        "correct the value's type; durations are written like 250ms, 10s or 5m".into()
    }
}

/// libyaml puts an error at the end of a text without a final newline on the line after the
/// last; point at the end of the last line instead, where an editor can go.
fn within_text(text: &str, line: usize, column: usize) -> (usize, usize) {
    let lines = text.split('\n').count();
    if line <= lines || text.ends_with('\n') {
        return (line, column);
    }
    let last = text.rsplit('\n').next().unwrap_or("");
    (lines, last.chars().count() + 1)
}

#[cfg(test)]
mod tests;
