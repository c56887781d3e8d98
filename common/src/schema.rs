//! Table schemas: columns, indexes and TTLs, validated once when they enter the system.

use std::collections::HashSet;

use thiserror::Error;

use tessera_proto::common as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float,
    Double,
    String,
    Timestamp,
    Date,
}

impl ColumnType {
    pub const ALL: [ColumnType; 9] = [
        ColumnType::Bool,
        ColumnType::Int16,
        ColumnType::Int32,
        ColumnType::Int64,
        ColumnType::Float,
        ColumnType::Double,
        ColumnType::String,
        ColumnType::Timestamp,
        ColumnType::Date,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Bool => "bool",
            ColumnType::Int16 => "int16",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::Float => "float",
            ColumnType::Double => "double",
            ColumnType::String => "string",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Date => "date",
        }
    }

    fn from_proto(ty: i32) -> Option<ColumnType> {
        Some(match pb::ColumnType::try_from(ty).ok()? {
            pb::ColumnType::Unspecified => return None,
            pb::ColumnType::Bool => ColumnType::Bool,
            pb::ColumnType::Int16 => ColumnType::Int16,
            pb::ColumnType::Int32 => ColumnType::Int32,
            pb::ColumnType::Int64 => ColumnType::Int64,
            pb::ColumnType::Float => ColumnType::Float,
            pb::ColumnType::Double => ColumnType::Double,
            pb::ColumnType::String => ColumnType::String,
            pb::ColumnType::Timestamp => ColumnType::Timestamp,
            pb::ColumnType::Date => ColumnType::Date,
        })
    }

    fn to_proto(self) -> pb::ColumnType {
        match self {
            ColumnType::Bool => pb::ColumnType::Bool,
            ColumnType::Int16 => pb::ColumnType::Int16,
            ColumnType::Int32 => pb::ColumnType::Int32,
            ColumnType::Int64 => pb::ColumnType::Int64,
            ColumnType::Float => pb::ColumnType::Float,
            ColumnType::Double => pb::ColumnType::Double,
            ColumnType::String => pb::ColumnType::String,
            ColumnType::Timestamp => pb::ColumnType::Timestamp,
            ColumnType::Date => pb::ColumnType::Date,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    /// The schema version that appended it (0: the table was created with it).
    pub added_in_version: u32,
}

impl Column {
    /// A value of this column from its text, as ns_client and CSV files write it: `NULL`
    /// for null, numbers in decimal, bools as true/false, timestamps in milliseconds and
    /// dates in days since 1970-01-01; the error names the column.
    pub fn parse_value(&self, text: &str) -> Result<crate::Value, String> {
        use crate::Value;
        if text.eq_ignore_ascii_case("null") {
            return Ok(Value::Null);
        }
        let bad = || {
            format!(
                "`{text}` is not a valid {} (column `{}`)",
                self.ty.name(),
                self.name
            )
        };
        Ok(match self.ty {
            ColumnType::Bool => Value::Bool(text.parse().map_err(|_| bad())?),
            ColumnType::Int16 => Value::Int16(text.parse().map_err(|_| bad())?),
            ColumnType::Int32 => Value::Int32(text.parse().map_err(|_| bad())?),
            ColumnType::Int64 => Value::Int64(text.parse().map_err(|_| bad())?),
            ColumnType::Float => Value::Float(text.parse().map_err(|_| bad())?),
            ColumnType::Double => Value::Double(text.parse().map_err(|_| bad())?),
            ColumnType::String => Value::String(text.to_string()),
            ColumnType::Timestamp => Value::Timestamp(text.parse().map_err(|_| bad())?),
            ColumnType::Date => Value::Date(text.parse().map_err(|_| bad())?),
        })
    }
}

/// How entries of an index expire. A bound of 0 means "no bound" on that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Entries with a ts older than `now - minutes` expire.
    Absolute { minutes: u64 },
    /// Only the newest `count` entries of each key are kept.
    Latest { count: u64 },
    /// Expires only when too old *and* beyond the newest `count`.
    AbsAndLat { minutes: u64, count: u64 },
    /// Expires when too old *or* beyond the newest `count`.
    AbsOrLat { minutes: u64, count: u64 },
}

impl Ttl {
    pub const NONE: Ttl = Ttl::Absolute { minutes: 0 };

