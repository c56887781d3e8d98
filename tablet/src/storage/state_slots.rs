//! A replica's state (term, role, leader, followers) on disk, written in place.
//!
//! Every fence and role change makes the state durable before it answers, and a tablet's
//! failure makes thousands of them at once on the surviving tablets. A crash-safe
//! replacement (temp file, fsync, rename, fsync of the directory) makes the file system
//! commit its journal twice per change. This file is written in place instead: two
//! copies ("slots") of equal size, each framed and checksummed and carrying a sequence
//! number. A write puts the new state in slot 0 and syncs its data, then in slot 1 and
//! syncs again: blocks already allocated, so `fdatasync` has no metadata to commit. A
//! crash at any point leaves at least one slot whole:
//! - during slot 0's write: slot 1 holds the state before, the last one acknowledged;
//! - after it: slot 0 holds the new state, durable (its caller may not have heard so;
//!   it is a change the replica was asked for, and a term only rises).
//!
//! Reading takes the whole slot with the higher sequence number. A file whose slots
//! disagree or with one slot damaged is rewritten at once with the state read, so from
//! then on both slots hold it again: damage to one slot (a bad sector) never brings back
//! an older state, and both damaged is an error, never a silent loss.
//!
//! A file in the first format (one framed copy, replaced crash-safely) is still read, and
//! replaced by a slotted file at the next write.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use prost::Message;
use tessera_proto::tablet::ReplicaState;
use tracing::warn;

use super::crashsafe;
use super::error::{io_error, Result, StorageError};

/// The first format: one framed copy.
const SINGLE_MAGIC: [u8; 4] = *b"TSRS";
const SLOT_MAGIC: [u8; 4] = *b"TSR2";
const SLOT_VERSION: u32 = 1;
/// Slots are a whole number of these long: a slot never shares a page with the other.
const SLOT_ALIGN: usize = 4096;
const FRAME_HEADER_LEN: usize = 16;
const SEQ_LEN: usize = 8;

/// The state stored at `path`, or `None` if there is no file.
pub(crate) fn read(path: &Path) -> Result<Option<ReplicaState>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    if bytes.starts_with(&SINGLE_MAGIC) {
        let (_, body) = crashsafe::unframe(path, SINGLE_MAGIC, &bytes)?;
        return decode(path, body).map(Some);
    }
    let (first, second) = slots(path, &bytes)?;
    let (seq, state) = match (first, second) {
        (Ok(first), Ok(second)) if first.0 == second.0 => return Ok(Some(first.1)),
        (Ok(first), Ok(second)) => {
            warn!(path = %path.display(), first = first.0, second = second.0, "replica state slots disagree (a write was cut short): the newer is kept");
            if first.0 > second.0 {
                first
            } else {
                second
            }
        }
        (Ok(whole), Err(damage)) | (Err(damage), Ok(whole)) => {
            warn!(path = %path.display(), damage = %damage, "one replica state slot is damaged (a write was cut short, or the disk): the other is kept");
            whole
        }
        (Err(first), Err(second)) => {
            return Err(StorageError::Corruption {
                file: path.to_path_buf(),
                position: 0,
                reason: format!("both replica state slots are damaged: {first}; {second}"),
            })
        }
    };
    // Both slots hold it again before the replica acts on it.
    write_slots(path, &state, seq + 1, bytes.len() / 2)?;
    Ok(Some(state))
}

/// Makes `state` the durable state at `path`: in place if the file is slotted and the
/// state fits its slots; otherwise (no file, the first format, a state grown past a
/// slot) by a crash-safe replacement with a slotted file.
pub(crate) fn write(path: &Path, state: &ReplicaState) -> Result<()> {
    let current = fs::read(path)
        .ok()
        .filter(|bytes| !bytes.starts_with(&SINGLE_MAGIC))
        .and_then(|bytes| {
            let (first, second) = slots(path, &bytes).ok()?;
            let seq = [first, second]
                .into_iter()
                .flatten()
                .map(|(seq, _)| seq)
                .max()?;
            Some((seq, bytes.len() / 2))
        });
    let needed = slot_len_for(state);
    match current {
        Some((seq, slot_len)) if needed <= slot_len => write_slots(path, state, seq + 1, slot_len),
        current => {
            let seq = current.map_or(0, |(seq, _)| seq) + 1;
            let slot = slot(state, seq, needed);
            crashsafe::write_file(path, &[slot.as_slice(), slot.as_slice()].concat())
        }
    }
}

