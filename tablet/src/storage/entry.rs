//! The payload of a binlog record: one logical change to a partition.
//!
//! ```text
//! Put:    u8 1 | i64 write_time_ms | encoded row
//! Delete: u8 2 | u16 index position | index key
//! ```

use super::error::{Result, StorageError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry<'a> {
    /// A whole row. `write_time_ms` is the ts of indexes without a ts column, recorded
    /// so that replaying the log rebuilds exactly the same memtable.
    Put { write_time_ms: i64, row: &'a [u8] },
    /// Removes every row whose key in index `index` is `key` and whose offset is below
    /// this entry's.
    Delete { index: u16, key: &'a [u8] },
}

const PUT: u8 = 1;
const DELETE: u8 = 2;

impl<'a> LogEntry<'a> {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            LogEntry::Put { write_time_ms, row } => {
                let mut out = Vec::with_capacity(9 + row.len());
                out.push(PUT);
                out.extend_from_slice(&write_time_ms.to_le_bytes());
                out.extend_from_slice(row);
                out
            }
            LogEntry::Delete { index, key } => {
                let mut out = Vec::with_capacity(3 + key.len());
                out.push(DELETE);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(key);
                out
            }
        }
    }

    pub fn decode(payload: &'a [u8]) -> Result<LogEntry<'a>> {
        let bad =
            |reason: &str| StorageError::InvalidArgument(format!("bad binlog entry: {reason}"));
        match payload.first() {
            Some(&PUT) if payload.len() >= 9 => Ok(LogEntry::Put {
                write_time_ms: i64::from_le_bytes(payload[1..9].try_into().expect("8 bytes")),
                row: &payload[9..],
            }),
            Some(&DELETE) if payload.len() >= 3 => Ok(LogEntry::Delete {
                index: u16::from_le_bytes(payload[1..3].try_into().expect("2 bytes")),
                key: &payload[3..],
            }),
            Some(kind) => Err(bad(&format!("kind {kind}, {} bytes", payload.len()))),
            None => Err(bad("empty")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for entry in [
            LogEntry::Put {
                write_time_ms: -5,
                row: b"row",
            },
            LogEntry::Delete {
                index: 3,
                key: b"k",
            },
        ] {
            assert_eq!(LogEntry::decode(&entry.encode()).unwrap(), entry);
        }
        assert!(LogEntry::decode(&[]).is_err());
        assert!(LogEntry::decode(&[9, 0, 0]).is_err());
        assert!(LogEntry::decode(&[PUT, 0]).is_err());
    }
}
