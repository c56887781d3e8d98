//! The taskmanager's state: its ZooKeeper session, whether it leads (and the election
//! lock through which every job record write is fenced), and the job records.
//!
//! Leading also takes a valid lease (`coordination::Lease`, as the nameserver's): it is
//! renewed only by ZooKeeper's answers and lapses a third of a session timeout before
//! ZooKeeper can expire the session and let a standby take over. When it lapses, the
//! jobs stop sending writes; if ZooKeeper answers again within the same session (nobody
//! can have taken over), they run again. Writes already on their way when the lease
//! lapsed are refused by the tablets once the next run registers its epoch.
//!
//! Layout under the cluster root: `/taskmanager/leader/n-<seq>` (election, lowest wins,
//! data = endpoint), `/taskmanager/job_index` (id counter), `/taskmanager/jobs/<id>` (a
//! `JobInfo`), `/taskmanager/jobs/<id>/<pid>` (an import's `ImportCheckpoint`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use prost::Message;
use tessera_common::coordination::{self, Lease, LeaseEvent, LeaseTracker, ZkSettings};
use tessera_common::zk_auth;
use tessera_proto::taskmanager::{ImportCheckpoint, JobInfo};
use tokio::sync::watch;
use tracing::{info, warn};
use zookeeper_client::{Client, CreateMode, Error as ZkError, OwnedLockClient};

use crate::error::{Result, TmError};
use crate::files::JobFiles;

pub const SUBMITTED: &str = "Submitted";
pub const RUNNING: &str = "Running";
pub const FINISHED: &str = "Finished";
pub const FAILED: &str = "Failed";
pub const STOPPED: &str = "Stopped";

pub fn is_ended(job: &JobInfo) -> bool {
    matches!(job.state.as_str(), FINISHED | FAILED | STOPPED)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn persistent() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(zk_auth::acls())
}

pub struct TaskManager {
    pub endpoint: String,
    pub settings: ZkSettings,
    root: String,
    client: RwLock<Option<Client>>,
    leader: RwLock<Option<Arc<OwnedLockClient>>>,
    /// Valid while ZooKeeper answers this session's renewals in time.
    lease: Arc<Lease>,
    /// Stop flags of the jobs this leader runs now.
    pub(crate) running: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    /// Jobs whose run ended without settling them (the lease lapsed, a record could not
    /// be written, a newer run took over): run again while this leader's lease is valid,
    /// unless their record says they ended.
    pub(crate) orphans: Mutex<HashSet<u64>>,
    /// Jobs an operator is stopping: their runs end for good.
    pub(crate) stopping: Mutex<HashSet<u64>>,
    /// The cluster's SDK client, for the jobs' reads and writes.
    data: tokio::sync::OnceCell<Arc<tessera_ns_client::Client>>,
    /// The only files jobs may read and write.
    pub files: JobFiles,
}

impl TaskManager {
    pub fn new(endpoint: String, settings: ZkSettings, files: JobFiles) -> Arc<TaskManager> {
        let timeout = settings.session_timeout;
        Arc::new(TaskManager {
            files,
            endpoint,
            root: format!("{}/taskmanager", settings.root.trim_end_matches('/')),
            settings,
            client: RwLock::new(None),
            leader: RwLock::new(None),
            lease: Lease::for_session(timeout),
            running: Mutex::default(),
            orphans: Mutex::default(),
            stopping: Mutex::default(),
            data: tokio::sync::OnceCell::new(),
        })
    }

    /// Holds the election lock with a valid lease: may run jobs and write their records.
    pub fn is_leader(&self) -> bool {
        self.leader.read().is_some() && self.lease.is_valid()
    }

    fn leader_dir(&self) -> String {
        format!("{}/leader", self.root)
    }

    fn jobs_dir(&self) -> String {
        format!("{}/jobs", self.root)
    }

    fn job_path(&self, id: u64) -> String {
        format!("{}/jobs/{id:010}", self.root)
    }

    fn checkpoint_path(&self, id: u64, pid: u32) -> String {
        format!("{}/{pid}", self.job_path(id))
    }

