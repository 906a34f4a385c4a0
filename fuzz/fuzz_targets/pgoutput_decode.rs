//! The pgoutput decoder (`postgres_cdc`) on arbitrary bytes, as a walsender's XLogData payload.
//!
//! Properties beyond "does not panic, does not hang": a decoded message encodes its own size
//! (no tuple claims more columns than bytes it was given), and every value of a decoded tuple
//! turns into JSON under every column type the source types (integers, floats, booleans,
//! json, bytea, timestamps, numeric, arrays of each), and that JSON serializes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orbit_plugin_postgres::decode::{decode, Col, Decoded};
use orbit_plugin_postgres::types::col_to_json;

/// Every type OID `types::to_json` treats apart, and one it does not (text).
const TYPES: &[u32] = &[
    16, 17, 20, 21, 23, 25, 26, 114, 700, 701, 1000, 1005, 1007, 1009, 1014, 1015, 1016, 1021,
    1022, 1028, 1114, 1184, 1231, 1700, 2950, 2951, 3802,
];

fn check(cols: &[Col], input: &[u8]) {
    // Each column takes at least one byte of the input (its kind).
    assert!(
        cols.len() <= input.len(),
        "{} columns from {} bytes",
        cols.len(),
        input.len()
    );
    for col in cols {
        for &oid in TYPES {
            let json = col_to_json(oid, col);
            serde_json::to_string(&json).expect("a JSON value serializes");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = decode(data) else {
        return;
    };
    match &decoded {
        Decoded::Relation(rel) => {
            assert!(rel.columns.len() <= data.len());
            let _ = rel.qualified();
        }
        Decoded::Insert { new, .. } => check(new, data),
        Decoded::Update { old, new, .. } => {
            check(new, data);
            if let Some((_, old)) = old {
                check(old, data);
            }
        }
        Decoded::Delete { old, .. } => check(&old.1, data),
        Decoded::Truncate { rels, .. } => assert!(rels.len() * 4 <= data.len()),
        Decoded::Other => {}
    }
});
