//! The nameserver's copy of every table's metadata, kept current by one ZooKeeper watch.
//!
//! Every nameserver, leader or standby, follows `/table/table_data` with a persistent
//! recursive watch: each event names the one node that changed (a table's header or one
//! of its chunks, see `tessera_common::table_layout`), and only that node is read again.
//! The whole metadata is read once per session (and again after a disconnection, when
//! events may have been lost), never on a timer; a standby that takes office already
//! holds it. The leader also applies its own writes as they succeed, so what it reads
//! next includes them without waiting for the event.
//!
//! Each node is kept with the transaction that last changed it (`mzxid`); a read older
//! than what is held is ignored, so events and writes may arrive in any order and the
//! copy still converges on ZooKeeper's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tessera_common::table_layout::{self, LayoutError};
use tessera_proto::nameserver::{PartitionChunk, TableInfo};
use tracing::{debug, info, warn};
use zookeeper_client::{AddWatchMode, Client, Error as ZkError, EventType, SessionState};

/// One node of a table's metadata, named by its path under the table directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Header { table: String },
    Chunk { table: String, index: u32 },
}

impl Node {
    /// The node at `path`, if it is a table's header or chunk under `dir`.
    fn parse(dir: &str, path: &str) -> Option<Node> {
        let rest = path.strip_prefix(dir)?.strip_prefix('/')?;
        match rest.split_once('/') {
            None if !rest.is_empty() => Some(Node::Header {
                table: rest.to_string(),
            }),
            Some((table, chunk)) => Some(Node::Chunk {
                table: table.to_string(),
                index: chunk.strip_prefix("chunk-")?.parse().ok()?,
            }),
            None => None,
        }
    }
}

/// Every table, each shared: a change re-assembles only the table it touches, and the
/// tables it does not touch stay the same allocations (the op planner's memo keys on
/// them).
pub(crate) type Tables = Arc<Vec<Arc<TableInfo>>>;

#[derive(Debug, Default, Clone)]
pub(crate) struct CachedTable {
    /// The header as stored (an inline table's holds its partitions), and its mzxid.
    header: Option<(TableInfo, i64)>,
    chunks: BTreeMap<u32, (PartitionChunk, i64)>,
    /// The whole table as last assembled, until one of its nodes changes.
    assembled: Option<Arc<TableInfo>>,
}

impl CachedTable {
    /// The whole table, if every node of it is held (a table being created or dropped
    /// is not a table yet).
    fn assemble(&self) -> Option<TableInfo> {
        let (header, _) = self.header.as_ref()?;
        let mut table = header.clone();
        if table.partition_chunks == 0 {
            return Some(table);
        }
        table.partitions.clear();
        for index in 0..table.partition_chunks {
            let (chunk, _) = self.chunks.get(&index)?;
            // A chunk left by a table of the same name dropped and created again is
            // not this table's.
            if chunk.tid != table.tid {
                return None;
            }
            table.partitions.extend(chunk.partitions.iter().cloned());
        }
        Some(table)
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// The whole metadata was read in the current session and no event was lost since.
    ready: bool,
    /// Bumped by each session's follower: an older one stops feeding the copy.
    generation: u64,
    /// Whole reads begun so far (see [`MetadataCache::begin_read`]).
    reads_begun: u64,
    /// The whole read last taken: an older one that finishes later is not taken.
    replaced_by: u64,
    /// Reads begun up to this one started before the copy was last found not whole
    /// (a disconnection, a new session): they cannot make it whole.
    untrusted_up_to: u64,
    /// Tables a write of the leader's left unsure (a lost connection: the write may have
    /// landed), with the number of the last whole read begun before: the copy may lack
    /// a committed change to them, so [`MetadataCache::table`] does not serve them until
    /// a whole read begun after is taken.
    unsure: HashMap<String, u64>,
    tables: BTreeMap<String, CachedTable>,
    /// Every table assembled, until the next change.
    view: Option<Tables>,
}

/// Whether a read made at `mzxid` is newer than what is held.
fn is_newer<T>(held: Option<&(T, i64)>, mzxid: i64) -> bool {
    held.is_none_or(|(_, held)| *held < mzxid)
}

impl Inner {
    fn not_ready(&mut self) {
        self.ready = false;
        self.untrusted_up_to = self.reads_begun;
    }