/// Writes both slots of an existing slotted file in place, slot 0 first, each synced.
fn write_slots(path: &Path, state: &ReplicaState, seq: u64, slot_len: usize) -> Result<()> {
    let slot = slot(state, seq, slot_len);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    for at in [0, slot_len as u64] {
        file.write_all_at(&slot, at).map_err(io_error(path))?;
        file.sync_data().map_err(io_error(path))?;
    }
    Ok(())
}

/// The slot length a state needs: its frame, rounded up to whole pages.
fn slot_len_for(state: &ReplicaState) -> usize {
    let framed = FRAME_HEADER_LEN + SEQ_LEN + state.encoded_len();
    framed.div_ceil(SLOT_ALIGN) * SLOT_ALIGN
}

/// One slot: the framed sequence number and state, padded with zeros to `slot_len`.
fn slot(state: &ReplicaState, seq: u64, slot_len: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(SEQ_LEN + state.encoded_len());
    body.extend_from_slice(&seq.to_le_bytes());
    state
        .encode(&mut body)
        .expect("a Vec grows to fit the state");
    let mut slot = crashsafe::frame(SLOT_MAGIC, SLOT_VERSION, &body);
    slot.resize(slot_len.max(slot.len()), 0);
    slot
}

type Slot = std::result::Result<(u64, ReplicaState), String>;

/// Both slots of a slotted file, each whole or why not.
fn slots(path: &Path, bytes: &[u8]) -> Result<(Slot, Slot)> {
    let half = bytes.len() / 2;
    if !bytes.len().is_multiple_of(2) || half == 0 || !half.is_multiple_of(SLOT_ALIGN) {
        return Err(StorageError::Corruption {
            file: path.to_path_buf(),
            position: 0,
            reason: format!(
                "a replica state file of {} bytes is neither format",
                bytes.len()
            ),
        });
    }
    let (first, second) = bytes.split_at(half);
    Ok((
        parse_slot(path, first, 0),
        parse_slot(path, second, half as u64),
    ))
}