    fn client(&self) -> Result<Client> {
        self.client
            .read()
            .clone()
            .ok_or_else(|| TmError::Zk("not connected to ZooKeeper".into()))
    }

    /// The election lock, or NotLeader naming the leader.
    pub(crate) async fn lock(&self) -> Result<Arc<OwnedLockClient>> {
        if let Some(lock) = self.leader.read().clone() {
            if !self.lease.is_valid() {
                return Err(TmError::Suspended(
                    "this taskmanager lost touch with ZooKeeper and may be replaced; it acts \
                     again once ZooKeeper answers"
                        .into(),
                ));
            }
            return Ok(lock);
        }
        let leader = self.leader_endpoint().await.unwrap_or_default();
        Err(TmError::NotLeader { leader })
    }

    async fn leader_endpoint(&self) -> Result<String> {
        let order = coordination::election_order(&self.client()?, &self.leader_dir()).await?;
        Ok(order.into_iter().next().unwrap_or_default())
    }

    /// The SDK client, connected on first use.
    pub(crate) async fn data(&self) -> Result<Arc<tessera_ns_client::Client>> {
        self.data
            .get_or_try_init(|| async {
                tessera_ns_client::Client::connect(&self.settings.cluster, &self.settings.root)
                    .await
                    .map(Arc::new)
                    .map_err(TmError::from)
            })
            .await
            .cloned()
    }