    /// Whether the entry at `rank` (0 = newest of its key) with timestamp `ts` has expired
    /// at `now_ms`. Along one key's entries (ts descending) the answer is monotone: once
    /// true, it stays true for every older entry, which lets reads and GC stop early.
    pub fn is_expired(self, now_ms: i64, ts: i64, rank: u64) -> bool {
        let too_old = |minutes: u64| {
            minutes > 0 && ts < now_ms.saturating_sub((minutes as i64).saturating_mul(60_000))
        };
        let beyond = |count: u64| count > 0 && rank >= count;
        match self {
            Ttl::Absolute { minutes } => too_old(minutes),
            Ttl::Latest { count } => beyond(count),
            Ttl::AbsAndLat { minutes, count } => {
                minutes > 0 && count > 0 && too_old(minutes) && beyond(count)
            }
            Ttl::AbsOrLat { minutes, count } => too_old(minutes) || beyond(count),
        }
    }

    /// When expiry depends on an entry's rank: the `count` that ranks are compared with.
    /// Every rank at or beyond it behaves alike, so a reader resuming in the middle of a
    /// key needs to count at most this many entries to know where it stands.
    pub fn rank_bound(self) -> Option<u64> {
        match self {
            Ttl::Absolute { .. } => None,
            Ttl::Latest { count } | Ttl::AbsAndLat { count, .. } | Ttl::AbsOrLat { count, .. } => {
                (count > 0).then_some(count)
            }
        }
    }

    /// True when no entry can ever expire (every bound that matters is 0).
    pub fn never_expires(self) -> bool {
        match self {
            Ttl::Absolute { minutes } => minutes == 0,
            Ttl::Latest { count } => count == 0,
            Ttl::AbsAndLat { minutes, count } => minutes == 0 || count == 0,
            Ttl::AbsOrLat { minutes, count } => minutes == 0 && count == 0,
        }
    }

    /// `None` is kept forever.
    pub fn from_proto(ttl: Option<&pb::TtlDesc>) -> Result<Ttl, SchemaError> {
        let Some(ttl) = ttl else { return Ok(Ttl::NONE) };
        let (minutes, count) = (ttl.abs_ttl_minutes, ttl.lat_ttl);
        Ok(match pb::TtlType::try_from(ttl.ttl_type) {
            Ok(pb::TtlType::Absolute) => Ttl::Absolute { minutes },
            Ok(pb::TtlType::Latest) => Ttl::Latest { count },
            Ok(pb::TtlType::AbsAndLat) => Ttl::AbsAndLat { minutes, count },
            Ok(pb::TtlType::AbsOrLat) => Ttl::AbsOrLat { minutes, count },
            Err(_) => return Err(SchemaError::UnknownTtlType(ttl.ttl_type)),
        })
    }

    pub fn to_proto(self) -> pb::TtlDesc {
        let (ttl_type, abs_ttl_minutes, lat_ttl) = match self {
            Ttl::Absolute { minutes } => (pb::TtlType::Absolute, minutes, 0),
            Ttl::Latest { count } => (pb::TtlType::Latest, 0, count),
            Ttl::AbsAndLat { minutes, count } => (pb::TtlType::AbsAndLat, minutes, count),
            Ttl::AbsOrLat { minutes, count } => (pb::TtlType::AbsOrLat, minutes, count),
        };
        pb::TtlDesc {
            ttl_type: ttl_type as i32,
            abs_ttl_minutes,
            lat_ttl,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub name: String,
    /// Positions of the key columns in the schema.
    pub key_columns: Vec<usize>,
    /// Position of the ts column; `None` orders entries by write time.
    pub ts_column: Option<usize>,
    pub ttl: Ttl,
    /// The schema version that appended it (0: the table was created with it). Rows
    /// whose key or ts in it is NULL (rows older than a column it uses) are not in it.
    pub added_in_version: u32,
    /// Dropped: it keeps its position, since log entries name indexes by position, but
    /// holds no entries, serves no reads, and its name is free again.
    pub deleted: bool,
}

impl Index {
    /// Live and made with the table: a row must have a key and ts in it.
    pub fn requires_key(&self) -> bool {
        !self.deleted && self.added_in_version == 0
    }
}

/// A validated schema. Construct it with [`Schema::from_proto`] or [`Schema::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub version: u32,
    pub columns: Vec<Column>,
    pub indexes: Vec<Index>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("a table needs at least one column")]
    NoColumns,
    #[error("a table needs at least one index")]
    NoIndexes,
    #[error("column name is empty")]
    EmptyColumnName,
    #[error("column `{0}` is defined twice")]
    DuplicateColumn(String),
    #[error("column `{0}` has no valid type")]
    MissingColumnType(String),
    #[error("index `{0}` is defined twice")]
    DuplicateIndex(String),
    #[error("index `{0}` has no key columns")]
    NoKeyColumns(String),
    #[error("index `{index}` names unknown column `{column}`")]
    UnknownColumn { index: String, column: String },
    #[error("index `{index}`: column `{column}` of type {ty} cannot be a key (float and double are not allowed)")]
    BadKeyType {
        index: String,
        column: String,
        ty: &'static str,
    },
    #[error("index `{index}`: ts column `{column}` must be int64 or timestamp, not {ty}")]
    BadTsType {
        index: String,
        column: String,
        ty: &'static str,
    },
    #[error("unknown ttl type {0}")]
    UnknownTtlType(i32),
    #[error("too many columns: {0} (at most 65535)")]
    TooManyColumns(usize),
    #[error("the first index cannot be deleted: it decides each row's partition")]
    FirstIndexDeleted,
    #[error("{0}")]
    Incompatible(String),
}

