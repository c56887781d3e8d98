//! Term histories and the divergence point between two logs.
//!
//! A term history is the list of `(term, start_offset)` at which a log's records change
//! term, ascending. Records from `start_offset` up to the next pair's start have that
//! term. Because a leader only appends in its own term, and a term has one leader, two
//! logs holding a record with the same `(offset, term)` agree on every record up to it.
//! That is what lets a returning replica find, from the histories alone, the last offset
//! it shares with the leader (the fix Kafka's leader epoch brought, KIP-101).

use tessera_proto::common::TermPair;

/// The term of the record at `offset` (0 for offset 0, or an offset before the history).
pub fn term_at(history: &[TermPair], offset: u64) -> u64 {
    if offset == 0 {
        return 0;
    }
    history
        .iter()
        .rev()
        .find(|p| p.start_offset <= offset)
        .map_or(0, |p| p.term)
}

/// The last offset of a log (history `history`, last offset `log_end`) whose record has
/// a term no greater than `term`.
pub fn end_offset_for_term(history: &[TermPair], log_end: u64, term: u64) -> u64 {
    match history.iter().find(|p| p.term > term) {
        Some(next) => next.start_offset.saturating_sub(1).min(log_end),
        None => log_end,
    }
}

/// Records that the record at `offset` has `term`: appends a pair when the term changes.
pub fn note_record(history: &mut Vec<TermPair>, term: u64, offset: u64) {
    if history.last().is_none_or(|last| last.term < term) {
        history.push(TermPair {
            term,
            start_offset: offset,
        });
    }
}

/// The offset of the first record of `term`, if the log holds one.
pub fn first_offset_of(history: &[TermPair], term: u64) -> Option<u64> {
    history
        .iter()
        .find(|p| p.term == term)
        .map(|p| p.start_offset)
}

/// Drops what the history says about records after `offset`.
pub fn truncate(history: &mut Vec<TermPair>, offset: u64) {
    history.retain(|p| p.start_offset <= offset);
}

/// The last offset a follower's log shares with the leader's: everything after it must
/// be truncated before the follower can take the leader's records.
pub fn divergence_point(
    local: &[TermPair],
    local_end: u64,
    leader: &[TermPair],
    leader_end: u64,
) -> u64 {
    let mut end = local_end;
    loop {
        if end == 0 {
            return 0;
        }
        let term = term_at(local, end);
        let leader_end_for_term = end_offset_for_term(leader, leader_end, term);
        if leader_end_for_term < end {
            // The leader's records of this term (or older) stop earlier: cut back to
            // there and look at the record found at that point.
            end = leader_end_for_term;
        } else if term_at(leader, end) == term {
            // Same term at the same offset: the logs agree up to here.
            return end;
        } else {
            // The leader's records up to `end` are all of older terms, so none of ours
            // in `term` is shared: drop back to before the term began.
            end = start_of_term_at(local, end).saturating_sub(1);
        }
    }
}

/// Where the term of the record at `offset` begins.
fn start_of_term_at(history: &[TermPair], offset: u64) -> u64 {
    history
        .iter()
        .rev()
        .find(|p| p.start_offset <= offset)
        .map_or(0, |p| p.start_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(u64, u64)]) -> Vec<TermPair> {
        pairs
            .iter()
            .map(|&(term, start_offset)| TermPair { term, start_offset })
            .collect()
    }

    #[test]
    fn term_lookup() {
        let history = h(&[(1, 1), (3, 10), (4, 20)]);
        assert_eq!(term_at(&history, 0), 0);
        assert_eq!(term_at(&history, 9), 1);
        assert_eq!(term_at(&history, 10), 3);
        assert_eq!(term_at(&history, 25), 4);
        assert_eq!(end_offset_for_term(&history, 30, 1), 9);
        assert_eq!(end_offset_for_term(&history, 30, 2), 9);
        assert_eq!(end_offset_for_term(&history, 30, 3), 19);
        assert_eq!(end_offset_for_term(&history, 30, 4), 30);
    }

    #[test]
    fn note_and_truncate() {
        let mut history = Vec::new();
        for (term, offset) in [(1, 1), (1, 2), (2, 3), (2, 4), (5, 5)] {
            note_record(&mut history, term, offset);
        }
        assert_eq!(history, h(&[(1, 1), (2, 3), (5, 5)]));
        truncate(&mut history, 4);
        assert_eq!(history, h(&[(1, 1), (2, 3)]));
    }

    #[test]
    fn identical_logs_do_not_diverge() {
        let history = h(&[(1, 1), (2, 50)]);
        assert_eq!(divergence_point(&history, 80, &history, 80), 80);
    }

    #[test]
    fn a_follower_behind_keeps_everything() {
        let leader = h(&[(1, 1), (2, 50)]);
        assert_eq!(divergence_point(&h(&[(1, 1)]), 30, &leader, 80), 30);
        assert_eq!(
            divergence_point(&h(&[(1, 1), (2, 50)]), 60, &leader, 80),
            60
        );
        assert_eq!(divergence_point(&[], 0, &leader, 80), 0);
    }

    #[test]
    fn old_leader_with_an_unreplicated_tail_truncates_it() {
        // The old leader wrote 1..=100 in term 1; the new leader only got 1..=90 and
        // went on in term 2.
        let old = h(&[(1, 1)]);
        let new = h(&[(1, 1), (2, 91)]);
        assert_eq!(divergence_point(&old, 100, &new, 120), 90);
        // Even if the new leader has not written anything yet in its term.
        assert_eq!(divergence_point(&old, 100, &h(&[(1, 1)]), 90), 90);
    }

    #[test]
    fn kip_101_truncation_then_immediate_leader_change() {
        // Replica A (leader, term 1) has 1..=2; B has only 1 when A dies. B becomes
        // leader in term 2 and writes offset 2 (a different record). A returns: its
        // record 2 (term 1) must go, although the offsets line up.
        let a = h(&[(1, 1)]);
        let b = h(&[(1, 1), (2, 2)]);
        assert_eq!(divergence_point(&a, 2, &b, 2), 1);
    }

    #[test]
    fn kip_101_replicas_restarting_together() {
        // A: term 1 1..=5, term 3 6..=8. B (leader now, term 4) saw term 2 at 6..=7 and
        // wrote term 4 from 8. A's term-3 records were never on the leader.
        let a = h(&[(1, 1), (3, 6)]);
        let b = h(&[(1, 1), (2, 6), (4, 8)]);
        assert_eq!(divergence_point(&a, 8, &b, 12), 5);
    }

    #[test]
    fn terms_the_leader_never_saw_are_cut_back_to_a_shared_one() {
        let local = h(&[(1, 1), (2, 11), (5, 21)]);
        let leader = h(&[(1, 1), (2, 11), (6, 16)]);
        assert_eq!(divergence_point(&local, 30, &leader, 40), 15);
    }
}