    /// Contends for leadership until `stop`; `on_lead` runs each time it wins.
    /// On a clean stop: gives leadership up and closes the session at once, so a standby
    /// takes over now rather than after the session times out.
    async fn release(&self) {
        let lock = self.leader.write().take();
        let client = self.client.write().take();
        if lock.is_some() || client.is_some() {
            // The lock deletes its node and the last client handle closes the session,
            // both from background tasks: give them a moment before the process exits.
            drop(lock);
            drop(client);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn run_election(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            let session = tokio::select! {
                s = self.clone().lead_one_session() => s,
                _ = stop.changed() => break,
            };
            self.leader.write().take();
            self.stop_all_jobs();
            // Whoever leads next resumes every job that has not ended.
            self.orphans.lock().clear();
            if let Err(e) = session {
                warn!(error = %e, "taskmanager session ended");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => break,
            }
        }
        self.release().await;
    }

    async fn lead_one_session(self: Arc<Self>) -> Result<()> {
        let client =
            coordination::connect_elected(&self.settings, &[self.leader_dir(), self.jobs_dir()])
                .await?;
        *self.client.write() = Some(client.clone());
        // The lease is renewed for as long as this session lasts (until this function
        // returns and drops `renewing`).
        let renewing =
            coordination::renew_for_session(&client, self.leader_dir(), self.lease.clone());
        tokio::spawn(self.clone().follow_lease(renewing.subscribe()));
        let lock =
            Arc::new(coordination::contend(&client, &self.leader_dir(), &self.endpoint).await?);
        match lock
            .create(&format!("{}/job_index", self.root), b"0", &persistent())
            .await
        {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(e.into()),
        }
        *self.leader.write() = Some(lock);
        info!(endpoint = %self.endpoint, "became the taskmanager leader");
        tokio::spawn(self.clone().resume_jobs());

        coordination::until_session_ends(&client).await;
        warn!("ZooKeeper session lost: no longer the leader");
        Ok(())
    }

    /// Stops the jobs when the lease lapses, and runs again the jobs whose runs ended
    /// unsettled whenever the lease is valid, until `ended` (the session's end) fires.
    async fn follow_lease(self: Arc<Self>, mut ended: watch::Receiver<bool>) {
        let mut tracker = LeaseTracker::default();
        let beat = (self.settings.session_timeout / 20).max(Duration::from_millis(10));
        loop {
            if tracker.look(&self.lease) == LeaseEvent::Lapsed && self.leader.read().is_some() {
                warn!("ZooKeeper has not answered in time: jobs stop until it does");
                self.stop_all_jobs();
            }
            if self.is_leader() && !self.orphans.lock().is_empty() {
                tokio::spawn(self.clone().run_orphans());
            }
            tokio::select! {
                _ = tokio::time::sleep(beat) => {}
                _ = ended.changed() => return,
            }
        }
    }

    /// Runs again the jobs whose last run ended unsettled, unless their record says they
    /// ended or an operator is stopping them.
    async fn run_orphans(self: Arc<Self>) {
        let orphans: Vec<u64> = self.orphans.lock().drain().collect();
        for id in orphans {
            if self.stopping.lock().contains(&id) {
                continue;
            }
            match self.job(id).await {
                Ok(job) if !is_ended(&job) => {
                    info!(id, "running an unsettled job again");
                    self.spawn_job(job);
                }
                Ok(_) | Err(TmError::NoSuchJob(_)) => {}
                Err(e) => {
                    warn!(id, error = %e, "cannot read an unsettled job; trying again");
                    self.orphans.lock().insert(id);
                }
            }
        }
    }

    /// Stops every running job; returns their ids.
    fn stop_all_jobs(&self) -> Vec<u64> {
        let running = self.running.lock();
        for flag in running.values() {
            flag.store(true, std::sync::atomic::Ordering::Release);
        }
        running.keys().copied().collect()
    }

    /// Every job, oldest first.
    pub async fn jobs(&self) -> Result<Vec<JobInfo>> {
        let client = self.client()?;
        let mut jobs = Vec::new();
        for child in client.list_children(&self.jobs_dir()).await? {
            if let Some(job) = self
                .read_job(&client, &format!("{}/{child}", self.jobs_dir()))
                .await?
            {
                jobs.push(job);
            }
        }
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn read_job(&self, client: &Client, path: &str) -> Result<Option<JobInfo>> {
        match client.get_data(path).await {
            Ok((data, _)) => Ok(Some(
                JobInfo::decode(data.as_slice()).map_err(|e| TmError::Zk(e.to_string()))?,
            )),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn job(&self, id: u64) -> Result<JobInfo> {
        let client = self.client()?;
        self.read_job(&client, &self.job_path(id))
            .await?
            .ok_or(TmError::NoSuchJob(id))
    }

    /// Persists a new job with the next id.
    pub(crate) async fn create_job(&self, mut job: JobInfo) -> Result<JobInfo> {
        let lock = self.lock().await?;
        let client = self.client()?;
        let index = format!("{}/job_index", self.root);
        let id = loop {
            let (data, stat) = client.get_data(&index).await?;
            let next = String::from_utf8_lossy(&data)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                + 1;
            match lock
                .set_data(&index, next.to_string().as_bytes(), Some(stat.version))
                .await
            {
                Ok(_) => break next,
                Err(ZkError::BadVersion) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        job.id = id;
        lock.create(&self.job_path(id), &job.encode_to_vec(), &persistent())
            .await?;
        Ok(job)
    }

    /// Rewrites a job record (fenced: only the leader can).
    pub(crate) async fn save_job(&self, job: &JobInfo) -> Result<()> {
        let lock = self.lock().await?;
        lock.set_data(&self.job_path(job.id), &job.encode_to_vec(), None)
            .await?;
        Ok(())
    }

    pub(crate) async fn checkpoint(&self, id: u64, pid: u32) -> Result<ImportCheckpoint> {
        let client = self.client()?;
        match client.get_data(&self.checkpoint_path(id, pid)).await {
            Ok((data, _)) => {
                ImportCheckpoint::decode(data.as_slice()).map_err(|e| TmError::Zk(e.to_string()))
            }
            Err(ZkError::NoNode) => Ok(ImportCheckpoint::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn save_checkpoint(
        &self,
        id: u64,
        pid: u32,
        checkpoint: &ImportCheckpoint,
    ) -> Result<()> {
        let lock = self.lock().await?;
        let path = self.checkpoint_path(id, pid);
        let data = checkpoint.encode_to_vec();
        match lock.set_data(&path, &data, None).await {
            Ok(_) => Ok(()),
            Err(ZkError::NoNode) => {
                lock.create(&path, &data, &persistent()).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}
