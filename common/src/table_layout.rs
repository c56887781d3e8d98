//! How a table's metadata is laid out in ZooKeeper.
//!
//! A table is a header node, `/table/table_data/<db>.<name>`, holding everything but its
//! partitions, and `partition_chunks` child nodes `chunk-NNNNN`, each holding the
//! partitions whose pid / [`CHUNK_PARTITIONS`] is NNNNN. A node stays far below
//! ZooKeeper's 1 MB limit whatever the table's size, and a change to one partition
//! rewrites one chunk, not the whole table. A header written before chunks existed holds
//! its partitions inline (`partition_chunks` = 0); reads accept both, and the nameserver
//! leader moves inline tables to chunks when it takes office.
//!
//! The nameserver writes this layout; it and the SDK read it with [`read_table`].

use prost::Message;
use tessera_proto::nameserver::{PartitionChunk, PartitionMeta, TableInfo};
use zookeeper_client as zk;

/// Partitions per chunk node. A partition with three replicas takes about 100 bytes
/// (more while it carries an unavailable reason, at most [`MAX_REASON_BYTES`]), so a
/// chunk stays under about 50 KB even with ten replicas per partition.
pub const CHUNK_PARTITIONS: u32 = 64;

/// An unavailable reason longer than this is cut when stored: it is a note for the
/// operator, and it must not let a chunk grow without bound.
pub const MAX_REASON_BYTES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Zk(#[from] zk::Error),
    #[error("{path} does not decode: {reason}")]
    Decode { path: String, reason: String },
    /// The header names a chunk that is not there: the table is being created or
    /// dropped (or one of those was cut short), so it is not a table yet.
    #[error("{path} is incomplete: its chunk {index} is missing")]
    Incomplete { path: String, index: u32 },
}

/// The chunk node `index` of the table whose header is at `table_path`.
pub fn chunk_path(table_path: &str, index: u32) -> String {
    format!("{table_path}/chunk-{index:05}")
}

/// The chunk that holds partition `pid`.
pub fn chunk_of(pid: u32) -> u32 {
    pid / CHUNK_PARTITIONS
}

/// A table cut into the nodes it is stored as.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The table without its partitions, `partition_chunks` set.
    pub header: TableInfo,
    /// Chunk `i` is `chunks[i]`.
    pub chunks: Vec<PartitionChunk>,
}

/// Cuts `table` into its header and chunks (reasons longer than [`MAX_REASON_BYTES`]
/// cut). Every pid must be below the table's `partition_num`, which sets the number of
/// chunks.
pub fn split(table: &TableInfo) -> Result<Split, LayoutError> {
    let bad = |reason: String| LayoutError::Decode {
        path: format!("{}.{}", table.db, table.name),
        reason,
    };
    if let Some(stray) = table
        .partitions
        .iter()
        .find(|p| p.pid >= table.partition_num)
    {
        return Err(bad(format!(
            "partition {} is not below the table's partition count {}",
            stray.pid, table.partition_num
        )));
    }
    let mut header = header_of(table);
    header.partition_chunks = chunk_count(table.partition_num);
    let mut chunks = vec![
        PartitionChunk {
            tid: table.tid,
            ..PartitionChunk::default()
        };
        header.partition_chunks as usize
    ];
    let mut partitions = table.partitions.clone();
    partitions.sort_by_key(|p| p.pid);
    for mut partition in partitions {
        clip_reason(&mut partition);
        chunks[chunk_of(partition.pid) as usize]
            .partitions
            .push(partition);
    }
    Ok(Split { header, chunks })
}

/// The chunks a table of `partition_num` partitions is stored in.
pub fn chunk_count(partition_num: u32) -> u32 {
    partition_num.div_ceil(CHUNK_PARTITIONS)
}

/// `table` without its partitions, as its header node holds it (`partition_chunks` as
/// the table has it).
pub fn header_of(table: &TableInfo) -> TableInfo {
    TableInfo {
        partitions: Vec::new(),
        ..table.clone()
    }
}

/// Cuts an unavailable reason to [`MAX_REASON_BYTES`], at a character boundary.
pub fn clip_reason(partition: &mut PartitionMeta) {
    let reason = &mut partition.unavailable_reason;
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
}

