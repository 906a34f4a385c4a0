//! From a parsed pipeline file to resolved components: every `plugin:` found with the right
//! kind, every `config:` turned into JSON and checked by its plugin, without starting anything.

use orbit_plugin_api::ffi::ComponentKind;

use crate::config::{Diagnostic, PipelineFile, PipelineSpec, StageRole, StageSpec};
use crate::plugin::{Component, Registry};
use crate::policy::{self, ResolvedPolicy};

/// A stage whose component was found and whose config the plugin accepted.
#[derive(Clone)]
pub struct ResolvedStage {
    pub role: StageRole,
    pub name: String,
    pub component: Component,
    /// The `config:` block as JSON text.
    pub config_json: String,
    pub spec: StageSpec,
    /// The stage's `policy:` over the pipeline's `defaults.policy`, defaults filled in.
    pub policy: ResolvedPolicy,
}

fn kind_for(role: StageRole) -> ComponentKind {
    match role {
        StageRole::Source => ComponentKind::Source,
        StageRole::Transform(_) => ComponentKind::Transform,
        StageRole::Sink | StageRole::DeadLetter => ComponentKind::Sink,
    }
}

/// Resolves and validates every stage of a pipeline file against the registry.
pub fn resolve(file: &PipelineFile, registry: &Registry) -> Result<Vec<ResolvedStage>, Diagnostic> {
    check_policy(file, "defaults.policy", &file.spec.defaults.policy)?;
    let stages = file
        .spec
        .stages()
        .into_iter()
        .map(|(role, spec)| resolve_stage(file, registry, role, spec))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(source) = stages.iter().find(|s| s.role == StageRole::Source) {
        check_poll_fits_timeout(file, &source.policy)?;
    }
    Ok(stages)
}

/// A poll may wait `batch.max_wait` for records, so the source's call timeout must leave it
/// room: at `max_wait` ≥ timeout an idle source times out on every poll and its instance is
/// replaced again and again. Half the timeout is the most `max_wait` may be.
fn check_poll_fits_timeout(file: &PipelineFile, source: &ResolvedPolicy) -> Result<(), Diagnostic> {
    let timeout = source.timeout.unwrap_or(policy::DEFAULT_TIMEOUT);
    let max_wait = file.spec.batch.max_wait;
    if max_wait.saturating_mul(2) > timeout {
        return Err(file.error_at(
            "batch.max_wait",
            format!(
                "`max_wait` is {}, more than half the source's call timeout ({}): an idle \
                 source's poll waits that long and would time out",
                humantime::format_duration(max_wait),
                humantime::format_duration(timeout)
            ),
            "lower batch.max_wait, or raise source.policy.timeout to at least twice it",
        ));
    }
    Ok(())
}

fn resolve_stage(
    file: &PipelineFile,
    registry: &Registry,
    role: StageRole,
    spec: &StageSpec,
) -> Result<ResolvedStage, Diagnostic> {
    let kind = kind_for(role);
    let key = role.key_path();
    check_policy(file, &format!("{key}.policy"), &spec.policy)?;
    let component = registry.get(kind, &spec.plugin).cloned().ok_or_else(|| {
        let other_kinds = registry.kinds_of(&spec.plugin);
        if !other_kinds.is_empty() {
            let kinds: Vec<&str> = other_kinds.iter().map(|k| k.as_str()).collect();
            return file.error_at(
                &format!("{key}.plugin"),
                format!(
                    "`{}` is a {} plugin and cannot be used as a {kind}",
                    spec.plugin,
                    kinds.join(" and ")
                ),
                format!(
                    "{kind}s on the plugin path: {}",
                    list_or_none(&registry.names(kind))
                ),
            );
        }
        let mut hint = format!(
            "{kind}s found on the plugin path ({}: {}): {}",
            registry.search_path.source,
            registry
                .search_path
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            list_or_none(&registry.names(kind))
        );
        for r in &registry.refused {
            hint.push_str(&format!("; refused {}: {}", r.path.display(), r.reason));
        }
        file.error_at(
            &format!("{key}.plugin"),
            format!("unknown {kind} plugin `{}`", spec.plugin),
            hint,
        )
    })?;

    // Serialized straight from the YAML value so that maps keep the order the user wrote.
    let config_json = match &spec.config {
        serde_yaml::Value::Null => "{}".to_string(),
        v => serde_json::to_string(v).map_err(|e| {
            file.error_at(
                &format!("{key}.config"),
                format!("the config cannot be passed to the plugin as JSON: {e}"),
                "use string keys and plain values in `config:`",
            )
        })?,
    };
    let validate = component.library.module.validate();
    if let Err(e) = validate(
        kind,
        component.name.as_str().into(),
        config_json.as_str().into(),
    )
    .into_result()
    {
        let path = if e.path.is_empty() {
            format!("{key}.config")
        } else {
            format!("{key}.config.{}", e.path)
        };
        return Err(file.error_at(
            &path,
            format!(
                "plugin `{}` ({kind}, {}) refused its config: {}",
                component.name,
                component.library.path.display(),
                e.message
            ),
            "correct the value; `orbit-host plugins` lists the plugins and docs/CONFIG.md their keys",
        ));
    }
    Ok(ResolvedStage {
        role,
        name: PipelineSpec::stage_name(role, spec),
        component,
        config_json,
        spec: spec.clone(),
        policy: ResolvedPolicy::resolve(&policy::merge(&spec.policy, &file.spec.defaults.policy)),
    })
}

fn check_policy(
    file: &PipelineFile,
    key: &str,
    p: &crate::config::PolicySpec,
) -> Result<(), Diagnostic> {
    policy::validate(p).map_err(|e| {
        file.error_at(
            &format!("{key}.{}", e.key),
            format!("invalid policy value: `{}` {}", e.key, e.message),
            "docs/CONFIG.md lists every policy key with its default",
        )
    })
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
