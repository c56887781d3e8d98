//! Connections for replication links, shared.
//!
//! Every (partition, follower) pair a tablet leads has a link: one long-lived
//! `AppendEntries` stream. With a connection of its own per link, a tablet leading
//! 2,500 partitions of 3 replicas held 5,000 connections out and about as many in, and
//! with two binlog files open per replica it ran out of file descriptors (20,000 here)
//! during a failover at 10,000 partitions: new connections, the nameserver's fences
//! among them, were refused. Links to one follower now share connections, each
//! carrying up to `LINKS_PER_CONNECTION` streams (HTTP/2 multiplexes them; a server
//! takes up to `MAX_REQUESTS_PER_CONNECTION` at once on one connection).
//!
//! A connection that breaks fails the streams on it; each link retries with its
//! backoff, and the shared channel connects again on the next call. HTTP/2 keepalive
//! finds a connection that died silently. A follower's server gives each connection a
//! window of 64 streams' worth (`tls::tablet_server_builder`), so a stream whose partition is
//! slow to take its data holds up only its own share, not its 63 neighbours.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::Channel;

/// Streams carried by one connection to a follower tablet.
const LINKS_PER_CONNECTION: usize = 64;

const _: () = assert!(LINKS_PER_CONNECTION < tessera_common::tls::MAX_REQUESTS_PER_CONNECTION);

#[derive(Default)]
pub struct LinkChannels {
    peers: Mutex<HashMap<String, Vec<Shared>>>,
}

struct Shared {
    channel: Channel,
    links: Arc<AtomicUsize>,
}

/// A link's share of a connection, given back when dropped.
pub struct LinkChannel {
    pub channel: Channel,
    links: Arc<AtomicUsize>,
}

impl Drop for LinkChannel {
    fn drop(&mut self) {
        self.links.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LinkChannels {
    /// A connection to `follower` with room for one more link: a shared one, or a new
    /// one (connected within `connect_timeout` on its first call).
    pub fn acquire(
        &self,
        follower: &str,
        connect_timeout: Duration,
    ) -> Result<LinkChannel, String> {
        // The channel connects on its first call (bounded by `connect_timeout`), so it
        // is made and counted under the lock: the thousands of links a failover starts
        // at once share it instead of each connecting before the first connect ends.
        let mut peers = self.peers.lock();
        // Connections no link uses any more are closed, whichever follower they go to.
        for connections in peers.values_mut() {
            connections.retain(|c| c.links.load(Ordering::Acquire) > 0);
        }
        peers.retain(|_, connections| !connections.is_empty());
        let connections = peers.entry(follower.to_string()).or_default();
        let shared = match connections
            .iter()
            .find(|c| c.links.load(Ordering::Acquire) < LINKS_PER_CONNECTION)
        {
            Some(shared) => shared,
            None => {
                let endpoint = tessera_common::tls::endpoint(follower, connect_timeout)
                    .map_err(|e| e.to_string())?
                    // A connection that dies without a word (a host down, a partition)
                    // is found within 15 s and made again, instead of holding its links
                    // until TCP gives up.
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true);
                connections.push(Shared {
                    channel: endpoint.connect_lazy(),
                    links: Arc::new(AtomicUsize::new(0)),
                });
                connections.last().expect("just pushed")
            }
        };
        // Counted under the lock: no two links take the last room of one connection.
        shared.links.fetch_add(1, Ordering::AcqRel);
        Ok(LinkChannel {
            channel: shared.channel.clone(),
            links: shared.links.clone(),
        })
    }

    /// Connections held to `follower` now.
    pub fn connections_to(&self, follower: &str) -> usize {
        self.peers.lock().get(follower).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn links_to_one_follower_share_connections() {
        // Channels connect on their first call: no follower needs to listen here.
        let follower = "127.0.0.1:9".to_string();
        let pool = LinkChannels::default();
        let timeout = Duration::from_secs(5);
        let mut links = Vec::new();
        for _ in 0..LINKS_PER_CONNECTION + 1 {
            links.push(pool.acquire(&follower, timeout).unwrap());
        }
        assert_eq!(
            pool.connections_to(&follower),
            2,
            "65 links on two connections"
        );
        // The second connection's only link ends: it is closed at the next acquire, and
        // the link taking its place finds room on the first.
        links.pop();
        links.pop();
        links.push(pool.acquire(&follower, timeout).unwrap());
        assert_eq!(pool.connections_to(&follower), 1);
    }
}
