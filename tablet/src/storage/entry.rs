//! The payload of a binlog record: one logical change to a partition.
//!
//! ```text
//! Put:    u8 1 | i64 write_time_ms | encoded row
//! Delete: u8 2 | u16 index position | index key
//! Noop:   u8 3                      (a new leader's first record of its term)
//! Put:    u8 4 | u64 client | u64 seq | i64 write_time_ms | encoded row
//! Delete: u8 5 | u64 client | u64 seq | i64 write_time_ms | u16 index position | index key
//! Register: u8 6 | u64 client | u64 epoch | i64 write_time_ms
//! Delete: u8 7 | u64 client | u64 seq | i64 write_time_ms | i64 min_ts | i64 max_ts
//!              | u16 index position | index key        (a ts range; 0/0: no request)
//! Schema: u8 8 | the new TableSchema, protobuf-encoded
//! ```
//!
//! Kinds 4 and 5 carry the request's client id and sequence number, so every replica
//! rebuilds the same idempotence table from the log. Kind 6 registers a writer's epoch
//! (a job run that took over a writer id): from it on, writes of an older epoch of that
//! writer are refused. Kind 7 deletes the rows of a key whose ts lies in a range. Kind 8
//! moves the partition to a new schema version (an index or column appended, an index
//! deleted): every replica applies it in log order, so each row is read and indexed by
//! the schema its place in the log calls for. Kinds 6 to 8 need every replica of the
//! partition to know them.

use super::error::{Result, StorageError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry<'a> {
    /// A whole row. `write_time_ms` is the ts of indexes without a ts column, recorded
    /// so that replaying the log rebuilds exactly the same memtable.
    Put {
        write_time_ms: i64,
        row: &'a [u8],
        request: Option<RequestId>,
    },
    /// Removes every row whose key in index `index` is `key` and whose offset is below
    /// this entry's; with `range`, only those whose ts in that index lies within it
    /// (`min..=max`).
    Delete {
        index: u16,
        key: &'a [u8],
        request: Option<(RequestId, i64)>,
        range: Option<TsRange>,
    },
    /// Changes nothing: a new leader logs one so that it can commit the records of
    /// earlier terms (a leader counts replicas only for records of its own term).
    Noop,
    /// Changes no row: `client_id`'s writes of an epoch below `epoch` are refused from
    /// here on (a newer run of the same writer took over).
    Register {
        client_id: u64,
        epoch: u64,
        write_time_ms: i64,
    },
    /// Changes no row: the partition's schema becomes this one (a `TableSchema`, encoded)
    /// from here on. One that is not newer than the schema applied changes nothing.
    Schema { schema: &'a [u8] },
}

/// The timestamps a ranged delete reaches, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsRange {
    pub min: i64,
    pub max: i64,
}

/// Who sent a write: a client's id and the request's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId {
    pub client_id: u64,
    pub seq: u64,
    /// The writer's epoch (0 for a client that never registers one). Not logged: it is
    /// checked against the writer's registration when the write is taken.
    pub epoch: u64,
}

impl RequestId {
    /// `None` for 0/0, a request that asks for no deduplication.
    pub fn from_wire(client_id: u64, seq: u64) -> Option<RequestId> {
        Self::from_wire_as(client_id, seq, 0)
    }

    /// As [`RequestId::from_wire`], for a writer of epoch `epoch`.
    pub fn from_wire_as(client_id: u64, seq: u64, epoch: u64) -> Option<RequestId> {
        (client_id != 0 || seq != 0).then_some(RequestId {
            client_id,
            seq,
            epoch,
        })
    }
}

