//! Whether each follower tablet answers, as the leader's links find it: one link at a
//! time tries a follower that does not.
//!
//! A tablet that dies leaves thousands of links to it on every tablet that leads a
//! partition it followed. Each retrying on its own backoff, they made about 16,000
//! connection attempts a second in the first seconds after a `kill -9` at 10,000
//! partitions, all refused, on a machine busy with the failover those seconds are
//! for. Now the first link that finds the follower silent marks it so; from then on
//! one link at a time (a *probe*) tries it, starting at intervals doubling from
//! `FIRST_PROBE` to `MAX_PROBE` (a probe that hangs does not hold the next back; at
//! most `MAX_PROBES_OUT` are out at once), and the others wait. When the follower
//! answers any link, every waiting link goes at once.
//!
//! Only a failure of the transport (no connection, no answer in time) counts as the
//! follower not answering. A follower that answers with an error of its own (a replica
//! it does not hold yet) answers; that link retries on its own backoff and holds no
//! other link back. None of this touches what a link sends or what an answer means:
//! it only paces the attempts to reach a follower that is not there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The wait before the first probe of a follower found silent.
const FIRST_PROBE: Duration = Duration::from_millis(50);
/// The longest wait between the starts of two probes (the links' own backoff at most,
/// as before).
const MAX_PROBE: Duration = Duration::from_secs(1);
/// Probes out at once, at most. Probes start on their schedule even while earlier ones
/// wait for an answer (a connection whose packets are dropped takes its whole timeout),
/// so a follower that comes back is found on time.
const MAX_PROBES_OUT: u32 = 4;

/// The followers' reach, by endpoint.
#[derive(Default)]
pub struct Reach {
    followers: Mutex<HashMap<String, Arc<Follower>>>,
}

#[derive(Default)]
struct Follower {
    state: Mutex<State>,
    /// Told of every change of `state`.
    changed: Notify,
}

/// A follower answers (`silent` is `None`), or was last found silent.
#[derive(Debug, Default)]
struct State {
    silent: Option<Silent>,
    /// Silent episodes so far: a probe's report counts only in its own episode.
    episodes: u64,
}

#[derive(Debug)]
struct Silent {
    episode: u64,
    /// Probes started and not yet ended.
    probes_out: u32,
    /// When the next probe may start.
    next_probe: Instant,
    /// The wait from the next probe's start to the one after it.
    interval: Duration,
}

/// What a link may do now.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Go,
    /// Try the follower, as the probe of this silent episode.
    Probe(u64),
    /// Wait for a change, or until this instant.
    Wait(Option<Instant>),
}

impl State {
    fn decide(&mut self, now: Instant) -> Decision {
        let Some(silent) = &mut self.silent else {
            return Decision::Go;
        };
        if silent.probes_out >= MAX_PROBES_OUT {
            return Decision::Wait(None);
        }
        if now < silent.next_probe {
            return Decision::Wait(Some(silent.next_probe));
        }
        silent.probes_out += 1;
        silent.next_probe = now + silent.interval;
        silent.interval = (silent.interval * 2).min(MAX_PROBE);
        Decision::Probe(silent.episode)
    }

    /// The follower answered a link; whether that changed anything.
    fn answered(&mut self) -> bool {
        self.silent.take().is_some()
    }

    /// A link found the follower silent; whether that changed anything. A link that was
    /// not a probe of this episode only marks a follower that answered until then.
    fn not_answered(&mut self, probe: Option<u64>, now: Instant) -> bool {
        match &mut self.silent {
            // A probe of an episode that ended (the follower answered another link
            // meanwhile) says nothing of it now.
            None if probe.is_some() => false,
            None => {
                self.episodes += 1;
                self.silent = Some(Silent {
                    episode: self.episodes,
                    probes_out: 0,
                    next_probe: now + FIRST_PROBE,
                    interval: FIRST_PROBE * 2,
                });
                true
            }
            Some(silent) if probe == Some(silent.episode) => {
                silent.probes_out = silent.probes_out.saturating_sub(1);
                true
            }
            Some(_) => false,
        }
    }

    /// A probe ended without trying the follower (its link stopped first): the next
    /// link may probe at once.
    fn probe_dropped(&mut self, episode: u64, now: Instant) -> bool {
        match &mut self.silent {
            Some(silent) if silent.episode == episode => {
                silent.probes_out = silent.probes_out.saturating_sub(1);
                silent.next_probe = silent.next_probe.min(now);
                true
            }
            _ => false,
        }
    }
}

