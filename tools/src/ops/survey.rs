//! The survey behind `recoverdata`: what every tablet says of its replicas' logs and
//! states. Tablets are asked at once (a bounded number at a time), each over one
//! connection, with every call bounded by a timeout; so a tablet that does not answer
//! costs one timeout, not one per partition it holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::nameserver::TableInfo;
use tessera_proto::tablet::{GetTableStatusRequest, GetTermPairRequest, TableStatus};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::recoverdata::ReplicaSurvey;
use super::tablet;

/// How long the survey waits for a connection or an answer from a tablet.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Tablets asked at once.
const TABLETS_AT_ONCE: usize = 16;
/// Questions on the way to one tablet at once.
const CALLS_PER_TABLET: usize = 64;

type PartitionKey = (u32, u32);

/// What one tablet said.
#[derive(Debug, Default)]
struct TabletAnswers {
    /// Why it could not be asked at all.
    unreachable: Option<String>,
    /// (last term, last offset, loaded) of each replica asked, or why it is unknown.
    logs: HashMap<PartitionKey, Result<(u64, u64, bool), String>>,
    statuses: HashMap<PartitionKey, TableStatus>,
}

impl TabletAnswers {
    fn unreachable(why: String) -> TabletAnswers {
        TabletAnswers {
            unreachable: Some(why),
            ..TabletAnswers::default()
        }
    }
}

/// Every tablet's answers, by endpoint.
pub struct Survey {
    tablets: HashMap<String, TabletAnswers>,
}

impl Survey {
    /// Asks every tablet holding a replica of `tables`, printing a line per tablet.
    pub async fn take(tables: &[TableInfo]) -> Survey {
        let mut wanted: BTreeMap<String, Vec<PartitionKey>> = BTreeMap::new();
        for table in tables {
            for partition in &table.partitions {
                for replica in &partition.replicas {
                    wanted
                        .entry(replica.endpoint.clone())
                        .or_default()
                        .push((table.tid, partition.pid));
                }
            }
        }
        let limit = Arc::new(Semaphore::new(TABLETS_AT_ONCE));
        let mut asking = JoinSet::new();
        for (endpoint, replicas) in wanted {
            let limit = limit.clone();
            asking.spawn(async move {
                let _turn = limit.acquire_owned().await;
                let answers = ask(&endpoint, replicas).await;
                (endpoint, answers)
            });
        }
        let mut tablets = HashMap::new();
        while let Some(joined) = asking.join_next().await {
            let Ok((endpoint, answers)) = joined else {
                continue;
            };
            match &answers.unreachable {
                Some(why) => println!("  {endpoint}: did not answer ({why})"),
                None => println!("  {endpoint}: {} replicas", answers.logs.len()),
            }
            tablets.insert(endpoint, answers);
        }
        Survey { tablets }
    }

    /// What the tablets said of the replicas of one partition.
    pub fn replicas(&self, table: &TableInfo, pid: u32) -> Vec<ReplicaSurvey> {
        let Some(partition) = table.partitions.iter().find(|p| p.pid == pid) else {
            return Vec::new();
        };
        let key = (table.tid, pid);
        partition
            .replicas
            .iter()
            .map(|replica| {
                let answers = self.tablets.get(&replica.endpoint);
                let log = match answers {
                    None => Err("not asked".to_string()),
                    Some(TabletAnswers {
                        unreachable: Some(why),
                        ..
                    }) => Err(why.clone()),
                    Some(answers) => answers
                        .logs
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| Err("not asked".to_string())),
                };
                let status = answers.and_then(|a| a.statuses.get(&key));
                ReplicaSurvey {
                    endpoint: replica.endpoint.clone(),
                    is_leader: replica.is_leader,
                    is_alive: replica.is_alive,
                    settled: !replica.joining && !replica.leaving,
                    log,
                    role: status.map(|s| s.role()),
                    state: status.map(|s| s.state()),
                    followers: status.map(|s| s.followers.clone()).unwrap_or_default(),
                    leader: status.map(|s| s.leader.clone()).unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// Asks one tablet, over one connection, for every replica's state (one call) and log
/// (a call each, `CALLS_PER_TABLET` at a time).
async fn ask(endpoint: &str, replicas: Vec<PartitionKey>) -> TabletAnswers {
    let unanswered = || format!("no answer within {ANSWER_TIMEOUT:?}");
    let mut client = match tokio::time::timeout(ANSWER_TIMEOUT, tablet(endpoint)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return TabletAnswers::unreachable(e),
        Err(_) => return TabletAnswers::unreachable(unanswered()),
    };
    let everything = GetTableStatusRequest::default();
    let statuses =
        match tokio::time::timeout(ANSWER_TIMEOUT, client.get_table_status(everything)).await {
            Ok(Ok(answer)) => answer
                .into_inner()
                .tables
                .into_iter()
                .map(|status| ((status.tid, status.pid), status))
                .collect(),
            Ok(Err(status)) => return TabletAnswers::unreachable(status.message().to_string()),
            Err(_) => return TabletAnswers::unreachable(unanswered()),
        };
    let limit = Arc::new(Semaphore::new(CALLS_PER_TABLET));
    let mut calls = JoinSet::new();
    for (tid, pid) in replicas {
        let (limit, mut client) = (limit.clone(), client.clone());
        calls.spawn(async move {
            let _turn = limit.acquire_owned().await;
            let asked = client.get_term_pair(GetTermPairRequest { tid, pid });
            let log = match tokio::time::timeout(ANSWER_TIMEOUT, asked).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    Ok((answer.last_term, answer.last_offset, answer.loaded))
                }
                Ok(Err(status)) => Err(status.message().to_string()),
                Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
            };
            ((tid, pid), log)
        });
    }
    let mut logs = HashMap::new();
    while let Some(joined) = calls.join_next().await {
        if let Ok((key, log)) = joined {
            logs.insert(key, log);
        }
    }
    TabletAnswers {
        unreachable: None,
        logs,
        statuses,
    }
}
