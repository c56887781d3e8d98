//! A replica's state (term, role, leader, followers) on disk, written in place.
//!
//! Every fence and role change makes the state durable before it answers, and a tablet's
//! failure makes thousands of them at once on the surviving tablets. A crash-safe
//! replacement (temp file, fsync, rename, fsync of the directory) makes the file system
//! commit its journal twice per change. This file is written in place instead: two
//! copies ("slots") of equal size, each framed and checksummed and carrying a sequence
//! number. A write puts the new state in one slot and syncs its data, then in the other
//! and syncs again: blocks already allocated, so `fdatasync` has no metadata to commit.
//! The slot written first is the one not holding the newest whole copy, so a crash at
//! any point leaves a whole slot with either the state before (the last one
//! acknowledged) or the new one (durable, though its caller may not have heard so: a
//! change the replica was asked for, and a term only rises).
//!
//! Reading takes the whole slot with the higher sequence number; each slot is read on
//! its own, so one that cannot be read (a bad sector) is only a damaged slot. A file
//! whose slots disagree or with one slot damaged is rewritten at once with the state
//! read (the other slot first), so from then on both slots hold it again: damage to one
//! slot never brings back an older state. Both damaged, or two whole slots of the same
//! number that differ, is corruption, reported, never resolved by a guess.
//!
//! A file in the first format (one framed copy, replaced crash-safely) is still read, and
//! replaced by a slotted file at the next write.

use std::fs::{self, File, OpenOptions};
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
/// No state comes near this; a larger file is damaged, and is not read into memory.
const MAX_SLOT_LEN: usize = 1 << 20;

/// The state stored at `path`, or `None` if there is no file.
pub(crate) fn read(path: &Path) -> Result<Option<ReplicaState>> {
    let Some(file) = open(path)? else {
        return Ok(None);
    };
    let (first, second) = match file {
        Stored::Single(bytes) => {
            let (_, body) = crashsafe::unframe(path, SINGLE_MAGIC, &bytes)?;
            return decode(path, body).map(Some);
        }
        Stored::Slots(first, second) => (first, second),
    };
    let slot_len = first.len;
    let (keeper, seq, state) = match (first.content, second.content) {
        (Ok(first), Ok(second)) if first == second => return Ok(Some(first.1)),
        (Ok(first), Ok(second)) if first.0 == second.0 => {
            // Two whole slots of one write that differ: not a write cut short.
            return Err(StorageError::Corruption {
                file: path.to_path_buf(),
                position: 0,
                reason: format!(
                    "both replica state slots are numbered {} and differ: {:?} and {:?}",
                    first.0, first.1, second.1
                ),
            });
        }
        (Ok(first), Ok(second)) => {
            warn!(path = %path.display(), first = first.0, second = second.0, "replica state slots disagree (a write was cut short): the newer is kept");
            if first.0 > second.0 {
                (0, first.0, first.1)
            } else {
                (1, second.0, second.1)
            }
        }
        (Ok((seq, state)), Err(damage)) => {
            warn!(path = %path.display(), damage = %damage, "one replica state slot is damaged (a write was cut short, or the disk): the other is kept");
            (0, seq, state)
        }
        (Err(damage), Ok((seq, state))) => {
            warn!(path = %path.display(), damage = %damage, "one replica state slot is damaged (a write was cut short, or the disk): the other is kept");
            (1, seq, state)
        }
        (Err(first), Err(second)) => {
            return Err(StorageError::Corruption {
                file: path.to_path_buf(),
                position: 0,
                reason: format!("both replica state slots are damaged: {first}; {second}"),
            })
        }
    };
    // Both slots hold it again before the replica acts on it: the other slot first, so
    // that a crash during the repair still leaves the kept one whole.
    write_slots(path, &state, next_seq(path, seq)?, slot_len, 1 - keeper)?;
    Ok(Some(state))
}

/// Makes `state` the durable state at `path`: in place if the file is slotted and the
/// state fits its slots; otherwise (no file, the first format, a state grown past a
/// slot, a file neither format) by a crash-safe replacement with a slotted file.
pub(crate) fn write(path: &Path, state: &ReplicaState) -> Result<()> {
    let needed = slot_len_for(state);
    if needed > MAX_SLOT_LEN {
        return Err(StorageError::InvalidArgument(format!(
            "a replica state of {} bytes is larger than a state may be",
            state.encoded_len()
        )));
    }
    let current = match open(path) {
        Ok(Some(Stored::Slots(first, second))) => {
            write_order(&first.content, &second.content).map(|(seq, at)| (seq, first.len, at))
        }
        _ => None,
    };
    match current {
        Some((seq, slot_len, first)) if needed <= slot_len => {
            write_slots(path, state, next_seq(path, seq)?, slot_len, first)
        }
        current => {
            let seq = match current {
                Some((seq, _, _)) => next_seq(path, seq)?,
                None => 1,
            };
            let slot = slot(state, seq, needed);
            crashsafe::write_file(path, &[slot.as_slice(), slot.as_slice()].concat())
        }
    }
}

/// The newest sequence number among whole slots, and the slot to write first: the one
/// not holding the newest whole copy, so a crash during that write leaves it whole.
/// `None` if neither slot is whole.
fn write_order(first: &Content, second: &Content) -> Option<(u64, usize)> {
    match [first, second].map(|c| c.as_ref().ok().map(|(seq, _)| *seq)) {
        [Some(a), Some(b)] if b > a => Some((b, 0)),
        [Some(a), _] => Some((a, 1)),
        [None, Some(b)] => Some((b, 0)),
        [None, None] => None,
    }
}