fn parse_slot(path: &Path, slot: &[u8], at: u64) -> Slot {
    let damaged = |why: String| format!("slot at byte {at}: {why}");
    let len = slot
        .get(8..12)
        .map(|word| u32::from_le_bytes(word.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| damaged("shorter than its header".into()))?;
    let framed = slot
        .get(..FRAME_HEADER_LEN.saturating_add(len))
        .ok_or_else(|| damaged("its length runs past the slot".into()))?;
    let (_, body) =
        crashsafe::unframe(path, SLOT_MAGIC, framed).map_err(|e| damaged(e.to_string()))?;
    if body.len() < SEQ_LEN {
        return Err(damaged("no sequence number".into()));
    }
    let (seq, state) = body.split_at(SEQ_LEN);
    let seq = u64::from_le_bytes(seq.try_into().expect("8 bytes"));
    let state = decode(path, state).map_err(|e| damaged(e.to_string()))?;
    Ok((seq, state))
}

fn decode(path: &Path, body: &[u8]) -> Result<ReplicaState> {
    ReplicaState::decode(body).map_err(|e| StorageError::Corruption {
        file: path.to_path_buf(),
        position: FRAME_HEADER_LEN as u64,
        reason: format!("replica state does not decode: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use tessera_proto::tablet::TableRole;

    use super::*;

    fn state(term: u64) -> ReplicaState {
        ReplicaState {
            term,
            role: TableRole::Leader as i32,
            followers: vec!["127.0.0.1:9001".into(), "127.0.0.1:9002".into()],
            leader: String::new(),
            offline: Vec::new(),
        }
    }

    fn damage(path: &Path, at: usize) {
        let mut bytes = fs::read(path).unwrap();
        bytes[at] ^= 0xff;
        fs::write(path, bytes).unwrap();
    }

    /// The point of the format: a change of state is written into the file that is
    /// there (same inode, no rename), and read back.
    #[test]
    fn a_state_is_written_in_place_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, &state(1)).unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        for term in 2..=5 {
            write(&path, &state(term)).unwrap();
            assert_eq!(read(&path).unwrap(), Some(state(term)));
        }
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            inode,
            "written in place"
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * SLOT_ALIGN as u64);
    }

    #[test]
    fn a_file_in_the_first_format_is_read_and_replaced_at_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        crashsafe::write_framed(&path, SINGLE_MAGIC, 1, &state(7).encode_to_vec()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(state(7)));
        write(&path, &state(8)).unwrap();
        assert!(fs::read(&path).unwrap().starts_with(&SLOT_MAGIC));
        assert_eq!(read(&path).unwrap(), Some(state(8)));
    }

    /// A write cut short in slot 0 leaves the state before in slot 1; one cut short in
    /// slot 1 leaves the new one in slot 0. Either way the file is whole again after the
    /// read, so later damage to the other slot loses nothing.
    #[test]
    fn one_damaged_slot_is_survived_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        write(&path, &state(3)).unwrap();
        write(&path, &state(4)).unwrap();
        for at in [FRAME_HEADER_LEN + 2, SLOT_ALIGN + FRAME_HEADER_LEN + 2] {
            damage(&path, at);
            assert_eq!(read(&path).unwrap(), Some(state(4)), "damage at {at}");
            let (first, second) = slots(&path, &fs::read(&path).unwrap()).unwrap();
            assert!(
                first.is_ok() && second.is_ok(),
                "repaired after damage at {at}"
            );
        }
    }

    /// Cut short between the two slots: slot 0 newer. The newer is read, and written
    /// to both, so damage to slot 0 afterwards does not bring the older back.
    #[test]
    fn slots_that_disagree_settle_on_the_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        write(&path, &state(3)).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[..SLOT_ALIGN].copy_from_slice(&slot(&state(9), 10, SLOT_ALIGN));
        fs::write(&path, bytes).unwrap();
        assert_eq!(read(&path).unwrap(), Some(state(9)));
        damage(&path, FRAME_HEADER_LEN + 2);
        assert_eq!(read(&path).unwrap(), Some(state(9)), "not the older term 3");
    }

    #[test]
    fn both_slots_damaged_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        write(&path, &state(3)).unwrap();
        damage(&path, FRAME_HEADER_LEN + 2);
        damage(&path, SLOT_ALIGN + FRAME_HEADER_LEN + 2);
        let err = read(&path).unwrap_err();
        assert!(matches!(err, StorageError::Corruption { .. }), "{err}");
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            read(&path).unwrap_err(),
            StorageError::Corruption { .. }
        ));
    }

    #[test]
    fn a_state_grown_past_its_slot_gets_larger_slots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        write(&path, &state(1)).unwrap();
        let mut big = state(2);
        big.followers = (0..400)
            .map(|i| format!("10.0.{}.{}:9000", i / 256, i % 256))
            .collect();
        write(&path, &big).unwrap();
        assert_eq!(read(&path).unwrap(), Some(big.clone()));
        let len = fs::metadata(&path).unwrap().len() as usize;
        assert!(
            len > 2 * SLOT_ALIGN && len.is_multiple_of(2 * SLOT_ALIGN),
            "{len}"
        );
        // Later writes keep the larger slots, in place.
        write(&path, &state(3)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, len);
        assert_eq!(read(&path).unwrap(), Some(state(3)));
    }
}