impl Reach {
    fn follower(&self, endpoint: &str) -> Arc<Follower> {
        self.followers
            .lock()
            .entry(endpoint.to_string())
            .or_default()
            .clone()
    }

    /// Waits until a link may try to reach `endpoint`: at once while it answers; while
    /// it is silent, when the turn to probe it comes to this link or it answers again.
    pub async fn turn(&self, endpoint: &str) -> Turn {
        let follower = self.follower(endpoint);
        let probe = loop {
            let changed = follower.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read: no change between the two is missed.
            changed.as_mut().enable();
            let decision = follower.state.lock().decide(Instant::now());
            match decision {
                Decision::Go => break None,
                Decision::Probe(episode) => break Some(episode),
                Decision::Wait(None) => changed.await,
                Decision::Wait(Some(at)) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
            }
        };
        Turn {
            follower,
            probe,
            reported: false,
            found_silent: false,
        }
    }

    /// A link found `endpoint` silent outside a turn (a stream that broke).
    pub fn not_answered(&self, endpoint: &str) {
        self.follower(endpoint)
            .change(|state| state.not_answered(None, Instant::now()));
    }
}

impl Follower {
    /// Applies `change`, and wakes the waiting links if it changed anything.
    fn change(&self, change: impl FnOnce(&mut State) -> bool) {
        let changed = change(&mut self.state.lock());
        if changed {
            self.changed.notify_waiters();
        }
    }
}

/// A link's turn to reach a follower; reports what it found.
pub struct Turn {
    follower: Arc<Follower>,
    /// The silent episode this turn probes, if it is a probe.
    probe: Option<u64>,
    reported: bool,
    found_silent: bool,
}

impl Turn {
    /// The follower answered (also with an error of its own).
    pub fn answered(&mut self) {
        self.report(|state| state.answered());
    }

    /// The follower did not answer: no connection, or no answer in time.
    pub fn not_answered(&mut self) {
        self.found_silent = true;
        let probe = self.probe;
        self.report(|state| state.not_answered(probe, Instant::now()));
    }

    /// Whether this turn found the follower silent.
    pub fn found_silent(&self) -> bool {
        self.found_silent
    }

