//! A pipeline's stored offsets through the admin API: shown as the source wrote them, reset
//! or edited only while the pipeline is STOPPED (so no run reads or writes them meanwhile).

use serde::{Deserialize, Serialize};

use super::{CommandError, Managed, Supervisor};
use crate::offsets::Offsets;
use crate::telemetry::PipelineState;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsetView {
    pub stream: String,
    pub partition: i32,
    /// The offset's bytes as text (`encoding: text`) or hex (`encoding: hex`); `null` in a
    /// PATCH removes the partition's offset.
    pub offset: Option<String>,
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Text,
    Hex,
}

/// The body of `PATCH /pipelines/{name}/offsets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsetsPatch {
    pub offsets: Vec<OffsetView>,
}

impl Supervisor {
    /// The positions stored for the pipeline (written at most `offsets.flush_interval` after
    /// they were acknowledged, and when it stops).
    pub async fn offsets(&self, name: &str) -> Result<Vec<OffsetView>, CommandError> {
        let m = self.get(name)?;
        let store = m.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|e| CommandError::Offsets(e.to_string()))?
            .map_err(|e| CommandError::Offsets(e.to_string()))?;
        Ok(offset_views(&loaded))
    }

    /// Forgets every stored offset: the next run starts from the source's beginning.
    pub fn reset_offsets(&self, name: &str) -> Result<(), CommandError> {
        self.edit_offsets(name, |o| o.clear())
    }

    /// Sets (or with `offset: null` removes) the given partitions' offsets.
    pub fn patch_offsets(&self, name: &str, patch: OffsetsPatch) -> Result<(), CommandError> {
        let mut changes = Vec::new();
        for o in patch.offsets {
            let bytes = match (&o.offset, o.encoding) {
                (None, _) => None,
                (Some(t), Encoding::Text) => Some(t.as_bytes().to_vec()),
                (Some(h), Encoding::Hex) => Some(unhex(h).ok_or_else(|| {
                    CommandError::BadRequest(format!(
                        "offset `{h}` of {}/{} is not hex",
                        o.stream, o.partition
                    ))
                })?),
            };
            changes.push(((o.stream, o.partition), bytes));
        }
        self.edit_offsets(name, move |offsets| {
            for (key, bytes) in changes {
                match bytes {
                    Some(b) => offsets.insert(key, b),
                    None => offsets.remove(&key),
                };
            }
        })
    }

    /// Loads, edits and saves the store while holding the pipeline's status, so that no run
    /// starts meanwhile (a run sets STARTING before it loads the offsets).
    fn edit_offsets(
        &self,
        name: &str,
        edit: impl FnOnce(&mut Offsets),
    ) -> Result<(), CommandError> {
        let m: std::sync::Arc<Managed> = self.get(name)?;
        let status = m.status.lock().expect("status");
        if status.state != PipelineState::Stopped {
            return Err(CommandError::Conflict {
                name: name.to_string(),
                state: status.state.as_str(),
                what: "offsets change only while it is STOPPED; PUT /pipelines/{name}/stop first"
                    .to_string(),
            });
        }
        let offsets_error =
            |e: crate::offsets::OffsetStoreError| CommandError::Offsets(e.to_string());
        let mut offsets = m.store.load().map_err(offsets_error)?;
        edit(&mut offsets);
        m.store.save(&offsets).map_err(offsets_error)?;
        tracing::info!(pipeline = %name, partitions = offsets.len(), "offsets changed through the admin API");
        Ok(())
    }
}

pub(super) fn offset_views(offsets: &Offsets) -> Vec<OffsetView> {
    offsets
        .iter()
        .map(|((stream, partition), bytes)| {
            let (offset, encoding) = match std::str::from_utf8(bytes) {
                Ok(t) if !t.chars().any(char::is_control) => (t.to_string(), Encoding::Text),
                _ => (hex(bytes), Encoding::Hex),
            };
            OffsetView {
                stream: stream.clone(),
                partition: *partition,
                offset: Some(offset),
                encoding,
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_show_text_as_text_and_bytes_as_hex_and_hex_reads_back() {
        let mut o = Offsets::new();
        o.insert(("a".into(), 0), b"0/16B3748".to_vec());
        o.insert(("b".into(), 1), vec![0, 0, 0, 0, 0, 0, 0, 42]);
        let v = offset_views(&o);
        assert_eq!(v[0].offset.as_deref(), Some("0/16B3748"));
        assert_eq!(v[0].encoding, Encoding::Text);
        assert_eq!(v[1].offset.as_deref(), Some("000000000000002a"));
        assert_eq!(v[1].encoding, Encoding::Hex);
        assert_eq!(
            unhex("000000000000002a"),
            Some(vec![0, 0, 0, 0, 0, 0, 0, 42])
        );
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }
}
