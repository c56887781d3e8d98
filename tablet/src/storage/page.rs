//! Paged reads: a scan or a preview answers one bounded page at a time, and the next page
//! resumes after the last entry returned (a cursor), never by skipping a count of rows.
//! A cursor names a position in the index, so rows that expire or are written between
//! pages neither shift nor repeat the rows that follow it.

use std::ops::ControlFlow;

use super::error::{Result, StorageError};
use super::memtable::EntryKey;

/// Bounds on one page: the most rows, and the most bytes as the caller weighs them. A page
/// always holds at least one row when one remains, however large, so a read can always
/// make progress (a row is bounded by the tablet's `max_row_size`).
#[derive(Debug, Clone, Copy)]
pub struct PageLimit {
    pub rows: usize,
    pub bytes: usize,
}

/// One page of a read: its rows, and the cursor to resume after when more may follow.
#[derive(Debug)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub next: Option<Vec<u8>>,
}

/// A consistent read: every page shows the partition as it was at one moment — rows up
/// to `offset` (later writes left out) with TTL judged at `time_ms` — whatever is written
/// or expires while the pages are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsOf {
    pub offset: u64,
    pub time_ms: i64,
}

/// Where a page resumes: after the entry `at` (none: from the start), as of `as_of`
/// when the read is consistent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    pub at: Option<EntryKey>,
    pub as_of: Option<AsOf>,
}

/// Bytes of a cursor beyond its key: the ts and the offset.
const CURSOR_TAIL: usize = 16;
/// Bytes of a consistent read's moment: its offset and its time.
const AS_OF_LEN: usize = 16;
/// The last byte of a cursor says which kind it is.
const PLAIN: u8 = 0;
const CONSISTENT: u8 = 1;

/// The wire form of a cursor: the entry's key bytes, its ts and offset (big endian), the
/// moment of a consistent read, and a byte telling the two kinds apart. Opaque to
/// clients: they send back what they were given.
pub fn encode_cursor(entry: &EntryKey, as_of: Option<AsOf>) -> Vec<u8> {
    let mut out = Vec::with_capacity(entry.key.len() + CURSOR_TAIL + AS_OF_LEN + 1);
    out.extend_from_slice(&entry.key);
    out.extend_from_slice(&entry.ts.0.to_be_bytes());
    out.extend_from_slice(&entry.offset.0.to_be_bytes());
    match as_of {
        Some(as_of) => {
            out.extend_from_slice(&as_of.offset.to_be_bytes());
            out.extend_from_slice(&as_of.time_ms.to_be_bytes());
            out.push(CONSISTENT);
        }
        None => out.push(PLAIN),
    }
    out
}

/// Reads a cursor a client sent back; the default (from the start, not consistent) for
/// an empty one.
pub fn decode_cursor(bytes: &[u8]) -> Result<Cursor> {
    let refused = || {
        StorageError::InvalidArgument(format!(
            "a paging cursor of {} bytes is not one this tablet returned",
            bytes.len()
        ))
    };
    let Some((&kind, rest)) = bytes.split_last() else {
        return Ok(Cursor::default());
    };
    let (rest, as_of) = match kind {
        PLAIN => (rest, None),
        CONSISTENT => {
            let split = rest.len().checked_sub(AS_OF_LEN).ok_or_else(refused)?;
            let (rest, moment) = rest.split_at(split);
            let as_of = AsOf {
                offset: u64::from_be_bytes(moment[..8].try_into().expect("8 bytes")),
                time_ms: i64::from_be_bytes(moment[8..].try_into().expect("8 bytes")),
            };
            (rest, Some(as_of))
        }
        _ => return Err(refused()),
    };
    let key_len = rest.len().checked_sub(CURSOR_TAIL).ok_or_else(refused)?;
    let (key, tail) = rest.split_at(key_len);
    let ts = i64::from_be_bytes(tail[..8].try_into().expect("8 bytes"));
    let offset = u64::from_be_bytes(tail[8..].try_into().expect("8 bytes"));
    Ok(Cursor {
        at: Some(EntryKey::new(key.to_vec(), ts, offset)),
        as_of,
    })
}

