//! A single column value and its conversions to and from the wire.

use std::fmt;

use tessera_proto::common as pb;

use crate::schema::ColumnType;

/// One column value. Timestamps are milliseconds since the Unix epoch; dates are days
/// since 1970-01-01.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Float(f32),
    Double(f64),
    String(String),
    Timestamp(i64),
    Date(i32),
}

impl Value {
    /// The column type this value belongs to; `None` for NULL, which fits any nullable column.
    pub fn column_type(&self) -> Option<ColumnType> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(_) => ColumnType::Bool,
            Value::Int16(_) => ColumnType::Int16,
            Value::Int32(_) => ColumnType::Int32,
            Value::Int64(_) => ColumnType::Int64,
            Value::Float(_) => ColumnType::Float,
            Value::Double(_) => ColumnType::Double,
            Value::String(_) => ColumnType::String,
            Value::Timestamp(_) => ColumnType::Timestamp,
            Value::Date(_) => ColumnType::Date,
        })
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The name of this value's type as error messages show it.
    pub fn type_name(&self) -> &'static str {
        self.column_type().map_or("null", ColumnType::name)
    }

    /// Converts a wire value. An `int16_value` outside the i16 range is an error.
    pub fn from_proto(value: &pb::Value) -> Result<Value, String> {
        use pb::value::Kind;
        Ok(match &value.kind {
            None => Value::Null,
            Some(Kind::BoolValue(v)) => Value::Bool(*v),
            Some(Kind::Int16Value(v)) => Value::Int16(
                i16::try_from(*v).map_err(|_| format!("{v} does not fit in an int16"))?,
            ),
            Some(Kind::Int32Value(v)) => Value::Int32(*v),
            Some(Kind::Int64Value(v)) => Value::Int64(*v),
            Some(Kind::FloatValue(v)) => Value::Float(*v),
            Some(Kind::DoubleValue(v)) => Value::Double(*v),
            Some(Kind::StringValue(v)) => Value::String(v.clone()),
            Some(Kind::TimestampValue(v)) => Value::Timestamp(*v),
            Some(Kind::DateValue(v)) => Value::Date(*v),
        })
    }

    pub fn to_proto(&self) -> pb::Value {
        use pb::value::Kind;
        let kind = match self {
            Value::Null => None,
            Value::Bool(v) => Some(Kind::BoolValue(*v)),
            Value::Int16(v) => Some(Kind::Int16Value(i32::from(*v))),
            Value::Int32(v) => Some(Kind::Int32Value(*v)),
            Value::Int64(v) => Some(Kind::Int64Value(*v)),
            Value::Float(v) => Some(Kind::FloatValue(*v)),
            Value::Double(v) => Some(Kind::DoubleValue(*v)),
            Value::String(v) => Some(Kind::StringValue(v.clone())),
            Value::Timestamp(v) => Some(Kind::TimestampValue(*v)),
            Value::Date(v) => Some(Kind::DateValue(*v)),
        };
        pb::Value { kind }
    }

    /// Converts a whole wire row.
    pub fn row_from_proto(row: &pb::Row) -> Result<Vec<Value>, String> {
        row.values.iter().map(Value::from_proto).collect()
    }

    pub fn row_to_proto(values: &[Value]) -> pb::Row {
        pb::Row {
            values: values.iter().map(Value::to_proto).collect(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int16(v) => write!(f, "{v}"),
            Value::Int32(v) => write!(f, "{v}"),
            Value::Int64(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{v}"),
            Value::String(v) => f.write_str(v),
            Value::Timestamp(v) => write!(f, "{v}"),
            Value::Date(v) => write!(f, "{v}"),
        }
    }
}
