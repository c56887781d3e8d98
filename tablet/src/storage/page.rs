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

/// Bytes of a cursor beyond its key: the ts and the offset.
const CURSOR_TAIL: usize = 16;

/// The wire form of a cursor: the entry's key bytes, then its ts and offset (big endian).
/// Opaque to clients: they send back what they were given.
pub fn encode_cursor(entry: &EntryKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(entry.key.len() + CURSOR_TAIL);
    out.extend_from_slice(&entry.key);
    out.extend_from_slice(&entry.ts.0.to_be_bytes());
    out.extend_from_slice(&entry.offset.0.to_be_bytes());
    out
}

/// Reads a cursor a client sent back; `None` for an empty one (start from the beginning).
pub fn decode_cursor(bytes: &[u8]) -> Result<Option<EntryKey>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let Some(key_len) = bytes.len().checked_sub(CURSOR_TAIL) else {
        return Err(StorageError::InvalidArgument(format!(
            "a paging cursor of {} bytes is not one this tablet returned",
            bytes.len()
        )));
    };
    let (key, tail) = bytes.split_at(key_len);
    let ts = i64::from_be_bytes(tail[..8].try_into().expect("8 bytes"));
    let offset = u64::from_be_bytes(tail[8..].try_into().expect("8 bytes"));
    Ok(Some(EntryKey::new(key.to_vec(), ts, offset)))
}

/// Fills a page from entries offered in order, converting each row to what the caller
/// sends (`T`) and weighing it; stops at the first row that does not fit.
pub struct PageBuilder<T> {
    limit: PageLimit,
    rows: Vec<T>,
    bytes: usize,
    last: Option<EntryKey>,
    more: bool,
}

impl<T> PageBuilder<T> {
    pub fn new(limit: PageLimit) -> PageBuilder<T> {
        PageBuilder {
            limit: PageLimit {
                rows: limit.rows.max(1),
                bytes: limit.bytes,
            },
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
            (true, Some(last)) => Some(encode_cursor(last)),
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
        for e in [
            entry(b"", 0, 0),
            entry(b"k\0ey", -5, u64::MAX),
            entry(b"x", i64::MIN, 7),
        ] {
            assert_eq!(decode_cursor(&encode_cursor(&e)).unwrap(), Some(e));
        }
        assert_eq!(decode_cursor(&[]).unwrap(), None);
        assert!(matches!(
            decode_cursor(&[1, 2, 3]),
            Err(StorageError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_page_stops_at_its_row_or_byte_bound_and_always_takes_one_row() {
        let take_all = |limit: PageLimit, sizes: &[usize]| {
            let mut page = PageBuilder::new(limit);
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
