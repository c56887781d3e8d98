//! Snapshots: a compacted image of a replica's rows at one binlog offset.
//!
//! `snapshot/<offset>.snap` holds `magic "TSSD" | version u32` and then one record per
//! row, `len u32 | offset u64 | write_time_ms i64 | row (len bytes)`, in offset order.
//! `snapshot/MANIFEST` (crash-safe, see [`super::crashsafe`]) names the current data
//! file with its offset, term, record count, crc32c of the whole file and the term
//! history. The manifest is only replaced after the data file is durable, so a crash
//! anywhere leaves the previous snapshot valid.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use tessera_proto::common::TermPair;
use tessera_proto::tablet::ClientSession;

pub use tessera_proto::tablet::SnapshotManifest as Manifest;

use super::crashsafe;
use super::error::{io_error, Result, StorageError};
use super::memtable::StoredRow;

pub const MANIFEST_FILE: &str = "MANIFEST";
const MANIFEST_MAGIC: [u8; 4] = *b"TSMF";
const MANIFEST_VERSION: u32 = 1;
const DATA_MAGIC: [u8; 4] = *b"TSSD";
const DATA_VERSION: u32 = 1;
const DATA_HEADER_LEN: usize = 8;
const ROW_HEADER_LEN: usize = 20;

pub fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST_FILE)
}

/// The current manifest, `None` if no snapshot was ever taken.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = manifest_path(dir);
    let Some((version, body)) = crashsafe::read_framed(&path, MANIFEST_MAGIC)? else {
        return Ok(None);
    };
    if version != MANIFEST_VERSION {
        return Err(StorageError::Corruption {
            file: path,
            position: 4,
            reason: format!("unsupported manifest version {version}"),
        });
    }
    Manifest::decode(body.as_slice())
        .map(Some)
        .map_err(|e| StorageError::Corruption {
            file: path,
            position: 16,
            reason: format!("manifest does not decode: {e}"),
        })
}

