//! `json` transform: set, rename and drop fields; keep or drop records by a field condition.
//!
//! ```yaml
//! transforms:
//!   - plugin: json
//!     config:
//!       keep_if: { field: status, in: [paid, shipped] }
//!       drop_if: { field: test, eq: true }
//!       rename: { cust: customer }
//!       drop: [internal, "meta.trace"]
//!       set: { source: orbit, "meta.pipeline": orders }
//! ```
//!
//! Order: `keep_if`, `drop_if`, then `rename`, `drop`, `set`. Field names with dots address
//! nested objects. A record whose value is not JSON, or not an object when a field operation
//! needs one, is rejected (dead-lettered with `errors.tolerance: all`). Records filtered out
//! are dropped on purpose: they count as delivered and their positions are acknowledged.
//! Values the transform does not touch keep their exact bytes (see `doc`); a path through a
//! value that is not an object rejects the record rather than replacing that value.

use orbit_plugin_api::{
    export_plugin, ConfigError, PluginBuilder, PluginError, Record, Transform, TransformContext,
    TransformOutput,
};
use serde::Deserialize;
use serde_json::{Map, Value};

mod doc;

/// `old: new` pairs; a JSON object keeps the order the user wrote (serde_json's
/// `preserve_order`).
type IndexedRenames = indexmap::IndexMap<String, String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Fields to set (created or replaced), by path, in the order written.
    #[serde(default)]
    set: Map<String, Value>,
    /// Fields to rename: old path → new path, in the order written.
    #[serde(default)]
    rename: IndexedRenames,
    /// Fields to remove, by path.
    #[serde(default)]
    drop: Vec<String>,
    /// Keep only records for which this holds.
    #[serde(default)]
    keep_if: Option<Condition>,
    /// Drop records for which this holds.
    #[serde(default)]
    drop_if: Option<Condition>,
}

/// `field` and exactly one test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    field: String,
    #[serde(default)]
    eq: Option<Value>,
    #[serde(default)]
    ne: Option<Value>,
    #[serde(default, rename = "in")]
    one_of: Option<Vec<Value>>,
    #[serde(default)]
    exists: Option<bool>,
    #[serde(default)]
    gt: Option<f64>,
    #[serde(default)]
    lt: Option<f64>,
}

impl Condition {
    fn check(&self, path: &str) -> Result<(), ConfigError> {
        let n = [
            self.eq.is_some(),
            self.ne.is_some(),
            self.one_of.is_some(),
            self.exists.is_some(),
            self.gt.is_some(),
            self.lt.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            return Err(ConfigError::new(
                path,
                "give `field` and exactly one of `eq`, `ne`, `in`, `exists`, `gt`, `lt`",
            ));
        }
        Ok(())
    }

    fn holds(&self, fields: &doc::Fields<'_>) -> bool {
        let v = doc::get(fields, &self.field);
        let v = v.as_ref();
        if let Some(e) = self.exists {
            return v.is_some() == e;
        }
        if let Some(x) = &self.eq {
            return v == Some(x);
        }
        if let Some(x) = &self.ne {
            return v != Some(x);
        }
        if let Some(xs) = &self.one_of {
            return v.is_some_and(|v| xs.contains(v));
        }
        let num = v.and_then(Value::as_f64);
        if let Some(g) = self.gt {
            return num.is_some_and(|n| n > g);
        }
        if let Some(l) = self.lt {
            return num.is_some_and(|n| n < l);
        }
        false
    }
}

pub struct Json {
    config: Config,
    /// `set`'s values as raw JSON, written as they are into each record.
    set: Vec<(String, doc::Raw<'static>)>,
    edits: bool,
}

impl Json {
    /// The new value of one record, `None` to drop it, or why it is rejected.
    fn apply(&self, value: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let text = std::str::from_utf8(value)
            .map_err(|e| format!("value is not JSON: it is not UTF-8 ({e})"))?;
        let mut fields = match doc::parse(text) {
            Ok(fields) => fields,
            Err(doc::ParseError::NotJson(e)) => return Err(format!("value is not JSON: {e}")),
            Err(doc::ParseError::NotAnObject) => {
                // Conditions see no field in an array or a scalar; edits need an object.
                serde_json::from_str::<&serde_json::value::RawValue>(text)
                    .map_err(|e| format!("value is not JSON: {e}"))?;
                if !self.keeps(&doc::Fields::new()) {
                    return Ok(None);
                }
                if self.edits {
                    return Err("value is JSON but not an object; fields cannot be edited".into());
                }
                return Ok(Some(value.to_vec()));
            }
        };
        if !self.keeps(&fields) {
            return Ok(None);
        }
        if !self.edits {
            return Ok(Some(value.to_vec()));
        }
        for (from, to) in &self.config.rename {
            if let Some(v) = doc::remove(&mut fields, from) {
                doc::insert(&mut fields, to, v)?;
            }
        }
        for path in &self.config.drop {
            doc::remove(&mut fields, path);
        }
        for (path, v) in &self.set {
            doc::insert(&mut fields, path, v.clone())?;
        }
        // Sized for the usual case (a few fields added) so writing does not reallocate.
        let mut out = Vec::with_capacity(value.len() + value.len() / 4 + 32);
        doc::write(&fields, &mut out);
        Ok(Some(out))
    }