/// A table as read, with the versions of the nodes it came from (for compare-and-set).
#[derive(Debug, Clone)]
pub struct StoredTable {
    /// The whole table, its partitions in pid order.
    pub table: TableInfo,
    pub header_version: i32,
    /// The transaction that last changed the header.
    pub header_mzxid: i64,
    /// Chunk `i` was read at version `chunk_versions[i]`, last changed by transaction
    /// `chunk_mzxids[i]`; both empty for an inline table.
    pub chunk_versions: Vec<i32>,
    pub chunk_mzxids: Vec<i64>,
}

impl StoredTable {
    pub fn is_inline(&self) -> bool {
        self.table.partition_chunks == 0
    }
}

pub fn decode_table(path: &str, data: &[u8]) -> Result<TableInfo, LayoutError> {
    TableInfo::decode(data).map_err(|e| LayoutError::Decode {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// Decodes chunk `index` and checks that it holds only its own partitions.
pub fn decode_chunk(path: &str, index: u32, data: &[u8]) -> Result<PartitionChunk, LayoutError> {
    let chunk = PartitionChunk::decode(data).map_err(|e| LayoutError::Decode {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    if let Some(stray) = chunk.partitions.iter().find(|p| chunk_of(p.pid) != index) {
        return Err(LayoutError::Decode {
            path: path.to_string(),
            reason: format!("partition {} does not belong in chunk {index}", stray.pid),
        });
    }
    Ok(chunk)
}

/// The header node at `path`, decoded, with its stat; `None` if there is none.
async fn read_header(
    client: &zk::Client,
    path: &str,
) -> Result<Option<(TableInfo, zk::Stat)>, LayoutError> {
    match client.get_data(path).await {
        Ok((data, stat)) => Ok(Some((decode_table(path, &data)?, stat))),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads the table whose header is at `path`, chunks and all; `None` if there is no such
/// node. The chunks are asked for at once (one round trip's wait, not one per chunk).
pub async fn read_table(
    client: &zk::Client,
    path: &str,
) -> Result<Option<StoredTable>, LayoutError> {
    let Some((mut table, stat)) = read_header(client, path).await? else {
        return Ok(None);
    };
    if table.partition_chunks == 0 {
        table.partitions.sort_by_key(|p| p.pid);
        return Ok(Some(StoredTable {
            table,
            header_version: stat.version,
            header_mzxid: stat.mzxid,
            chunk_versions: Vec::new(),
            chunk_mzxids: Vec::new(),
        }));
    }
    if table.partition_chunks > chunk_count(table.partition_num) {
        return Err(LayoutError::Decode {
            path: path.to_string(),
            reason: format!(
                "{} chunks for {} partitions",
                table.partition_chunks, table.partition_num
            ),
        });
    }
    // Each request is sent when it is made; the futures only wait for the answers.
    let reads: Vec<_> = (0..table.partition_chunks)
        .map(|index| client.get_data(&chunk_path(path, index)))
        .collect();
    let mut chunk_versions = Vec::with_capacity(reads.len());
    let mut chunk_mzxids = Vec::with_capacity(reads.len());
    table.partitions.clear();
    for (index, read) in (0..).zip(reads) {
        let chunk_path = chunk_path(path, index);
        let (data, stat) = match read.await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => {
                return Err(LayoutError::Incomplete {
                    path: path.to_string(),
                    index,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let chunk = decode_chunk(&chunk_path, index, &data)?;
        if chunk.tid != table.tid {
            return Err(LayoutError::Decode {
                path: chunk_path,
                reason: format!("chunk of tid {}, its header has {}", chunk.tid, table.tid),
            });
        }
        table.partitions.extend(chunk.partitions);
        chunk_versions.push(stat.version);
        chunk_mzxids.push(stat.mzxid);
    }
    Ok(Some(StoredTable {
        table,
        header_version: stat.version,
        header_mzxid: stat.mzxid,
        chunk_versions,
        chunk_mzxids,
    }))
}

/// One multi request carries at most this many bytes of node data: ZooKeeper refuses a
/// request over its `jute.maxbuffer` (1 MB by default).
const MULTI_BYTES: usize = 512 * 1024;

/// Node writes gathered into multi requests fenced by `lock`, each request sent once it
/// would grow past [`MULTI_BYTES`].
struct BatchedWrites<'a> {
    lock: &'a zk::OwnedLockClient,
    writer: zk::CheckWriter<'a>,
    bytes: usize,
    ops: usize,
}

impl<'a> BatchedWrites<'a> {
    fn new(lock: &'a zk::OwnedLockClient) -> BatchedWrites<'a> {
        BatchedWrites {
            lock,
            writer: lock.new_check_writer(),
            bytes: 0,
            ops: 0,
        }
    }

    async fn make_room(&mut self, bytes: usize) -> Result<(), zk::Error> {
        if self.ops > 0 && self.bytes + bytes > MULTI_BYTES {
            self.send().await?;
        }
        self.bytes += bytes;
        self.ops += 1;
        Ok(())
    }

    async fn create(
        &mut self,
        path: &str,
        data: &[u8],
        options: &zk::CreateOptions<'_>,
    ) -> Result<(), zk::Error> {
        self.make_room(data.len()).await?;
        self.writer.add_create(path, data, options)
    }

    async fn set(&mut self, path: &str, data: &[u8]) -> Result<(), zk::Error> {
        self.make_room(data.len()).await?;
        self.writer.add_set_data(path, data, None)
    }

    async fn delete(&mut self, path: &str) -> Result<(), zk::Error> {
        self.make_room(path.len()).await?;
        self.writer.add_delete(path, None)
    }

    async fn send(&mut self) -> Result<(), zk::Error> {
        let writer = std::mem::replace(&mut self.writer, self.lock.new_check_writer());
        (self.bytes, self.ops) = (0, 0);
        writer.commit().await?;
        Ok(())
    }
}

/// Creates a new table's nodes, fenced by `lock`: the header and as many chunks as fit in
/// one request, then the other chunks. Until the last chunk is there, [`read_table`]
/// finds the table incomplete, which its readers take as not there yet.
pub async fn create_table(
    lock: &zk::OwnedLockClient,
    path: &str,
    table: &TableInfo,
    options: &zk::CreateOptions<'_>,
) -> Result<(), LayoutError> {
    let split = split(table)?;
    let mut writes = BatchedWrites::new(lock);
    writes
        .create(path, &split.header.encode_to_vec(), options)
        .await?;
    for (index, chunk) in (0..).zip(&split.chunks) {
        writes
            .create(&chunk_path(path, index), &chunk.encode_to_vec(), options)
            .await?;
    }
    Ok(writes.send().await?)
}

/// Deletes a table's nodes, fenced by `lock`: its chunks, then its header (whatever
/// state a cut-short creation left them in).
pub async fn delete_table(lock: &zk::OwnedLockClient, path: &str) -> Result<(), zk::Error> {
    let mut writes = BatchedWrites::new(lock);
    for child in lock.client().list_children(path).await? {
        writes.delete(&format!("{path}/{child}")).await?;
    }
    writes.send().await?;
    lock.delete(path, None).await
}

/// The bytes of the header of `table` as stored: only the header for a chunked table,
/// the whole table for an inline one.
pub fn header_bytes(table: &TableInfo) -> Vec<u8> {
    if table.partition_chunks == 0 {
        table.encode_to_vec()
    } else {
        header_of(table).encode_to_vec()
    }
}

/// A table's nodes as they are, read one by one: its header and whichever chunks exist
/// (a table being created or dropped may lack some), each with its version and the
/// transaction that last changed it. `None` if there is no header.
#[derive(Debug, Clone, Default)]
pub struct TableNodes {
    pub header: TableInfo,
    pub header_mzxid: i64,
    /// Chunk index → (chunk, mzxid).
    pub chunks: std::collections::BTreeMap<u32, (PartitionChunk, i64)>,
}

impl TableNodes {
    /// The table with the partitions of the chunks present (all of them for a whole
    /// table; an inline table's own).
    pub fn partial_table(&self) -> TableInfo {
        let mut table = self.header.clone();
        if table.partition_chunks > 0 {
            table.partitions = self
                .chunks
                .values()
                .flat_map(|(chunk, _)| chunk.partitions.iter().cloned())
                .collect();
        }
        table
    }
}

pub async fn read_nodes(
    client: &zk::Client,
    path: &str,
) -> Result<Option<TableNodes>, LayoutError> {
    let Some((header, stat)) = read_header(client, path).await? else {
        return Ok(None);
    };
    let mut nodes = TableNodes {
        header,
        header_mzxid: stat.mzxid,
        ..TableNodes::default()
    };
    let children = match client.list_children(path).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let reads: Vec<_> = children
        .iter()
        .filter_map(|child| child.strip_prefix("chunk-")?.parse::<u32>().ok())
        .map(|index| {
            let chunk_path = chunk_path(path, index);
            (index, client.get_data(&chunk_path), chunk_path)
        })
        .collect();
    for (index, read, chunk_path) in reads {
        match read.await {
            Ok((data, stat)) => {
                let chunk = decode_chunk(&chunk_path, index, &data)?;
                nodes.chunks.insert(index, (chunk, stat.mzxid));
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(nodes))
}

/// Moves an inline table (written before chunks) to chunks, fenced by `lock`. The chunks
/// are written first, which readers ignore while the header is inline; then the header,
/// only if no one changed it meanwhile (else all again). Returns whether it moved the
/// table.
pub async fn migrate_inline(
    lock: &zk::OwnedLockClient,
    path: &str,
    options: &zk::CreateOptions<'_>,
) -> Result<bool, LayoutError> {
    loop {
        let client = lock.client();
        let Some(stored) = read_table(client, path).await? else {
            return Ok(false);
        };
        if !stored.is_inline() || stored.table.partitions.is_empty() {
            return Ok(false);
        }
        let split = split(&stored.table)?;
        // A migration cut short may have left some chunks.
        let present: std::collections::HashSet<String> =
            client.list_children(path).await?.into_iter().collect();
        let mut writes = BatchedWrites::new(lock);
        for (index, chunk) in (0..).zip(&split.chunks) {
            let chunk_path = chunk_path(path, index);
            let data = chunk.encode_to_vec();
            if present.contains(chunk_path.rsplit('/').next().unwrap_or_default()) {
                writes.set(&chunk_path, &data).await?;
            } else {
                writes.create(&chunk_path, &data, options).await?;
            }
        }
        writes.send().await?;
        match lock
            .set_data(
                path,
                &split.header.encode_to_vec(),
                Some(stored.header_version),
            )
            .await
        {
            Ok(_) => return Ok(true),
            Err(zk::Error::BadVersion) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::nameserver::ReplicaMeta;

    use super::*;

    /// A table of `partitions` partitions, three replicas each, every one carrying an
    /// unavailable reason (as in a mass outage).
    fn outage_table(partitions: u32) -> TableInfo {
        TableInfo {
            db: "default".into(),
            name: "big".into(),
            tid: 7,
            partition_num: partitions,
            replica_num: 3,
            partitions: (0..partitions)
                .map(|pid| PartitionMeta {
                    pid,
                    term: 3,
                    unavailable_reason: format!(
                        "no replica of partition {pid} could lead: every candidate is offline"
                    ),
                    replicas: (0..3)
                        .map(|r| ReplicaMeta {
                            endpoint: format!("10.0.0.{r}:9527"),
                            is_leader: r == 0,
                            is_alive: r != 0,
                            joining: false,
                            leaving: false,
                        })
                        .collect(),
                })
                .collect(),
            ..TableInfo::default()
        }
    }

    #[test]
    fn every_node_of_a_table_too_big_for_one_node_stays_small() {
        let table = outage_table(10_000);
        assert!(
            table.encoded_len() > 1 << 20,
            "the old single-node encoding must exceed ZooKeeper's 1 MB for this test"
        );
        let split = split(&table).unwrap();
        assert_eq!(split.header.partition_chunks, 157);
        assert!(split.header.partitions.is_empty());
        assert!(split.header.encoded_len() < 4096);
        for chunk in &split.chunks {
            assert!(chunk.encoded_len() < 64 * 1024, "{}", chunk.encoded_len());
        }
        assert!(split.chunks.iter().all(|c| c.tid == table.tid));
        let rejoined: Vec<PartitionMeta> = split
            .chunks
            .into_iter()
            .flat_map(|c| c.partitions)
            .collect();
        assert_eq!(rejoined, table.partitions);
    }

    #[test]
    fn a_partition_beyond_the_partition_count_is_refused() {
        let mut table = outage_table(10);
        table.partitions[3].pid = 4_000_000_000;
        assert!(split(&table).is_err());
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let mut partition = PartitionMeta {
            unavailable_reason: "é".repeat(MAX_REASON_BYTES),
            ..PartitionMeta::default()
        };
        clip_reason(&mut partition);
        assert!(partition.unavailable_reason.len() <= MAX_REASON_BYTES);
        assert!(partition.unavailable_reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_chunk_holding_a_stranger_does_not_decode() {
        let chunk = PartitionChunk {
            partitions: vec![PartitionMeta {
                pid: 70,
                ..PartitionMeta::default()
            }],
            tid: 1,
        };
        assert!(decode_chunk("/t/chunk-00000", 0, &chunk.encode_to_vec()).is_err());
        assert!(decode_chunk("/t/chunk-00001", 1, &chunk.encode_to_vec()).is_ok());
    }
}
