//! Crash-safe metadata files.
//!
//! A metadata file is written to `<name>.tmp`, fsynced, renamed over `<name>`, and the
//! directory is fsynced, so a crash at any point leaves either the old or the new file
//! complete. Its contents are framed as
//! `magic (4) | version u32 | body length u32 | crc32c(body) u32 | body`, so a damaged
//! file is detected rather than half-read.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{io_error, Result, StorageError};

const FRAME_HEADER_LEN: usize = 16;

/// The temp file `write_temp` uses for `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// First half of a crash-safe write: the new contents, durable, under the temp name.
pub fn write_temp(path: &Path, contents: &[u8]) -> Result<PathBuf> {
    let tmp = temp_path(path);
    let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(contents).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    Ok(tmp)
}

/// Second half: atomically replace `path` with the temp file and make the rename durable.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(io_error(path))?;
    fsync_parent(path)
}

/// Crash-safe replacement of `path` with `contents`.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = write_temp(path, contents)?;
    commit(&tmp, path)
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

pub fn fsync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fsync_dir(dir),
        _ => fsync_dir(Path::new(".")),
    }
}

pub fn frame(magic: [u8; 4], version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks the frame of a metadata file read from `path` and returns `(version, body)`.
pub fn unframe<'a>(path: &Path, magic: [u8; 4], bytes: &'a [u8]) -> Result<(u32, &'a [u8])> {
    let corrupt = |position: u64, reason: &str| StorageError::Corruption {
        file: path.to_path_buf(),
        position,
        reason: reason.to_string(),
    };
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(corrupt(0, "file is shorter than its header"));
    }
    if bytes[..4] != magic {
        return Err(corrupt(0, "bad magic"));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (version, len, crc) = (word(4), word(8) as usize, word(12));
    let body = &bytes[FRAME_HEADER_LEN..];
    if body.len() != len {
        return Err(corrupt(8, "body length does not match the header"));
    }
    if crc32c::crc32c(body) != crc {
        return Err(corrupt(12, "checksum mismatch"));
    }
    Ok((version, body))
}

/// Frames and writes a metadata file crash-safely.
pub fn write_framed(path: &Path, magic: [u8; 4], version: u32, body: &[u8]) -> Result<()> {
    write_file(path, &frame(magic, version, body))
}

/// Reads a framed metadata file; `None` if it does not exist.
pub fn read_framed(path: &Path, magic: [u8; 4]) -> Result<Option<(u32, Vec<u8>)>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let (version, body) = unframe(path, magic, &bytes)?;
    Ok(Some((version, body.to_vec())))
}

/// Opens a file for appending, creating it if needed.
pub fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 4] = *b"TEST";

    #[test]
    fn frame_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("META");
        write_framed(&path, MAGIC, 3, b"hello").unwrap();
        assert_eq!(
            read_framed(&path, MAGIC).unwrap(),
            Some((3, b"hello".to_vec()))
        );

        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = read_framed(&path, MAGIC).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(read_framed(&dir.path().join("missing"), MAGIC)
            .unwrap()
            .is_none());
    }

    #[test]
    fn crash_between_temp_write_and_rename_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("META");
        write_framed(&path, MAGIC, 1, b"old").unwrap();
        // The new version reaches its temp file, then the process "dies" before commit().
        let tmp = write_temp(&path, &frame(MAGIC, 1, b"new")).unwrap();
        assert!(tmp.exists());
        assert_eq!(
            read_framed(&path, MAGIC).unwrap(),
            Some((1, b"old".to_vec()))
        );
        // A torn temp file is just as harmless.
        fs::write(&tmp, b"TES").unwrap();
        assert_eq!(
            read_framed(&path, MAGIC).unwrap(),
            Some((1, b"old".to_vec()))
        );
        // And the next complete write replaces it.
        write_framed(&path, MAGIC, 1, b"newer").unwrap();
        assert_eq!(
            read_framed(&path, MAGIC).unwrap(),
            Some((1, b"newer".to_vec()))
        );
    }
}