    /// Whether `keep_if` and `drop_if` let the record through.
    fn keeps(&self, fields: &doc::Fields<'_>) -> bool {
        if let Some(c) = &self.config.keep_if {
            if !c.holds(fields) {
                return false;
            }
        }
        if let Some(c) = &self.config.drop_if {
            if c.holds(fields) {
                return false;
            }
        }
        true
    }
}

impl Transform for Json {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        if let Some(c) = &config.keep_if {
            c.check("keep_if")?;
        }
        if let Some(c) = &config.drop_if {
            c.check("drop_if")?;
        }
        for p in config
            .set
            .keys()
            .chain(config.rename.keys())
            .chain(config.rename.values())
            .chain(config.drop.iter())
        {
            if p.is_empty() || p.split('.').any(str::is_empty) {
                return Err(ConfigError::new("", format!("`{p}` is not a field path")));
            }
        }
        Ok(())
    }

    fn open(config: Config, _ctx: TransformContext) -> Result<Self, PluginError> {
        let edits = !(config.set.is_empty() && config.rename.is_empty() && config.drop.is_empty());
        let set = config
            .set
            .iter()
            .map(|(path, v)| (path.clone(), doc::from_config(v)))
            .collect();
        Ok(Json { config, set, edits })
    }

    fn process(&mut self, batch: &[Record], out: &mut TransformOutput) -> Result<(), PluginError> {
        for (i, r) in batch.iter().enumerate() {
            match self.apply(r.value()) {
                Ok(Some(value)) => {
                    let mut next = r.clone_without_value();
                    next.set_value(value);
                    out.push(next);
                }
                Ok(None) => {}
                Err(reason) => out.fail(i, PluginError::rejected(reason)),
            }
        }
        Ok(())
    }
}

export_plugin!(PluginBuilder::new("json", env!("CARGO_PKG_VERSION"))
    .transform::<Json>("json", "set, rename, drop fields; filter records"));

#[cfg(test)]
mod tests {
    use super::*;

    fn json(cfg: &str) -> Json {
        let c: Config = serde_json::from_str(cfg).unwrap();
        Json::validate(&c).unwrap();
        Json::open(
            c,
            TransformContext {
                pipeline: "p".into(),
                stage: "t".into(),
            },
        )
        .unwrap()
    }

    fn run(t: &Json, v: &str) -> Result<Option<String>, String> {
        t.apply(v.as_bytes())
            .map(|o| o.map(|b| String::from_utf8(b).unwrap()))
    }

    #[test]
    fn edits_fields_in_order() {
        let t = json(r#"{"rename":{"a":"b.c"},"drop":["x"],"set":{"s":"orbit","m.n":1}}"#);
        assert_eq!(
            run(&t, r#"{"a":1,"x":2,"k":3}"#).unwrap().unwrap(),
            r#"{"k":3,"b":{"c":1},"s":"orbit","m":{"n":1}}"#
        );
    }

    #[test]
    fn filters() {
        let t = json(
            r#"{"keep_if":{"field":"st","in":["paid","new"]},"drop_if":{"field":"n","gt":5}}"#,
        );
        assert!(run(&t, r#"{"st":"paid","n":1}"#).unwrap().is_some());
        assert!(run(&t, r#"{"st":"void","n":1}"#).unwrap().is_none());
        assert!(run(&t, r#"{"st":"new","n":9}"#).unwrap().is_none());
    }

    #[test]
    fn rejects_non_json_and_non_objects() {
        let t = json(r#"{"set":{"a":1}}"#);
        assert!(run(&t, "not json").unwrap_err().contains("not JSON"));
        assert!(run(&t, "[1]").unwrap_err().contains("not an object"));
    }

    #[test]
    fn setting_one_field_leaves_every_other_value_as_it_was() {
        let t = json(r#"{"set":{"tag":"x"}}"#);
        let input = r#"{"a":12345678901234567890123,"b":-9223372036854775809,"c":0.1000000000000000055511151231257827,"d":1e2}"#;
        let out = run(&t, input).unwrap().unwrap();
        assert_eq!(
            out,
            format!("{},\"tag\":\"x\"}}", &input[..input.len() - 1])
        );
    }

    #[test]
    fn a_path_through_a_scalar_rejects_the_record_instead_of_replacing_it() {
        let t = json(r#"{"set":{"a.b":1}}"#);
        let e = run(&t, r#"{"a":5}"#).unwrap_err();
        assert!(e.contains("`a` is a number, not an object"), "{e}");
        let t = json(r#"{"rename":{"x":"a.b"}}"#);
        assert!(run(&t, r#"{"a":"s","x":1}"#).is_err());
        // Filters alone still pass arrays through; edits need an object.
        let t = json(r#"{"drop_if":{"field":"a","exists":true}}"#);
        assert_eq!(run(&t, "[1, 2]").unwrap().unwrap(), "[1, 2]");
    }

    #[test]
    fn a_condition_needs_exactly_one_test() {
        let c: Config = serde_json::from_str(r#"{"keep_if":{"field":"a"}}"#).unwrap();
        assert_eq!(Json::validate(&c).unwrap_err().path.as_str(), "keep_if");
    }
}