const PUT: u8 = 1;
const DELETE: u8 = 2;
const NOOP: u8 = 3;
const PUT_WITH_ID: u8 = 4;
const DELETE_WITH_ID: u8 = 5;
const REGISTER: u8 = 6;
/// A delete of a ts range (request id always written, zeros for none).
const DELETE_RANGE: u8 = 7;
const SCHEMA: u8 = 8;

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> LogEntry<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            LogEntry::Put {
                write_time_ms,
                row,
                request,
            } => {
                out.reserve(25 + row.len());
                match request {
                    None => out.push(PUT),
                    Some(id) => {
                        out.push(PUT_WITH_ID);
                        out.extend_from_slice(&id.client_id.to_le_bytes());
                        out.extend_from_slice(&id.seq.to_le_bytes());
                    }
                }
                out.extend_from_slice(&write_time_ms.to_le_bytes());
                out.extend_from_slice(row);
            }
            LogEntry::Delete {
                index,
                key,
                request,
                range: Some(range),
            } => {
                out.reserve(43 + key.len());
                out.push(DELETE_RANGE);
                let (client_id, seq, write_time_ms) =
                    request.map_or((0, 0, 0), |(id, at)| (id.client_id, id.seq, at));
                out.extend_from_slice(&client_id.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&write_time_ms.to_le_bytes());
                out.extend_from_slice(&range.min.to_le_bytes());
                out.extend_from_slice(&range.max.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(key);
            }
            LogEntry::Delete {
                index,
                key,
                request,
                range: None,
            } => {
                out.reserve(27 + key.len());
                match request {
                    None => out.push(DELETE),
                    Some((id, write_time_ms)) => {
                        out.push(DELETE_WITH_ID);
                        out.extend_from_slice(&id.client_id.to_le_bytes());
                        out.extend_from_slice(&id.seq.to_le_bytes());
                        out.extend_from_slice(&write_time_ms.to_le_bytes());
                    }
                }
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(key);
            }
            LogEntry::Noop => out.push(NOOP),
            LogEntry::Register {
                client_id,
                epoch,
                write_time_ms,
            } => {
                out.push(REGISTER);
                out.extend_from_slice(&client_id.to_le_bytes());
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&write_time_ms.to_le_bytes());
            }
            LogEntry::Schema { schema } => {
                out.reserve(1 + schema.len());
                out.push(SCHEMA);
                out.extend_from_slice(schema);
            }
        }
        out
    }

    pub fn decode(payload: &'a [u8]) -> Result<LogEntry<'a>> {
        let bad =
            |reason: &str| StorageError::InvalidArgument(format!("bad binlog entry: {reason}"));
        match payload.first() {
            Some(&PUT) if payload.len() >= 9 => Ok(LogEntry::Put {
                write_time_ms: u64_at(payload, 1) as i64,
                row: &payload[9..],
                request: None,
            }),
            Some(&DELETE) if payload.len() >= 3 => Ok(LogEntry::Delete {
                index: u16::from_le_bytes(payload[1..3].try_into().expect("2 bytes")),
                key: &payload[3..],
                request: None,
                range: None,
            }),
            Some(&NOOP) if payload.len() == 1 => Ok(LogEntry::Noop),
            Some(&PUT_WITH_ID) if payload.len() >= 25 => Ok(LogEntry::Put {
                request: Some(RequestId {
                    client_id: u64_at(payload, 1),
                    seq: u64_at(payload, 9),
                    epoch: 0,
                }),
                write_time_ms: u64_at(payload, 17) as i64,
                row: &payload[25..],
            }),
            Some(&DELETE_WITH_ID) if payload.len() >= 27 => Ok(LogEntry::Delete {
                request: Some((
                    RequestId {
                        client_id: u64_at(payload, 1),
                        seq: u64_at(payload, 9),
                        epoch: 0,
                    },
                    u64_at(payload, 17) as i64,
                )),
                index: u16::from_le_bytes(payload[25..27].try_into().expect("2 bytes")),
                key: &payload[27..],
                range: None,
            }),
            Some(&DELETE_RANGE) if payload.len() >= 43 => {
                let id = RequestId::from_wire(u64_at(payload, 1), u64_at(payload, 9));
                let range = TsRange {
                    min: u64_at(payload, 25) as i64,
                    max: u64_at(payload, 33) as i64,
                };
                if range.min > range.max {
                    return Err(bad("a ts range whose min is above its max"));
                }
                Ok(LogEntry::Delete {
                    request: id.map(|id| (id, u64_at(payload, 17) as i64)),
                    range: Some(range),
                    index: u16::from_le_bytes(payload[41..43].try_into().expect("2 bytes")),
                    key: &payload[43..],
                })
            }
            Some(&REGISTER) if payload.len() == 25 => Ok(LogEntry::Register {
                client_id: u64_at(payload, 1),
                epoch: u64_at(payload, 9),
                write_time_ms: u64_at(payload, 17) as i64,
            }),
            Some(&SCHEMA) => Ok(LogEntry::Schema {
                schema: &payload[1..],
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
                request: None,
            },
            LogEntry::Delete {
                index: 3,
                key: b"k",
                request: None,
                range: None,
            },
            LogEntry::Delete {
                index: 2,
                key: b"k",
                request: None,
                range: Some(TsRange { min: -3, max: 9 }),
            },
            LogEntry::Delete {
                index: 0,
                key: b"",
                request: Some((
                    RequestId {
                        client_id: 1,
                        seq: 2,
                        epoch: 0,
                    },
                    77,
                )),
                range: Some(TsRange {
                    min: i64::MIN,
                    max: i64::MAX,
                }),
            },
            LogEntry::Noop,
            LogEntry::Put {
                write_time_ms: 7,
                row: b"",
                request: Some(RequestId {
                    client_id: u64::MAX,
                    seq: 3,
                    epoch: 0,
                }),
            },
            LogEntry::Delete {
                index: 1,
                key: b"key",
                request: Some((
                    RequestId {
                        client_id: 9,
                        seq: 1 << 40,
                        epoch: 0,
                    },
                    -1,
                )),
                range: None,
            },
            LogEntry::Register {
                client_id: 4,
                epoch: 2,
                write_time_ms: 11,
            },
            LogEntry::Schema {
                schema: b"\x08\x02",
            },
        ] {
            assert_eq!(LogEntry::decode(&entry.encode()).unwrap(), entry);
        }
        assert!(LogEntry::decode(&[]).is_err());
        assert!(LogEntry::decode(&[10, 0, 0]).is_err());
        assert!(LogEntry::decode(&[PUT, 0]).is_err());
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any payload decodes to an entry or an error, and an entry encodes back to
            /// a payload that decodes to the same entry.
            #[test]
            fn any_payload_decodes_or_is_refused(
                kind in 0u8..10,
                body in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut payload = vec![kind];
                payload.extend_from_slice(&body);
                if let Ok(entry) = LogEntry::decode(&payload) {
                    let again = entry.encode();
                    prop_assert_eq!(LogEntry::decode(&again).ok(), Some(entry));
                }
            }
        }
    }
}
