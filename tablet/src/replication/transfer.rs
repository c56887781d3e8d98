//! Sending a replica's snapshot to another tablet, in checksummed chunks, with
//! snapshotting paused on the sender for the duration so the files stay put.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_common::cluster_secret;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::{ReplicaState, SnapshotChunk, TableRole};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::catalog::Catalog;
use crate::error::TabletError;
use crate::storage::error::io_error;
use crate::storage::{snapshot, StorageError, Table};

const CHUNK: usize = 1 << 20;
/// Connecting to the receiving tablet, TLS handshake included.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Resumes snapshotting on the sender when the transfer ends, however it ends.
struct ResumeOnDrop(Arc<Table>);

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        self.0.resume_snapshots();
    }
}

/// Sends `table`'s snapshot to the tablet at `target`, which installs it as a follower
/// of `leader` in `term`. Returns the snapshot's offset.
pub async fn send_snapshot(
    table: Arc<Table>,
    term: u64,
    leader: &str,
    target: &str,
) -> Result<u64, String> {
    let prepared = table.clone();
    // The guard is made where the pause is taken, on the blocking pool: if this future is
    // dropped meanwhile (its link stopped, its caller gone), the task's output, guard
    // included, is dropped when it ends, and snapshots resume.
    let (manifest, _resume) = tokio::task::spawn_blocking(move || {
        prepared
            .snapshot_for_transfer()
            .map(|manifest| (manifest, ResumeOnDrop(prepared)))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;

    let dir = table.dir().to_path_buf();
    let files: Vec<String> = vec![
        "table_meta".into(),
        format!("snapshot/{}", manifest.data_file),
        format!("snapshot/{}", snapshot::MANIFEST_FILE),
    ];
    let (chunks, outgoing) = mpsc::channel::<SnapshotChunk>(4);
    let first = SnapshotChunk {
        meta: Some(table.meta().clone()),
        term,
        leader: leader.to_string(),
        ..SnapshotChunk::default()
    };
    let producer =
        tokio::task::spawn_blocking(move || produce_chunks(&dir, &files, first, &chunks));
    let channel = tessera_common::tls::endpoint(target, CONNECT_TIMEOUT)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    let mut client =
        TabletClient::new(cluster_secret::internal(channel)).max_encoding_message_size(64 << 20);
    let response = client.receive_snapshot(ReceiverStream::new(outgoing)).await;
    let produced = producer.await.map_err(|e| e.to_string())?;
    let response =
        response.map_err(|e| format!("{target} refused the snapshot: {}", e.message()))?;
    produced.map_err(|e| e.to_string())?;
    Ok(response.into_inner().offset)
}

/// Reads the files in chunks onto the channel; the first chunk also carries `first`'s
/// meta, term and leader.
fn produce_chunks(
    dir: &Path,
    files: &[String],
    first: SnapshotChunk,
    chunks: &mpsc::Sender<SnapshotChunk>,
) -> Result<(), StorageError> {
    let mut header = Some(first);
    for name in files {
        let path = dir.join(name);
        let mut file = File::open(&path).map_err(io_error(&path))?;
        let mut crc = 0u32;
        loop {
            let mut data = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                let n = file.read(&mut data[filled..]).map_err(io_error(&path))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            data.truncate(filled);
            crc = crc32c::crc32c_append(crc, &data);
            let last = filled < CHUNK;
            let mut chunk = header.take().unwrap_or_default();
            chunk.file = name.clone();
            chunk.data = data;
            chunk.last_of_file = last;
            chunk.file_checksum = if last { crc } else { 0 };
            if chunks.blocking_send(chunk).is_err() {
                // The receiver hung up; its error is the one worth reporting.
                return Ok(());
            }
            if last {
                break;
            }
        }
    }
    Ok(())
}

/// Accepts only the files a snapshot consists of, so a peer cannot write elsewhere.
fn allowed_file(name: &str) -> bool {
    name == "table_meta"
        || name == "snapshot/MANIFEST"
        || name
            .strip_prefix("snapshot/")
            .and_then(|f| f.strip_suffix(".snap"))
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

fn invalid(message: &str) -> TabletError {
    TabletError::InvalidArgument(message.to_string())
}

/// A snapshot received for a replica: which one, and how its install ended.
pub struct Received {
    pub tid: u32,
    pub pid: u32,
    /// The replica loaded from the snapshot, or why it was not installed. Even when it
    /// was refused the catalog may hold a new copy of the replica (reloaded after a
    /// refused install): its replication must follow that copy.
    pub outcome: Result<Arc<Table>, TabletError>,
}

/// Receives a snapshot and installs it as a follower replica. Fails on its own only if
/// the stream does not say which replica it is for.
pub async fn receive_snapshot(
    catalog: Arc<Catalog>,
    mut stream: Streaming<SnapshotChunk>,
) -> Result<Received, TabletError> {
    let first = stream
        .message()
        .await
        .map_err(|e| invalid(&format!("snapshot stream failed: {}", e.message())))?
        .ok_or_else(|| invalid("empty snapshot stream"))?;
    let meta = first
        .meta
        .clone()
        .ok_or_else(|| invalid("the first snapshot chunk carries no meta"))?;
    let (tid, pid) = (meta.tid, meta.pid);
    let outcome = install_received(catalog, tid, pid, first, stream).await;
    Ok(Received { tid, pid, outcome })
}

/// Writes the snapshot's files to a directory of this stream's own and installs them. A
/// stream that fails or ends mid-file, or a snapshot refused, leaves no directory behind
/// (after other failures of the install one may stay until the tablet restarts).
async fn install_received(
    catalog: Arc<Catalog>,
    tid: u32,
    pid: u32,
    first: SnapshotChunk,
    mut stream: Streaming<SnapshotChunk>,
) -> Result<Arc<Table>, TabletError> {
    let state = ReplicaState {
        term: first.term,
        role: TableRole::Follower as i32,
        followers: Vec::new(),
        offline: Vec::new(),
        leader: first.leader.clone(),
    };
    // Refused before anything is received, and without touching the replica (a leader
    // goes on leading); the install checks again, for a fence that comes meanwhile.
    if let Ok(existing) = catalog.get(tid, pid) {
        let current = existing.replica_state();
        if crate::catalog::refuses_snapshot(&current, &state) {
            return Err(StorageError::StaleTerm {
                current: current.term,
                got: first.term,
            }
            .into());
        }
    }
    let incoming = catalog.new_incoming_dir(tid, pid);
    fs::create_dir_all(incoming.join("snapshot")).map_err(|e| StorageError::Io {
        path: incoming.clone(),
        source: e,
    })?;

    let mut writer = ChunkWriter::new(incoming.clone());
    let received = async {
        let mut next = Some(first);
        while let Some(chunk) = next.take() {
            tokio::task::block_in_place(|| writer.write(&chunk))?;
            next = stream
                .message()
                .await
                .map_err(|e| invalid(&format!("snapshot stream failed: {}", e.message())))?;
        }
        if writer.open.is_some() {
            return Err(invalid("the snapshot stream ended in the middle of a file"));
        }
        Ok(())
    }
    .await;
    if let Err(e) = received {
        drop(writer);
        // This stream's own directory (a data file may be large: off the async worker).
        let _ = tokio::task::block_in_place(|| fs::remove_dir_all(&incoming));
        return Err(e);
    }
    tokio::task::spawn_blocking(move || catalog.install_snapshot(tid, pid, &incoming, &state))
        .await
        .map_err(|e| TabletError::InvalidArgument(e.to_string()))?
}

/// Writes received chunks to their files, checking each file's checksum at its end.
struct ChunkWriter {
    dir: PathBuf,
    open: Option<(String, File, u32)>,
}

impl ChunkWriter {
    fn new(dir: PathBuf) -> ChunkWriter {
        ChunkWriter { dir, open: None }
    }

    fn write(&mut self, chunk: &SnapshotChunk) -> Result<(), TabletError> {
        if !allowed_file(&chunk.file) {
            return Err(TabletError::InvalidArgument(format!(
                "unexpected snapshot file `{}`",
                chunk.file
            )));
        }
        if self
            .open
            .as_ref()
            .is_none_or(|(name, _, _)| name != &chunk.file)
        {
            if self.open.is_some() {
                return Err(TabletError::InvalidArgument(
                    "a snapshot file ended without its last chunk".into(),
                ));
            }
            let path = self.dir.join(&chunk.file);
            let file = File::create(&path).map_err(io_error(&path))?;
            self.open = Some((chunk.file.clone(), file, 0));
        }
        let (name, file, crc) = self.open.as_mut().expect("opened above");
        let path = self.dir.join(&*name);
        file.write_all(&chunk.data).map_err(io_error(&path))?;
        *crc = crc32c::crc32c_append(*crc, &chunk.data);
        if chunk.last_of_file {
            if *crc != chunk.file_checksum {
                return Err(StorageError::Corruption {
                    file: path,
                    position: 0,
                    reason: format!(
                        "received file checksum {:#010x}, sender's {:#010x}",
                        crc, chunk.file_checksum
                    ),
                }
                .into());
            }
            file.sync_all().map_err(io_error(&path))?;
            self.open = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_snapshot_files_are_accepted() {
        assert!(allowed_file("table_meta"));
        assert!(allowed_file("snapshot/MANIFEST"));
        assert!(allowed_file("snapshot/00000000000000000042.snap"));
        assert!(!allowed_file("snapshot/../../etc/passwd"));
        assert!(!allowed_file("snapshot/.snap"));
        assert!(!allowed_file("binlog/00000000000000000001.log"));
    }
}