/// Fills a page from entries offered in order, converting each row to what the caller
/// sends (`T`) and weighing it; stops at the first row that does not fit.
pub struct PageBuilder<T> {
    limit: PageLimit,
    /// The moment a consistent read reads as of, carried by its cursors.
    as_of: Option<AsOf>,
    rows: Vec<T>,
    bytes: usize,
    last: Option<EntryKey>,
    more: bool,
}

impl<T> PageBuilder<T> {
    pub fn new(limit: PageLimit, as_of: Option<AsOf>) -> PageBuilder<T> {
        PageBuilder {
            limit: PageLimit {
                rows: limit.rows.max(1),
                bytes: limit.bytes,
            },
            as_of,
            rows: Vec::new(),
            bytes: 0,
            last: None,
            more: false,
        }
    }

    /// Offers the next row (`convert` makes it and returns its weight in bytes); breaks
    /// when the page is full, recording that more rows follow.
    pub fn offer(
        &mut self,
        entry: &EntryKey,
        convert: impl FnOnce() -> Result<(T, usize)>,
    ) -> ControlFlow<Result<()>> {
        if self.rows.len() >= self.limit.rows {
            self.more = true;
            return ControlFlow::Break(Ok(()));
        }
        let (row, size) = match convert() {
            Ok(converted) => converted,
            Err(e) => return ControlFlow::Break(Err(e)),
        };
        if !self.rows.is_empty() && self.bytes.saturating_add(size) > self.limit.bytes {
            self.more = true;
            return ControlFlow::Break(Ok(()));
        }
        self.bytes += size;
        self.rows.push(row);
        self.last = Some(entry.clone());
        ControlFlow::Continue(())
    }

    pub fn finish(self) -> Page<T> {
        let next = match (self.more, &self.last) {
            (true, Some(last)) => Some(encode_cursor(last, self.as_of)),
            _ => None,
        };
        Page {
            rows: self.rows,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &[u8], ts: i64, offset: u64) -> EntryKey {
        EntryKey::new(key.to_vec(), ts, offset)
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let moment = AsOf {
            offset: 42,
            time_ms: -3,
        };
        for e in [
            entry(b"", 0, 0),
            entry(b"k\0ey", -5, u64::MAX),
            entry(b"x", i64::MIN, 7),
        ] {
            for as_of in [None, Some(moment)] {
                let cursor = decode_cursor(&encode_cursor(&e, as_of)).unwrap();
                assert_eq!(
                    cursor,
                    Cursor {
                        at: Some(e.clone()),
                        as_of
                    }
                );
            }
        }
        assert_eq!(decode_cursor(&[]).unwrap(), Cursor::default());
        for garbage in [&[1u8, 2, 3][..], &[0; 15][..], &[7; 40][..], &[1; 20][..]] {
            assert!(
                matches!(
                    decode_cursor(garbage),
                    Err(StorageError::InvalidArgument(_))
                ),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn a_page_stops_at_its_row_or_byte_bound_and_always_takes_one_row() {
        let take_all = |limit: PageLimit, sizes: &[usize]| {
            let mut page = PageBuilder::new(limit, None);
            for (i, &size) in sizes.iter().enumerate() {
                if page
                    .offer(&entry(b"k", 0, i as u64), || Ok((i, size)))
                    .is_break()
                {
                    break;
                }
            }
            page.finish()
        };
        let rows = take_all(
            PageLimit {
                rows: 2,
                bytes: 100,
            },
            &[1, 1, 1],
        );
        assert_eq!(rows.rows, vec![0, 1]);
        assert_eq!(
            decode_cursor(&rows.next.unwrap())
                .unwrap()
                .at
                .unwrap()
                .offset
                .0,
            1
        );

        let bytes = take_all(
            PageLimit {
                rows: 10,
                bytes: 10,
            },
            &[4, 4, 4],
        );
        assert_eq!(bytes.rows, vec![0, 1]);
        assert!(bytes.next.is_some());

        let huge = take_all(
            PageLimit {
                rows: 10,
                bytes: 10,
            },
            &[50, 1],
        );
        assert_eq!(
            huge.rows,
            vec![0],
            "a row larger than the bound still makes a page"
        );

        let whole = take_all(
            PageLimit {
                rows: 3,
                bytes: 100,
            },
            &[1, 1, 1],
        );
        assert_eq!(whole.rows.len(), 3);
        assert!(whole.next.is_none(), "nothing was left over");
    }
}
