//! Index keys and the partition of a row.
//!
//! An index key is encoded as, for each key column in index order, a little-endian `u32`
//! length followed by the value's canonical text: a string's UTF-8 bytes; `true`/`false`;
//! integers, timestamps (ms) and dates (days) in decimal. The length prefixes make
//! multi-column keys unambiguous (`("a|b","c")` and `("a","b|c")` differ).
//!
//! The partition of a row is `fnv1a_64(key of the first index) % partitionnum`, where
//! FNV-1a uses offset basis `0xcbf29ce484222325` and prime `0x100000001b3`. This is part
//! of the on-disk contract: changing it would send rows to the wrong partition.

use crate::codec::{self, RowError};
use crate::schema::{Index, Schema};
use crate::value::Value;

/// The key of `index` taken from a full, already validated row.
pub fn key_from_row(schema: &Schema, index: &Index, row: &[Value]) -> Result<Vec<u8>, RowError> {
    let mut key = Vec::new();
    for &pos in &index.key_columns {
        let value = &row[pos];
        if value.is_null() {
            return Err(RowError::NullKey {
                index: index.name.clone(),
                column: schema.columns[pos].name.clone(),
            });
        }
        push_component(&mut key, value);
    }
    Ok(key)
}

/// The key of `index` from the key values of a request: one value per key column, of the
/// column's type.
pub fn key_from_values(
    schema: &Schema,
    index: &Index,
    values: &[Value],
) -> Result<Vec<u8>, RowError> {
    if values.len() != index.key_columns.len() {
        return Err(RowError::KeyColumnCount {
            index: index.name.clone(),
            expected: index.key_columns.len(),
            got: values.len(),
        });
    }
    let mut key = Vec::new();
    for (&pos, value) in index.key_columns.iter().zip(values) {
        let column = &schema.columns[pos];
        if value.is_null() {
            return Err(RowError::NullKey {
                index: index.name.clone(),
                column: column.name.clone(),
            });
        }
        codec::check_type(column, value)?;
        push_component(&mut key, value);
    }
    Ok(key)
}

/// The ts of a row in `index`: its ts column, or `write_time_ms` when the index has none.
pub fn ts_from_row(
    schema: &Schema,
    index: &Index,
    row: &[Value],
    write_time_ms: i64,
) -> Result<i64, RowError> {
    match index.ts_column {
        None => Ok(write_time_ms),
        Some(pos) => match row[pos] {
            Value::Int64(ts) | Value::Timestamp(ts) => Ok(ts),
            _ => Err(RowError::NullTs {
                index: index.name.clone(),
                column: schema.columns[pos].name.clone(),
            }),
        },
    }
}

fn push_component(key: &mut Vec<u8>, value: &Value) {
    let text = value.to_string();
    key.extend_from_slice(&(text.len() as u32).to_le_bytes());
    key.extend_from_slice(text.as_bytes());
}

/// FNV-1a, 64 bit.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition a key of the first index belongs to.
pub fn partition_of(first_index_key: &[u8], partition_num: u32) -> u32 {
    assert!(partition_num > 0, "a table has at least one partition");
    (fnv1a_64(first_index_key) % u64::from(partition_num)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnType, Ttl};

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn partition_is_stable() {
        let schema = Schema::new(
            &[("id", ColumnType::String, false)],
            &[(&["id"], None, Ttl::NONE)],
        )
        .unwrap();
        let key = key_from_row(
            &schema,
            &schema.indexes[0],
            &[Value::String("user1".into())],
        )
        .unwrap();
        assert_eq!(key, b"\x05\x00\x00\x00user1");
        // Pinned: a change here moves existing rows to other partitions.
        assert_eq!(
            partition_of(&key, 8),
            (fnv1a_64(b"\x05\x00\x00\x00user1") % 8) as u32
        );
        assert_eq!(partition_of(&key, 1), 0);
    }

    #[test]
    fn multi_column_keys_are_unambiguous() {
        let schema = Schema::new(
            &[
                ("a", ColumnType::String, false),
                ("b", ColumnType::String, false),
            ],
            &[(&["a", "b"], None, Ttl::NONE)],
        )
        .unwrap();
        let ix = &schema.indexes[0];
        let k1 = key_from_row(
            &schema,
            ix,
            &[Value::String("a|b".into()), Value::String("c".into())],
        )
        .unwrap();
        let k2 = key_from_row(
            &schema,
            ix,
            &[Value::String("a".into()), Value::String("b|c".into())],
        )
        .unwrap();
        assert_ne!(k1, k2);
        let from_request = key_from_values(
            &schema,
            ix,
            &[Value::String("a|b".into()), Value::String("c".into())],
        )
        .unwrap();
        assert_eq!(k1, from_request);
    }

    #[test]
    fn key_errors() {
        let schema = Schema::new(
            &[
                ("id", ColumnType::Int32, true),
                ("ts", ColumnType::Timestamp, true),
            ],
            &[(&["id"], Some("ts"), Ttl::NONE)],
        )
        .unwrap();
        let ix = &schema.indexes[0];
        let err = key_from_row(&schema, ix, &[Value::Null, Value::Timestamp(1)]).unwrap_err();
        assert_eq!(err.column(), Some("id"));
        let err = key_from_values(&schema, ix, &[]).unwrap_err();
        assert!(matches!(
            err,
            RowError::KeyColumnCount {
                expected: 1,
                got: 0,
                ..
            }
        ));
        let err = key_from_values(&schema, ix, &[Value::Int64(1)]).unwrap_err();
        assert!(matches!(err, RowError::TypeMismatch { .. }));
        let err = ts_from_row(&schema, ix, &[Value::Int32(1), Value::Null], 5).unwrap_err();
        assert_eq!(err.column(), Some("ts"));
    }
}
