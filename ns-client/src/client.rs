//! Discovery, routing and retry.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use prost::Message;
use tessera_common::auth::AuthChannel;
use tessera_common::retry;
use tessera_common::table_layout::{self, LayoutError};
use tessera_common::wire_error::{code_of, detail_or, ErrorCode};
use tessera_common::zk_session::{is_session_lost, ZkSession};
use tessera_common::{key, Schema, Value};
use tessera_proto::common::Row;
use tessera_proto::nameserver::TableInfo;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::{
    BatchRow, CountRequest, DeleteRequest, GetRequest, PreviewRequest, PutBatchRequest, PutRequest,
    PutResult, RegisterWriterRequest, ScanRequest,
};
use tracing::debug;
use zookeeper_client::Error as ZkError;

use crate::coalesce::{batch_len, row_answer, Coalescer, WriteStats};
use crate::error::ClientError;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long one call may keep retrying through failovers before it gives up.
    pub deadline: Duration,
    pub zk_session_timeout: Duration,
    /// Serve `get` from a follower when it holds everything this client has seen of the
    /// partition (else from the leader).
    pub read_from_followers: bool,
    /// On a cluster with authentication: the user to log in as, and the password. The
    /// session is the process's: every client of the process then uses it.
    pub user: Option<String>,
    pub password: Option<String>,
    /// The largest answer a tablet may send: at least the tablets' `max_row_size` (16 MiB
    /// by default) plus some slack, since a page of one row is as large as the row. Larger
    /// results come in pages the client asks for one after another.
    pub max_response_bytes: usize,
}

/// The default of [`ClientOptions::max_response_bytes`].
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 << 20;

/// The moment a consistent read shows: a partition's offset and the tablet's time (ms
/// since the epoch) at which TTL is judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadMoment {
    pub offset: u64,
    pub time_ms: i64,
}

/// One page of rows and, when more may follow, the cursor to pass for the next one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowPage {
    pub rows: Vec<Vec<Value>>,
    pub next: Option<Vec<u8>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            deadline: Duration::from_secs(60),
            zk_session_timeout: Duration::from_secs(10),
            read_from_followers: false,
            user: None,
            password: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// How reads were served, for observability.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadStats {
    pub from_followers: u64,
    pub from_leaders: u64,
}

/// What a follower answered: `value`, served at applied offset `offset`, which is at
/// least the `min_offset` the read asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerRead<T> {
    pub value: T,
    pub min_offset: u64,
    pub offset: u64,
    pub endpoint: String,
}

/// One row of a `put_batch`: its index in the caller's list, the row, its sequence number.
type BatchItem = (usize, Row, u64);

/// A writer that outlives its process, such as a bulk import that another process may
/// resume: one id for all its runs, and an epoch per run, each higher than the last.
/// A run registers its epoch on the table ([`Client::register_writer`]) before writing
/// with it ([`Client::put_batch_as`]); the partitions then refuse older runs' writes
/// ([`ClientError::Fenced`]) and answer a row an earlier run already wrote, under the
/// same sequence number, with its first result instead of writing it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer {
    pub id: u64,
    pub epoch: u64,
}

impl Writer {
    /// A new random writer id (not 0).
    pub fn new_id() -> u64 {
        new_client_id()
    }

    fn check(&self) -> Result<(), ClientError> {
        if self.id == 0 || self.epoch == 0 {
            return Err(ClientError::InvalidArgument(
                "a writer has an id and an epoch other than 0".into(),
            ));
        }
        Ok(())
    }
}

/// What a partition knew of a writer when a new run registered ([`Client::register_writer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterRegistration {
    /// The epoch registered before (0: none, or the partition forgot the writer after
    /// the tablets' `client_expiry_secs` of silence).
    pub previous_epoch: u64,
    /// The highest sequence number of the writer the partition remembers (0: none).
    pub highest_seq: u64,
}

/// A table's metadata with its parsed schema.
struct Cached {
    info: TableInfo,
    schema: Schema,
}

