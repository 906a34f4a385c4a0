//! What the admin API shows of the pipelines: JSON views, built on request from the
//! supervisor's state and the stages' metrics. Secrets never reach them: the spec is shown as
//! written (`${VAR}` references unexpanded), with URL passwords and secret-like keys masked.

use serde::Serialize;
use serde_json::Value;

use super::{CommandError, Managed, Supervisor};
use crate::telemetry::PipelineState;

#[derive(Debug, Serialize)]
pub struct PipelineSummary {
    pub name: String,
    pub state: PipelineState,
}

#[derive(Debug, Serialize)]
pub struct StageView {
    pub stage: String,
    pub plugin: String,
    pub kind: String,
    pub state: &'static str,
    pub breaker: &'static str,
    pub restarts: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub name: String,
    pub state: PipelineState,
    pub error: Option<String>,
    /// The pipeline's file as last loaded.
    pub file: String,
    /// Times the host ran the pipeline again after a failure or a request.
    pub restarts: u64,
    /// Why the last reload kept the running version (file:line:col: message).
    pub reload_error: Option<String>,
    pub stages: Vec<StageView>,
}

impl Supervisor {
    pub fn list(&self) -> Vec<PipelineSummary> {
        self.all()
            .iter()
            .map(|m| PipelineSummary {
                name: m.name.clone(),
                state: m.state(),
            })
            .collect()
    }

    pub fn status(&self, name: &str) -> Result<StatusView, CommandError> {
        Ok(status_of(&*self.get(name)?))
    }

    pub fn statuses(&self) -> Vec<StatusView> {
        self.all().iter().map(|m| status_of(m)).collect()
    }

    /// The spec as written, secrets masked, with the state.
    pub fn describe(&self, name: &str) -> Result<Value, CommandError> {
        let m = self.get(name)?;
        let definition = m.definition();
        let mut spec: Value = serde_yaml::from_str::<serde_yaml::Value>(&definition.source_text)
            .ok()
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(Value::Null);
        mask_secrets(&mut spec, None);
        Ok(serde_json::json!({
            "name": m.name,
            "state": m.state(),
            "file": definition.file.display().to_string(),
            "reload_error": m.status.lock().expect("status").reload_error,
            "spec": spec,
        }))
    }
}

fn status_of(m: &Managed) -> StatusView {
    let s = m.status.lock().expect("status").clone();
    let definition = m.definition();
    let stages = definition
        .metrics
        .iter()
        .map(|sm| {
            let l = &sm.labels;
            let breaker = sm.breaker_state();
            let state = match s.state {
                PipelineState::Running if breaker.as_str() == "open" => "DEGRADED",
                PipelineState::Running => "RUNNING",
                other => other.as_str(),
            };
            StageView {
                stage: l.component_id.clone(),
                plugin: l.component_type.clone(),
                kind: l.component_kind.clone(),
                state,
                breaker: breaker.as_str(),
                restarts: sm.restarts.get(),
                last_error: sm.last_error(),
            }
        })
        .collect();
    StatusView {
        name: m.name.clone(),
        state: s.state,
        error: s.error,
        file: definition.file.display().to_string(),
        reload_error: s.reload_error,
        restarts: s.restarts,
        stages,
    }
}

/// Keys whose values are secrets wherever they appear.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Masks secret-like keys and URL passwords (a `${VAR}` reference is shown: it is no secret).
fn mask_secrets(v: &mut Value, key: Option<&str>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                mask_secrets(child, Some(k));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mask_secrets(i, key)),
        Value::String(s) => {
            let reference = s.starts_with("${") && s.ends_with('}');
            if key.is_some_and(is_secret_key) && !reference {
                *s = "***".to_string();
            } else if s.contains("://") && s.contains('@') {
                *s = orbit_plugin_api::redact::redact_url(s);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_references_kept() {
        let mut v = serde_json::json!({
            "source": {"config": {"url": "amqp://guest:hunter2@host:5672/%2f", "password": "p4ss",
                       "token": "${TOKEN}", "topic": "t"}},
            "list": [{"api_key": "k"}]
        });
        mask_secrets(&mut v, None);
        let text = v.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("p4ss"),
            "{text}"
        );
        assert!(!text.contains("\"k\""), "{text}");
        assert!(
            text.contains("${TOKEN}") && text.contains("\"t\""),
            "{text}"
        );
    }
}
