//! Fast failure detection, the followers' half: a follower that stops hearing from its
//! leader (nothing on the replication stream for `SILENCE_TIMEOUT`, while heartbeats
//! come every `HEARTBEAT`), or whose stream from it breaks, tells the nameserver at
//! once. The nameserver checks the leader's tablet itself before acting, so a report is
//! evidence, never a verdict.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_common::cluster_secret::{self, InternalChannel};
use tessera_common::coordination::{election_order, ZkSettings};
use tessera_common::failure_detection::{HEARTBEAT, REPORT_INTERVAL, SILENCE_TIMEOUT};
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::LeaderTroubleRequest;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::catalog::Catalog;

const NAMESERVER_TIMEOUT: Duration = Duration::from_secs(1);
/// A follower silent for longer than this no longer reports its leader.
const SILENCE_REPORT_LIMIT: Duration = Duration::from_secs(5);

/// One piece of evidence against a leader's tablet.
#[derive(Debug)]
struct Trouble {
    leader: String,
    reason: String,
}

/// Where the follower side sends its evidence. Cheap to clone; a tablet outside a
/// cluster has nobody to tell and drops it.
#[derive(Clone, Default)]
pub struct Reporter {
    troubles: Option<mpsc::UnboundedSender<Trouble>>,
}

impl Reporter {
    /// The replication stream from `leader` broke while this tablet still followed it.
    pub fn stream_ended(&self, leader: &str, why: &str) {
        self.report(leader, format!("replication stream ended: {why}"));
    }

    fn report(&self, leader: &str, reason: String) {
        if let Some(troubles) = &self.troubles {
            let _ = troubles.send(Trouble {
                leader: leader.to_string(),
                reason,
            });
        }
    }
}

/// Starts watching this tablet's followers for silent leaders and reporting them to the
/// nameserver leader (found in ZooKeeper) until `stop` turns true.
pub fn start(
    settings: ZkSettings,
    endpoint: String,
    catalog: Arc<Catalog>,
    stop: watch::Receiver<bool>,
) -> Reporter {
    let (troubles, received) = mpsc::unbounded_channel();
    let reporter = Reporter {
        troubles: Some(troubles),
    };
    tokio::spawn(watch_silence(catalog, reporter.clone(), stop.clone()));
    tokio::spawn(send_reports(settings, endpoint, received, stop));
    reporter
}

/// Every heartbeat, looks for followers whose leader has been silent too long.
async fn watch_silence(catalog: Arc<Catalog>, reporter: Reporter, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stop.changed() => return,
        }
        // Per leader, the longest silence among the partitions it leads here.
        let mut silent: HashMap<String, Duration> = HashMap::new();
        // Past the limit the leader has long been checked (or stopped shipping here on
        // purpose, as to a member taken offline): stop repeating it.
        let reportable = SILENCE_TIMEOUT..SILENCE_REPORT_LIMIT;
        for table in catalog.tables() {
            if let Some((leader, quiet)) = table.leader_silent_within(&reportable) {
                let longest = silent.entry(leader).or_default();
                *longest = (*longest).max(quiet);
            }
        }
        for (leader, quiet) in silent {
            reporter.report(&leader, format!("silent for {} ms", quiet.as_millis()));
        }
    }
}

/// Sends the evidence, at most one report per leader per `REPORT_INTERVAL`.
async fn send_reports(
    settings: ZkSettings,
    endpoint: String,
    mut troubles: mpsc::UnboundedReceiver<Trouble>,
    mut stop: watch::Receiver<bool>,
) {
    let mut nameserver = NameserverLink::new(settings);
    let mut last_report: HashMap<String, Instant> = HashMap::new();
    loop {
        let trouble = tokio::select! {
            t = troubles.recv() => match t {
                Some(t) => t,
                None => return,
            },
            _ = stop.changed() => return,
        };
        if last_report
            .get(&trouble.leader)
            .is_some_and(|at| at.elapsed() < REPORT_INTERVAL)
        {
            continue;
        }
        last_report.insert(trouble.leader.clone(), Instant::now());
        info!(leader = %trouble.leader, reason = %trouble.reason, "reporting a leader to the nameserver");
        let request = LeaderTroubleRequest {
            reporter: endpoint.clone(),
            leader: trouble.leader.clone(),
            reason: trouble.reason,
        };
        match nameserver.report(request).await {
            Ok(verdict) => {
                debug!(leader = %trouble.leader, verdict = %verdict, "nameserver answered")
            }
            Err(e) => {
                warn!(leader = %trouble.leader, error = %e, "could not report to the nameserver");
                // Try again at the next piece of evidence.
                last_report.remove(&trouble.leader);
            }
        }
    }
}

/// A connection to the nameserver leader, found through ZooKeeper's election nodes.
struct NameserverLink {
    settings: ZkSettings,
    zk: Option<zookeeper_client::Client>,
    leader: Option<NameserverClient<InternalChannel>>,
}

impl NameserverLink {
    fn new(settings: ZkSettings) -> NameserverLink {
        NameserverLink {
            settings,
            zk: None,
            leader: None,
        }
    }

    async fn report(&mut self, request: LeaderTroubleRequest) -> Result<String, String> {
        let mut client = match self.leader.clone() {
            Some(client) => client,
            None => self.connect().await?,
        };
        let answer =
            tokio::time::timeout(NAMESERVER_TIMEOUT, client.report_leader_trouble(request)).await;
        match answer {
            Ok(Ok(answer)) => Ok(answer.into_inner().verdict),
            Ok(Err(status)) => {
                self.leader = None;
                Err(status.message().to_string())
            }
            Err(_) => {
                self.leader = None;
                Err("the nameserver did not answer in time".into())
            }
        }
    }

    async fn connect(&mut self) -> Result<NameserverClient<InternalChannel>, String> {
        let zk = match self.zk.clone() {
            Some(zk) => zk,
            None => {
                let zk = tessera_common::zk_auth::connector()
                    .with_session_timeout(self.settings.session_timeout)
                    .connect(&self.settings.cluster)
                    .await
                    .map_err(|e| format!("ZooKeeper: {e}"))?;
                self.zk = Some(zk.clone());
                zk
            }
        };
        let order = match election_order(
            &zk,
            &format!("{}/leader", self.settings.root.trim_end_matches('/')),
        )
        .await
        {
            Ok(order) => order,
            Err(e) => {
                self.zk = None;
                return Err(format!("reading the nameserver election: {e}"));
            }
        };
        let leader = order
            .into_iter()
            .next()
            .ok_or_else(|| "no nameserver is running".to_string())?;
        let channel = tessera_common::tls::endpoint(&leader, NAMESERVER_TIMEOUT)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to the nameserver {leader}: {e}"))?;
        let client = NameserverClient::new(cluster_secret::internal(channel));
        self.leader = Some(client.clone());
        Ok(client)
    }
}