/// Writes the first half of a snapshot: the data file, durable under its final name.
fn write_data(dir: &Path, offset: u64, rows: &[Arc<StoredRow>]) -> Result<(String, u32)> {
    let name = format!("{offset:020}.snap");
    let path = dir.join(&name);
    let tmp = crashsafe::temp_path(&path);
    let file = File::create(&tmp).map_err(io_error(&tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut crc = 0u32;
    let mut put = |out: &mut BufWriter<File>, bytes: &[u8]| -> Result<()> {
        crc = crc32c::crc32c_append(crc, bytes);
        out.write_all(bytes).map_err(io_error(&tmp))
    };
    let mut header = DATA_MAGIC.to_vec();
    header.extend_from_slice(&DATA_VERSION.to_le_bytes());
    put(&mut out, &header)?;
    for row in rows {
        let mut row_header = [0u8; ROW_HEADER_LEN];
        row_header[..4].copy_from_slice(&(row.data.len() as u32).to_le_bytes());
        row_header[4..12].copy_from_slice(&row.offset.to_le_bytes());
        row_header[12..].copy_from_slice(&row.write_time_ms.to_le_bytes());
        put(&mut out, &row_header)?;
        put(&mut out, &row.data)?;
    }
    let file = out
        .into_inner()
        .map_err(|e| io_error(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io_error(&tmp))?;
    crashsafe::commit(&tmp, &path)?;
    Ok((name, crc))
}

/// Takes a snapshot of `rows` (every row at or below `offset`) and makes it current.
pub fn write(
    dir: &Path,
    offset: u64,
    term: u64,
    term_history: Vec<TermPair>,
    client_sessions: Vec<ClientSession>,
    schema: tessera_proto::common::TableSchema,
    rows: &[Arc<StoredRow>],
) -> Result<Manifest> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let (data_file, checksum) = write_data(dir, offset, rows)?;
    let manifest = Manifest {
        offset,
        term,
        record_count: rows.len() as u64,
        checksum,
        data_file,
        term_history,
        client_sessions,
        schema: Some(schema),
    };
    crashsafe::write_framed(
        &manifest_path(dir),
        MANIFEST_MAGIC,
        MANIFEST_VERSION,
        &manifest.encode_to_vec(),
    )?;
    remove_stale_files(dir, &manifest.data_file);
    Ok(manifest)
}

/// Best effort: older data files and temp files left by a crash.
fn remove_stale_files(dir: &Path, current: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = (name.ends_with(".snap") && name != current) || name.ends_with(".tmp");
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Reads the snapshot named by `manifest`, verifying its checksum and record count, and
/// passes each row to `visit(offset, write_time_ms, row)`.
pub fn load(
    dir: &Path,
    manifest: &Manifest,
    mut visit: impl FnMut(u64, i64, &[u8]) -> Result<()>,
) -> Result<()> {
    let path = dir.join(&manifest.data_file);
    let bytes = fs::read(&path).map_err(io_error(&path))?;
    let corrupt = |position: usize, reason: String| StorageError::Corruption {
        file: path.clone(),
        position: position as u64,
        reason,
    };
    let checksum = crc32c::crc32c(&bytes);
    if checksum != manifest.checksum {
        return Err(corrupt(
            0,
            format!(
                "snapshot checksum {checksum:#010x} does not match the manifest's {:#010x}",
                manifest.checksum
            ),
        ));
    }
    if bytes.len() < DATA_HEADER_LEN || bytes[..4] != DATA_MAGIC {
        return Err(corrupt(0, "bad snapshot header".into()));
    }
    let mut pos = DATA_HEADER_LEN;
    let mut count = 0u64;
    while pos < bytes.len() {
        if bytes.len() - pos < ROW_HEADER_LEN {
            return Err(corrupt(pos, "row header cut short".into()));
        }
        let header = &bytes[pos..pos + ROW_HEADER_LEN];
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let offset = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
        let write_time = i64::from_le_bytes(header[12..].try_into().expect("8 bytes"));
        let start = pos + ROW_HEADER_LEN;
        let Some(row) = bytes.get(start..start + len) else {
            return Err(corrupt(pos, "row cut short".into()));
        };
        if offset > manifest.offset {
            return Err(corrupt(
                pos,
                format!("row offset {offset} is past the snapshot offset"),
            ));
        }
        visit(offset, write_time, row)?;
        count += 1;
        pos = start + len;
    }
    if count != manifest.record_count {
        return Err(corrupt(
            pos,
            format!(
                "snapshot holds {count} rows, the manifest says {}",
                manifest.record_count
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn rows(n: u64) -> Vec<Arc<StoredRow>> {
        let memory = Arc::new(AtomicU64::new(u64::MAX / 2));
        (1..=n)
            .map(|i| {
                Arc::new(StoredRow {
                    offset: i,
                    write_time_ms: i as i64 * 10,
                    data: format!("row-{i}").into_bytes().into_boxed_slice(),
                    memory: memory.clone(),
                })
            })
            .collect()
    }

    fn read_back(dir: &Path) -> Result<Vec<(u64, i64, Vec<u8>)>> {
        let manifest = read_manifest(dir)?.expect("a manifest");
        let mut out = Vec::new();
        load(dir, &manifest, |o, t, r| {
            out.push((o, t, r.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn write_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_manifest(dir.path()).unwrap().is_none());
        let history = vec![TermPair {
            term: 1,
            start_offset: 1,
        }];
        let m = write(
            dir.path(),
            5,
            1,
            history.clone(),
            vec![],
            Default::default(),
            &rows(5),
        )
        .unwrap();
        assert_eq!((m.offset, m.record_count, m.term_history), (5, 5, history));
        let back = read_back(dir.path()).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back[4], (5, 50, b"row-5".to_vec()));
        // A newer snapshot replaces the older data file.
        write_rows(dir.path(), 7, &rows(7)).unwrap();
        let snaps = fs::read_dir(dir.path()).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".snap")
        });
        assert_eq!(snaps.count(), 1);
        assert_eq!(read_back(dir.path()).unwrap().len(), 7);
    }

    /// A snapshot of `rows` at `offset`, with nothing else in its manifest.
    fn write_rows(dir: &Path, offset: u64, rows: &[Arc<StoredRow>]) -> Result<Manifest> {
        write(dir, offset, 1, vec![], vec![], Default::default(), rows)
    }

    #[test]
    fn damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = write_rows(dir.path(), 3, &rows(3)).unwrap();
        let path = dir.path().join(&m.data_file);
        let mut bytes = fs::read(&path).unwrap();
        bytes[DATA_HEADER_LEN + ROW_HEADER_LEN] ^= 1;
        fs::write(&path, bytes).unwrap();
        let err = read_back(dir.path()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn crash_before_the_manifest_rename_keeps_the_old_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        write_rows(dir.path(), 3, &rows(3)).unwrap();
        // A newer snapshot's data file is complete and its manifest reached the temp file,
        // but the process died before the rename.
        let (data_file, checksum) = write_data(dir.path(), 9, &rows(9)).unwrap();
        let newer = Manifest {
            offset: 9,
            record_count: 9,
            checksum,
            data_file,
            ..Manifest::default()
        };
        let framed = crashsafe::frame(MANIFEST_MAGIC, MANIFEST_VERSION, &newer.encode_to_vec());
        crashsafe::write_temp(&manifest_path(dir.path()), &framed).unwrap();

        let manifest = read_manifest(dir.path()).unwrap().unwrap();
        assert_eq!(manifest.offset, 3);
        assert_eq!(read_back(dir.path()).unwrap().len(), 3);
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// A data file's rows, with lengths that may lie.
        fn data_file(header: bool, rows: &[(i64, u64, Vec<u8>)], tail: &[u8]) -> Vec<u8> {
            let mut bytes = Vec::new();
            if header {
                bytes.extend_from_slice(&DATA_MAGIC);
                bytes.extend_from_slice(&DATA_VERSION.to_le_bytes());
            }
            for (len_error, offset, row) in rows {
                let len = (row.len() as i64 + len_error).max(0) as u32;
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(&offset.to_le_bytes());
                bytes.extend_from_slice(&0i64.to_le_bytes());
                bytes.extend_from_slice(row);
            }
            bytes.extend_from_slice(tail);
            bytes
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever a data file holds, even with a checksum that matches it, loading
            /// it gives rows or an error naming the file, never a panic.
            #[test]
            fn any_data_file_is_loaded_or_refused(
                header in any::<bool>(),
                rows in prop::collection::vec(
                    (prop_oneof![Just(0i64), -3i64..3, Just(i64::from(u32::MAX))],
                     0u64..20,
                     prop::collection::vec(any::<u8>(), 0..24)),
                    0..8),
                tail in prop::collection::vec(any::<u8>(), 0..24),
                record_count in 0u64..10,
                offset in 0u64..20,
            ) {
                let dir = tempfile::tempdir().unwrap();
                let bytes = data_file(header, &rows, &tail);
                fs::write(dir.path().join("x.snap"), &bytes).unwrap();
                let manifest = Manifest {
                    offset,
                    record_count,
                    checksum: crc32c::crc32c(&bytes),
                    data_file: "x.snap".into(),
                    ..Manifest::default()
                };
                let mut seen = 0u64;
                match load(dir.path(), &manifest, |_, _, _| {
                    seen += 1;
                    Ok(())
                }) {
                    Ok(()) => prop_assert_eq!(seen, record_count),
                    Err(e) => prop_assert!(e.to_string().contains("x.snap"), "{}", e),
                }
            }

            /// Any manifest file, framed or not, is read or refused, never a panic.
            #[test]
            fn any_manifest_file_is_read_or_refused(
                body in prop::collection::vec(any::<u8>(), 0..128),
                framed in any::<bool>(),
                version in prop_oneof![Just(MANIFEST_VERSION), any::<u32>()],
            ) {
                let dir = tempfile::tempdir().unwrap();
                let bytes = if framed {
                    crashsafe::frame(MANIFEST_MAGIC, version, &body)
                } else {
                    body
                };
                fs::write(manifest_path(dir.path()), &bytes).unwrap();
                let _ = read_manifest(dir.path());
            }
        }
    }
}
