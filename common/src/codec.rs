//! The compact binary row encoding.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! u8   format            = 1
//! u16  schema version    of the schema the row was written with
//! u16  column count      n
//! [u8; ceil(n/8)]        null bitmap: bit i set = column i is NULL
//! then, for every non-NULL column in schema order:
//!   bool 1 byte | int16 2 | int32 4 | int64 8 | float 4 | double 8
//!   timestamp 8 (i64 ms) | date 4 (i32 days)
//!   string: LEB128 length, then the UTF-8 bytes
//! ```
//!
//! A row written with an older schema version has fewer columns; decoding it with a newer
//! schema that only appended nullable columns fills those with NULL, so adding a column
//! never rewrites data.

use thiserror::Error;

use crate::schema::{Column, ColumnType, Schema};
use crate::value::Value;

pub const ROW_FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 5;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RowError {
    #[error("row has {got} values, the table has {expected} columns")]
    ColumnCount { expected: usize, got: usize },
    #[error("column `{column}` expects {expected}, got {got}")]
    TypeMismatch {
        column: String,
        expected: &'static str,
        got: &'static str,
    },
    #[error("column `{column}` is not nullable but the value is NULL")]
    NullNotAllowed { column: String },
    #[error("key column `{column}` of index `{index}` is NULL")]
    NullKey { index: String, column: String },
    #[error("ts column `{column}` of index `{index}` is NULL")]
    NullTs { index: String, column: String },
    #[error("index `{index}` has {expected} key columns, the request gives {got} values")]
    KeyColumnCount {
        index: String,
        expected: usize,
        got: usize,
    },
    #[error("encoded row is corrupt: {0}")]
    Corrupt(String),
}

impl RowError {
    /// The column the error is about, when there is one.
    pub fn column(&self) -> Option<&str> {
        match self {
            RowError::TypeMismatch { column, .. }
            | RowError::NullNotAllowed { column }
            | RowError::NullKey { column, .. }
            | RowError::NullTs { column, .. } => Some(column),
            _ => None,
        }
    }
}

/// Checks `values` against `schema`: count, types and nullability. Errors name the column.
pub fn validate(schema: &Schema, values: &[Value]) -> Result<(), RowError> {
    if values.len() != schema.columns.len() {
        return Err(RowError::ColumnCount {
            expected: schema.columns.len(),
            got: values.len(),
        });
    }
    for (column, value) in schema.columns.iter().zip(values) {
        if value.is_null() && !column.nullable {
            return Err(RowError::NullNotAllowed {
                column: column.name.clone(),
            });
        }
        check_type(column, value)?;
    }
    Ok(())
}

/// A non-NULL value must have its column's type.
pub(crate) fn check_type(column: &Column, value: &Value) -> Result<(), RowError> {
    match value.column_type() {
        Some(ty) if ty != column.ty => Err(RowError::TypeMismatch {
            column: column.name.clone(),
            expected: column.ty.name(),
            got: ty.name(),
        }),
        _ => Ok(()),
    }
}