    fn note_header(&mut self, table: &str, header: TableInfo, mzxid: i64) {
        let cached = self.tables.entry(table.to_string()).or_default();
        if is_newer(cached.header.as_ref(), mzxid) {
            cached.header = Some((header, mzxid));
            cached.assembled = None;
            self.view = None;
        }
    }

    fn note_chunk(&mut self, table: &str, index: u32, chunk: PartitionChunk, mzxid: i64) {
        let cached = self.tables.entry(table.to_string()).or_default();
        if is_newer(cached.chunks.get(&index), mzxid) {
            cached.chunks.insert(index, (chunk, mzxid));
            cached.assembled = None;
            self.view = None;
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct MetadataCache {
    inner: Mutex<Inner>,
}

impl MetadataCache {
    /// Every complete table in (db, name) order; `None` until the copy is whole.
    pub(crate) fn tables(&self) -> Option<Tables> {
        let mut inner = self.inner.lock();
        if !inner.ready {
            return None;
        }
        if let Some(view) = &inner.view {
            return Some(view.clone());
        }
        // Only the tables changed since the last view are assembled again.
        let mut whole: Vec<Arc<TableInfo>> = inner
            .tables
            .values_mut()
            .filter_map(|cached| {
                if cached.assembled.is_none() {
                    cached.assembled = cached.assemble().map(Arc::new);
                }
                cached.assembled.clone()
            })
            .collect();
        whole.sort_by(|a, b| (&a.db, &a.name).cmp(&(&b.db, &b.name)));
        let view = Arc::new(whole);
        inner.view = Some(view.clone());
        Some(view)
    }

    /// One complete table (`db.name`); `None` until the copy is whole, or while the copy
    /// does not hold the table whole.
    pub(crate) fn table(&self, name: &str) -> Option<Arc<TableInfo>> {
        let mut inner = self.inner.lock();
        if !inner.ready {
            return None;
        }
        if inner.unsure.contains_key(name) {
            return None;
        }
        let cached = inner.tables.get_mut(name)?;
        if cached.assembled.is_none() {
            cached.assembled = cached.assemble().map(Arc::new);
        }
        cached.assembled.clone()
    }

    /// The copy is not whole (events may be lost): nothing is served from it until a
    /// whole read begun after now is taken.
    fn set_not_ready(&self) {
        self.inner.lock().not_ready();
    }

    /// A new session's follower starts: returns its generation.
    fn begin(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.generation += 1;
        inner.not_ready();
        inner.generation
    }

    /// A whole read is about to begin: its number, for [`MetadataCache::replace`].
    fn begin_read(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.reads_begun += 1;
        inner.reads_begun
    }

    /// A write of the leader's to `table` (`db.name`) has an unknown outcome.
    pub(crate) fn unsure(&self, table: &str) {
        let mut inner = self.inner.lock();
        let begun = inner.reads_begun;
        inner.unsure.insert(table.to_string(), begun);
    }

    /// Guards a leader's write to `table` (`db.name`) made in the caller's own future:
    /// if that future is dropped before the outcome is noted (a client that hung up, an
    /// op task's timeout), the write may still land, and the table is made unsure as for
    /// any unknown outcome. [`WriteGuard::settle`] once the outcome is noted.
    pub(crate) fn write_guard(&self, table: &str) -> WriteGuard<'_> {
        WriteGuard {
            cache: self,
            table: table.to_string(),
            settled: false,
        }
    }

    fn is_current(&self, generation: u64) -> bool {
        self.inner.lock().generation == generation
    }

    /// Takes a whole fresh read (number `read`, from [`MetadataCache::begin_read`]): a
    /// node it lacks is gone, and a node held newer than it was read (a write applied
    /// meanwhile) is kept. A read that began before the last one taken, or before the
    /// copy was last found not whole, is left: it may still list a table dropped since,
    /// or miss what happened while events were lost, and what it could add the events
    /// and the newer read bring.
    fn replace(&self, fresh: BTreeMap<String, CachedTable>, read: u64) {
        let mut inner = self.inner.lock();
        if read < inner.replaced_by || read <= inner.untrusted_up_to {
            debug!(read, "a whole read older than the copy's last one is left");
            return;
        }
        inner.replaced_by = read;
        // A read begun after a write left its table unsure covers that write.
        inner.unsure.retain(|_, before| *before >= read);
        let mut held = std::mem::take(&mut inner.tables);
        let mut merged = BTreeMap::new();
        for (name, mut table) in fresh {
            if let Some(old) = held.remove(&name) {
                if let (Some((_, read)), Some((header, mzxid))) = (&table.header, old.header) {
                    if mzxid > *read {
                        table.header = Some((header, mzxid));
                    }
                }
                for (index, (chunk, mzxid)) in old.chunks {
                    if table
                        .chunks
                        .get(&index)
                        .is_some_and(|(_, read)| mzxid > *read)
                    {
                        table.chunks.insert(index, (chunk, mzxid));
                    }
                }
            }
            merged.insert(name, table);
        }
        inner.tables = merged;
        inner.view = None;
        inner.ready = true;
    }

    /// Takes `data` (read at `mzxid`) for `node`, unless what is held is newer; `None`:
    /// the node is gone.
    fn apply(&self, node: &Node, read: Option<(Vec<u8>, i64)>, dir: &str) {
        let mut inner = self.inner.lock();
        let table = match node {
            Node::Header { table } | Node::Chunk { table, .. } => table.clone(),
        };
        let Some((data, mzxid)) = read else {
            match node {
                Node::Header { .. } => {
                    if let Some(cached) = inner.tables.get_mut(&table) {
                        cached.header = None;
                        cached.assembled = None;
                        if cached.chunks.is_empty() {
                            inner.tables.remove(&table);
                        }
                    }
                }
                Node::Chunk { index, .. } => {
                    if let Some(cached) = inner.tables.get_mut(&table) {
                        cached.chunks.remove(index);
                        cached.assembled = None;
                    }
                }
            }
            inner.view = None;
            return;
        };
        let path = format!("{dir}/{table}");
        match node {
            Node::Header { .. } => match table_layout::decode_table(&path, &data) {
                Ok(mut header) => {
                    header.partitions.sort_by_key(|p| p.pid);
                    inner.note_header(&table, header, mzxid);
                }
                Err(e) => warn!(error = %e, "a table header does not decode; left as it was"),
            },
            Node::Chunk { index, .. } => {
                let chunk_path = table_layout::chunk_path(&path, *index);
                match table_layout::decode_chunk(&chunk_path, *index, &data) {
                    Ok(chunk) => inner.note_chunk(&table, *index, chunk, mzxid),
                    Err(e) => warn!(error = %e, "a table chunk does not decode; left as it was"),
                }
            }
        }
    }

    /// The leader wrote chunk `index` of `table` (`db.name`), and ZooKeeper gave the
    /// write transaction `mzxid`.
    pub(crate) fn note_chunk(&self, table: &str, index: u32, chunk: PartitionChunk, mzxid: i64) {
        self.inner.lock().note_chunk(table, index, chunk, mzxid);
    }

    /// The leader wrote `table`'s header (its partitions inline if it has no chunks).
    pub(crate) fn note_header(&self, table: &str, header: TableInfo, mzxid: i64) {
        self.inner.lock().note_header(table, header, mzxid);
    }

    /// The leader read a table's nodes (after creating it).
    pub(crate) fn note_nodes(&self, name: &str, nodes: table_layout::TableNodes) {
        let mut inner = self.inner.lock();
        inner.note_header(name, nodes.header, nodes.header_mzxid);
        for (index, (chunk, mzxid)) in nodes.chunks {
            inner.note_chunk(name, index, chunk, mzxid);
        }
    }

    /// The tables whose header still holds their partitions (the layout before chunks).
    pub(crate) fn inline_tables(&self) -> Vec<String> {
        self.inner
            .lock()
            .tables
            .iter()
            .filter(|(_, cached)| {
                cached
                    .header
                    .as_ref()
                    .is_some_and(|(h, _)| h.partition_chunks == 0 && !h.partitions.is_empty())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The leader dropped `table`.
    pub(crate) fn forget(&self, table: &str) {
        let mut inner = self.inner.lock();
        inner.tables.remove(table);
        inner.view = None;
    }
}

/// Every complete table of `tables`, in (db, name) order.
pub(crate) fn assemble_all(tables: &BTreeMap<String, CachedTable>) -> Vec<TableInfo> {
    let mut whole: Vec<TableInfo> = tables.values().filter_map(CachedTable::assemble).collect();
    whole.sort_by(|a, b| (&a.db, &a.name).cmp(&(&b.db, &b.name)));
    whole
}

/// Reads every table's nodes under `dir`, all tables at once; a table being created or
/// dropped is taken as far as it is there (its events fill in the rest).
pub(crate) async fn read_all(
    client: &Client,
    dir: &str,
) -> Result<BTreeMap<String, CachedTable>, ZkError> {
    let mut reads = tokio::task::JoinSet::new();
    for child in client.list_children(dir).await? {
        let (client, path) = (client.clone(), format!("{dir}/{child}"));
        reads.spawn(async move {
            let read = table_layout::read_nodes(&client, &path).await;
            (child, read)
        });
    }
    let mut tables = BTreeMap::new();
    while let Some(joined) = reads.join_next().await {
        let (name, read) = joined.map_err(|e| ZkError::UnexpectedError(e.to_string()))?;
        match read {
            Ok(Some(nodes)) => {
                let mut header = nodes.header;
                header.partitions.sort_by_key(|p| p.pid);
                tables.insert(
                    name,
                    CachedTable {
                        header: Some((header, nodes.header_mzxid)),
                        chunks: nodes.chunks,
                        assembled: None,
                    },
                );
            }
            Ok(None) => {}
            Err(LayoutError::Zk(e)) => return Err(e),
            Err(e) => warn!(error = %e, "a table's metadata does not decode; left out"),
        }
    }
    Ok(tables)
}

/// Reads the whole metadata into `cache` (a nameserver taking office: its copy may still
/// be taking in the old leader's last writes).
pub(crate) async fn reload(
    cache: &MetadataCache,
    client: &Client,
    dir: &str,
) -> Result<(), ZkError> {
    let read = cache.begin_read();
    let tables = read_all(client, dir).await?;
    cache.replace(tables, read);
    crate::metrics::METRICS.metadata_cache_loaded();
    Ok(())
}

/// Keeps `cache` current for as long as `client`'s session lasts (or until a newer
/// session's follower starts); the copy is marked not whole when it stops.
pub(crate) async fn follow(cache: Arc<MetadataCache>, client: Client, dir: String) {
    let generation = cache.begin();
    follow_session(&cache, &client, &dir, generation).await;
    if cache.is_current(generation) {
        cache.set_not_ready();
    }
}

async fn follow_session(cache: &MetadataCache, client: &Client, dir: &str, generation: u64) {
    // The watch first, so no change after the full read is missed.
    let mut watcher = loop {
        match client.watch(dir, AddWatchMode::PersistentRecursive).await {
            Ok(watcher) => break watcher,
            Err(ZkError::SessionExpired) | Err(ZkError::ClientClosed) => return,
            Err(e) => {
                warn!(error = %e, "watching the table metadata failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    'session: loop {
        if !cache.is_current(generation) {
            return;
        }
        let read = cache.begin_read();
        match read_all(client, dir).await {
            Ok(tables) => {
                let count = tables.len();
                cache.replace(tables, read);
                crate::metrics::METRICS.metadata_cache_loaded();
                info!(tables = count, "table metadata read; following its changes");
            }
            Err(ZkError::SessionExpired) | Err(ZkError::ClientClosed) => return,
            Err(e) => {
                warn!(error = %e, "reading the table metadata failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        loop {
            let event = watcher.changed().await;
            if !cache.is_current(generation) {
                return;
            }
            match event.event_type {
                EventType::Session => match event.session_state {
                    state if state.is_terminated() => return,
                    // Events may be lost while disconnected: read everything again once
                    // connected.
                    SessionState::Disconnected => cache.set_not_ready(),
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        continue 'session
                    }
                    _ => {}
                },
                EventType::NodeCreated | EventType::NodeDataChanged | EventType::NodeDeleted => {
                    let Some(node) = Node::parse(dir, &event.path) else {
                        continue;
                    };
                    let read = match client.get_data(&event.path).await {
                        Ok((data, stat)) => Some((data, stat.mzxid)),
                        Err(ZkError::NoNode) => None,
                        Err(ZkError::SessionExpired) | Err(ZkError::ClientClosed) => return,
                        Err(e) => {
                            // Not knowing this node's state, the copy is not whole.
                            warn!(error = %e, path = %event.path, "reading a changed table node failed; reading everything again");
                            cache.set_not_ready();
                            continue 'session;
                        }
                    };
                    debug!(path = %event.path, "table metadata changed");
                    cache.apply(&node, read, dir);
                    crate::metrics::METRICS.metadata_cache_event();
                }
                EventType::NodeChildrenChanged => {}
            }
        }
    }
}

/// See [`MetadataCache::write_guard`].
pub(crate) struct WriteGuard<'a> {
    cache: &'a MetadataCache,
    table: String,
    settled: bool,
}

impl WriteGuard<'_> {
    /// The write's outcome is noted in the copy (or known not to have been applied).
    pub(crate) fn settle(mut self) {
        self.settled = true;
    }

    /// Settles a header write whose answer is `written`, unless its outcome is unknown:
    /// applied (the caller notes it in the copy before any await), or refused whole
    /// (`BadVersion`: retried; `NoNode`: the table was dropped). Any other error may
    /// have landed, and the table is made unsure.
    pub(crate) fn settle_if_known<T>(self, written: &Result<T, ZkError>) {
        if matches!(
            written,
            Ok(_) | Err(ZkError::BadVersion) | Err(ZkError::NoNode)
        ) {
            self.settle();
        }
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.cache.unsure(&self.table);
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tessera_proto::nameserver::PartitionMeta;

    use super::*;

    const DIR: &str = "/tessera/table/table_data";

    fn table(partitions: u32, term: u64) -> TableInfo {
        TableInfo {
            db: "default".into(),
            name: "t".into(),
            partition_num: partitions,
            partitions: (0..partitions)
                .map(|pid| PartitionMeta {
                    pid,
                    term,
                    ..PartitionMeta::default()
                })
                .collect(),
            ..TableInfo::default()
        }
    }

    fn header_node() -> Node {
        Node::parse(DIR, &format!("{DIR}/default.t")).unwrap()
    }

    fn chunk_node(index: u32) -> Node {
        Node::parse(DIR, &format!("{DIR}/default.t/chunk-{index:05}")).unwrap()
    }

    #[test]
    fn paths_name_headers_and_chunks() {
        assert_eq!(
            header_node(),
            Node::Header {
                table: "default.t".into()
            }
        );
        assert_eq!(
            chunk_node(12),
            Node::Chunk {
                table: "default.t".into(),
                index: 12
            }
        );
        assert_eq!(Node::parse(DIR, DIR), None);
        assert_eq!(Node::parse(DIR, "/tessera/db/x"), None);
        assert_eq!(Node::parse(DIR, &format!("{DIR}/default.t/other")), None);
    }

    /// Events arrive out of order with the leader's own writes: the newest of each node
    /// wins, and a table shows only once all its chunks are held.
    #[test]
    fn the_newest_read_of_each_node_wins_and_half_tables_stay_out() {
        let cache = MetadataCache::default();
        cache.replace(BTreeMap::new(), cache.begin_read());
        let split = table_layout::split(&table(100, 1)).unwrap();
        cache.apply(
            &header_node(),
            Some((split.header.encode_to_vec(), 10)),
            DIR,
        );
        cache.apply(
            &chunk_node(0),
            Some((split.chunks[0].encode_to_vec(), 11)),
            DIR,
        );
        assert!(
            cache.tables().unwrap().is_empty(),
            "a table missing a chunk is not shown"
        );
        cache.apply(
            &chunk_node(1),
            Some((split.chunks[1].encode_to_vec(), 12)),
            DIR,
        );
        assert_eq!(cache.tables().unwrap()[0].partitions.len(), 100);

        // The leader's write (mzxid 20) lands before the event of an older one (15).
        let newer = table_layout::split(&table(100, 3)).unwrap();
        cache.note_chunk("default.t", 1, newer.chunks[1].clone(), 20);
        let older = table_layout::split(&table(100, 2)).unwrap();
        cache.apply(
            &chunk_node(1),
            Some((older.chunks[1].encode_to_vec(), 15)),
            DIR,
        );
        let tables = cache.tables().unwrap();
        assert_eq!(tables[0].partitions[0].term, 1);
        assert_eq!(tables[0].partitions[99].term, 3);

        // Dropped: chunks, then the header, go.
        cache.apply(&chunk_node(0), None, DIR);
        assert!(cache.tables().unwrap().is_empty());
        cache.apply(&chunk_node(1), None, DIR);
        cache.apply(&header_node(), None, DIR);
        assert!(cache.inner.lock().tables.is_empty());
    }

    #[test]
    fn an_inline_header_is_a_whole_table() {
        let cache = MetadataCache::default();
        cache.replace(BTreeMap::new(), cache.begin_read());
        cache.apply(&header_node(), Some((table(3, 1).encode_to_vec(), 5)), DIR);
        assert_eq!(cache.tables().unwrap()[0].partitions.len(), 3);
    }

    /// A change re-assembles only the table it touches: every other table is the very
    /// same copy as before (the planner's memo and the op tasks rely on it), and
    /// `table` serves the changed one.
    #[test]
    fn a_change_assembles_again_only_its_own_table() {
        let cache = MetadataCache::default();
        cache.replace(BTreeMap::new(), cache.begin_read());
        for name in ["a", "b"] {
            let mut whole = table(100, 1);
            whole.name = name.into();
            let split = table_layout::split(&whole).unwrap();
            let key = format!("default.{name}");
            cache.note_header(&key, split.header, 1);
            for (index, chunk) in split.chunks.into_iter().enumerate() {
                cache.note_chunk(&key, index as u32, chunk, 1);
            }
        }
        let before = cache.tables().unwrap();
        assert!(
            Arc::ptr_eq(&before, &cache.tables().unwrap()),
            "no change, the same view"
        );

        let mut changed = table(100, 7);
        changed.name = "b".into();
        let split = table_layout::split(&changed).unwrap();
        cache.note_chunk("default.b", 1, split.chunks[1].clone(), 2);
        let after = cache.tables().unwrap();
        assert_eq!(after.len(), 2);
        assert!(
            Arc::ptr_eq(&before[0], &after[0]),
            "the untouched table is the same copy"
        );
        assert!(!Arc::ptr_eq(&before[1], &after[1]));
        assert_eq!(after[1].partitions[99].term, 7);
        assert_eq!(after[1].partitions[0].term, 1);

        let held = cache.table("default.b").unwrap();
        assert!(Arc::ptr_eq(&held, &after[1]), "one assembly serves both");
        assert!(cache.table("default.c").is_none());
        cache.set_not_ready();
        assert!(
            cache.table("default.a").is_none(),
            "not before the copy is whole"
        );
    }

    /// A whole read that began before the last one taken, or before the copy was found
    /// not whole, is not taken; a table whose write had an unknown outcome is not served
    /// alone until the next whole read.
    #[test]
    fn only_the_newest_whole_read_counts_and_an_unsure_table_is_read_again() {
        let whole = |tables: &[&str]| -> BTreeMap<String, CachedTable> {
            tables
                .iter()
                .map(|name| {
                    let mut header = table(3, 1);
                    header.name = name.to_string();
                    let cached = CachedTable {
                        header: Some((header, 1)),
                        ..CachedTable::default()
                    };
                    (format!("default.{name}"), cached)
                })
                .collect()
        };
        let cache = MetadataCache::default();
        let (older, newer) = (cache.begin_read(), cache.begin_read());
        cache.replace(whole(&["a"]), newer);
        // The older read still lists a table dropped meanwhile.
        cache.replace(whole(&["a", "dropped"]), older);
        assert_eq!(cache.tables().unwrap().len(), 1);

        let before_the_disconnection = cache.begin_read();
        cache.set_not_ready();
        cache.replace(whole(&["a"]), before_the_disconnection);
        assert!(
            cache.tables().is_none(),
            "events may have been lost since it began"
        );
        cache.replace(whole(&["a"]), cache.begin_read());
        assert!(cache.table("default.a").is_some());

        let before_the_write = cache.begin_read();
        cache.unsure("default.a");
        assert!(
            cache.table("default.a").is_none(),
            "read from ZooKeeper instead"
        );
        assert_eq!(cache.tables().unwrap().len(), 1, "still listed");
        cache.replace(whole(&["a"]), before_the_write);
        assert!(
            cache.table("default.a").is_none(),
            "a read begun before the write does not cover it"
        );
        cache.replace(whole(&["a"]), cache.begin_read());
        assert!(cache.table("default.a").is_some());

        // A write whose caller settles it leaves the table served from the copy; one
        // whose caller went away before its outcome was noted does not.
        cache.write_guard("default.a").settle();
        assert!(cache.table("default.a").is_some());
        drop(cache.write_guard("default.a"));
        assert!(
            cache.table("default.a").is_none(),
            "a write dropped in flight may land"
        );
    }

    #[test]
    fn nothing_is_served_until_the_whole_copy_is_read() {
        let cache = MetadataCache::default();
        assert!(cache.tables().is_none());
        cache.replace(BTreeMap::new(), cache.begin_read());
        assert!(cache.tables().is_some());
        cache.set_not_ready();
        assert!(cache.tables().is_none());
    }
}