fn next_seq(path: &Path, seq: u64) -> Result<u64> {
    seq.checked_add(1).ok_or_else(|| StorageError::Corruption {
        file: path.to_path_buf(),
        position: 0,
        reason: "the replica state's sequence number is at its maximum".into(),
    })
}

/// Writes both slots of an existing slotted file in place, slot `first` first, each
/// synced before the other is touched.
fn write_slots(
    path: &Path,
    state: &ReplicaState,
    seq: u64,
    slot_len: usize,
    first: usize,
) -> Result<()> {
    let slot = slot(state, seq, slot_len);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    for index in [first, 1 - first] {
        file.write_all_at(&slot, (index * slot_len) as u64)
            .map_err(io_error(path))?;
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

type Content = std::result::Result<(u64, ReplicaState), String>;

/// One slot as read: its length, and its sequence number and state or why not.
struct Slot {
    len: usize,
    content: Content,
}

/// What a state file holds.
enum Stored {
    /// The first format, whole.
    Single(Vec<u8>),
    Slots(Slot, Slot),
}

/// Reads the file at `path`, each slot on its own: a slot that cannot be read (a bad
/// sector) counts as damaged, and the other may still be whole.
fn open(path: &Path) -> Result<Option<Stored>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let len = file.metadata().map_err(io_error(path))?.len();
    let corrupt = |reason: String| StorageError::Corruption {
        file: path.to_path_buf(),
        position: 0,
        reason,
    };
    // The first format: its magic, and a frame as long as the file.
    let mut header = [0u8; FRAME_HEADER_LEN];
    if file.read_exact_at(&mut header, 0).is_ok() && header[..4] == SINGLE_MAGIC {
        let body_len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if FRAME_HEADER_LEN as u64 + u64::from(body_len) == len {
            return fs::read(path)
                .map(|bytes| Some(Stored::Single(bytes)))
                .map_err(io_error(path));
        }
    }
    let half = len / 2;
    if !len.is_multiple_of(2) || half == 0 || !half.is_multiple_of(SLOT_ALIGN as u64) {
        return Err(corrupt(format!(
            "a replica state file of {len} bytes is neither format"
        )));
    }
    if half > MAX_SLOT_LEN as u64 {
        return Err(corrupt(format!(
            "a replica state file of {len} bytes is larger than any state"
        )));
    }
    let half = half as usize;
    let read_slot = |index: usize| {
        let mut bytes = vec![0u8; half];
        let content = match file.read_exact_at(&mut bytes, (index * half) as u64) {
            Ok(()) => parse_slot(path, &bytes, (index * half) as u64),
            Err(e) => Err(format!("slot at byte {}: {e}", index * half)),
        };
        Slot { len: half, content }
    };
    Ok(Some(Stored::Slots(read_slot(0), read_slot(1))))
}

fn parse_slot(path: &Path, slot: &[u8], at: u64) -> Content {
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
            let Some(Stored::Slots(first, second)) = open(&path).unwrap() else {
                panic!("a slotted file");
            };
            assert!(
                first.content.is_ok() && second.content.is_ok(),
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

    /// The slot written first is never the one holding the newest whole copy: a crash
    /// during that write leaves it, so a state once acknowledged survives.
    #[test]
    fn the_newest_whole_slot_is_written_last() {
        let whole = |seq| -> Content { Ok((seq, state(seq))) };
        let damaged = || -> Content { Err("damaged".into()) };
        assert_eq!(write_order(&whole(4), &whole(4)), Some((4, 1)));
        assert_eq!(write_order(&whole(5), &whole(4)), Some((5, 1)));
        assert_eq!(write_order(&whole(4), &whole(5)), Some((5, 0)));
        assert_eq!(write_order(&whole(4), &damaged()), Some((4, 1)));
        assert_eq!(write_order(&damaged(), &whole(4)), Some((4, 0)));
        assert_eq!(write_order(&damaged(), &damaged()), None);
    }

    /// A write after one slot was damaged (and not yet repaired by a load) goes to the
    /// damaged slot first, and leaves both whole.
    #[test]
    fn a_write_over_a_damaged_slot_leaves_both_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        write(&path, &state(3)).unwrap();
        damage(&path, FRAME_HEADER_LEN + 2);
        write(&path, &state(4)).unwrap();
        let Some(Stored::Slots(first, second)) = open(&path).unwrap() else {
            panic!("a slotted file");
        };
        assert_eq!(first.content, second.content);
        assert_eq!(first.content.unwrap().1, state(4));
    }

    /// Whole slots of the same number that differ are not a write cut short: reported,
    /// not resolved by a guess.
    #[test]
    fn equal_numbers_with_different_states_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        let contents = [
            slot(&state(3), 7, SLOT_ALIGN),
            slot(&state(4), 7, SLOT_ALIGN),
        ]
        .concat();
        fs::write(&path, contents).unwrap();
        assert!(matches!(
            read(&path).unwrap_err(),
            StorageError::Corruption { .. }
        ));
    }

    /// Damage that makes slot 0 look like the first format is still read as slots.
    #[test]
    fn a_slot_that_looks_like_the_first_format_is_not_taken_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        write(&path, &state(3)).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[..4].copy_from_slice(&SINGLE_MAGIC);
        fs::write(&path, bytes).unwrap();
        assert_eq!(read(&path).unwrap(), Some(state(3)));
    }

    #[test]
    fn a_slot_numbered_at_the_maximum_is_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        let top = slot(&state(3), u64::MAX, SLOT_ALIGN);
        fs::write(&path, [top.as_slice(), top.as_slice()].concat()).unwrap();
        assert!(matches!(
            write(&path, &state(4)).unwrap_err(),
            StorageError::Corruption { .. }
        ));
    }
}