/// Column definition used to build schemas in code: `(name, type, nullable)`.
pub type ColumnSpec<'a> = (&'a str, ColumnType, bool);

/// Index definition used to build schemas in code: `(key columns, ts column, ttl)`.
pub type IndexSpec<'a> = (&'a [&'a str], Option<&'a str>, Ttl);

impl Schema {
    /// Builds and validates a schema from plain definitions (handy in tests and tools).
    pub fn new(
        columns: &[ColumnSpec<'_>],
        indexes: &[IndexSpec<'_>],
    ) -> Result<Schema, SchemaError> {
        let proto = pb::TableSchema {
            version: 1,
            columns: columns
                .iter()
                .map(|(name, ty, nullable)| pb::ColumnDesc {
                    name: name.to_string(),
                    r#type: ty.to_proto() as i32,
                    nullable: *nullable,
                    added_in_version: 0,
                })
                .collect(),
            indexes: indexes
                .iter()
                .map(|(keys, ts, ttl)| pb::IndexDesc {
                    name: String::new(),
                    key_columns: keys.iter().map(|k| k.to_string()).collect(),
                    ts_column: ts.unwrap_or_default().to_string(),
                    ttl: Some(ttl.to_proto()),
                    added_in_version: 0,
                    deleted: false,
                })
                .collect(),
        };
        Schema::from_proto(&proto)
    }

    pub fn from_proto(proto: &pb::TableSchema) -> Result<Schema, SchemaError> {
        if proto.columns.is_empty() {
            return Err(SchemaError::NoColumns);
        }
        if proto.columns.len() > usize::from(u16::MAX) {
            return Err(SchemaError::TooManyColumns(proto.columns.len()));
        }
        let mut names = HashSet::new();
        let mut columns = Vec::with_capacity(proto.columns.len());
        for c in &proto.columns {
            if c.name.is_empty() {
                return Err(SchemaError::EmptyColumnName);
            }
            if !names.insert(c.name.as_str()) {
                return Err(SchemaError::DuplicateColumn(c.name.clone()));
            }
            let ty = ColumnType::from_proto(c.r#type)
                .ok_or_else(|| SchemaError::MissingColumnType(c.name.clone()))?;
            columns.push(Column {
                name: c.name.clone(),
                ty,
                nullable: c.nullable,
                added_in_version: c.added_in_version,
            });
        }
        if proto.indexes.is_empty() {
            return Err(SchemaError::NoIndexes);
        }
        let position = |index: &str, column: &str| {
            columns
                .iter()
                .position(|c| c.name == column)
                .ok_or_else(|| SchemaError::UnknownColumn {
                    index: index.to_string(),
                    column: column.to_string(),
                })
        };
        let mut index_names = HashSet::new();
        let mut indexes = Vec::with_capacity(proto.indexes.len());
        for ix in &proto.indexes {
            let name = if ix.name.is_empty() {
                ix.key_columns.join("_")
            } else {
                ix.name.clone()
            };
            if ix.key_columns.is_empty() {
                return Err(SchemaError::NoKeyColumns(name));
            }
            if ix.deleted && indexes.is_empty() {
                return Err(SchemaError::FirstIndexDeleted);
            }
            // A deleted index's name is free again.
            if !ix.deleted && !index_names.insert(name.clone()) {
                return Err(SchemaError::DuplicateIndex(name));
            }
            let mut key_columns = Vec::with_capacity(ix.key_columns.len());
            for key in &ix.key_columns {
                let pos = position(&name, key)?;
                let ty = columns[pos].ty;
                if matches!(ty, ColumnType::Float | ColumnType::Double) {
                    return Err(SchemaError::BadKeyType {
                        index: name,
                        column: key.clone(),
                        ty: ty.name(),
                    });
                }
                key_columns.push(pos);
            }
            let ts_column = if ix.ts_column.is_empty() {
                None
            } else {
                let pos = position(&name, &ix.ts_column)?;
                let ty = columns[pos].ty;
                if !matches!(ty, ColumnType::Int64 | ColumnType::Timestamp) {
                    return Err(SchemaError::BadTsType {
                        index: name,
                        column: ix.ts_column.clone(),
                        ty: ty.name(),
                    });
                }
                Some(pos)
            };
            indexes.push(Index {
                name,
                key_columns,
                ts_column,
                ttl: Ttl::from_proto(ix.ttl.as_ref())?,
                added_in_version: ix.added_in_version,
                deleted: ix.deleted,
            });
        }
        Ok(Schema {
            version: proto.version.max(1),
            columns,
            indexes,
        })
    }

    pub fn to_proto(&self) -> pb::TableSchema {
        pb::TableSchema {
            version: self.version,
            columns: self
                .columns
                .iter()
                .map(|c| pb::ColumnDesc {
                    name: c.name.clone(),
                    r#type: c.ty.to_proto() as i32,
                    nullable: c.nullable,
                    added_in_version: c.added_in_version,
                })
                .collect(),
            indexes: self
                .indexes
                .iter()
                .map(|ix| pb::IndexDesc {
                    name: ix.name.clone(),
                    key_columns: ix
                        .key_columns
                        .iter()
                        .map(|&p| self.columns[p].name.clone())
                        .collect(),
                    ts_column: ix
                        .ts_column
                        .map(|p| self.columns[p].name.clone())
                        .unwrap_or_default(),
                    ttl: Some(ix.ttl.to_proto()),
                    added_in_version: ix.added_in_version,
                    deleted: ix.deleted,
                })
                .collect(),
        }
    }

    /// Finds a live index by name; the empty name means the first index.
    pub fn index(&self, name: &str) -> Option<(usize, &Index)> {
        if name.is_empty() {
            return self.indexes.first().map(|ix| (0, ix));
        }
        self.indexes
            .iter()
            .enumerate()
            .find(|(_, ix)| !ix.deleted && ix.name == name)
    }

    /// The indexes that serve reads, with their positions.
    pub fn live_indexes(&self) -> impl Iterator<Item = (usize, &Index)> {
        self.indexes
            .iter()
            .enumerate()
            .filter(|(_, ix)| !ix.deleted)
    }

    /// Whether `next` may follow this schema: a higher version that keeps every column
    /// and index where it is, and only appends columns (nullable ones), appends indexes,
    /// or marks indexes deleted (never the first, never back). TTLs may differ: they
    /// change apart from the schema.
    pub fn check_successor(&self, next: &Schema) -> Result<(), SchemaError> {
        let bad = |why: String| Err(SchemaError::Incompatible(why));
        if next.version <= self.version {
            return bad(format!(
                "schema version {} does not follow version {}",
                next.version, self.version
            ));
        }
        if next.columns.len() < self.columns.len()
            || next.columns[..self.columns.len()] != self.columns[..]
        {
            return bad("a schema change may only append columns".into());
        }
        if let Some(c) = next.columns[self.columns.len()..]
            .iter()
            .find(|c| !c.nullable)
        {
            return bad(format!(
                "an added column must be nullable (existing rows have no `{}`)",
                c.name
            ));
        }
        if next.indexes.len() < self.indexes.len() {
            return bad("a schema change may not remove an index's position".into());
        }
        for (old, new) in self.indexes.iter().zip(&next.indexes) {
            let same = old.name == new.name
                && old.key_columns == new.key_columns
                && old.ts_column == new.ts_column
                && old.added_in_version == new.added_in_version;
            if !same || (old.deleted && !new.deleted) {
                return bad(format!("index `{}` changed beyond deletion", old.name));
            }
        }
        Ok(())
    }

    /// The same columns and indexes (TTLs aside, which change apart from the schema).
    pub fn same_shape(&self, other: &Schema) -> bool {
        let shape = |s: &Schema| {
            let mut proto = s.to_proto();
            proto.indexes.iter_mut().for_each(|ix| ix.ttl = None);
            proto
        };
        shape(self) == shape(other)
    }

    /// This schema with `index` appended (it has no entries yet: each replica builds it
    /// from its rows when it applies the change).
    pub fn with_index_added(&self, index: &pb::IndexDesc) -> Result<Schema, SchemaError> {
        let mut proto = self.to_proto();
        proto.version = self.version + 1;
        let mut index = index.clone();
        index.deleted = false;
        index.added_in_version = proto.version;
        proto.indexes.push(index);
        Schema::from_proto(&proto)
    }

    /// This schema with the live index `name` marked deleted.
    pub fn with_index_deleted(&self, name: &str) -> Result<Schema, SchemaError> {
        let (position, _) = self
            .index(name)
            .filter(|_| !name.is_empty())
            .ok_or_else(|| SchemaError::Incompatible(format!("there is no index `{name}`")))?;
        let mut proto = self.to_proto();
        proto.version = self.version + 1;
        proto.indexes[position].deleted = true;
        Schema::from_proto(&proto)
    }

    /// This schema with `column` appended; it must be nullable.
    pub fn with_column_added(&self, column: &pb::ColumnDesc) -> Result<Schema, SchemaError> {
        if !column.nullable {
            return Err(SchemaError::Incompatible(format!(
                "an added column must be nullable (existing rows have no `{}`)",
                column.name
            )));
        }
        let mut proto = self.to_proto();
        proto.version = self.version + 1;
        let mut column = column.clone();
        column.added_in_version = proto.version;
        proto.columns.push(column);
        Schema::from_proto(&proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_definitions() {
        use ColumnType::*;
        let ok = Schema::new(
            &[
                ("id", String, false),
                ("ts", Timestamp, false),
                ("v", Double, true),
            ],
            &[(&["id"], Some("ts"), Ttl::NONE)],
        )
        .unwrap();
        assert_eq!(ok.indexes[0].name, "id");
        assert_eq!(Schema::from_proto(&ok.to_proto()).unwrap(), ok);

        let dup = Schema::new(
            &[("a", Int32, false), ("a", Int32, false)],
            &[(&["a"], None, Ttl::NONE)],
        );
        assert_eq!(dup.unwrap_err(), SchemaError::DuplicateColumn("a".into()));
        let unknown = Schema::new(&[("a", Int32, false)], &[(&["b"], None, Ttl::NONE)]);
        assert!(matches!(
            unknown.unwrap_err(),
            SchemaError::UnknownColumn { .. }
        ));
        let float_key = Schema::new(&[("a", Float, false)], &[(&["a"], None, Ttl::NONE)]);
        assert!(matches!(
            float_key.unwrap_err(),
            SchemaError::BadKeyType { .. }
        ));
        let bad_ts = Schema::new(
            &[("a", Int32, false), ("t", String, false)],
            &[(&["a"], Some("t"), Ttl::NONE)],
        );
        assert!(matches!(bad_ts.unwrap_err(), SchemaError::BadTsType { .. }));
        let no_index = Schema::new(&[("a", Int32, false)], &[]);
        assert_eq!(no_index.unwrap_err(), SchemaError::NoIndexes);
    }

    #[test]
    fn absolute_ttl() {
        let ttl = Ttl::Absolute { minutes: 1 };
        let now = 10 * 60_000;
        assert!(!ttl.is_expired(now, now - 59_999, 100));
        assert!(!ttl.is_expired(now, now - 60_000, 0));
        assert!(ttl.is_expired(now, now - 60_001, 0));
        assert!(!Ttl::NONE.is_expired(now, 0, 1_000_000));
    }

    #[test]
    fn latest_ttl() {
        let ttl = Ttl::Latest { count: 2 };
        assert!(!ttl.is_expired(0, 0, 0));
        assert!(!ttl.is_expired(0, 0, 1));
        assert!(ttl.is_expired(0, i64::MAX, 2));
        assert!(!Ttl::Latest { count: 0 }.is_expired(0, 0, 99));
    }

    #[test]
    fn abs_and_lat_ttl_needs_both() {
        let ttl = Ttl::AbsAndLat {
            minutes: 1,
            count: 2,
        };
        let now = 10 * 60_000;
        let old = now - 120_000;
        assert!(!ttl.is_expired(now, old, 1), "old but within latest 2");
        assert!(!ttl.is_expired(now, now, 5), "beyond latest 2 but fresh");
        assert!(ttl.is_expired(now, old, 2), "old and beyond latest 2");
    }

    #[test]
    fn abs_or_lat_ttl_needs_either() {
        let ttl = Ttl::AbsOrLat {
            minutes: 1,
            count: 2,
        };
        let now = 10 * 60_000;
        let old = now - 120_000;
        assert!(ttl.is_expired(now, old, 0), "old");
        assert!(ttl.is_expired(now, now, 2), "beyond latest 2");
        assert!(!ttl.is_expired(now, now, 1), "fresh and within latest 2");
    }
}