/// A connection to a Tessera cluster. Cheap to share (`Arc`) between tasks.
pub struct Client {
    /// Renewed when ZooKeeper expires it: the client outlives any one session.
    zk: Arc<ZkSession>,
    root: String,
    options: ClientOptions,
    tables: Arc<RwLock<HashMap<String, Arc<Cached>>>>,
    tablets: RwLock<HashMap<String, TabletClient<AuthChannel>>>,
    /// The highest offset this client has seen per (table, partition): a follower read
    /// asks for at least this much, so it never returns older data than already seen.
    seen: parking_lot::Mutex<HashMap<(String, u32), u64>>,
    stats: parking_lot::Mutex<ReadStats>,
    /// Idempotence: every put and delete carries this client's id and a sequence number
    /// of its own, the same on every retry, so a retried write is applied once.
    client_id: u64,
    next_seq: std::sync::atomic::AtomicU64,
    /// Bumped whenever the cluster's metadata changes: a call waiting on a leader that
    /// may have been replaced looks again at once.
    table_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Puts to the same partition made at the same time travel together.
    coalescer: Coalescer,
    /// The task that follows metadata changes; stopped when the client is dropped, so
    /// that the ZooKeeper session closes with it.
    follower: tokio::task::AbortHandle,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

tokio::task_local! {
    /// The deadline of the calls inside [`Client::within`].
    static CALL_DEADLINE: Instant;
}

/// The first retry after a failure waits about this long; later ones twice as long each
/// time, up to `MAX_BACKOFF`, each with jitter (`tessera_common::retry::backoff`), and any
/// wait ends early when the metadata changes.
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Retries in a row that go at once (to the leader a NotLeader answer named, or after
/// the metadata named another leader) before the backoff applies again.
const IMMEDIATE_RETRIES: u32 = 3;

/// A random id for a client (no two clients should share one).
fn new_client_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish().max(1)
}

/// What to do after a failed attempt.
enum Failure {
    /// Refresh the metadata and try again.
    Retry(String),
    /// Retrying cannot help.
    Fatal(ClientError),
}

fn classify(status: &tonic::Status) -> Failure {
    match code_of(status) {
        ErrorCode::InvalidArgument
        | ErrorCode::RowTooLarge
        | ErrorCode::TableExists
        | ErrorCode::Corruption => {
            Failure::Fatal(ClientError::InvalidArgument(status.message().to_string()))
        }
        ErrorCode::PermissionDenied => {
            Failure::Fatal(ClientError::PermissionDenied(status.message().to_string()))
        }
        // The tablet could not store it (a full disk, a failing device): an operator has
        // to act, and the caller should hear so now, not after the deadline.
        ErrorCode::Io => Failure::Fatal(ClientError::Storage(status.message().to_string())),
        ErrorCode::WriterFenced => {
            Failure::Fatal(ClientError::Fenced(status.message().to_string()))
        }
        // No answer of a tablet's own: the transport's or the gRPC layer's. Only a lost or
        // refused connection, or a timeout, can go better on another try; an answer too
        // large for this client, a request too large for the tablet or a call it does not
        // know would fail the same way every time.
        ErrorCode::Unspecified if !retry::transport_may_recover(status.code()) => Failure::Fatal(
            ClientError::Refused(format!("{} ({:?})", status.message(), status.code())),
        ),
        // Not the leader any more, the partition moving or reloading, the tablet gone or
        // stopping, a replica removed from under stale metadata, too few replicas up, or
        // a write of unknown outcome (retried with its sequence number: applied once).
        _ => Failure::Retry(status.message().to_string()),
    }
}

/// Forgets the cached metadata whenever `/notify/table_changed` moves, and whenever the
/// ZooKeeper session is renewed (changes made meanwhile were not seen, and the watch died
/// with the old session).
async fn follow_table_changes(
    zk: Arc<ZkSession>,
    path: String,
    tables: Arc<RwLock<HashMap<String, Arc<Cached>>>>,
    changes: Arc<tokio::sync::watch::Sender<u64>>,
) {
    let forget = || {
        tables.write().clear();
        changes.send_modify(|n| *n = n.wrapping_add(1));
    };
    let mut renewals = zk.renewals();
    loop {
        renewals.borrow_and_update();
        let client = zk.client();
        let watched = match client.get_and_watch_data(&path).await {
            Ok((_, _, watcher)) => Ok(watcher),
            Err(ZkError::NoNode) => client
                .check_and_watch_stat(&path)
                .await
                .map(|(_, watcher)| watcher),
            Err(e) => Err(e),
        };
        match watched {
            Ok(watcher) => {
                tokio::select! {
                    _ = watcher.changed() => {}
                    _ = renewals.changed() => {}
                }
                forget();
            }
            Err(e) if is_session_lost(&e) => {
                if zk.renew(client.session_id()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                forget();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The cursor of the next page, once the page is known to have made progress: a tablet
/// that predates paged reads (it ignores the cursor and would answer the first page
/// again, or a truncated one), or a page that says more follows without having moved,
/// would otherwise make a read loop forever or stop short without a word.
fn next_cursor(
    paged: bool,
    rows: usize,
    next: Vec<u8>,
    after: &[u8],
) -> Result<Option<Vec<u8>>, ClientError> {
    if !paged {
        return Err(ClientError::Refused(
            "a tablet that predates paged reads answered; upgrade it to read this".into(),
        ));
    }
    if next.is_empty() {
        return Ok(None);
    }
    if rows == 0 || next == after {
        return Err(ClientError::Refused(
            "a tablet answered a page that made no progress".into(),
        ));
    }
    Ok(Some(next))
}

/// A page's rows decoded, with its cursor.
fn row_page(rows: &[Row], next: Option<Vec<u8>>) -> Result<RowPage, ClientError> {
    let rows = rows
        .iter()
        .map(|r| Value::row_from_proto(r).map_err(ClientError::InvalidArgument))
        .collect::<Result<_, _>>()?;
    Ok(RowPage { rows, next })
}

/// The alive leader the metadata names for partition `pid`.
fn leader_of(table: &Cached, pid: u32) -> Option<String> {
    table
        .info
        .partitions
        .iter()
        .find(|p| p.pid == pid)
        .and_then(|p| p.replicas.iter().find(|r| r.is_leader && r.is_alive))
        .map(|r| r.endpoint.clone())
}

/// The leader a NotLeader answer names, if it names one.
fn named_leader(status: &tonic::Status) -> Option<String> {
    tessera_common::wire_error::detail_of(status)
        .filter(|d| d.code() == ErrorCode::NotLeader && !d.leader.is_empty())
        .map(|d| d.leader)
}

impl Client {
    pub async fn connect(zk_cluster: &str, zk_root_path: &str) -> Result<Client, ClientError> {
        Client::connect_with(zk_cluster, zk_root_path, ClientOptions::default()).await
    }

    pub async fn connect_with(
        zk_cluster: &str,
        zk_root_path: &str,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        if let Some(user) = &options.user {
            let password = options.password.clone().unwrap_or_default();
            crate::nameserver::log_in_process(zk_cluster, zk_root_path, user, &password).await?;
        }
        let zk = Arc::new(ZkSession::connect(zk_cluster, options.zk_session_timeout).await?);
        let root = zk_root_path.trim_end_matches('/').to_string();
        let tables: Arc<RwLock<HashMap<String, Arc<Cached>>>> = Arc::default();
        let table_changes = Arc::new(tokio::sync::watch::Sender::new(0));
        let follower = tokio::spawn(follow_table_changes(
            zk.clone(),
            format!("{root}/notify/table_changed"),
            tables.clone(),
            table_changes.clone(),
        ))
        .abort_handle();
        Ok(Client {
            zk,
            root,
            options,
            tables,
            tablets: RwLock::default(),
            seen: parking_lot::Mutex::default(),
            stats: parking_lot::Mutex::default(),
            client_id: new_client_id(),
            next_seq: std::sync::atomic::AtomicU64::new(1),
            table_changes,
            coalescer: Coalescer::default(),
            follower,
        })
    }

    /// How many times ZooKeeper expired this client's session and the client opened a new
    /// one (re-reading the metadata and setting its watches again).
    pub fn zk_session_renewals(&self) -> u64 {
        *self.zk.renewals().borrow()
    }

    async fn table(&self, db: &str, name: &str, refresh: bool) -> Result<Arc<Cached>, ClientError> {
        let id = format!("{db}.{name}");
        if !refresh {
            if let Some(cached) = self.tables.read().get(&id) {
                return Ok(cached.clone());
            }
        }
        let path = format!("{}/table/table_data/{id}", self.root);
        let read = self.zk.run(|zk| {
            let path = path.clone();
            async move {
                // A ZooKeeper error goes out to `run`, which renews a lost session.
                match table_layout::read_table(&zk, &path).await {
                    Err(LayoutError::Zk(e)) => Err(e),
                    read => Ok(read),
                }
            }
        });
        let info = match read.await? {
            Ok(Some(stored)) => stored.table,
            // Incomplete: being created (not a table yet) or dropped.
            Ok(None) | Err(LayoutError::Incomplete { .. }) => {
                return Err(ClientError::TableNotFound(id))
            }
            Err(e) => return Err(ClientError::Zk(e.to_string())),
        };
        let schema = Schema::from_proto(&info.schema.clone().unwrap_or_default())
            .map_err(|e| ClientError::Zk(format!("{path}: {e}")))?;
        let cached = Arc::new(Cached { info, schema });
        self.tables.write().insert(id, cached.clone());
        Ok(cached)
    }

    async fn tablet(&self, endpoint: &str) -> Result<TabletClient<AuthChannel>, String> {
        if let Some(client) = self.tablets.read().get(endpoint) {
            return Ok(client.clone());
        }
        let channel = tessera_common::tls::endpoint(endpoint, Duration::from_secs(2))
            .map_err(|e| e.to_string())?
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        let client = TabletClient::new(tessera_common::auth::with_credentials(channel))
            .max_decoding_message_size(self.options.max_response_bytes)
            .max_encoding_message_size(usize::MAX);
        self.tablets
            .write()
            .insert(endpoint.to_string(), client.clone());
        Ok(client)
    }

    /// Runs `call` against the leader of the partition `partition` picks, refreshing the
    /// metadata and retrying through failovers until the deadline.
    async fn on_leader<T, F, Fut>(
        &self,
        db: &str,
        name: &str,
        partition: impl Fn(&Cached) -> Result<u32, ClientError>,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(TabletClient<AuthChannel>, u32, u32) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.on_leader_at(db, name, partition, |_, client, tid, pid| {
            call(client, tid, pid)
        })
        .await
    }

    /// [`Client::on_leader`] for a call that also wants the leader's endpoint.
    async fn on_leader_at<T, F, Fut>(
        &self,
        db: &str,
        name: &str,
        partition: impl Fn(&Cached) -> Result<u32, ClientError>,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(&str, TabletClient<AuthChannel>, u32, u32) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = self.deadline();
        let mut backoff = retry::backoff(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempts = 0;
        let mut immediate = 0;
        let mut refresh = false;
        // The leader a NotLeader answer named, tried before the metadata's.
        let mut redirect: Option<String> = None;
        let mut changes = self.table_changes.subscribe();
        let mut last_failure = String::new();
        // Whether an earlier attempt reached a tablet and ended without a definite answer
        // (a write it carried may still be applied).
        let mut sent_before = false;
        loop {
            if attempts > 0 && Instant::now() >= deadline {
                return Err(ClientError::Unavailable {
                    attempts,
                    last: last_failure,
                });
            }
            attempts += 1;
            changes.borrow_and_update();
            // The metadata too is read within the deadline, and retried: ZooKeeper may be
            // out of reach for a moment.
            let table =
                match tokio::time::timeout_at(deadline.into(), self.table(db, name, refresh)).await
                {
                    Ok(Ok(table)) => table,
                    Ok(Err(ClientError::Zk(e))) => {
                        last_failure = format!("cannot read the metadata: {e}");
                        refresh = true;
                        self.pause_before_retry(&mut backoff, deadline, &mut changes)
                            .await;
                        continue;
                    }
                    Ok(Err(fatal)) => return Err(fatal),
                    Err(_) => {
                        if last_failure.is_empty() {
                            last_failure = "ZooKeeper did not answer before the deadline".into();
                        }
                        continue;
                    }
                };
            let pid = partition(&table)?;
            let named = leader_of(&table, pid);
            let leader = redirect.take().or_else(|| named.clone());
            let mut retry_now = false;
            let failure = match leader {
                None => format!("partition {pid} of {name} has no leader right now"),
                Some(endpoint) => {
                    match tokio::time::timeout_at(deadline.into(), self.tablet(&endpoint))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!("cannot connect to {endpoint} before the deadline"))
                        }) {
                        Err(e) => e,
                        Ok(client) => {
                            // No attempt runs past the call's deadline.
                            let answer = async {
                                tokio::time::timeout_at(
                                    deadline.into(),
                                    call(&endpoint, client, table.info.tid, pid),
                                )
                                .await
                                .unwrap_or_else(|_| {
                                    Err(tonic::Status::deadline_exceeded(
                                        "the call's deadline passed",
                                    ))
                                })
                            };
                            // Reading new metadata while waiting is bounded too.
                            let settled = tokio::time::timeout_at(
                                deadline.into(),
                                self.until_leader_moves(
                                    answer,
                                    db,
                                    name,
                                    pid,
                                    named.as_deref(),
                                    &mut changes,
                                ),
                            )
                            .await
                            .unwrap_or_else(|_| {
                                Some(Err(tonic::Status::deadline_exceeded(
                                    "the call's deadline passed",
                                )))
                            });
                            match settled {
                                None => {
                                    // A paused or cut-off leader would hold the call until its
                                    // timeout; the write's id makes the retry safe.
                                    sent_before = true;
                                    retry_now = true;
                                    format!(
                                        "the leader of partition {pid} moved away from {endpoint}"
                                    )
                                }
                                Some(Ok(value)) => return Ok(value),
                                Some(Err(status)) => match classify(&status) {
                                    // A fenced writer stops, whatever it sent before.
                                    Failure::Fatal(e @ ClientError::Fenced(_)) => return Err(e),
                                    // A definite refusal now says nothing of an earlier
                                    // attempt that may yet be applied.
                                    Failure::Fatal(e) if sent_before => {
                                        return Err(ClientError::Unavailable {
                                            attempts,
                                            last: format!(
                                                "{e}; an earlier attempt's outcome is not known"
                                            ),
                                        });
                                    }
                                    Failure::Fatal(e) => return Err(e),
                                    Failure::Retry(reason) => {
                                        sent_before = true;
                                        match named_leader(&status).filter(|l| *l != endpoint) {
                                            Some(named) => {
                                                redirect = Some(named);
                                                retry_now = true;
                                            }
                                            // A broken connection is not reused.
                                            None => {
                                                self.tablets.write().remove(&endpoint);
                                            }
                                        }
                                        reason
                                    }
                                },
                            }
                        }
                    }
                }
            };
            debug!(table = name, pid, attempts, reason = %failure, "retrying");
            // An attempt cut short by the deadline says less than the one before it.
            if last_failure.is_empty() || Instant::now() < deadline {
                last_failure = failure;
            }
            refresh = true;
            if retry_now && immediate < IMMEDIATE_RETRIES {
                immediate += 1;
                continue;
            }
            immediate = 0;
            self.pause_before_retry(&mut backoff, deadline, &mut changes)
                .await;
        }
    }

    /// Waits the next backoff delay (never past `deadline`), or less if the metadata
    /// changes meanwhile: it may name the new leader.
    async fn pause_before_retry(
        &self,
        backoff: &mut (impl Iterator<Item = Duration> + Send),
        deadline: Instant,
        changes: &mut tokio::sync::watch::Receiver<u64>,
    ) {
        let pause = backoff
            .next()
            .unwrap_or(MAX_BACKOFF)
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = changes.changed() => {}
        }
    }

    /// When the current call must give up: the deadline of an enclosing
    /// [`Client::within`], or the client's `deadline` option from now.
    fn deadline(&self) -> Instant {
        CALL_DEADLINE
            .try_with(|deadline| *deadline)
            .unwrap_or_else(|_| Instant::now() + self.options.deadline)
    }

    /// Runs `calls` (any calls of this client) with their own deadline: each gives up
    /// `deadline` from now instead of after the client's `deadline` option.
    ///
    /// ```no_run
    /// # async fn example(client: &tessera_ns_client::Client) -> Result<(), tessera_ns_client::ClientError> {
    /// use std::time::Duration;
    /// use tessera_common::Value;
    ///
    /// let key = vec![Value::String("user1".into())];
    /// let row = client
    ///     .within(Duration::from_millis(200), client.get("default", "t1", key))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn within<T>(&self, deadline: Duration, calls: impl Future<Output = T>) -> T {
        let mut at = Instant::now() + deadline;
        // Inside another `within`, the nearer deadline holds.
        if let Ok(outer) = CALL_DEADLINE.try_with(|outer| *outer) {
            at = at.min(outer);
        }
        CALL_DEADLINE.scope(at, calls).await
    }

    /// Runs a call made of many requests (the pages of a scan) under one deadline: the
    /// enclosing [`Client::within`]'s, or the `deadline` option from now.
    async fn as_one_call<T>(&self, calls: impl Future<Output = T>) -> T {
        CALL_DEADLINE.scope(self.deadline(), calls).await
    }

    /// Runs `answer` to its end, unless the metadata comes to name a leader of partition
    /// `pid` other than `named`, the one it named when the call began (`None`).
    async fn until_leader_moves<T>(
        &self,
        answer: impl Future<Output = Result<T, tonic::Status>>,
        db: &str,
        name: &str,
        pid: u32,
        named: Option<&str>,
        changes: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Option<Result<T, tonic::Status>> {
        tokio::pin!(answer);
        loop {
            tokio::select! {
                result = &mut answer => return Some(result),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Some((&mut answer).await);
                    }
                    // The cache was dropped before the change was announced, so this
                    // reads the new metadata.
                    let moved = match self.table(db, name, false).await {
                        Ok(table) => {
                            let now = leader_of(&table, pid);
                            now.is_some() && now.as_deref() != named
                        }
                        Err(_) => false,
                    };
                    if moved {
                        return None;
                    }
                }
            }
        }
    }

    /// The partition a row belongs to (by its first index's key).
    pub async fn partition_of(
        &self,
        db: &str,
        name: &str,
        row: &[Value],
    ) -> Result<u32, ClientError> {
        let table = self.table(db, name, false).await?;
        Self::row_partition(&table, row)
    }

    fn row_partition(table: &Cached, row: &[Value]) -> Result<u32, ClientError> {
        let first = table
            .schema
            .indexes
            .first()
            .ok_or_else(|| ClientError::InvalidArgument("no index".into()))?;
        let key = key::key_from_row(&table.schema, first, row)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        Ok(key::partition_of(&key, table.info.partition_num))
    }

    /// The number of partitions of a table.
    pub async fn partition_count(&self, db: &str, name: &str) -> Result<u32, ClientError> {
        Ok(self.table(db, name, false).await?.info.partition_num)
    }

    /// A page of a partition's rows from its leader in first-index order: up to `limit`
    /// rows (0: as many as the tablet sends in one page) after the cursor `after` (empty
    /// for the first page; then the `next` of the page before). Each page is a read of
    /// its own: rows written between pages may or may not appear, but no row is returned
    /// twice, and none that stays in the table throughout is missed.
    pub async fn partition_page(
        &self,
        db: &str,
        name: &str,
        pid: u32,
        after: &[u8],
        limit: u32,
    ) -> Result<RowPage, ClientError> {
        let (page, _) = self
            .preview_page(db, name, pid, after, false, limit)
            .await?;
        Ok(page)
    }

    /// The first page of a consistent read of a partition: the tablet fixes the moment
    /// the read shows (its applied offset and its clock), and every later page read with
    /// [`Client::partition_page`] from this page's cursor shows the partition as of that
    /// moment — rows written since are left out, rows that expire since stay. Returns the
    /// page and the moment.
    pub async fn partition_consistent_page(
        &self,
        db: &str,
        name: &str,
        pid: u32,
        limit: u32,
    ) -> Result<(RowPage, ReadMoment), ClientError> {
        self.preview_page(db, name, pid, &[], true, limit).await
    }

    async fn preview_page(
        &self,
        db: &str,
        name: &str,
        pid: u32,
        after: &[u8],
        consistent: bool,
        limit: u32,
    ) -> Result<(RowPage, ReadMoment), ClientError> {
        let (rows, next, paged, moment) = self
            .on_leader_seen(
                db,
                name,
                |_| Ok(pid),
                |mut client, tid, pid| {
                    let request = PreviewRequest {
                        tid,
                        pid,
                        limit,
                        after: after.to_vec(),
                        consistent,
                        ..Default::default()
                    };
                    async move {
                        let r = client.preview(request).await?.into_inner();
                        let moment = ReadMoment {
                            offset: r.read_offset,
                            time_ms: r.read_time_ms,
                        };
                        Ok(((r.rows, r.next, r.paged, moment), r.offset))
                    }
                },
            )
            .await?;
        let next = next_cursor(paged, rows.len(), next, after)?;
        Ok((row_page(&rows, next)?, moment))
    }

    /// Writes a whole row to its partition's leader. Returns the partition's (term,
    /// offset) after the write. Puts that tasks sharing this client make at the same time
    /// to the same partition travel together in one request (see `coalesce`), each with
    /// its own answer.
    pub async fn put(
        &self,
        db: &str,
        name: &str,
        row: Vec<Value>,
    ) -> Result<(u64, u64), ClientError> {
        tessera_common::codec::validate(&self.table(db, name, false).await?.schema, &row)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let proto = Value::row_to_proto(&row);
        let pid_of = |table: &Cached| Self::row_partition(table, &row);
        let seq = self.next_seq();
        let (pid, version) = self
            .on_leader_at(db, name, pid_of, |endpoint, client, tid, pid| {
                let put = self.coalescer.put(
                    client,
                    endpoint,
                    tid,
                    pid,
                    self.client_id,
                    proto.clone(),
                    seq,
                );
                async move { put.await.map(|version| (pid, version)) }
            })
            .await?;
        self.note_seen(db, name, pid, version.1);
        Ok(version)
    }

    /// Writes many rows: one request per partition (at most 512 rows and 1 MiB each), the
    /// partitions' requests in parallel, each retried through failovers like a put.
    /// Returns each row's (term, offset), in the order of `rows`. Every row keeps its
    /// sequence number across retries, so none is applied twice; if the call fails,
    /// some rows may have been written.
    pub async fn put_batch(
        &self,
        db: &str,
        name: &str,
        rows: Vec<Vec<Value>>,
    ) -> Result<Vec<(u64, u64)>, ClientError> {
        let writer = Writer {
            id: self.client_id,
            epoch: 0,
        };
        let rows = rows.into_iter().map(|row| (self.next_seq(), row)).collect();
        self.put_rows(db, name, writer, rows).await
    }

    /// [`Client::put_batch`] as `writer`, each row with the sequence number the caller
    /// gives it (from 1; the same row keeps the same number in every run of the writer,
    /// so a row an earlier run wrote is not written again). The writer's run must have
    /// registered first ([`Client::register_writer`]); fails with [`ClientError::Fenced`]
    /// once a newer run registered (or a partition forgot the writer).
    pub async fn put_batch_as(
        &self,
        db: &str,
        name: &str,
        writer: Writer,
        rows: Vec<(u64, Vec<Value>)>,
    ) -> Result<Vec<(u64, u64)>, ClientError> {
        writer.check()?;
        if rows.iter().any(|(seq, _)| *seq == 0) {
            return Err(ClientError::InvalidArgument(
                "a writer's sequence numbers start at 1".into(),
            ));
        }
        self.put_rows(db, name, writer, rows).await
    }

    /// Registers a new run of `writer` on every partition of the table (see [`Writer`]),
    /// each registration logged and committed like a write. Returns, by partition, what
    /// the partition knew of the writer. Fails with [`ClientError::Fenced`] if a newer
    /// run registered on a partition.
    pub async fn register_writer(
        &self,
        db: &str,
        name: &str,
        writer: Writer,
    ) -> Result<Vec<WriterRegistration>, ClientError> {
        writer.check()?;
        let partitions = self.partition_count(db, name).await?;
        let registered = futures_util::future::join_all((0..partitions).map(|pid| {
            self.on_leader(
                db,
                name,
                move |_| Ok(pid),
                move |mut client, tid, pid| async move {
                    let request = RegisterWriterRequest {
                        tid,
                        pid,
                        client_id: writer.id,
                        epoch: writer.epoch,
                    };
                    Ok(client.register_writer(request).await?.into_inner())
                },
            )
        }))
        .await;
        registered
            .into_iter()
            .map(|answer| {
                answer.map(|a| WriterRegistration {
                    previous_epoch: a.previous_epoch,
                    highest_seq: a.highest_seq,
                })
            })
            .collect()
    }

    /// Rows (sequence number, row) written as `writer`: one request per partition chunk.
    async fn put_rows(
        &self,
        db: &str,
        name: &str,
        writer: Writer,
        rows: Vec<(u64, Vec<Value>)>,
    ) -> Result<Vec<(u64, u64)>, ClientError> {
        let table = self.table(db, name, false).await?;
        let mut by_partition: HashMap<u32, Vec<BatchItem>> = HashMap::new();
        for (i, (seq, row)) in rows.iter().enumerate() {
            tessera_common::codec::validate(&table.schema, row)
                .map_err(|e| ClientError::InvalidArgument(format!("row {i}: {e}")))?;
            let pid = Self::row_partition(&table, row)?;
            by_partition
                .entry(pid)
                .or_default()
                .push((i, Value::row_to_proto(row), *seq));
        }
        let chunks: Vec<(u32, Vec<BatchItem>)> = by_partition
            .into_iter()
            .flat_map(|(pid, rows)| {
                let mut chunks = Vec::new();
                let mut rows = rows;
                while !rows.is_empty() {
                    let take = batch_len(rows.iter().map(|r| r.1.encoded_len()));
                    let rest = rows.split_off(take);
                    chunks.push((pid, std::mem::replace(&mut rows, rest)));
                }
                chunks
            })
            .collect();
        let sent = futures_util::future::join_all(
            chunks
                .iter()
                .map(|(pid, chunk)| self.put_partition_batch(db, name, writer, *pid, chunk)),
        )
        .await;
        let mut versions = vec![(0, 0); rows.len()];
        for ((_, chunk), answer) in chunks.iter().zip(sent) {
            for ((i, _, _), version) in chunk.iter().zip(answer?) {
                versions[*i] = version;
            }
        }
        Ok(versions)
    }

    /// One partition's rows (index in the caller's list, row, sequence number) in one
    /// request, retried until every row is answered.
    async fn put_partition_batch(
        &self,
        db: &str,
        name: &str,
        writer: Writer,
        pid: u32,
        rows: &[BatchItem],
    ) -> Result<Vec<(u64, u64)>, ClientError> {
        // Rows answered so far; a retry sends only the others.
        let answered: parking_lot::Mutex<Vec<Option<(u64, u64)>>> =
            parking_lot::Mutex::new(vec![None; rows.len()]);
        let answered = &answered;
        self.on_leader(
            db,
            name,
            |_| Ok(pid),
            |mut client, tid, pid| {
                let pending: Vec<usize> = (0..rows.len())
                    .filter(|&r| answered.lock()[r].is_none())
                    .collect();
                let request = PutBatchRequest {
                    tid,
                    pid,
                    client_id: writer.id,
                    epoch: writer.epoch,
                    rows: pending
                        .iter()
                        .map(|&r| BatchRow {
                            row: Some(rows[r].1.clone()),
                            seq: rows[r].2,
                        })
                        .collect(),
                };
                async move {
                    let results = match client.put_batch(request).await {
                        Ok(answer) => answer.into_inner().results,
                        // A tablet that predates PutBatch (a rolling upgrade): row by row.
                        Err(status) if status.code() == tonic::Code::Unimplemented => {
                            let mut results = Vec::with_capacity(pending.len());
                            for &r in &pending {
                                let put = PutRequest {
                                    tid,
                                    pid,
                                    row: Some(rows[r].1.clone()),
                                    client_id: writer.id,
                                    seq: rows[r].2,
                                    epoch: writer.epoch,
                                };
                                // A failure answers this row; the rows before it keep
                                // their answers, and the retry sends the rest.
                                results.push(match client.put(put).await {
                                    Ok(answer) => PutResult {
                                        error: None,
                                        term: answer.get_ref().term,
                                        offset: answer.get_ref().offset,
                                    },
                                    Err(status) => PutResult {
                                        error: Some(detail_or(&status, ErrorCode::Unspecified)),
                                        term: 0,
                                        offset: 0,
                                    },
                                });
                                if results.last().is_some_and(|r| r.error.is_some()) {
                                    break;
                                }
                            }
                            // Unsent rows get the failure too, so every row is answered.
                            while results.len() < pending.len() {
                                let failed = results.last().cloned().expect("a failed row");
                                results.push(failed);
                            }
                            results
                        }
                        Err(status) => return Err(status),
                    };
                    if results.len() != pending.len() {
                        return Err(tonic::Status::internal(format!(
                            "a batch of {} rows got {} answers",
                            pending.len(),
                            results.len()
                        )));
                    }
                    // The first failure is the batch's; the rows it did write stay
                    // answered, so the retry carries only the rest.
                    let mut failure = None;
                    let mut answered = answered.lock();
                    for (r, result) in pending.into_iter().zip(results) {
                        match row_answer(result) {
                            Ok(version) => answered[r] = Some(version),
                            Err(status) => {
                                failure.get_or_insert(status);
                            }
                        }
                    }
                    match failure {
                        Some(status) => Err(status),
                        None => Ok(()),
                    }
                }
            },
        )
        .await?;
        let versions: Vec<(u64, u64)> = answered.lock().iter().flatten().copied().collect();
        if let Some(highest) = versions.iter().map(|v| v.1).max() {
            self.note_seen(db, name, pid, highest);
        }
        Ok(versions)
    }

    /// The sequence number of a new write (kept across its retries).
    fn next_seq(&self) -> u64 {
        self.next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// This client's id, as sent with its writes.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    fn note_seen(&self, db: &str, name: &str, pid: u32, offset: u64) {
        let mut seen = self.seen.lock();
        let entry = seen.entry((format!("{db}.{name}"), pid)).or_insert(0);
        *entry = (*entry).max(offset);
    }

    /// How reads were served so far.
    pub fn read_stats(&self) -> ReadStats {
        *self.stats.lock()
    }

    /// How many requests carried this client's puts so far: fewer than puts when puts
    /// made at the same time travelled together.
    pub fn write_stats(&self) -> WriteStats {
        self.coalescer.stats()
    }

    /// [`Client::on_leader`] for a call whose answer carries the partition's offset: the
    /// offset is noted as seen, so later follower reads never go back behind it.
    async fn on_leader_seen<T, F, Fut>(
        &self,
        db: &str,
        name: &str,
        partition: impl Fn(&Cached) -> Result<u32, ClientError>,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(TabletClient<AuthChannel>, u32, u32) -> Fut,
        Fut: Future<Output = Result<(T, u64), tonic::Status>>,
    {
        let (pid, offset, value) = self
            .on_leader(db, name, partition, |client, tid, pid| {
                let answer = call(client, tid, pid);
                async move { answer.await.map(|(value, offset)| (pid, offset, value)) }
            })
            .await?;
        self.note_seen(db, name, pid, offset);
        Ok(value)
    }

    /// Runs `read` on a follower of the key's partition that holds at least what this
    /// client has seen of it; `None` when no follower could serve it. `read` answers with
    /// its result and the offset the follower had applied.
    async fn on_follower<T, F, Fut>(
        &self,
        db: &str,
        name: &str,
        key_values: &[Value],
        read: F,
    ) -> Option<FollowerRead<T>>
    where
        F: Fn(TabletClient<AuthChannel>, u32, u32, u64) -> Fut,
        Fut: Future<Output = Result<(T, u64), tonic::Status>>,
    {
        let table = self.table(db, name, false).await.ok()?;
        let pid = Self::first_index_partition(&table, key_values).ok()?;
        let partition = table.info.partitions.iter().find(|p| p.pid == pid)?;
        let min_offset = self
            .seen
            .lock()
            .get(&(format!("{db}.{name}"), pid))
            .copied()
            .unwrap_or(0)
            // A read with min_offset 0 is a leader read, which followers refuse.
            .max(1);
        for follower in partition
            .replicas
            .iter()
            .filter(|r| !r.is_leader && r.is_alive)
        {
            let Ok(client) = self.tablet(&follower.endpoint).await else {
                continue;
            };
            // Refused when behind (or gone): try the next one.
            if let Ok((value, offset)) = read(client, table.info.tid, pid, min_offset).await {
                self.note_seen(db, name, pid, offset);
                self.stats.lock().from_followers += 1;
                return Some(FollowerRead {
                    value,
                    min_offset,
                    offset,
                    endpoint: follower.endpoint.clone(),
                });
            }
        }
        None
    }

    /// A follower read: served only if the follower holds at least what this client has
    /// seen of the partition; `None` when no follower could serve it.
    async fn get_from_follower(
        &self,
        db: &str,
        name: &str,
        key_values: &[Value],
    ) -> Option<Option<Vec<Value>>> {
        let key: Vec<_> = key_values.iter().map(Value::to_proto).collect();
        let read = self
            .on_follower(db, name, key_values, |mut client, tid, pid, min_offset| {
                let request = GetRequest {
                    tid,
                    pid,
                    key: key.clone(),
                    min_offset,
                    ..Default::default()
                };
                async move {
                    let response = client.get(request).await?.into_inner();
                    Ok((response.row, response.offset))
                }
            })
            .await?;
        Some(read.value.and_then(|r| Value::row_from_proto(&r).ok()))
    }

    /// Every row of a key of the first index (newest first), from a follower that has
    /// applied at least what this client has seen of the partition: never older than what
    /// this client read or wrote before, possibly without others' newest writes. `None`
    /// when no follower could serve it (behind, down, or none alive).
    pub async fn scan_from_follower(
        &self,
        db: &str,
        name: &str,
        key_values: Vec<Value>,
    ) -> Result<Option<FollowerRead<Vec<Vec<Value>>>>, ClientError> {
        let key: Vec<_> = key_values.iter().map(Value::to_proto).collect();
        let read = self
            .on_follower(db, name, &key_values, |mut client, tid, pid, min_offset| {
                let key = key.clone();
                // Every page from this follower, each at least as new as `min_offset`.
                async move {
                    let (mut rows, mut after, mut offset) = (Vec::new(), Vec::new(), 0);
                    loop {
                        let request = ScanRequest {
                            tid,
                            pid,
                            key: key.clone(),
                            min_offset,
                            after: after.clone(),
                            ..Default::default()
                        };
                        let page = client.scan(request).await?.into_inner();
                        let next = next_cursor(page.paged, page.rows.len(), page.next, &after)
                            .map_err(|e| tonic::Status::unimplemented(e.to_string()))?;
                        rows.extend(page.rows);
                        offset = offset.max(page.offset);
                        match next {
                            Some(next) => after = next,
                            None => return Ok((rows, offset)),
                        }
                    }
                }
            })
            .await;
        let Some(read) = read else {
            return Ok(None);
        };
        let rows = read
            .value
            .iter()
            .map(|r| Value::row_from_proto(r).map_err(ClientError::InvalidArgument))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(FollowerRead {
            value: rows,
            min_offset: read.min_offset,
            offset: read.offset,
            endpoint: read.endpoint,
        }))
    }

    /// The newest row of a key of the first index: from a follower that has caught up
    /// with what this client saw when `read_from_followers` is set, else from the leader.
    pub async fn get(
        &self,
        db: &str,
        name: &str,
        key_values: Vec<Value>,
    ) -> Result<Option<Vec<Value>>, ClientError> {
        if self.options.read_from_followers {
            if let Some(found) = self.get_from_follower(db, name, &key_values).await {
                return Ok(found);
            }
        }
        let proto: Vec<_> = key_values.iter().map(Value::to_proto).collect();
        let row = self
            .on_leader_seen(
                db,
                name,
                |t| Self::first_index_partition(t, &key_values),
                |mut client, tid, pid| {
                    let request = GetRequest {
                        tid,
                        pid,
                        key: proto.clone(),
                        ..Default::default()
                    };
                    async move {
                        let r = client.get(request).await?.into_inner();
                        Ok((r.row, r.offset))
                    }
                },
            )
            .await?;
        self.stats.lock().from_leaders += 1;
        row.map(|r| Value::row_from_proto(&r).map_err(ClientError::InvalidArgument))
            .transpose()
    }

    /// The table's schema, as the cluster knows it now.
    pub async fn schema(&self, db: &str, name: &str) -> Result<Schema, ClientError> {
        Ok(self.table(db, name, false).await?.schema.clone())
    }

    fn first_index_partition(table: &Cached, key_values: &[Value]) -> Result<u32, ClientError> {
        let first = table
            .schema
            .indexes
            .first()
            .ok_or_else(|| ClientError::InvalidArgument("no index".into()))?;
        let key = key::key_from_values(&table.schema, first, key_values)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        Ok(key::partition_of(&key, table.info.partition_num))
    }

    /// Rows of a key of the first index with `min_ts <= ts <= max_ts`, newest first: at
    /// most `limit`, or all of them when `limit` is 0, read page by page (see
    /// [`Client::scan_page`]).
    pub async fn scan(
        &self,
        db: &str,
        name: &str,
        key_values: Vec<Value>,
        max_ts: Option<i64>,
        min_ts: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Vec<Value>>, ClientError> {
        self.as_one_call(async {
            let mut rows = Vec::new();
            let mut after = Vec::new();
            loop {
                let wanted = if limit == 0 {
                    0
                } else {
                    limit.saturating_sub(rows.len() as u32)
                };
                let page = self
                    .scan_page(db, name, &key_values, (max_ts, min_ts), &after, wanted)
                    .await?;
                rows.extend(page.rows);
                match page.next {
                    Some(next) if limit == 0 || (rows.len() as u32) < limit => after = next,
                    _ => return Ok(rows),
                }
            }
        })
        .await
    }

    /// One page of a scan from the partition's leader: up to `limit` rows (0: as many as
    /// the tablet sends in one page) of a key of the first index with `min_ts <= ts <=
    /// max_ts` (`ts_range`), newest first, after the cursor `after` (empty for the first
    /// page). Pages are separate reads, as in [`Client::partition_page`].
    pub async fn scan_page(
        &self,
        db: &str,
        name: &str,
        key_values: &[Value],
        ts_range: (Option<i64>, Option<i64>),
        after: &[u8],
        limit: u32,
    ) -> Result<RowPage, ClientError> {
        let key: Vec<_> = key_values.iter().map(Value::to_proto).collect();
        let pid_of = |t: &Cached| Self::first_index_partition(t, key_values);
        let (rows, next) = self
            .index_page(db, name, pid_of, "", &key, ts_range, after, limit)
            .await?;
        let rows: Vec<Row> = rows.into_iter().map(|(_, row)| row).collect();
        row_page(&rows, next)
    }

    /// A page of a scan of index `index` on the partition `pid_of` picks: its rows with
    /// their ts, and the cursor when more may follow.
    #[allow(clippy::too_many_arguments)]
    async fn index_page(
        &self,
        db: &str,
        name: &str,
        pid_of: impl Fn(&Cached) -> Result<u32, ClientError>,
        index: &str,
        key: &[tessera_proto::common::Value],
        ts_range: (Option<i64>, Option<i64>),
        after: &[u8],
        limit: u32,
    ) -> Result<(Vec<(i64, Row)>, Option<Vec<u8>>), ClientError> {
        let (rows, ts, next, paged) = self
            .on_leader_seen(db, name, pid_of, |mut client, tid, pid| {
                let request = ScanRequest {
                    tid,
                    pid,
                    index: index.to_string(),
                    key: key.to_vec(),
                    max_ts: ts_range.0,
                    min_ts: ts_range.1,
                    limit,
                    after: after.to_vec(),
                    ..Default::default()
                };
                async move {
                    let r = client.scan(request).await?.into_inner();
                    Ok(((r.rows, r.ts, r.next, r.paged), r.offset))
                }
            })
            .await?;
        let next = next_cursor(paged, rows.len(), next, after)?;
        let rows = ts.into_iter().zip(rows).collect();
        Ok((rows, next))
    }

    /// Rows of a key of any index (`index` by name; empty for the first) with `min_ts <=
    /// ts <= max_ts`, newest first, at most `limit` (0: all). A key of the first index
    /// lives in one partition; a key of another index may be in any, so every partition
    /// is read (page by page) and the answers merged by ts.
    ///
    /// ```no_run
    /// # async fn example(client: &tessera_ns_client::Client) -> Result<(), tessera_ns_client::ClientError> {
    /// use tessera_common::Value;
    ///
    /// // The ten newest orders from Paris since a moment, by the `city` index.
    /// let rows = client
    ///     .scan_index("shop", "orders", "city", vec![Value::String("paris".into())],
    ///                 None, Some(1_700_000_000_000), 10)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub async fn scan_index(
        &self,
        db: &str,
        name: &str,
        index: &str,
        key_values: Vec<Value>,
        max_ts: Option<i64>,
        min_ts: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Vec<Value>>, ClientError> {
        self.as_one_call(async {
            let table = self.table(db, name, false).await?;
            let position = Self::index_position(&table, index)?;
            if position == 0 {
                return self.scan(db, name, key_values, max_ts, min_ts, limit).await;
            }
            let key: Vec<_> = key_values.iter().map(Value::to_proto).collect();
            let mut found: Vec<(i64, Row)> = Vec::new();
            for pid in 0..table.info.partition_num {
                let mut after = Vec::new();
                let mut taken = 0u32;
                loop {
                    let wanted = if limit == 0 { 0 } else { limit - taken };
                    let (rows, next) = self
                        .index_page(
                            db,
                            name,
                            |_| Ok(pid),
                            index,
                            &key,
                            (max_ts, min_ts),
                            &after,
                            wanted,
                        )
                        .await?;
                    taken = taken.saturating_add(rows.len() as u32);
                    found.extend(rows);
                    match next {
                        // Each partition's newest `limit` are all the merge can need.
                        Some(next) if limit == 0 || taken < limit => after = next,
                        _ => break,
                    }
                }
            }
            // Newest first; a stable sort keeps each partition's order among equal ts.
            found.sort_by_key(|(ts, _)| std::cmp::Reverse(*ts));
            if limit > 0 {
                found.truncate(limit as usize);
            }
            found
                .iter()
                .map(|(_, r)| Value::row_from_proto(r).map_err(ClientError::InvalidArgument))
                .collect()
        })
        .await
    }

    /// The newest row of a key of any index (see [`Client::scan_index`]).
    pub async fn get_index(
        &self,
        db: &str,
        name: &str,
        index: &str,
        key_values: Vec<Value>,
    ) -> Result<Option<Vec<Value>>, ClientError> {
        let mut rows = self
            .scan_index(db, name, index, key_values, None, None, 1)
            .await?;
        Ok(rows.pop())
    }

    /// Live entries of a key of any index (see [`Client::scan_index`]), or of the whole
    /// index when `key_values` is empty.
    pub async fn count_index(
        &self,
        db: &str,
        name: &str,
        index: &str,
        key_values: Vec<Value>,
    ) -> Result<u64, ClientError> {
        self.as_one_call(self.count_each_partition(db, name, index, key_values))
            .await
    }

    async fn count_each_partition(
        &self,
        db: &str,
        name: &str,
        index: &str,
        key_values: Vec<Value>,
    ) -> Result<u64, ClientError> {
        let table = self.table(db, name, false).await?;
        let position = Self::index_position(&table, index)?;
        let key: Vec<_> = key_values.iter().map(Value::to_proto).collect();
        let call = |mut client: TabletClient<AuthChannel>, tid, pid| {
            let request = CountRequest {
                tid,
                pid,
                index: index.to_string(),
                key: key.clone(),
                ..Default::default()
            };
            async move {
                let r = client.count(request).await?.into_inner();
                Ok((r.count, r.offset))
            }
        };
        // A key of the first index lives in one partition; a key of another index, or a
        // whole index, in any.
        let key = (position == 0 && !key_values.is_empty()).then_some(key_values.as_slice());
        self.sum_on_leaders(db, name, table.info.partition_num, key, call)
            .await
    }

    /// Runs `call` on the leader of the partition holding `key` of the first index, or
    /// without a key on every partition's leader, one after another; the sum of the
    /// answers.
    async fn sum_on_leaders<F, Fut>(
        &self,
        db: &str,
        name: &str,
        partitions: u32,
        key: Option<&[Value]>,
        call: F,
    ) -> Result<u64, ClientError>
    where
        F: Fn(TabletClient<AuthChannel>, u32, u32) -> Fut + Copy,
        Fut: Future<Output = Result<(u64, u64), tonic::Status>>,
    {
        if let Some(key) = key {
            return self
                .on_leader_seen(db, name, |t| Self::first_index_partition(t, key), call)
                .await;
        }
        let mut total = 0;
        for pid in 0..partitions {
            total += self.on_leader_seen(db, name, |_| Ok(pid), call).await?;
        }
        Ok(total)
    }

    /// The position of index `index` (empty: the first) in the table's schema.
    fn index_position(table: &Cached, index: &str) -> Result<usize, ClientError> {
        table
            .schema
            .index(index)
            .map(|(position, _)| position)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!("the table has no index `{index}`"))
            })
    }

    /// Live entries of a key of the first index, or of the whole table when `key_values`
    /// is empty (summed over every partition's leader).
    pub async fn count(
        &self,
        db: &str,
        name: &str,
        key_values: Vec<Value>,
    ) -> Result<u64, ClientError> {
        self.count_index(db, name, "", key_values).await
    }

    /// Up to `limit` rows of the table, partition after partition, page by page.
    pub async fn preview(
        &self,
        db: &str,
        name: &str,
        limit: u32,
    ) -> Result<Vec<Vec<Value>>, ClientError> {
        self.as_one_call(async {
            let partitions = self.table(db, name, false).await?.info.partition_num;
            let mut out = Vec::new();
            for pid in 0..partitions {
                let mut after = Vec::new();
                loop {
                    let wanted = limit.saturating_sub(out.len() as u32);
                    if wanted == 0 {
                        return Ok(out);
                    }
                    let page = self.partition_page(db, name, pid, &after, wanted).await?;
                    out.extend(page.rows);
                    match page.next {
                        Some(next) => after = next,
                        None => break,
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes every row of a key of the first index; returns how many.
    pub async fn delete(
        &self,
        db: &str,
        name: &str,
        key_values: Vec<Value>,
    ) -> Result<u64, ClientError> {
        self.delete_index(db, name, "", key_values).await
    }

    /// Deletes every row of a key of any index (empty: the first), from all of the table's
    /// indexes; returns how many. A key of the first index lives in one partition; a key
    /// of another index is deleted in each, one after another: on an error the partitions
    /// before it have been deleted (a delete may be run again).
    pub async fn delete_index(
        &self,
        db: &str,
        name: &str,
        index: &str,
        key_values: Vec<Value>,
    ) -> Result<u64, ClientError> {
        self.delete_index_range(db, name, index, key_values, None, None)
            .await
    }

    /// As [`Client::delete_index`], for the rows of the key with `min_ts <= ts <= max_ts`
    /// in that index (unset: no bound). A ranged delete needs tablets that know ranges;
    /// an older one refuses it rather than deleting the whole key.
    pub async fn delete_index_range(
        &self,
        db: &str,
        name: &str,
        index: &str,
        key_values: Vec<Value>,
        max_ts: Option<i64>,
        min_ts: Option<i64>,
    ) -> Result<u64, ClientError> {
        if let (Some(max), Some(min)) = (max_ts, min_ts) {
            if min > max {
                return Err(ClientError::InvalidArgument(format!(
                    "min_ts {min} is above max_ts {max}"
                )));
            }
        }
        let ranged = max_ts.is_some() || min_ts.is_some();
        self.as_one_call(async {
            let table = self.table(db, name, false).await?;
            let position = Self::index_position(&table, index)?;
            let key: Vec<_> = key_values.iter().map(Value::to_proto).collect();
            // A sequence number per partition, taken when its call is made: a retry to
            // the same partition reuses it (the closure is called again with that pid),
            // and a later partition's number is never old in its window.
            let seqs = parking_lot::Mutex::new(HashMap::<u32, u64>::new());
            let seqs = &seqs;
            let call = |mut client: TabletClient<AuthChannel>, tid, pid| {
                let seq = *seqs.lock().entry(pid).or_insert_with(|| self.next_seq());
                let request = DeleteRequest {
                    tid,
                    pid,
                    index: index.to_string(),
                    key: key.clone(),
                    client_id: self.client_id,
                    seq,
                    min_ts,
                    max_ts,
                };
                async move {
                    let r = if ranged {
                        client.delete_range(request).await.map_err(|status| {
                            if status.code() == tonic::Code::Unimplemented {
                                // An older tablet: refused, not retried, and said plainly.
                                tonic::Status::failed_precondition(format!(
                                    "the tablet leading partition {pid} does not know ranged \
                                     deletes (upgrade every tablet); partitions before it \
                                     were deleted"
                                ))
                            } else {
                                status
                            }
                        })?
                    } else {
                        client.delete(request).await?
                    };
                    let r = r.into_inner();
                    Ok((r.deleted, r.offset))
                }
            };
            // A later follower read must see this delete, as it must see this client's puts
            // (on_leader_seen notes the offset).
            let key = (position == 0).then_some(key_values.as_slice());
            self.sum_on_leaders(db, name, table.info.partition_num, key, call)
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_must_come_from_a_paging_tablet_and_make_progress() {
        assert_eq!(next_cursor(true, 3, vec![], b"c").unwrap(), None);
        assert_eq!(
            next_cursor(true, 3, b"d".to_vec(), b"c").unwrap(),
            Some(b"d".to_vec())
        );
        for (paged, rows, next, after) in [
            (false, 3, vec![], &b""[..]),
            (true, 0, b"d".to_vec(), &b"c"[..]),
            (true, 3, b"c".to_vec(), &b"c"[..]),
        ] {
            assert!(
                matches!(
                    next_cursor(paged, rows, next, after),
                    Err(ClientError::Refused(_))
                ),
                "paged {paged}, {rows} rows"
            );
        }
    }

    #[test]
    fn only_failures_that_can_pass_are_retried() {
        let status = |code, message: &str| tessera_common::wire_error::status(code, message);
        for code in [
            ErrorCode::NotLeader,
            ErrorCode::PartitionUnavailable,
            ErrorCode::OutcomeUnknown,
            ErrorCode::NotEnoughReplicas,
        ] {
            assert!(
                matches!(classify(&status(code, "x")), Failure::Retry(_)),
                "{code:?}"
            );
        }
        assert!(matches!(
            classify(&status(ErrorCode::Io, "No space left on device")),
            Failure::Fatal(ClientError::Storage(_))
        ));
        assert!(matches!(
            classify(&status(ErrorCode::InvalidArgument, "bad row")),
            Failure::Fatal(ClientError::InvalidArgument(_))
        ));
        assert!(matches!(
            classify(&tonic::Status::out_of_range(
                "decoded message length too large"
            )),
            Failure::Fatal(ClientError::Refused(_))
        ));
        assert!(matches!(
            classify(&tonic::Status::unavailable("connection refused")),
            Failure::Retry(_)
        ));
    }
}
