//! The leading nameserver's copy of every op node, so that the op pipeline's pass (five
//! times a second, and at once after each batch of planned ops) reads memory instead of
//! every op node in ZooKeeper: thousands of them during a tablet's outage, and the 200
//! finished ones kept at idle.
//!
//! Only the leader writes op nodes, always through its election lock, so its own writes
//! keep the copy current:
//! - The copy belongs to one term of leadership (an epoch counted by the nameserver). A
//!   new term reads the store again; whatever another leader did meanwhile is then seen.
//! - Each entry keeps the node's ZooKeeper data version, and a write or read is noted
//!   only if it is newer than what is kept: two writers of one op (an execution and an
//!   operator's cancel) may finish in either order, and the copy keeps the later.
//! - A deleted op is remembered as deleted, so that a write noted late cannot bring it
//!   back.
//! - A write whose outcome is unknown (ZooKeeper did not answer, or the caller stopped
//!   waiting: the request may be applied all the same) leaves the copy unsure: the next
//!   pass reads the store again, after a `sync` so that a write still under way is
//!   settled first. Writes and reads hold the gate shared, and a reload holds it alone,
//!   so a reload never reads the store halfway through a write, and no read made before
//!   a reload is noted after it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tessera_proto::nameserver::OpInfo;

#[derive(Default)]
pub(crate) struct OpBook {
    copy: parking_lot::Mutex<Copy>,
    /// Held shared by every op write (from the ZooKeeper call to noting its outcome), and
    /// alone by a reload.
    pub(crate) gate: tokio::sync::RwLock<()>,
}

#[derive(Default)]
struct Copy {
    /// The term of leadership this copy belongs to; `None` until it is read.
    epoch: Option<u64>,
    /// Shared with the passes that read it: a pass during a whole-cluster recovery goes
    /// through tens of thousands of ops, and a deep copy of each was most of its work.
    ops: BTreeMap<u64, (i32, Arc<OpInfo>)>,
    deleted: HashSet<u64>,
}

impl OpBook {
    /// Every op, oldest first, if the copy belongs to `epoch`.
    pub(crate) fn ops(&self, epoch: u64) -> Option<Vec<Arc<OpInfo>>> {
        let copy = self.copy.lock();
        (copy.epoch == Some(epoch)).then(|| copy.ops.values().map(|(_, op)| op.clone()).collect())
    }

    /// One op with its data version, if the copy belongs to `epoch` and holds it.
    pub(crate) fn get(&self, epoch: u64, op_id: u64) -> Option<(i32, OpInfo)> {
        let copy = self.copy.lock();
        if copy.epoch != Some(epoch) {
            return None;
        }
        copy.ops
            .get(&op_id)
            .map(|(version, op)| (*version, OpInfo::clone(op)))
    }

    /// Replaces the copy with what the store holds (read under the gate held alone), and
    /// returns its ops, oldest first.
    pub(crate) fn load(&self, epoch: u64, stored: Vec<(i32, OpInfo)>) -> Vec<Arc<OpInfo>> {
        let mut copy = self.copy.lock();
        copy.epoch = Some(epoch);
        copy.deleted.clear();
        copy.ops = stored
            .into_iter()
            .map(|(version, op)| (op.op_id, (version, Arc::new(op))))
            .collect();
        copy.ops.values().map(|(_, op)| op.clone()).collect()
    }

    /// An op as written or read at `version`, within `epoch`.
    pub(crate) fn note(&self, epoch: u64, op: &OpInfo, version: i32) {
        let mut copy = self.copy.lock();
        if copy.epoch != Some(epoch) || copy.deleted.contains(&op.op_id) {
            return;
        }
        let newer = copy
            .ops
            .get(&op.op_id)
            .is_none_or(|(kept, _)| version > *kept);
        if newer {
            copy.ops.insert(op.op_id, (version, Arc::new(op.clone())));
        }
    }

    /// An op deleted from the store, or found missing there.
    pub(crate) fn forget(&self, epoch: u64, op_id: u64) {
        let mut copy = self.copy.lock();
        if copy.epoch != Some(epoch) {
            return;
        }
        copy.ops.remove(&op_id);
        copy.deleted.insert(op_id);
    }

    /// The copy may differ from the store (a write of unknown outcome): read it again.
    pub(crate) fn distrust(&self) {
        self.copy.lock().epoch = None;
    }

    /// A guard for one op write: unless [`Unsettled::settle`]d (its outcome noted), its
    /// drop makes the copy unsure. A write's future dropped while in flight (a caller
    /// that hung up, a task timeout) may still be applied by ZooKeeper.
    pub(crate) fn unsettled(&self) -> Unsettled<'_> {
        Unsettled { book: self }
    }
}

pub(crate) struct Unsettled<'a> {
    book: &'a OpBook,
}

impl Unsettled<'_> {
    pub(crate) fn settle(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        self.book.distrust();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op_id: u64, status: &str) -> OpInfo {
        OpInfo {
            op_id,
            status: status.into(),
            ..OpInfo::default()
        }
    }

    #[test]
    fn the_later_write_is_kept_whatever_order_they_are_noted_in() {
        let book = OpBook::default();
        book.load(1, vec![(0, op(7, "kInited"))]);
        // A cancel (version 2) noted before the execution's save (version 1).
        book.note(1, &op(7, "kCanceled"), 2);
        book.note(1, &op(7, "kDoing"), 1);
        assert_eq!(
            book.get(1, 7).map(|(v, op)| (v, op.status)),
            Some((2, "kCanceled".into()))
        );
    }

    #[test]
    fn a_deleted_op_does_not_come_back() {
        let book = OpBook::default();
        book.load(1, vec![(3, op(7, "kDone"))]);
        book.forget(1, 7);
        book.note(1, &op(7, "kDone"), 4);
        assert_eq!(book.ops(1), Some(vec![]));
    }

    #[test]
    fn a_copy_serves_only_its_own_term_of_leadership() {
        let book = OpBook::default();
        assert_eq!(book.ops(1), None, "nothing read yet");
        book.load(1, vec![(0, op(7, "kInited"))]);
        assert_eq!(book.ops(2), None, "a new term reads the store again");
        book.note(2, &op(8, "kInited"), 0);
        assert_eq!(
            book.ops(1).map(|ops| ops.len()),
            Some(1),
            "a note of another term is dropped"
        );
        book.distrust();
        assert_eq!(book.ops(1), None, "an unsure copy is read again");
    }

    #[test]
    fn a_write_left_unsettled_makes_the_copy_unsure() {
        let book = OpBook::default();
        book.load(1, vec![(0, op(7, "kInited"))]);
        book.unsettled().settle();
        assert!(
            book.ops(1).is_some(),
            "a settled write leaves the copy as it is"
        );
        drop(book.unsettled());
        assert_eq!(
            book.ops(1),
            None,
            "a write given up in flight may still be applied"
        );
    }

    #[test]
    fn ops_come_oldest_first() {
        let book = OpBook::default();
        let loaded = book.load(1, vec![(0, op(9, "kInited")), (0, op(3, "kInited"))]);
        assert_eq!(
            loaded.iter().map(|op| op.op_id).collect::<Vec<_>>(),
            vec![3, 9]
        );
        book.note(1, &op(5, "kInited"), 0);
        let ids: Vec<u64> = book.ops(1).unwrap().iter().map(|op| op.op_id).collect();
        assert_eq!(ids, vec![3, 5, 9]);
    }
}