    fn report(&mut self, change: impl FnOnce(&mut State) -> bool) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        self.follower.change(change);
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let (Some(episode), false) = (self.probe, self.reported) {
            self.follower
                .change(|state| state.probe_dropped(episode, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_follower_is_probed_at_growing_intervals() {
        let start = Instant::now();
        let mut state = State::default();
        assert_eq!(state.decide(start), Decision::Go, "a new follower answers");

        assert!(state.not_answered(None, start));
        let first = start + FIRST_PROBE;
        assert_eq!(state.decide(start), Decision::Wait(Some(first)));
        // Another link's failure, reported before any probe, moves nothing.
        assert!(!state.not_answered(None, start + Duration::from_millis(10)));
        assert_eq!(state.decide(start), Decision::Wait(Some(first)));

        assert_eq!(
            state.decide(first),
            Decision::Probe(1),
            "the first link due probes"
        );
        let second = first + FIRST_PROBE * 2;
        assert_eq!(
            state.decide(first),
            Decision::Wait(Some(second)),
            "the others wait for the next probe's time"
        );
        // A failed probe frees its place; the schedule runs from the probes' starts,
        // doubling up to the longest wait.
        assert!(state.not_answered(Some(1), first));
        assert_eq!(state.decide(first), Decision::Wait(Some(second)));
        let mut at = second;
        let mut intervals = Vec::new();
        for _ in 0..8 {
            assert_eq!(state.decide(at), Decision::Probe(1));
            assert!(state.not_answered(Some(1), at));
            let Decision::Wait(Some(next)) = state.decide(at) else {
                panic!("a failed probe leaves the next one scheduled");
            };
            intervals.push(next - at);
            at = next;
        }
        assert!(intervals.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(intervals.last(), Some(&MAX_PROBE));

        // A link that answers (a probe or any other) lets every link go.
        assert!(state.answered());
        assert_eq!(state.decide(at), Decision::Go);
        assert!(!state.answered(), "nothing to change the second time");
    }

    #[test]
    fn probes_that_hang_do_not_hold_the_next_ones_back_beyond_a_bound() {
        let start = Instant::now();
        let mut state = State::default();
        state.not_answered(None, start);
        let mut at = start + FIRST_PROBE;
        for _ in 0..MAX_PROBES_OUT {
            assert_eq!(state.decide(at), Decision::Probe(1));
            at += MAX_PROBE;
        }
        assert_eq!(
            state.decide(at),
            Decision::Wait(None),
            "at most MAX_PROBES_OUT probes are out at once"
        );
        // One ends: the next starts.
        assert!(state.not_answered(Some(1), at));
        assert_eq!(state.decide(at), Decision::Probe(1));
    }

    #[test]
    fn a_probe_of_an_earlier_episode_counts_for_nothing_in_the_next() {
        let start = Instant::now();
        let mut state = State::default();
        state.not_answered(None, start);
        let due = start + FIRST_PROBE;
        assert_eq!(state.decide(due), Decision::Probe(1));
        state.answered();
        state.not_answered(None, due);
        let mut at = due + FIRST_PROBE;
        for _ in 0..MAX_PROBES_OUT {
            assert_eq!(state.decide(at), Decision::Probe(2));
            at += MAX_PROBE;
        }
        // The first episode's probe ends now, failed or dropped: no place is freed.
        assert!(!state.not_answered(Some(1), at));
        assert!(!state.probe_dropped(1, at));
        assert_eq!(state.decide(at), Decision::Wait(None));
        // And once the follower answered, a late failure of an earlier probe does not
        // make it silent again.
        assert!(state.answered());
        assert!(!state.not_answered(Some(2), at));
        assert_eq!(state.decide(at), Decision::Go);
    }

    #[test]
    fn a_probe_that_ends_without_trying_hands_the_turn_on_at_once() {
        let start = Instant::now();
        let mut state = State::default();
        state.not_answered(None, start);
        let due = start + FIRST_PROBE;
        assert_eq!(state.decide(due), Decision::Probe(1));
        assert!(state.probe_dropped(1, due));
        assert_eq!(
            state.decide(due),
            Decision::Probe(1),
            "the next link probes"
        );
    }

    /// Links holding `follower`'s state: the map's and the turns', waiting or not.
    fn holders(reach: &Reach, endpoint: &str) -> usize {
        Arc::strong_count(&reach.follower(endpoint)) - 2
    }

    async fn wait_holders(reach: &Reach, endpoint: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while holders(reach, endpoint) < count {
            assert!(
                Instant::now() < deadline,
                "links never waited for their turn"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Takes every probe a silent follower allows at once, as they come due.
    async fn all_probes(reach: &Reach, endpoint: &str) -> Vec<Turn> {
        let mut probes = Vec::new();
        for _ in 0..MAX_PROBES_OUT {
            let probe = tokio::time::timeout(Duration::from_secs(10), reach.turn(endpoint))
                .await
                .expect("a probe comes due");
            assert!(probe.probe.is_some());
            probes.push(probe);
        }
        probes
    }

    #[tokio::test]
    async fn links_waiting_on_a_silent_follower_go_when_a_probe_reaches_it() {
        let reach = Arc::new(Reach::default());
        let follower = "127.0.0.1:9";
        reach.not_answered(follower);
        let mut probes = all_probes(&reach, follower).await;
        let waiting: Vec<_> = (0..8)
            .map(|_| {
                let reach = reach.clone();
                tokio::spawn(async move { reach.turn(follower).await.probe })
            })
            .collect();
        // Every one of them waits: all the probes allowed are out.
        wait_holders(&reach, follower, MAX_PROBES_OUT as usize + 8).await;
        assert!(waiting.iter().all(|w| !w.is_finished()));
        probes[0].answered();
        for link in waiting {
            let probed = tokio::time::timeout(Duration::from_secs(10), link)
                .await
                .expect("a waiting link goes once the follower answers")
                .unwrap();
            assert_eq!(
                probed, None,
                "the follower answers: no link needs to probe it"
            );
        }
        assert!(reach.follower(follower).state.lock().silent.is_none());
    }

    #[tokio::test]
    async fn a_dropped_probe_lets_a_waiting_link_probe() {
        let reach = Arc::new(Reach::default());
        let follower = "127.0.0.1:9";
        reach.not_answered(follower);
        let mut probes = all_probes(&reach, follower).await;
        let next = {
            let reach = reach.clone();
            tokio::spawn(async move { reach.turn(follower).await.probe })
        };
        wait_holders(&reach, follower, MAX_PROBES_OUT as usize + 1).await;
        assert!(!next.is_finished());
        drop(probes.pop());
        let probed = tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("the waiting link gets the probe")
            .unwrap();
        assert!(probed.is_some());
    }
}
