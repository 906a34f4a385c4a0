//! A batch → the statements that write it, encoded on the sink's thread (so that the next
//! batch is planned while the connection writes this one). Consecutive operations of one kind
//! over the same columns are one statement.

use std::collections::HashSet;
use std::ops::Range;

use orbit_plugin_api::{PluginError, Record};

use super::config::Mode;
use super::plan::{plan, Op};
use super::row::Row;
use super::table::{Kind, Table};
use super::wire::{self, Encoded, Wire};

/// One statement: what it does, to which columns, and its parameters.
pub struct Run {
    pub kind: Kind,
    pub cols: Vec<u16>,
    /// How the columns travel; `None`: as one JSON array.
    pub wires: Option<Vec<Wire>>,
    pub params: Vec<Encoded>,
}

/// A batch ready for the connection.
pub struct Prepared {
    pub runs: Vec<Run>,
    /// Records refused before the database saw them: (index in the batch, why).
    pub refused: Vec<(usize, String)>,
    /// The values of the other records, for a replay record by record.
    pub values: Values,
}

/// The values of some records of a batch, copied into one buffer.
#[derive(Default)]
pub struct Values {
    buf: Vec<u8>,
    /// (index in the batch, range in `buf`), in batch order.
    records: Vec<(usize, Range<usize>)>,
}

impl Values {
    fn push(&mut self, index: usize, value: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(value);
        self.records.push((index, start..self.buf.len()));
    }

    /// (index in the batch, value), in batch order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.records.iter().map(|(i, r)| (*i, &self.buf[r.clone()]))
    }
}

pub fn prepare(
    mode: Mode,
    table: &Table,
    ignore_unknown: bool,
    batch: &[Record],
) -> Result<Prepared, PluginError> {
    let mut refused = Vec::new();
    let mut values = Values::default();
    let mut ops: Vec<Op> = Vec::with_capacity(batch.len());
    for (i, record) in batch.iter().enumerate() {
        match plan(mode, table, ignore_unknown, record.value()) {
            Ok(planned) => {
                values.push(i, record.value());
                ops.extend(planned);
            }
            Err(reason) => refused.push((i, reason)),
        }
    }
    let ops: Vec<&Op> = ops.iter().collect();
    let mut runs = Vec::new();
    let mut start = 0;
    while start < ops.len() {
        let end = run_end(table, &ops, start);
        runs.push(encode(table, &ops[start..end])?);
        start = end;
    }
    Ok(Prepared {
        runs,
        refused,
        values,
    })
}

/// Where the run that starts at `start` ends: the same kind over the same columns, each row at
/// most once (one statement cannot touch a row twice).
fn run_end(table: &Table, ops: &[&Op], start: usize) -> usize {
    let first = ops[start];
    if first.kind == Kind::Truncate {
        return start + 1;
    }
    let mut keys = HashSet::new();
    let mut end = start;
    while end < ops.len() {
        let op = ops[end];
        if op.kind != first.kind || !op.same_columns(first) {
            break;
        }
        if first.kind != Kind::Insert && !keys.insert(op.key_text(table)) {
            break;
        }
        end += 1;
    }
    end
}

/// One statement for a run of operations of one kind over the same columns.
pub fn encode(table: &Table, ops: &[&Op]) -> Result<Run, PluginError> {
    let kind = ops[0].kind;
    let cols = ops[0].columns();
    let (wires, params) = if kind == Kind::Truncate {
        (None, Vec::new())
    } else {
        let rows: Vec<&Row> = ops.iter().map(|op| &op.row).collect();
        let columns = table.columns_at(&cols);
        match wire::wires(&columns, &rows) {
            Some(wires) => {
                let params = wire::encode(&wires, &rows).map_err(PluginError::fatal)?;
                (Some(wires), params)
            }
            None => {
                let json = wire::json_rows(&columns, &rows);
                let param = Encoded::new(&json, &tokio_postgres::types::Type::TEXT)
                    .map_err(PluginError::fatal)?;
                (None, vec![param])
            }
        }
    };
    Ok(Run {
        kind,
        cols,
        wires,
        params,
    })
}