/// Validates and encodes a row.
pub fn encode(schema: &Schema, values: &[Value]) -> Result<Vec<u8>, RowError> {
    validate(schema, values)?;
    let n = values.len();
    let bitmap_len = n.div_ceil(8);
    let mut out = Vec::with_capacity(HEADER_LEN + bitmap_len + n * 8);
    out.push(ROW_FORMAT_V1);
    out.extend_from_slice(&(schema.version as u16).to_le_bytes());
    out.extend_from_slice(&(n as u16).to_le_bytes());
    let bitmap_at = out.len();
    out.resize(bitmap_at + bitmap_len, 0);
    for (i, value) in values.iter().enumerate() {
        match value {
            Value::Null => out[bitmap_at + i / 8] |= 1 << (i % 8),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::Int16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Int32(v) | Value::Date(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Int64(v) | Value::Timestamp(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Float(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Double(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::String(s) => {
                put_varint(&mut out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    Ok(out)
}

/// Decodes a row written with this schema or an older version of it.
pub fn decode(schema: &Schema, bytes: &[u8]) -> Result<Vec<Value>, RowError> {
    let mut reader = Reader { bytes, pos: 0 };
    let format = reader.take(1)?[0];
    if format != ROW_FORMAT_V1 {
        return Err(RowError::Corrupt(format!("unknown row format {format}")));
    }
    let _version = u16::from_le_bytes(reader.array()?);
    let n = usize::from(u16::from_le_bytes(reader.array()?));
    if n > schema.columns.len() {
        return Err(RowError::Corrupt(format!(
            "row has {n} columns, schema only {}",
            schema.columns.len()
        )));
    }
    let bitmap = reader.take(n.div_ceil(8))?.to_vec();
    let mut values = Vec::with_capacity(schema.columns.len());
    for (i, column) in schema.columns.iter().enumerate() {
        if i >= n || bitmap[i / 8] & (1 << (i % 8)) != 0 {
            values.push(Value::Null);
            continue;
        }
        values.push(match column.ty {
            ColumnType::Bool => Value::Bool(reader.take(1)?[0] != 0),
            ColumnType::Int16 => Value::Int16(i16::from_le_bytes(reader.array()?)),
            ColumnType::Int32 => Value::Int32(i32::from_le_bytes(reader.array()?)),
            ColumnType::Date => Value::Date(i32::from_le_bytes(reader.array()?)),
            ColumnType::Int64 => Value::Int64(i64::from_le_bytes(reader.array()?)),
            ColumnType::Timestamp => Value::Timestamp(i64::from_le_bytes(reader.array()?)),
            ColumnType::Float => Value::Float(f32::from_le_bytes(reader.array()?)),
            ColumnType::Double => Value::Double(f64::from_le_bytes(reader.array()?)),
            ColumnType::String => {
                let len = reader.varint()?;
                let len = usize::try_from(len)
                    .map_err(|_| RowError::Corrupt(format!("string length {len}")))?;
                let raw = reader.take(len)?;
                let text = std::str::from_utf8(raw).map_err(|_| {
                    RowError::Corrupt(format!("column `{}` is not UTF-8", column.name))
                })?;
                Value::String(text.to_string())
            }
        });
    }
    if reader.pos != bytes.len() {
        return Err(RowError::Corrupt(format!(
            "{} trailing bytes",
            bytes.len() - reader.pos
        )));
    }
    Ok(values)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], RowError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| RowError::Corrupt("row is truncated".into()))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RowError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn varint(&mut self) -> Result<u64, RowError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RowError::Corrupt("varint too long".into()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::schema::{Index, Ttl};

    fn value_of(ty: ColumnType) -> BoxedStrategy<Value> {
        match ty {
            ColumnType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
            ColumnType::Int16 => any::<i16>().prop_map(Value::Int16).boxed(),
            ColumnType::Int32 => any::<i32>().prop_map(Value::Int32).boxed(),
            ColumnType::Int64 => any::<i64>().prop_map(Value::Int64).boxed(),
            // NaN != NaN, so compare on bits via finite values only; the codec is bit-exact.
            ColumnType::Float => any::<f32>()
                .prop_filter("finite", |v| !v.is_nan())
                .prop_map(Value::Float)
                .boxed(),
            ColumnType::Double => any::<f64>()
                .prop_filter("finite", |v| !v.is_nan())
                .prop_map(Value::Double)
                .boxed(),
            ColumnType::String => ".{0,40}".prop_map(Value::String).boxed(),
            ColumnType::Timestamp => any::<i64>().prop_map(Value::Timestamp).boxed(),
            ColumnType::Date => any::<i32>().prop_map(Value::Date).boxed(),
        }
    }

    /// Any schema of 1..40 columns, with one row matching it.
    fn schema_and_row() -> impl Strategy<Value = (Schema, Vec<Value>)> {
        prop::collection::vec(
            (
                prop::sample::select(ColumnType::ALL.to_vec()),
                any::<bool>(),
            ),
            1..40,
        )
        .prop_flat_map(|cols| {
            let schema = Schema {
                version: 3,
                columns: cols
                    .iter()
                    .enumerate()
                    .map(|(i, (ty, nullable))| Column {
                        name: format!("c{i}"),
                        ty: *ty,
                        nullable: *nullable,
                        added_in_version: 0,
                    })
                    .collect(),
                indexes: vec![Index {
                    name: "c0".into(),
                    key_columns: vec![0],
                    ts_column: None,
                    ttl: Ttl::NONE,
                    added_in_version: 0,
                    deleted: false,
                }],
            };
            let values: Vec<BoxedStrategy<Value>> = cols
                .iter()
                .map(|(ty, nullable)| {
                    if *nullable {
                        prop_oneof![1 => Just(Value::Null), 3 => value_of(*ty)].boxed()
                    } else {
                        value_of(*ty)
                    }
                })
                .collect();
            (Just(schema), values)
        })
    }

    proptest! {
        #[test]
        fn any_row_of_any_schema_round_trips((schema, row) in schema_and_row()) {
            let bytes = encode(&schema, &row).unwrap();
            prop_assert_eq!(decode(&schema, &bytes).unwrap(), row);
        }

        #[test]
        fn truncated_rows_are_errors_not_panics((schema, row) in schema_and_row(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&schema, &row).unwrap();
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&schema, &bytes[..cut]).is_err());
        }

        #[test]
        fn arbitrary_bytes_are_a_row_or_an_error_never_a_panic(
            (schema, row) in schema_and_row(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
            noise in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = decode(&schema, &noise);
            let mut bytes = encode(&schema, &row).unwrap();
            for (at, mask) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= mask;
            }
            if let Ok(decoded) = decode(&schema, &bytes) {
                prop_assert_eq!(decoded.len(), schema.columns.len());
            }
        }
    }

    fn two_columns() -> Schema {
        Schema::new(
            &[
                ("id", ColumnType::String, false),
                ("v", ColumnType::Int64, true),
            ],
            &[(&["id"], None, Ttl::NONE)],
        )
        .unwrap()
    }

    #[test]
    fn errors_name_the_column() {
        let schema = two_columns();
        let err = encode(&schema, &[Value::String("a".into())]).unwrap_err();
        assert_eq!(
            err,
            RowError::ColumnCount {
                expected: 2,
                got: 1
            }
        );
        let err = encode(&schema, &[Value::String("a".into()), Value::Int32(1)]).unwrap_err();
        assert_eq!(err.column(), Some("v"));
        assert!(
            err.to_string().contains("expects int64, got int32"),
            "{err}"
        );
        let err = encode(&schema, &[Value::Null, Value::Int64(1)]).unwrap_err();
        assert_eq!(
            err,
            RowError::NullNotAllowed {
                column: "id".into()
            }
        );
    }

    #[test]
    fn old_rows_decode_with_appended_columns() {
        let old = two_columns();
        let bytes = encode(&old, &[Value::String("a".into()), Value::Int64(7)]).unwrap();
        let mut new = old.clone();
        new.version = 2;
        new.columns.push(Column {
            name: "extra".into(),
            ty: ColumnType::String,
            nullable: true,
            added_in_version: 2,
        });
        assert_eq!(
            decode(&new, &bytes).unwrap(),
            vec![Value::String("a".into()), Value::Int64(7), Value::Null]
        );
    }

    #[test]
    fn rejects_unknown_format_and_trailing_bytes() {
        let schema = two_columns();
        let mut bytes = encode(&schema, &[Value::String("a".into()), Value::Null]).unwrap();
        bytes.push(0);
        assert!(matches!(decode(&schema, &bytes), Err(RowError::Corrupt(_))));
        bytes[0] = 9;
        assert!(matches!(decode(&schema, &bytes), Err(RowError::Corrupt(_))));
    }
}
