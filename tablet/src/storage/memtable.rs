//! The in-memory image of a partition replica: one concurrent ordered map per index.
//!
//! Each index maps `(key, ts descending, offset descending)` to the row, so the entries
//! of one key are contiguous and newest first. The maps are lock-free skip lists: readers
//! never wait for writers or for the TTL collector. A row is stored once and shared by
//! every index that points to it.
//!
//! Expiry is applied on read as well as by [`Memtable::gc`], so what a read returns never
//! depends on when the collector last ran.

use std::cmp::Reverse;
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_skiplist::SkipMap;
use tessera_common::codec::{self, RowError};
use tessera_common::{key, Schema, Ttl, Value};

/// Position of one entry in an index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryKey {
    pub key: Vec<u8>,
    pub ts: Reverse<i64>,
    /// The binlog offset of the row: unique, so rows with equal key and ts coexist.
    pub offset: Reverse<u64>,
}

impl EntryKey {
    pub(crate) fn new(key: Vec<u8>, ts: i64, offset: u64) -> EntryKey {
        EntryKey {
            key,
            ts: Reverse(ts),
            offset: Reverse(offset),
        }
    }

    /// The first possible entry of `key` (its newest).
    fn first_of(key: &[u8]) -> EntryKey {
        EntryKey::new(key.to_vec(), i64::MAX, u64::MAX)
    }

    /// The last possible entry of `key` (its oldest).
    fn last_of(key: &[u8]) -> EntryKey {
        EntryKey::new(key.to_vec(), i64::MIN, 0)
    }
}

/// What a read sees: the rows up to `max_offset`, with TTL judged at `now_ms`. An
/// ordinary read sees everything applied, expired as of now; a consistent read sees the
/// partition as of one earlier moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadView {
    pub now_ms: i64,
    pub max_offset: u64,
}

impl ReadView {
    /// Everything applied, expired as of `now_ms`.
    pub fn latest(now_ms: i64) -> ReadView {
        ReadView {
            now_ms,
            max_offset: u64::MAX,
        }
    }
}

/// Approximate bookkeeping cost of one index entry beyond its key bytes.
const ENTRY_OVERHEAD: u64 = 64;
/// Approximate bookkeeping cost of one stored row beyond its bytes.
const ROW_OVERHEAD: u64 = 48;

/// A row as stored: its encoded bytes, where it sits in the log, and when it was written.
#[derive(Debug)]
pub struct StoredRow {
    pub offset: u64,
    pub write_time_ms: i64,
    pub data: Box<[u8]>,
    /// The owning memtable's byte counter, credited back on drop.
    pub(crate) memory: Arc<AtomicU64>,
}

impl Drop for StoredRow {
    fn drop(&mut self) {
        self.memory
            .fetch_sub(self.data.len() as u64 + ROW_OVERHEAD, Ordering::Relaxed);
    }
}

/// A row found by a read, with its ts in the index that was read.
#[derive(Debug, Clone)]
pub struct Found {
    pub ts: i64,
    pub row: Arc<StoredRow>,
}

/// The index entries a row will get, computed (and validated) before it is logged: one
/// per index of the schema version they were computed with (`None`: the row is not in
/// that index, deleted, or added later over a column the row leaves NULL).
#[derive(Debug)]
pub struct IndexEntries {
    schema_version: u32,
    entries: Vec<Option<(Vec<u8>, i64)>>,
}

type IndexMap = SkipMap<EntryKey, Arc<StoredRow>>;

/// The memtable's shape: the schema, one map per index (a deleted index keeps its place
/// with an empty map) and each index's TTL. Readers take it whole; a schema or TTL change
/// swaps in a new one.
struct Layout {
    schema: Arc<Schema>,
    indexes: Vec<Arc<IndexMap>>,
    ttls: Vec<Ttl>,
}

pub struct Memtable {
    layout: parking_lot::RwLock<Arc<Layout>>,
    /// Every schema applied, with the offset of the entry that brought it (0: the one
    /// the memtable started with), oldest first: a snapshot records the one in force at
    /// its offset.
    schemas: parking_lot::Mutex<Vec<(u64, Arc<Schema>)>>,
    /// Bytes held by keys and rows.
    memory: Arc<AtomicU64>,
}

