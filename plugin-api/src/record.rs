//! Conveniences on [`Record`] and the batch a source returns. Records are born as the ABI type
//! and stay in it through every stage; `Vec<u8>` → `RVec<u8>` reuses the allocation.

use abi_stable::std_types::{ROption, RString, RVec};

use crate::ffi::{Header, PollOutput, Position, Record};

impl Record {
    /// A record with this value and no key, headers, timestamp or position.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Record {
            key: ROption::RNone,
            value: RVec::from(value.into()),
            headers: RVec::new(),
            timestamp_ms: ROption::RNone,
            stream: RString::new(),
            partition: 0,
            offset: RVec::new(),
        }
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = ROption::RSome(RVec::from(key.into()));
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.push_header(name, value);
        self
    }

    pub fn with_timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = ROption::RSome(ts);
        self
    }

    /// Where the record came from: stream, partition, the source's offset bytes.
    pub fn with_position(
        mut self,
        stream: impl Into<String>,
        partition: i32,
        offset: impl Into<Vec<u8>>,
    ) -> Self {
        self.stream = RString::from(stream.into());
        self.partition = partition;
        self.offset = RVec::from(offset.into());
        self
    }

    pub fn value(&self) -> &[u8] {
        &self.value
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_ref().map(|k| k.as_slice()).into_option()
    }

    pub fn set_value(&mut self, value: impl Into<Vec<u8>>) {
        self.value = RVec::from(value.into());
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.as_str() == name)
            .map(|h| h.value.as_slice())
    }

    pub fn push_header(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.headers.push(Header {
            name: RString::from(name.into()),
            value: RVec::from(value.into()),
        });
    }

    /// The value parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.value)
    }

    /// A copy with an empty value, for a transform that computes a new value: key, headers,
    /// timestamp and position are kept without copying the old value first.
    pub fn clone_without_value(&self) -> Record {
        Record {
            key: self.key.clone(),
            value: RVec::new(),
            headers: self.headers.clone(),
            timestamp_ms: self.timestamp_ms,
            stream: self.stream.clone(),
            partition: self.partition,
            offset: self.offset.clone(),
        }
    }

    /// The position this record stands at, for acknowledging it.
    pub fn position(&self) -> Position {
        Position {
            stream: self.stream.clone(),
            partition: self.partition,
            offset: self.offset.clone(),
        }
    }

    /// A stable id for this record, `stream/partition/hex(offset)`: its source position, the
    /// same for every retry and every re-read of the record after a restart, and different for
    /// every record. Sinks send it as a dedup key for consumers downstream (a record's key names
    /// an entity, which has many records: deduplicating on the key would drop updates). Bytes of
    /// the stream name outside visible ASCII, and `%`, are percent-encoded, so the id is safe in
    /// an HTTP header and an AMQP short string; the partition and offset never contain `/`, so
    /// the id splits from the right.
    pub fn position_id(&self) -> String {
        use std::fmt::Write as _;
        let mut id = String::with_capacity(self.stream.len() + 8 + 2 * self.offset.len());
        for &b in self.stream.as_bytes() {
            if b.is_ascii_graphic() && b != b'%' {
                id.push(b as char);
            } else {
                let _ = write!(id, "%{b:02X}");
            }
        }
        let _ = write!(id, "/{}/", self.partition);
        for b in self.offset.iter() {
            let _ = write!(id, "{b:02x}");
        }
        id
    }
}

impl Position {
    pub fn new(stream: impl Into<String>, partition: i32, offset: impl Into<Vec<u8>>) -> Self {
        Position {
            stream: RString::from(stream.into()),
            partition,
            offset: RVec::from(offset.into()),
        }
    }
}

/// What a source returns from one poll: records, and the position each touched partition
/// reaches once they are delivered.
#[derive(Debug, Default)]
pub struct SourceBatch {
    pub(crate) inner: PollOutput,
}

impl SourceBatch {
    pub fn with_capacity(n: usize) -> Self {
        SourceBatch {
            inner: PollOutput {
                records: RVec::with_capacity(n),
                positions: RVec::new(),
                end_of_stream: false,
            },
        }
    }

    /// Adds a record. Unless [`SourceBatch::set_position`] is called, the batch's position for
    /// the record's partition becomes the record's own offset (the last one added wins).
    pub fn push(&mut self, record: Record) {
        self.inner.records.push(record);
    }

    /// Sets the position reached in a partition explicitly, e.g. past input that produced no
    /// record. Overrides what the records imply.
    pub fn set_position(&mut self, position: Position) {
        if let Some(p) = self
            .inner
            .positions
            .iter_mut()
            .find(|p| p.partition == position.partition && p.stream == position.stream)
        {
            *p = position;
        } else {
            self.inner.positions.push(position);
        }
    }

    /// The source is exhausted; the pipeline finishes once this batch is delivered.
    pub fn end_of_stream(&mut self) {
        self.inner.end_of_stream = true;
    }

    pub fn len(&self) -> usize {
        self.inner.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.records.is_empty()
    }

    pub fn records(&self) -> &[Record] {
        &self.inner.records
    }

    pub fn is_end_of_stream(&self) -> bool {
        self.inner.end_of_stream
    }

    /// Fills in positions for partitions the source did not set explicitly, from the last record
    /// of each partition.
    pub(crate) fn into_output(mut self) -> PollOutput {
        let explicit = self.inner.positions.len();
        let mut derived: Vec<Position> = Vec::new();
        for r in self.inner.records.iter().rev() {
            let known = self.inner.positions[..explicit]
                .iter()
                .chain(derived.iter())
                .any(|p| p.partition == r.partition && p.stream == r.stream);
            if !known {
                derived.push(r.position());
            }
        }
        self.inner.positions.extend(derived);
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_id_is_stream_partition_and_hex_offset_safe_in_a_header() {
        let r = Record::new("v").with_position("orders", 2, 42u64.to_be_bytes());
        assert_eq!(r.position_id(), "orders/2/000000000000002a");
        // A file path with a space, a non-ASCII letter and a control character.
        let r = Record::new("v").with_position("/in/é x\n%.jsonl", 0, [0xffu8]);
        assert_eq!(r.position_id(), "/in/%C3%A9%20x%0A%25.jsonl/0/ff");
        assert!(r.position_id().bytes().all(|b| b.is_ascii_graphic()));
    }
}