/// The key and ts of `row` in every index of `schema`. Fails if a key or ts column of an
/// index the table was created with is NULL.
pub fn entries_of(
    schema: &Schema,
    row: &[Value],
    write_time_ms: i64,
) -> Result<IndexEntries, RowError> {
    let entries = schema
        .indexes
        .iter()
        .map(|index| {
            if index.deleted {
                return Ok(None);
            }
            let entry = key::key_from_row(schema, index, row)
                .and_then(|k| Ok((k, key::ts_from_row(schema, index, row, write_time_ms)?)));
            match entry {
                Ok(entry) => Ok(Some(entry)),
                // An index added later does not hold the rows that lack its key.
                Err(_) if !index.requires_key() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(IndexEntries {
        schema_version: schema.version,
        entries,
    })
}

impl Memtable {
    pub fn new(schema: Arc<Schema>) -> Memtable {
        let indexes = schema
            .indexes
            .iter()
            .map(|_| Arc::new(SkipMap::new()))
            .collect();
        let ttls = schema.indexes.iter().map(|ix| ix.ttl).collect();
        Memtable {
            schemas: parking_lot::Mutex::new(vec![(0, schema.clone())]),
            layout: parking_lot::RwLock::new(Arc::new(Layout {
                schema,
                indexes,
                ttls,
            })),
            memory: Arc::new(AtomicU64::new(0)),
        }
    }

    fn layout(&self) -> Arc<Layout> {
        self.layout.read().clone()
    }

    pub fn schema(&self) -> Arc<Schema> {
        self.layout.read().schema.clone()
    }

    /// The schema in force at `offset`: the newest applied by an entry at or below it.
    pub fn schema_at(&self, offset: u64) -> Arc<Schema> {
        let schemas = self.schemas.lock();
        schemas
            .iter()
            .rev()
            .find(|(at, _)| *at <= offset)
            .or(schemas.first())
            .map(|(_, schema)| schema.clone())
            .expect("the memtable starts with a schema")
    }

    /// Each index's TTL now.
    pub fn ttls(&self) -> Vec<Ttl> {
        self.layout.read().ttls.clone()
    }

    /// Changes the TTLs (one per index); reads apply them at once. Refused (false) when
    /// the count does not match the indexes (a schema change came in between).
    pub fn set_ttls(&self, ttls: Vec<Ttl>) -> bool {
        let mut layout = self.layout.write();
        if ttls.len() != layout.indexes.len() {
            return false;
        }
        *layout = Arc::new(Layout {
            schema: layout.schema.clone(),
            indexes: layout.indexes.clone(),
            ttls,
        });
        true
    }

    /// The key and ts of `row` in every index. Fails if a key or ts column of an index
    /// the table was created with is NULL.
    pub fn index_entries(
        &self,
        row: &[Value],
        write_time_ms: i64,
    ) -> Result<IndexEntries, RowError> {
        entries_of(&self.layout.read().schema, row, write_time_ms)
    }

    /// Inserts a row whose entries were computed by [`Memtable::index_entries`]; if the
    /// schema changed since, they are computed again for the schema now. Callers insert
    /// and change the schema one at a time (the apply order).
    pub fn insert(&self, offset: u64, write_time_ms: i64, data: Vec<u8>, entries: IndexEntries) {
        let layout = self.layout();
        let entries = if entries.schema_version == layout.schema.version {
            entries.entries
        } else {
            // Logged under one schema, applied under the next: a row valid then is valid
            // now (columns and indexes are only appended, or indexes deleted).
            match codec::decode(&layout.schema, &data)
                .and_then(|values| entries_of(&layout.schema, &values, write_time_ms))
            {
                Ok(again) => again.entries,
                Err(e) => {
                    tracing::error!(offset, error = %e,
                        "a row no longer fits the schema; it keeps the index entries it had");
                    entries.entries
                }
            }
        };
        self.memory
            .fetch_add(data.len() as u64 + ROW_OVERHEAD, Ordering::Relaxed);
        let row = Arc::new(StoredRow {
            offset,
            write_time_ms,
            data: data.into_boxed_slice(),
            memory: self.memory.clone(),
        });
        for (map, entry) in layout.indexes.iter().zip(entries) {
            if let Some((key, ts)) = entry {
                self.memory
                    .fetch_add(key.len() as u64 + ENTRY_OVERHEAD, Ordering::Relaxed);
                map.insert(EntryKey::new(key, ts, offset), row.clone());
            }
        }
    }

    /// Decodes an encoded row and inserts it (log replay, snapshot load).
    pub fn insert_encoded(
        &self,
        offset: u64,
        write_time_ms: i64,
        data: &[u8],
    ) -> Result<(), RowError> {
        let schema = self.schema();
        let values = codec::decode(&schema, data)?;
        let entries = entries_of(&schema, &values, write_time_ms)?;
        self.insert(offset, write_time_ms, data.to_vec(), entries);
        Ok(())
    }

    /// Moves to `next`, brought by the entry at `offset`, a successor of the schema now
    /// (see [`Schema::check_successor`]):
    /// an added index is built from every row held, a deleted one is emptied, TTLs of the
    /// indexes kept stay as they are. A schema that is not newer changes nothing
    /// (`Ok(false)`: replay meets changes the schema already has). Callers change the
    /// schema and insert one at a time; readers go on meanwhile and see the new index
    /// only once it is whole.
    pub fn apply_schema(&self, next: Arc<Schema>, offset: u64) -> Result<bool, String> {
        let old = self.layout();
        if next.version <= old.schema.version {
            return Ok(false);
        }
        old.schema
            .check_successor(&next)
            .map_err(|e| e.to_string())?;
        let mut rows = None;
        let mut dropped = Vec::new();
        let mut indexes = Vec::with_capacity(next.indexes.len());
        let mut ttls = Vec::with_capacity(next.indexes.len());
        for (position, index) in next.indexes.iter().enumerate() {
            let kept = old.indexes.get(position);
            let map = match kept {
                Some(map) if index.deleted && !old.schema.indexes[position].deleted => {
                    // Emptied once the new layout is in: readers of the old one still
                    // see it whole.
                    dropped.push(map.clone());
                    Arc::new(SkipMap::new())
                }
                Some(map) => map.clone(),
                None => {
                    let map: Arc<IndexMap> = Arc::new(SkipMap::new());
                    if !index.deleted {
                        let rows = rows.get_or_insert_with(|| rows_of(&old, u64::MAX));
                        for row in rows.iter() {
                            let Ok(values) = codec::decode(&next, &row.data) else {
                                continue;
                            };
                            let (Ok(key), Ok(ts)) = (
                                key::key_from_row(&next, index, &values),
                                key::ts_from_row(&next, index, &values, row.write_time_ms),
                            ) else {
                                // NULL in a key or ts column: not in this index.
                                continue;
                            };
                            self.memory
                                .fetch_add(key.len() as u64 + ENTRY_OVERHEAD, Ordering::Relaxed);
                            map.insert(EntryKey::new(key, ts, row.offset), row.clone());
                        }
                    }
                    map
                }
            };
            indexes.push(map);
            ttls.push(old.ttls.get(position).copied().unwrap_or(index.ttl));
        }
        let mut layout = self.layout.write();
        // TTLs as they are now: one may have changed while the index was built.
        for (position, ttl) in ttls.iter_mut().enumerate() {
            if let Some(now) = layout.ttls.get(position) {
                *ttl = *now;
            }
        }
        self.schemas.lock().push((offset, next.clone()));
        *layout = Arc::new(Layout {
            schema: next,
            indexes,
            ttls,
        });
        drop(layout);
        for map in dropped {
            // Entry by entry, so that a collection racing with it is not counted twice.
            for e in map.iter() {
                if e.remove() {
                    self.memory
                        .fetch_sub(e.key().key.len() as u64 + ENTRY_OVERHEAD, Ordering::Relaxed);
                }
            }
        }
        Ok(true)
    }

    /// Removes every row whose key in index `index` is `key` and whose offset is below
    /// `before_offset`, from all indexes. Returns how many rows were removed.
    pub fn delete_key(&self, index: usize, key: &[u8], before_offset: u64) -> u64 {
        self.delete_key_range(index, key, i64::MIN, i64::MAX, before_offset)
    }

    /// As [`Memtable::delete_key`], for the rows whose ts in `index` lies in
    /// `min_ts..=max_ts`.
    pub fn delete_key_range(
        &self,
        index: usize,
        key: &[u8],
        min_ts: i64,
        max_ts: i64,
        before_offset: u64,
    ) -> u64 {
        let layout = self.layout();
        let Some(map) = layout.indexes.get(index) else {
            return 0;
        };
        if min_ts > max_ts {
            return 0;
        }
        let doomed: Vec<(Option<EntryKey>, Arc<StoredRow>)> =
            if layout.schema.indexes[index].deleted {
                // A delete logged before its index was dropped (met again on replay, which
                // runs under the newest schema): the rows are found by their values.
                let definition = &layout.schema.indexes[index];
                rows_of(&layout, before_offset.saturating_sub(1))
                    .into_iter()
                    .filter(|row| {
                        let Ok(values) = codec::decode(&layout.schema, &row.data) else {
                            return false;
                        };
                        let found = key::key_from_row(&layout.schema, definition, &values)
                            .ok()
                            .zip(
                                key::ts_from_row(
                                    &layout.schema,
                                    definition,
                                    &values,
                                    row.write_time_ms,
                                )
                                .ok(),
                            );
                        found.is_some_and(|(k, ts)| k == key && (min_ts..=max_ts).contains(&ts))
                    })
                    .map(|row| (None, row))
                    .collect()
            } else {
                // Entries of a key run newest first: from `max_ts` down to `min_ts`.
                map.range(
                    EntryKey::new(key.to_vec(), max_ts, u64::MAX)
                        ..=EntryKey::new(key.to_vec(), min_ts, 0),
                )
                .filter(|e| e.value().offset < before_offset)
                .map(|e| (Some(e.key().clone()), e.value().clone()))
                .collect()
            };
        for (entry_key, row) in &doomed {
            if let Some(entry_key) = entry_key {
                remove_entry(map, &self.memory, entry_key);
            }
            // The row's entries in every index follow from its values.
            let Ok(values) = codec::decode(&layout.schema, &row.data) else {
                continue;
            };
            let Ok(entries) = entries_of(&layout.schema, &values, row.write_time_ms) else {
                continue;
            };
            for (position, entry) in entries.entries.into_iter().enumerate() {
                if let Some((entry_key, ts)) = entry {
                    remove_entry(
                        &layout.indexes[position],
                        &self.memory,
                        &EntryKey::new(entry_key, ts, row.offset),
                    );
                }
            }
        }
        doomed.len() as u64
    }

    /// The newest live row of `key`, or the newest with exactly `ts`.
    pub fn get(&self, index: usize, key: &[u8], ts: Option<i64>, now_ms: i64) -> Option<Found> {
        let layout = self.layout();
        let mut live = live_entries(&layout, index, key, now_ms);
        match ts {
            None => live.next(),
            Some(ts) => live.skip_while(|f| f.ts > ts).find(|f| f.ts == ts),
        }
    }

    /// Visits the live rows of `key` with `min_ts <= ts <= max_ts`, newest first,
    /// starting after `after` (an entry of the same key: where a previous page ended),
    /// until `visit` breaks.
    #[allow(clippy::too_many_arguments)]
    pub fn scan_each<B>(
        &self,
        index: usize,
        key: &[u8],
        max_ts: Option<i64>,
        min_ts: Option<i64>,
        after: Option<&EntryKey>,
        now_ms: i64,
        mut visit: impl FnMut(&EntryKey, Found) -> ControlFlow<B>,
    ) -> Option<B> {
        let layout = self.layout();
        let ttl = layout.ttls[index];
        let (start, first_rank) = match after {
            Some(at) => (
                Bound::Excluded(at.clone()),
                rank_after(&layout, index, at, u64::MAX),
            ),
            None => (Bound::Included(EntryKey::first_of(key)), 0),
        };
        let end = Bound::Included(EntryKey::last_of(key));
        for (i, e) in layout.indexes[index].range((start, end)).enumerate() {
            let ts = e.key().ts.0;
            if ttl.is_expired(now_ms, ts, first_rank + i as u64) {
                break;
            }
            if max_ts.is_some_and(|max| ts > max) {
                continue;
            }
            if min_ts.is_some_and(|min| ts < min) {
                break;
            }
            let found = Found {
                ts,
                row: e.value().clone(),
            };
            if let ControlFlow::Break(b) = visit(e.key(), found) {
                return Some(b);
            }
        }
        None
    }

    /// Live entries of `key` in `index`.
    pub fn count_key(&self, index: usize, key: &[u8], now_ms: i64) -> u64 {
        let layout = self.layout();
        live_entries(&layout, index, key, now_ms).count() as u64
    }

    /// Live entries of the whole index, visiting each key's entries once.
    pub fn count_index(&self, index: usize, now_ms: i64) -> u64 {
        let mut count = 0;
        self.each_live::<()>(index, None, ReadView::latest(now_ms), |_, _| {
            count += 1;
            ControlFlow::Continue(())
        });
        count
    }

    /// Visits the rows of the first index that `view` shows live, in index order,
    /// starting after `after` (where a previous page ended), until `visit` breaks: a
    /// table read page by page.
    pub fn preview_each<B>(
        &self,
        after: Option<&EntryKey>,
        view: ReadView,
        visit: impl FnMut(&EntryKey, Found) -> ControlFlow<B>,
    ) -> Option<B> {
        self.each_live(0, after, view, visit)
    }

    fn each_live<B>(
        &self,
        index: usize,
        after: Option<&EntryKey>,
        view: ReadView,
        mut visit: impl FnMut(&EntryKey, Found) -> ControlFlow<B>,
    ) -> Option<B> {
        let layout = self.layout();
        let ttl = layout.ttls[index];
        let (start, mut current, mut rank) = match after {
            Some(at) => (
                Bound::Excluded(at.clone()),
                Some(at.key.clone()),
                rank_after(&layout, index, at, view.max_offset),
            ),
            None => (Bound::Unbounded, None, 0),
        };
        for e in layout.indexes[index].range((start, Bound::Unbounded)) {
            if current.as_deref() != Some(&e.key().key[..]) {
                current = Some(e.key().key.clone());
                rank = 0;
            }
            // Rows written after the view's moment are not there, nor do they push
            // older ones beyond a `latest` TTL.
            if e.value().offset > view.max_offset {
                continue;
            }
            if !ttl.is_expired(view.now_ms, e.key().ts.0, rank) {
                let found = Found {
                    ts: e.key().ts.0,
                    row: e.value().clone(),
                };
                if let ControlFlow::Break(b) = visit(e.key(), found) {
                    return Some(b);
                }
            }
            rank += 1;
        }
        None
    }

    /// Drops expired entries from every index. Returns how many entries were removed.
    pub fn gc(&self, now_ms: i64) -> u64 {
        let layout = self.layout();
        let mut removed = 0;
        for (map, ttl) in layout.indexes.iter().zip(&layout.ttls) {
            if ttl.never_expires() {
                continue;
            }
            let mut current: Option<Vec<u8>> = None;
            let mut rank = 0u64;
            for e in map.iter() {
                if current.as_deref() != Some(&e.key().key[..]) {
                    current = Some(e.key().key.clone());
                    rank = 0;
                }
                if ttl.is_expired(now_ms, e.key().ts.0, rank) && e.remove() {
                    self.memory
                        .fetch_sub(e.key().key.len() as u64 + ENTRY_OVERHEAD, Ordering::Relaxed);
                    removed += 1;
                }
                rank += 1;
            }
        }
        removed
    }

    /// Every stored row once (a row may sit in several indexes), ordered by offset, for
    /// snapshots. Rows above `max_offset` are left out.
    pub fn rows_through(&self, max_offset: u64) -> Vec<Arc<StoredRow>> {
        rows_of(&self.layout(), max_offset)
    }

    /// Entries in the first index (expired ones not yet collected included).
    pub fn record_count(&self) -> u64 {
        self.layout
            .read()
            .indexes
            .first()
            .map_or(0, |m| m.len() as u64)
    }

    pub fn memory_used(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }
}

fn remove_entry(map: &IndexMap, memory: &AtomicU64, entry_key: &EntryKey) {
    if map.remove(entry_key).is_some() {
        memory.fetch_sub(
            entry_key.key.len() as u64 + ENTRY_OVERHEAD,
            Ordering::Relaxed,
        );
    }
}

/// Every row of `layout` once, ordered by offset, up to `max_offset`.
fn rows_of(layout: &Layout, max_offset: u64) -> Vec<Arc<StoredRow>> {
    let mut rows = std::collections::BTreeMap::new();
    for map in &layout.indexes {
        for e in map.iter() {
            let row = e.value();
            if row.offset <= max_offset {
                rows.entry(row.offset).or_insert_with(|| row.clone());
            }
        }
    }
    rows.into_values().collect()
}

/// The live entries of `key` in `index`, newest first.
fn live_entries<'a>(
    layout: &'a Layout,
    index: usize,
    key: &[u8],
    now_ms: i64,
) -> impl Iterator<Item = Found> + 'a {
    let ttl = layout.ttls[index];
    layout.indexes[index]
        .range(EntryKey::first_of(key)..=EntryKey::last_of(key))
        .enumerate()
        .take_while(move |(rank, e)| !ttl.is_expired(now_ms, e.key().ts.0, *rank as u64))
        .map(|(_, e)| Found {
            ts: e.key().ts.0,
            row: e.value().clone(),
        })
}

/// The rank (0 = newest of its key) of the entry that follows `at` in its key, as far as
/// expiry needs it: a TTL that keeps the newest `count` entries only asks whether a rank
/// reaches `count`, so counting stops there and resuming a page costs at most `count`
/// steps, not the length of the key.
fn rank_after(layout: &Layout, index: usize, at: &EntryKey, max_offset: u64) -> u64 {
    let Some(cap) = layout.ttls[index].rank_bound() else {
        return 0;
    };
    layout.indexes[index]
        .range(EntryKey::first_of(&at.key)..=at.clone())
        .filter(|e| e.value().offset <= max_offset)
        .take(usize::try_from(cap).unwrap_or(usize::MAX))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use tessera_common::{ColumnType, Ttl};

    use super::*;

    const MINUTE: i64 = 60_000;

    fn schema(ttl: Ttl) -> Arc<Schema> {
        Arc::new(
            Schema::new(
                &[
                    ("id", ColumnType::String, false),
                    ("ts", ColumnType::Timestamp, false),
                    ("v", ColumnType::Int64, true),
                    ("city", ColumnType::String, false),
                ],
                &[
                    (&["id"], Some("ts"), ttl),
                    (&["city"], Some("ts"), Ttl::NONE),
                ],
            )
            .unwrap(),
        )
    }

    fn row(id: &str, ts: i64, v: i64, city: &str) -> Vec<Value> {
        vec![
            Value::String(id.into()),
            Value::Timestamp(ts),
            Value::Int64(v),
            Value::String(city.into()),
        ]
    }

    fn put(m: &Memtable, offset: u64, values: Vec<Value>) {
        let data = codec::encode(&m.schema(), &values).unwrap();
        let entries = m.index_entries(&values, 0).unwrap();
        m.insert(offset, 0, data, entries);
    }

    fn key_of(m: &Memtable, index: usize, text: &str) -> Vec<u8> {
        key::key_from_values(
            &m.schema(),
            &m.schema().indexes[index],
            &[Value::String(text.into())],
        )
        .unwrap()
    }

    /// Up to `limit` entries of a scan after `after`, with their positions.
    fn scan_page(
        m: &Memtable,
        key: &[u8],
        range: (Option<i64>, Option<i64>),
        after: Option<&EntryKey>,
        limit: usize,
        now: i64,
    ) -> Vec<(EntryKey, Found)> {
        let mut out = Vec::new();
        m.scan_each::<()>(0, key, range.0, range.1, after, now, |e, f| {
            if out.len() == limit {
                return ControlFlow::Break(());
            }
            out.push((e.clone(), f));
            ControlFlow::Continue(())
        });
        out
    }

    fn scan(
        m: &Memtable,
        key: &[u8],
        max_ts: Option<i64>,
        min_ts: Option<i64>,
        limit: usize,
        now: i64,
    ) -> Vec<Found> {
        let page = scan_page(m, key, (max_ts, min_ts), None, limit, now);
        page.into_iter().map(|(_, f)| f).collect()
    }

    fn preview_page(
        m: &Memtable,
        after: Option<&EntryKey>,
        limit: usize,
        now: i64,
    ) -> Vec<(EntryKey, Found)> {
        let mut out = Vec::new();
        m.preview_each::<()>(after, ReadView::latest(now), |e, f| {
            if out.len() == limit {
                return ControlFlow::Break(());
            }
            out.push((e.clone(), f));
            ControlFlow::Continue(())
        });
        out
    }

    /// Every row offset a read returns, page by page of `page` rows.
    fn offsets_by_pages(
        mut read: impl FnMut(Option<&EntryKey>) -> Vec<(EntryKey, Found)>,
    ) -> Vec<u64> {
        let mut offsets = Vec::new();
        let mut after: Option<EntryKey> = None;
        loop {
            let page = read(after.as_ref());
            let Some((last, _)) = page.last() else {
                return offsets;
            };
            after = Some(last.clone());
            offsets.extend(page.iter().map(|(_, f)| f.row.offset));
        }
    }

    fn v_of(m: &Memtable, found: &Found) -> i64 {
        match codec::decode(&m.schema(), &found.row.data).unwrap()[2] {
            Value::Int64(v) => v,
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn get_scan_and_count_order_newest_first() {
        let m = Memtable::new(schema(Ttl::NONE));
        put(&m, 1, row("a", 100, 1, "x"));
        put(&m, 2, row("a", 300, 2, "x"));
        put(&m, 3, row("a", 200, 3, "y"));
        put(&m, 4, row("b", 50, 4, "y"));
        let a = key_of(&m, 0, "a");
        let latest = m.get(0, &a, None, 0).unwrap();
        assert_eq!((latest.ts, v_of(&m, &latest)), (300, 2));
        assert_eq!(v_of(&m, &m.get(0, &a, Some(100), 0).unwrap()), 1);
        assert!(m.get(0, &a, Some(150), 0).is_none());
        let scanned: Vec<i64> = scan(&m, &a, Some(250), Some(100), 10, 0)
            .iter()
            .map(|f| f.ts)
            .collect();
        assert_eq!(scanned, vec![200, 100]);
        assert_eq!(scan(&m, &a, None, None, 1, 0).len(), 1);
        assert_eq!(m.count_key(0, &a, 0), 3);
        assert_eq!(m.count_key(1, &key_of(&m, 1, "y"), 0), 2);
        assert_eq!(m.count_index(0, 0), 4);
        assert_eq!(preview_page(&m, None, 2, 0).len(), 2);
        let all = preview_page(&m, None, 10, 0);
        assert_eq!(all.len(), 4);
        assert_eq!(preview_page(&m, Some(&all[0].0), 10, 0).len(), 3);
        assert_eq!(m.record_count(), 4);
    }

    #[test]
    fn equal_key_and_ts_keep_both_rows() {
        let m = Memtable::new(schema(Ttl::NONE));
        put(&m, 1, row("a", 100, 1, "x"));
        put(&m, 2, row("a", 100, 2, "x"));
        let a = key_of(&m, 0, "a");
        assert_eq!(m.count_key(0, &a, 0), 2);
        assert_eq!(
            v_of(&m, &m.get(0, &a, None, 0).unwrap()),
            2,
            "later write wins the tie"
        );
    }

    #[test]
    fn a_ranged_delete_removes_only_the_rows_in_its_range() {
        let m = Memtable::new(schema(Ttl::NONE));
        put(&m, 1, row("a", 100, 1, "x"));
        put(&m, 2, row("a", 200, 2, "y"));
        put(&m, 3, row("a", 300, 3, "z"));
        put(&m, 4, row("b", 200, 4, "y"));
        assert_eq!(m.delete_key_range(0, &key_of(&m, 0, "a"), 150, 300, 5), 2);
        assert_eq!(m.count_key(0, &key_of(&m, 0, "a"), 0), 1);
        assert_eq!(
            m.count_key(0, &key_of(&m, 0, "b"), 0),
            1,
            "another key is untouched"
        );
        assert_eq!(
            m.count_key(1, &key_of(&m, 1, "y"), 0),
            1,
            "gone from every index"
        );
        assert_eq!(
            m.delete_key_range(0, &key_of(&m, 0, "a"), 5, 1, 6),
            0,
            "an empty range"
        );
        assert_eq!(
            m.delete_key_range(0, &key_of(&m, 0, "a"), 100, 100, 6),
            1,
            "both ends count"
        );
    }

    #[test]
    fn delete_removes_the_rows_from_every_index() {
        let m = Memtable::new(schema(Ttl::NONE));
        put(&m, 1, row("a", 100, 1, "x"));
        put(&m, 2, row("a", 200, 2, "y"));
        put(&m, 3, row("b", 300, 3, "x"));
        let before = m.memory_used();
        assert_eq!(m.delete_key(0, &key_of(&m, 0, "a"), 4), 2);
        assert!(m.get(0, &key_of(&m, 0, "a"), None, 0).is_none());
        assert_eq!(m.count_key(1, &key_of(&m, 1, "x"), 0), 1);
        assert_eq!(m.count_key(1, &key_of(&m, 1, "y"), 0), 0);
        assert!(m.memory_used() < before);
        // A delete only reaches rows written before it.
        put(&m, 5, row("c", 1, 5, "z"));
        assert_eq!(m.delete_key(0, &key_of(&m, 0, "c"), 5), 0);
    }

    #[test]
    fn absolute_ttl_hides_and_collects_old_entries() {
        let m = Memtable::new(schema(Ttl::Absolute { minutes: 10 }));
        let now = 100 * MINUTE;
        put(&m, 1, row("a", now - 20 * MINUTE, 1, "x"));
        put(&m, 2, row("a", now - 5 * MINUTE, 2, "x"));
        let a = key_of(&m, 0, "a");
        assert_eq!(m.count_key(0, &a, now), 1);
        assert!(m.get(0, &a, Some(now - 20 * MINUTE), now).is_none());
        assert_eq!(m.gc(now), 1);
        assert_eq!(m.record_count(), 1);
        // The other index has no TTL: the row stays reachable through it.
        assert_eq!(m.count_key(1, &key_of(&m, 1, "x"), now), 2);
    }

    #[test]
    fn latest_ttl_keeps_newest_n_per_key() {
        let m = Memtable::new(schema(Ttl::Latest { count: 2 }));
        for (i, ts) in [10, 40, 30, 20].into_iter().enumerate() {
            put(&m, i as u64 + 1, row("a", ts, i as i64, "x"));
        }
        put(&m, 9, row("b", 5, 9, "x"));
        let a = key_of(&m, 0, "a");
        let live: Vec<i64> = scan(&m, &a, None, None, 10, 0)
            .iter()
            .map(|f| f.ts)
            .collect();
        assert_eq!(live, vec![40, 30]);
        assert_eq!(m.gc(0), 2);
        assert_eq!(m.record_count(), 3);
        assert_eq!(m.count_key(0, &key_of(&m, 0, "b"), 0), 1);
    }

    #[test]
    fn abs_and_lat_ttl_needs_both_conditions() {
        let m = Memtable::new(schema(Ttl::AbsAndLat {
            minutes: 10,
            count: 1,
        }));
        let now = 100 * MINUTE;
        put(&m, 1, row("a", now - 30 * MINUTE, 1, "x"));
        put(&m, 2, row("a", now - 20 * MINUTE, 2, "x"));
        put(&m, 3, row("b", now - 30 * MINUTE, 3, "x"));
        put(&m, 4, row("c", now - MINUTE, 4, "x"));
        put(&m, 5, row("c", now - 2 * MINUTE, 5, "x"));
        // a: the older one is old and beyond latest 1; b: old but the newest of its key;
        // c: beyond latest 1 but fresh.
        assert_eq!(m.gc(now), 1);
        assert_eq!(m.count_key(0, &key_of(&m, 0, "a"), now), 1);
        assert_eq!(m.count_key(0, &key_of(&m, 0, "b"), now), 1);
        assert_eq!(m.count_key(0, &key_of(&m, 0, "c"), now), 2);
    }

    #[test]
    fn abs_or_lat_ttl_needs_either_condition() {
        let m = Memtable::new(schema(Ttl::AbsOrLat {
            minutes: 10,
            count: 1,
        }));
        let now = 100 * MINUTE;
        put(&m, 1, row("a", now - 30 * MINUTE, 1, "x"));
        put(&m, 2, row("c", now - MINUTE, 2, "x"));
        put(&m, 3, row("c", now - 2 * MINUTE, 3, "x"));
        assert_eq!(m.count_key(0, &key_of(&m, 0, "a"), now), 0);
        assert_eq!(m.count_key(0, &key_of(&m, 0, "c"), now), 1);
        assert_eq!(m.gc(now), 2);
        assert_eq!(m.record_count(), 1);
    }

    #[test]
    fn readers_run_while_a_writer_inserts() {
        let m = Arc::new(Memtable::new(schema(Ttl::NONE)));
        let writer = {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    put(
                        &m,
                        i + 1,
                        row(&format!("k{}", i % 50), i as i64, i as i64, "x"),
                    );
                }
            })
        };
        let mut last = 0;
        while !writer.is_finished() {
            let n = m.count_index(0, 0);
            assert!(n >= last, "entries never disappear without deletes");
            last = n;
        }
        writer.join().unwrap();
        assert_eq!(m.count_index(0, 0), 2000);
        assert_eq!(m.rows_through(1000).len(), 1000);
    }

    #[test]
    fn pages_resume_after_their_cursor_with_nothing_missed_or_repeated() {
        let m = Memtable::new(schema(Ttl::NONE));
        // Equal ts on one key: only the offset tells the rows apart.
        for offset in 1..=7 {
            put(
                &m,
                offset,
                row("a", 100 + offset as i64 % 3, offset as i64, "x"),
            );
        }
        put(&m, 8, row("b", 1, 8, "y"));
        let a = key_of(&m, 0, "a");
        let whole: Vec<u64> = scan(&m, &a, None, None, 100, 0)
            .iter()
            .map(|f| f.row.offset)
            .collect();
        for size in 1..=3 {
            let paged = offsets_by_pages(|after| scan_page(&m, &a, (None, None), after, size, 0));
            assert_eq!(paged, whole, "scan in pages of {size}");
            let previewed = offsets_by_pages(|after| preview_page(&m, after, size, 0));
            assert_eq!(previewed.len(), 8, "preview in pages of {size}");
            let mut unique = previewed.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 8, "no row twice: {previewed:?}");
        }
        // A ts range holds across pages too.
        let ranged =
            offsets_by_pages(|after| scan_page(&m, &a, (Some(101), Some(101)), after, 1, 0));
        assert_eq!(ranged, vec![7, 4, 1]);
    }

    #[test]
    fn a_page_resumes_even_when_its_last_row_is_gone() {
        let m = Memtable::new(schema(Ttl::NONE));
        for offset in 1..=4 {
            put(
                &m,
                offset,
                row(&format!("k{offset}"), 1, offset as i64, "x"),
            );
        }
        let first = preview_page(&m, None, 2, 0);
        assert_eq!(m.delete_key(0, &first[1].0.key, 10), 1);
        let rest: Vec<u64> = preview_page(&m, Some(&first[1].0), 10, 0)
            .iter()
            .map(|(_, f)| f.row.offset)
            .collect();
        assert_eq!(rest, vec![3, 4]);
    }

    #[test]
    fn latest_ttl_ranks_count_from_the_newest_when_a_page_resumes_mid_key() {
        let m = Memtable::new(schema(Ttl::Latest { count: 3 }));
        for offset in 1..=6 {
            put(&m, offset, row("a", offset as i64, offset as i64, "x"));
        }
        let a = key_of(&m, 0, "a");
        let paged = offsets_by_pages(|after| scan_page(&m, &a, (None, None), after, 1, 0));
        assert_eq!(paged, vec![6, 5, 4], "the newest three, page by page");
        let previewed = offsets_by_pages(|after| preview_page(&m, after, 2, 0));
        assert_eq!(previewed, vec![6, 5, 4]);
    }

    #[test]
    fn rows_expiring_between_pages_do_not_shift_the_rest() {
        let m = Memtable::new(schema(Ttl::Absolute { minutes: 10 }));
        let now = 100 * MINUTE;
        // One row per key, alternating old (expiring soon) and fresh.
        for offset in 1..=6u64 {
            let age = if offset % 2 == 1 { 9 } else { 1 };
            put(
                &m,
                offset,
                row(
                    &format!("k{offset}"),
                    now - age * MINUTE,
                    offset as i64,
                    "x",
                ),
            );
        }
        let first = preview_page(&m, None, 2, now);
        assert_eq!(first.len(), 2);
        // Two minutes later the old rows have expired; the next page starts where the
        // first ended, whatever expired before it.
        let later = now + 2 * MINUTE;
        let rest: Vec<u64> = preview_page(&m, Some(&first[1].0), 10, later)
            .iter()
            .map(|(_, f)| f.row.offset)
            .collect();
        assert_eq!(rest, vec![4, 6]);
    }

    #[test]
    fn a_consistent_view_leaves_out_later_rows_and_keeps_its_expiry_time() {
        let m = Memtable::new(schema(Ttl::Latest { count: 2 }));
        put(&m, 1, row("a", 10, 1, "x"));
        put(&m, 2, row("a", 20, 2, "x"));
        put(&m, 3, row("b", 5, 3, "x"));
        let view = ReadView {
            now_ms: 0,
            max_offset: 3,
        };
        let read = |view: ReadView| -> Vec<u64> {
            let mut offsets = Vec::new();
            m.preview_each::<()>(None, view, |_, f| {
                offsets.push(f.row.offset);
                ControlFlow::Continue(())
            });
            offsets
        };
        assert_eq!(read(view), vec![2, 1, 3]);
        // A newer row of `a` pushes its oldest beyond the newest two for ordinary reads,
        // and is not there for the view.
        put(&m, 4, row("a", 30, 4, "x"));
        assert_eq!(read(ReadView::latest(0)), vec![4, 2, 3]);
        assert_eq!(read(view), vec![2, 1, 3]);
    }

    #[test]
    fn a_row_logged_under_the_old_schema_is_indexed_by_the_new_one() {
        let m = Memtable::new(schema(Ttl::NONE));
        put(&m, 1, row("a", 10, 1, "x"));
        // Entries computed before the change, inserted after it (a put prepared while the
        // change was being logged ahead of it).
        let late = row("b", 20, 2, "y");
        let stale = m.index_entries(&late, 0).unwrap();
        let index = tessera_proto::common::IndexDesc {
            name: "by_v".into(),
            key_columns: vec!["v".into()],
            ts_column: "ts".into(),
            ..Default::default()
        };
        let next = m.schema().with_index_added(&index).unwrap();
        assert!(m.apply_schema(Arc::new(next.clone()), 5).unwrap());
        assert_eq!(m.schema_at(4).version, 1);
        assert_eq!(m.schema_at(5).version, 2);
        assert!(
            !m.apply_schema(Arc::new(next), 6).unwrap(),
            "a schema already applied changes nothing"
        );
        let data = codec::encode(&m.schema(), &late).unwrap();
        m.insert(2, 0, data, stale);
        let key_of_v = |v: i64| {
            let schema = m.schema();
            key::key_from_values(&schema, &schema.indexes[2], &[Value::Int64(v)]).unwrap()
        };
        assert_eq!(m.count_key(2, &key_of_v(1), 0), 1, "backfilled");
        assert_eq!(m.count_key(2, &key_of_v(2), 0), 1, "entries computed again");
        // Deleting through the first index takes the row out of the new one too.
        assert_eq!(m.delete_key(0, &key_of(&m, 0, "b"), 3), 1);
        assert_eq!(m.count_key(2, &key_of_v(2), 0), 0);
    }
}
