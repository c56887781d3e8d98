//! The gRPC face of a tablet. Handlers validate the request, then run short storage work
//! (logging a write, reading a key) on the async worker and longer work (scans,
//! snapshots, role changes) on the blocking pool. Waits for an fsync or a quorum are
//! futures, never a blocked thread.

use std::sync::Arc;

use tessera_common::auth::Need;
use tessera_common::cluster_secret;
use tessera_common::coordination::Lease;
use tessera_common::user_directory::UserDirectory;
use tessera_common::wire_error::{self, ErrorCode};
use tessera_common::Value;
use tessera_proto::common::Row;
use tessera_proto::tablet::tablet_server::Tablet;
use tessera_proto::tablet::*;
use tonic::{Request, Response, Status};

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use crate::catalog::Catalog;
use crate::error::{Result as TabletResult, TabletError};
use crate::replication::leader::Replicators;
use crate::replication::pair_lease;
use crate::replication::transfer;
use crate::storage::entry::{RequestId, TsRange};
use crate::storage::replica::{AppendOutcome, FollowerChange, RoleChange};
use crate::storage::table::{RowAt, Version};
use crate::storage::{Logged, PageLimit, StorageError, Table};
use crate::watchdog::Reporter;

pub struct TabletService {
    catalog: Arc<Catalog>,
    replicators: Arc<Replicators>,
    /// The most a scan or preview answers in one page.
    page_limit: PageLimit,
    /// Tells the nameserver when a leader's replication stream breaks.
    reporter: Reporter,
    /// The cluster's users, for checking data calls (`None` outside a cluster).
    users: Option<Arc<UserDirectory>>,
    /// The ZooKeeper lease, whose registration a ping names (`None` outside a cluster).
    lease: Option<Arc<Lease>>,
}

impl TabletService {
    /// Delete and DeleteRange: the rows of a key, or (`ranged`) of its ts range.
    async fn delete_rows(
        &self,
        request: Request<DeleteRequest>,
        ranged: bool,
    ) -> Result<Response<DeleteResponse>, Status> {
        let (tid, pid) = (request.get_ref().tid, request.get_ref().pid);
        self.authorize(&request, Need::Write, tid, pid).await?;
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let key = key_values(&request.key)?;
        let id = RequestId::from_wire(request.client_id, request.seq);
        let bounded = request.min_ts.is_some() || request.max_ts.is_some();
        if bounded && !ranged {
            // A tablet older than ranges would delete the whole key for the same request:
            // a range goes through DeleteRange, which such a tablet refuses.
            return Err(TabletError::InvalidArgument(
                "Delete takes no ts range (min_ts/max_ts); send it as DeleteRange".into(),
            )
            .into());
        }
        let range = ranged.then(|| TsRange {
            min: request.min_ts.unwrap_or(i64::MIN),
            max: request.max_ts.unwrap_or(i64::MAX),
        });
        let slot = table.write_slots(1).map_err(TabletError::from)?;
        let (version, deleted) = log_and_commit(table, slot, move |t| {
            vec![t
                .log_delete(&request.index, &key, id, range)
                .map_err(storage_status)]
        })
        .await?
        .pop()
        .expect("one outcome per write");
        let deleted = deleted?;
        let version = version.expect("a committed write was logged");
        Ok(Response::new(DeleteResponse {
            deleted,
            term: version.term,
            offset: version.offset,
        }))
    }

    pub fn new(
        replicators: Arc<Replicators>,
        page_limit: PageLimit,
        reporter: Reporter,
    ) -> TabletService {
        TabletService {
            catalog: replicators.catalog().clone(),
            replicators,
            page_limit,
            reporter,
            users: None,
            lease: None,
        }
    }

    /// Names the tablet's ZooKeeper registration (held through `lease`) in pings.
    pub fn with_lease(mut self, lease: Arc<Lease>) -> TabletService {
        self.lease = Some(lease);
        self
    }

    /// Checks data calls against the cluster's users (when authentication is on).
    pub fn with_users(mut self, users: Arc<UserDirectory>) -> TabletService {
        self.users = Some(users);
        self
    }

    /// Refuses a data call on `tid`/`pid` its caller may not make.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        need: Need,
        tid: u32,
        pid: u32,
    ) -> Result<(), Status> {
        if !tessera_common::auth::enabled() {
            return Ok(());
        }
        // Who calls is settled first: a stranger learns nothing, not even which
        // partitions exist.
        let caller = tessera_common::auth::caller(request)?;
        let table = self.table(tid, pid)?;
        let meta = table.meta();
        UserDirectory::authorize_caller(
            self.users.as_deref(),
            caller,
            need,
            Some(tessera_common::auth::db_or_default(&meta.db)),
            Some(&meta.name),
        )
        .await
    }

    /// Runs a role-changing call on a table, then brings its replicators in line (see
    /// `blocking_then`).
    async fn with_table<T: Send + 'static>(
        &self,
        tid: u32,
        pid: u32,
        work: impl FnOnce(&Table) -> TabletResult<T> + Send + 'static,
    ) -> Result<(Arc<Table>, T), Status> {
        let table = self.table(tid, pid)?;
        let (synced, replicators) = (table.clone(), self.replicators.clone());
        let worker = table.clone();
        let result = blocking_then(
            move || work(&worker),
            move |_| replicators.sync_table(&synced),
        )
        .await?;
        Ok((table, result))
    }

    fn table(&self, tid: u32, pid: u32) -> Result<Arc<Table>, Status> {
        Ok(self.catalog.get(tid, pid)?)
    }

    /// The bounds of one page: the caller's row limit within the tablet's.
    fn page_limit(&self, requested: u32) -> PageLimit {
        let rows = match requested as usize {
            0 => self.page_limit.rows,
            n => n.min(self.page_limit.rows),
        };
        PageLimit {
            rows,
            ..self.page_limit
        }
    }
}

/// A write's version once logged (`None` if it was refused before), and its outcome:
/// the rows it removed, or why it failed.
type Settled = Vec<(Option<Version>, Result<u64, Status>)>;

fn storage_status(e: StorageError) -> Status {
    TabletError::from(e).into()
}

/// Logs writes, waits until they are durable and committed, and applies them, all in a
/// task of its own: a caller that goes away (a client hanging up) must not leave a
/// logged write half done, since applying it and this replica's vote in the quorum wait
/// on the rest. The slots are released once every write is settled.
///
/// Logging is short (an encode and a write to the page cache), so it runs on the async
/// worker, where a thread hand-off would cost more than the work; under the
/// `every_write` policy each append waits for a disk flush, so it goes to the blocking
/// pool. The quorum waits share one deadline, so a stalled quorum costs a batch one
/// timeout, not one per row.
async fn log_and_commit(
    table: Arc<Table>,
    slots: tokio::sync::OwnedSemaphorePermit,
    log: impl FnOnce(&Table) -> Vec<Result<Logged, Status>> + Send + 'static,
) -> Result<Settled, Status> {
    let settle = tokio::spawn(async move {
        let logged = if table.fsyncs_each_write() {
            let worker = table.clone();
            tokio::task::spawn_blocking(move || log(&worker))
                .await
                .map_err(|e| Status::internal(format!("storage task failed: {e}")))?
        } else {
            log(&table)
        };
        let deadline = tokio::time::Instant::now() + table.quorum_timeout();
        let mut settled = Vec::with_capacity(logged.len());
        // In offset order, so the first wait covers most of the rest.
        for write in logged {
            settled.push(match write {
                Ok(logged) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let outcome = table.commit_within(&logged, left).await;
                    (Some(logged.version), outcome.map_err(storage_status))
                }
                Err(status) => (None, Err(status)),
            });
        }
        drop(slots);
        Ok(settled)
    });
    settle
        .await
        .map_err(|e| Status::internal(format!("commit task failed: {e}")))?
}

/// Runs `work` off the async workers, then `then` with what it returned (`None` if it
/// failed), to bring the replication links in line with what the work changed; both in
/// a task of their own: a caller that goes away once the work has run (a nameserver's
/// call timing out, its connection closed) must not leave the links out of step with
/// the replica's role and followers until some later call syncs them.
async fn blocking_then<T: Send + 'static>(
    work: impl FnOnce() -> TabletResult<T> + Send + 'static,
    then: impl FnOnce(Option<&T>) + Send + 'static,
) -> Result<T, Status> {
    let task = tokio::spawn(async move {
        let result = blocking(work).await;
        then(result.as_ref().ok());
        result
    });
    match task.await {
        Ok(result) => result,
        Err(e) => Err(Status::internal(format!("storage task failed: {e}"))),
    }
}

/// Runs storage work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> TabletResult<T> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Status::from),
        Err(e) => Err(Status::internal(format!("storage task failed: {e}"))),
    }
}

fn values(row: Option<&Row>, what: &str) -> Result<Vec<Value>, Status> {
    let row = row
        .ok_or_else(|| Status::from(TabletError::InvalidArgument(format!("{what} needs a row"))))?;
    Value::row_from_proto(row).map_err(|e| TabletError::InvalidArgument(e).into())
}

fn key_values(key: &[tessera_proto::common::Value]) -> Result<Vec<Value>, Status> {
    key.iter()
        .map(Value::from_proto)
        .collect::<Result<_, _>>()
        .map_err(|e| TabletError::InvalidArgument(e).into())
}

/// A row as a page carries it, weighed as it will be encoded (the ts and field tags
/// included), so a page's bytes bound holds on the wire.
fn row_out(row: RowAt) -> ((Row, i64), usize) {
    let proto = Value::row_to_proto(&row.values);
    let size = prost::Message::encoded_len(&proto) + 16;
    ((proto, row.ts), size)
}

#[tonic::async_trait]
impl Tablet for TabletService {
    async fn create_table(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Result<Response<CreateTableResponse>, Status> {
        cluster_secret::check(&request, "CreateTable")?;
        let meta = request.into_inner().meta.ok_or_else(|| {
            Status::from(TabletError::InvalidArgument(
                "create table needs its meta".into(),
            ))
        })?;
        let catalog = self.catalog.clone();
        let table = blocking(move || catalog.create(meta)).await?;
        Ok(Response::new(CreateTableResponse {
            status: Some(table.status()),
        }))
    }

    async fn drop_table(
        &self,
        request: Request<DropTableRequest>,
    ) -> Result<Response<DropTableResponse>, Status> {
        cluster_secret::check(&request, "DropTable")?;
        let DropTableRequest { tid, pid } = request.into_inner();
        let (catalog, replicators) = (self.catalog.clone(), self.replicators.clone());
        blocking_then(
            move || catalog.drop_table(tid, pid),
            // A dropped leader's links would otherwise retry against its followers for
            // ever (also after a drop that failed once the replica was out of the
            // catalog).
            move |_| replicators.stop_table_unless_loaded(tid, pid),
        )
        .await?;
        Ok(Response::new(DropTableResponse {}))
    }

    async fn load_table(
        &self,
        request: Request<LoadTableRequest>,
    ) -> Result<Response<LoadTableResponse>, Status> {
        cluster_secret::check(&request, "LoadTable")?;
        let request = request.into_inner();
        let (tid, pid) = (request.tid, request.pid);
        let change = match request.role {
            Some(_) if request.term == 0 => {
                return Err(
                    TabletError::InvalidArgument("loading with a role needs a term".into()).into(),
                )
            }
            Some(_) => Some(RoleChange {
                role: request.role(),
                term: request.term,
                followers: request.followers,
                leader: request.leader,
                offline: request.offline,
            }),
            None => None,
        };
        let (catalog, replicators) = (self.catalog.clone(), self.replicators.clone());
        let table = blocking_then(
            move || {
                let table = catalog.load(tid, pid)?;
                if let Some(change) = change {
                    table.change_role(&change)?;
                }
                Ok(table)
            },
            move |loaded| {
                if let Some(table) = loaded {
                    replicators.sync_table(table);
                }
            },
        )
        .await?;
        Ok(Response::new(LoadTableResponse {
            status: Some(table.status()),
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (tid, pid) = (request.get_ref().tid, request.get_ref().pid);
        self.authorize(&request, Need::Write, tid, pid).await?;
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let row = values(request.row.as_ref(), "put")?;
        let id = RequestId::from_wire_as(request.client_id, request.seq, request.epoch);
        let slot = table.write_slots(1).map_err(TabletError::from)?;
        let (version, committed) = log_and_commit(table, slot, move |t| {
            vec![t.log_put(&row, id).map_err(storage_status)]
        })
        .await?
        .pop()
        .expect("one outcome per write");
        committed?;
        let version = version.expect("a committed write was logged");
        Ok(Response::new(PutResponse {
            term: version.term,
            offset: version.offset,
        }))
    }

    async fn put_batch(
        &self,
        request: Request<PutBatchRequest>,
    ) -> Result<Response<PutBatchResponse>, Status> {
        let (tid, pid) = (request.get_ref().tid, request.get_ref().pid);
        self.authorize(&request, Need::Write, tid, pid).await?;
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let slots = table
            .write_slots(request.rows.len())
            .map_err(TabletError::from)?;
        // Rows that do not parse keep their error; the others are logged together.
        let (client_id, epoch) = (request.client_id, request.epoch);
        let parsed: Vec<_> = request
            .rows
            .into_iter()
            .map(|row| {
                let id = RequestId::from_wire_as(client_id, row.seq, epoch);
                (values(row.row.as_ref(), "put"), id)
            })
            .collect();
        let settled = log_and_commit(table, slots, move |t| {
            let good: Vec<_> = parsed
                .iter()
                .filter_map(|(values, id)| values.as_ref().ok().map(|v| (v.as_slice(), *id)))
                .collect();
            let mut logged_good = t.log_puts(&good).into_iter();
            parsed
                .iter()
                .map(|(values, _)| match values {
                    Ok(_) => logged_good
                        .next()
                        .expect("one outcome per parsed row")
                        .map_err(storage_status),
                    Err(status) => Err(status.clone()),
                })
                .collect()
        })
        .await?;
        let results = settled
            .into_iter()
            .map(|(version, outcome)| match (outcome, version) {
                (Ok(_), Some(version)) => PutResult {
                    error: None,
                    term: version.term,
                    offset: version.offset,
                },
                (Err(status), _) => PutResult {
                    error: Some(wire_error::detail_or(&status, ErrorCode::Internal)),
                    term: 0,
                    offset: 0,
                },
                (Ok(_), None) => unreachable!("a row that was not logged cannot commit"),
            })
            .collect();
        Ok(Response::new(PutBatchResponse { results }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (tid, pid) = (request.get_ref().tid, request.get_ref().pid);
        self.authorize(&request, Need::Read, tid, pid).await?;
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let key = key_values(&request.key)?;
        // One key's lookup is a few microseconds: cheaper here than a thread hand-off.
        let found = table
            .check_readable(request.min_offset)
            .and_then(|()| table.get(&request.index, &key, request.ts));
        let (version, found) = found.map_err(TabletError::from)?;
        Ok(Response::new(GetResponse {
            ts: found.as_ref().map_or(0, |r| r.ts),
            row: found.map(|r| Value::row_to_proto(&r.values)),
            term: version.term,
            offset: version.offset,
        }))
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let (tid, pid) = (request.get_ref().tid, request.get_ref().pid);
        self.authorize(&request, Need::Read, tid, pid).await?;
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let key = key_values(&request.key)?;
        let limit = self.page_limit(request.limit);
        let (version, page) = blocking(move || {
            table.check_readable(request.min_offset)?;
            Ok(table.scan_page(
                &request.index,
                &key,
                request.max_ts,
                request.min_ts,
                &request.after,
                limit,
                row_out,
            )?)
        })
        .await?;
        let (rows, ts) = page.rows.into_iter().unzip();
        Ok(Response::new(ScanResponse {
            rows,
            ts,
            term: version.term,
            offset: version.offset,
            next: page.next.unwrap_or_default(),
            paged: true,
        }))
    }

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        let (tid, pid) = (request.get_ref().tid, request.get_ref().pid);
        self.authorize(&request, Need::Read, tid, pid).await?;
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let key = key_values(&request.key)?;
        let (version, count) = blocking(move || {
            table.check_readable(request.min_offset)?;
            Ok(table.count(&request.index, &key)?)
        })
        .await?;
        Ok(Response::new(CountResponse {
            count,
            term: version.term,
            offset: version.offset,
        }))
    }

    async fn preview(
        &self,
        request: Request<PreviewRequest>,
    ) -> Result<Response<PreviewResponse>, Status> {
        let (tid, pid) = (request.get_ref().tid, request.get_ref().pid);
        self.authorize(&request, Need::Read, tid, pid).await?;
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        if request.skip != 0 {
            return Err(TabletError::InvalidArgument(
                "preview no longer pages by a count of rows to skip: send the `next` cursor \
                 of the previous page as `after`"
                    .into(),
            )
            .into());
        }
        let limit = self.page_limit(request.limit);
        let (version, page, as_of) = blocking(move || {
            table.check_readable(request.min_offset)?;
            Ok(table.preview_page(&request.after, request.consistent, limit, row_out)?)
        })
        .await?;
        let rows = page.rows.into_iter().map(|(row, _)| row).collect();
        Ok(Response::new(PreviewResponse {
            rows,
            term: version.term,
            offset: version.offset,
            next: page.next.unwrap_or_default(),
            paged: true,
            read_offset: as_of.map_or(0, |a| a.offset),
            read_time_ms: as_of.map_or(0, |a| a.time_ms),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.delete_rows(request, false).await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.delete_rows(request, true).await
    }

    async fn register_writer(
        &self,
        request: Request<RegisterWriterRequest>,
    ) -> Result<Response<RegisterWriterResponse>, Status> {
        let (tid, pid) = (request.get_ref().tid, request.get_ref().pid);
        self.authorize(&request, Need::Write, tid, pid).await?;
        let request = request.into_inner();
        if request.client_id == 0 || request.epoch == 0 {
            return Err(TabletError::InvalidArgument(
                "a writer registers a client id and an epoch other than 0".into(),
            )
            .into());
        }
        let table = self.table(request.tid, request.pid)?;
        let slot = table.write_slots(1).map_err(TabletError::from)?;
        let (client_id, epoch) = (request.client_id, request.epoch);
        let previous_epoch = table.writer_epoch(client_id);
        let (version, committed) = log_and_commit(table.clone(), slot, move |t| {
            vec![t.log_register(client_id, epoch).map_err(storage_status)]
        })
        .await?
        .pop()
        .expect("one outcome per write");
        committed?;
        let version = version.expect("a committed write was logged");
        Ok(Response::new(RegisterWriterResponse {
            term: version.term,
            offset: version.offset,
            // Older epochs can add nothing more once the registration is logged.
            highest_seq: table.writer_highest(client_id),
            previous_epoch,
        }))
    }

    async fn make_snapshot(
        &self,
        request: Request<MakeSnapshotRequest>,
    ) -> Result<Response<MakeSnapshotResponse>, Status> {
        cluster_secret::check(&request, "MakeSnapshot")?;
        let MakeSnapshotRequest { tid, pid } = request.into_inner();
        let table = self.table(tid, pid)?;
        let (offset, record_count) = blocking(move || Ok(table.make_snapshot()?)).await?;
        Ok(Response::new(MakeSnapshotResponse {
            offset,
            record_count,
        }))
    }

    async fn set_ttl(
        &self,
        request: Request<SetTtlRequest>,
    ) -> Result<Response<SetTtlResponse>, Status> {
        cluster_secret::check(&request, "SetTtl")?;
        let SetTtlRequest {
            tid,
            pid,
            ttls,
            version,
        } = request.into_inner();
        let ttls = ttls
            .iter()
            .map(|ttl| tessera_common::Ttl::from_proto(Some(ttl)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| TabletError::InvalidArgument(e.to_string()))?;
        let catalog = self.catalog.clone();
        blocking(move || catalog.set_ttls(tid, pid, ttls, version)).await?;
        Ok(Response::new(SetTtlResponse {}))
    }

    async fn change_schema(
        &self,
        request: Request<ChangeSchemaRequest>,
    ) -> Result<Response<ChangeSchemaResponse>, Status> {
        cluster_secret::check(&request, "ChangeSchema")?;
        let ChangeSchemaRequest { tid, pid, schema } = request.into_inner();
        let next = tessera_common::Schema::from_proto(&schema.unwrap_or_default())
            .map_err(|e| TabletError::InvalidArgument(e.to_string()))?;
        let table = self.table(tid, pid)?;
        let current = table.schema();
        if current.version >= next.version {
            // Asked again (the nameserver retrying, or aligning a replica that had it).
            if current.version == next.version && current.same_shape(&next) {
                return Ok(Response::new(ChangeSchemaResponse {
                    version: current.version,
                    offset: 0,
                }));
            }
            return Err(TabletError::InvalidArgument(format!(
                "partition {tid}.{pid} has schema version {} already, and version {} is not it",
                current.version, next.version
            ))
            .into());
        }
        let wanted = next.version;
        let slot = table.write_slots(1).map_err(TabletError::from)?;
        let (version, committed) = log_and_commit(table.clone(), slot, move |t| {
            vec![t.log_schema_change(&next).map_err(storage_status)]
        })
        .await?
        .pop()
        .expect("one outcome per write");
        committed?;
        let now = table.schema().version;
        if now < wanted {
            return Err(Status::internal(
                "the schema change was logged but not applied (another change came first); \
                 the tablet's log says why",
            ));
        }
        Ok(Response::new(ChangeSchemaResponse {
            version: now,
            offset: version.map_or(0, |v| v.offset),
        }))
    }

    async fn get_table_status(
        &self,
        request: Request<GetTableStatusRequest>,
    ) -> Result<Response<GetTableStatusResponse>, Status> {
        let GetTableStatusRequest { tid, pid } = request.into_inner();
        let tables = if tid.is_some() && pid.is_some() {
            self.catalog.statuses(tid, pid)
        } else {
            // Thousands of replicas take milliseconds to describe: off the async workers,
            // which carry the heartbeats and pings that tell this tablet alive.
            let catalog = self.catalog.clone();
            blocking(move || Ok(catalog.statuses(tid, pid))).await?
        };
        if tables.is_empty() {
            if let (Some(tid), Some(pid)) = (tid, pid) {
                return Err(TabletError::TableNotFound { tid, pid }.into());
            }
        }
        Ok(Response::new(GetTableStatusResponse { tables }))
    }

    type AppendEntriesStream =
        Pin<Box<dyn Stream<Item = Result<AppendEntriesResponse, Status>> + Send>>;

    async fn append_entries(
        &self,
        request: Request<tonic::Streaming<AppendEntriesRequest>>,
    ) -> Result<Response<Self::AppendEntriesStream>, Status> {
        cluster_secret::check(&request, "AppendEntries")?;
        let mut incoming = request.into_inner();
        let (responses, outgoing) = mpsc::channel(4);
        // Appends are answered in order once durable; the next request is appended while
        // the fsync of the one before runs, so one fsync can cover both.
        let (settling, mut to_settle) = mpsc::channel::<Reply>(8);
        tokio::spawn(async move {
            while let Some(reply) = to_settle.recv().await {
                if responses
                    .send(Ok(reply.when_durable().await))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let (replicators, reporter) = (self.replicators.clone(), self.reporter.clone());
        tokio::spawn(async move {
            // One leader's requests, handled in order.
            let mut from: Option<(u32, u32, String)> = None;
            loop {
                let ended = match incoming.message().await {
                    Ok(Some(request)) => {
                        let kind = if request.entries.is_empty() {
                            "empty"
                        } else {
                            "records"
                        };
                        crate::metrics::replication_received(kind, 1);
                        from = Some((request.tid, request.pid, request.leader.clone()));
                        let reply = follower_append(&replicators, request).await;
                        if settling.send(reply).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    // A leader that dies takes its connections with it, which may look
                    // like a clean end or a broken one.
                    Ok(None) => "closed".to_string(),
                    Err(broken) => broken.message().to_string(),
                };
                // Tell the nameserver if we still follow it; if it only stopped shipping
                // here on purpose, the nameserver's check finds it alive.
                if let Some((tid, pid, leader)) = &from {
                    let still_following = replicators
                        .catalog()
                        .get(*tid, *pid)
                        .ok()
                        .and_then(|t| t.leader_silence())
                        .is_some_and(|(l, _)| l == *leader);
                    if still_following {
                        reporter.stream_ended(leader, &ended);
                    }
                }
                break;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outgoing))))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        cluster_secret::check(&request, "Heartbeat")?;
        let HeartbeatRequest {
            leader,
            lease_ms,
            beats,
        } = request.into_inner();
        crate::metrics::replication_received("beat", beats.len() as u64);
        let catalog = self.replicators.catalog();
        let grant = self.replicators.grants().of(&leader);
        let outcomes: Vec<_> = beats
            .iter()
            .map(|beat| {
                catalog
                    .get(beat.tid, beat.pid)
                    .ok()
                    .map(|table| table.heartbeat(&grant, lease_ms, beat))
            })
            .collect();
        // Renewed after every replica of the batch joined: the generation it is made in
        // tells the leader which of them are still in the grant (see `pair_lease`).
        let generation = grant.renew(pair_lease::lease_asked(lease_ms));
        let answers = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Some(outcome) => BeatAnswer {
                    granted: outcome.granted,
                    in_step: outcome.in_step,
                    term: outcome.term,
                    in_grant: outcome.joined == Some(generation),
                },
                // Not here (dropped, or not created yet): the stream's probe says so.
                None => BeatAnswer::default(),
            })
            .collect();
        Ok(Response::new(HeartbeatResponse {
            answers,
            grant_id: grant.id(),
            grant_generation: generation,
        }))
    }

    async fn change_role(
        &self,
        request: Request<ChangeRoleRequest>,
    ) -> Result<Response<ChangeRoleResponse>, Status> {
        cluster_secret::check(&request, "ChangeRole")?;
        let request = request.into_inner();
        let change = RoleChange {
            role: request.role(),
            term: request.term,
            followers: request.followers,
            leader: request.leader,
            offline: request.offline,
        };
        if change.term == 0 {
            return Err(TabletError::InvalidArgument("change role needs a term".into()).into());
        }
        let (table, ()) = self
            .with_table(request.tid, request.pid, move |t| {
                Ok(t.change_role(&change)?)
            })
            .await?;
        Ok(Response::new(ChangeRoleResponse {
            status: Some(table.status()),
        }))
    }

    async fn add_replica(
        &self,
        request: Request<AddReplicaRequest>,
    ) -> Result<Response<AddReplicaResponse>, Status> {
        cluster_secret::check(&request, "AddReplica")?;
        let AddReplicaRequest { tid, pid, endpoint } = request.into_inner();
        tessera_common::Endpoint::parse(&endpoint).map_err(TabletError::InvalidArgument)?;
        self.with_table(tid, pid, move |t| {
            Ok(t.set_follower(&endpoint, FollowerChange::Add)?)
        })
        .await?;
        Ok(Response::new(AddReplicaResponse {}))
    }

    async fn del_replica(
        &self,
        request: Request<DelReplicaRequest>,
    ) -> Result<Response<DelReplicaResponse>, Status> {
        cluster_secret::check(&request, "DelReplica")?;
        let DelReplicaRequest {
            tid,
            pid,
            endpoint,
            keep_vote,
        } = request.into_inner();
        let change = if keep_vote {
            FollowerChange::Offline
        } else {
            FollowerChange::Remove
        };
        self.with_table(tid, pid, move |t| Ok(t.set_follower(&endpoint, change)?))
            .await?;
        Ok(Response::new(DelReplicaResponse {}))
    }

    async fn fence(
        &self,
        request: Request<FenceRequest>,
    ) -> Result<Response<FenceResponse>, Status> {
        cluster_secret::check(&request, "Fence")?;
        let FenceRequest { tid, pid, term } = request.into_inner();
        let (table, (last_term, last_offset)) = self
            .with_table(tid, pid, move |t| Ok(t.fence(term)?))
            .await?;
        Ok(Response::new(FenceResponse {
            last_term,
            last_offset,
            term,
            // Taken after the fence: no answer to an older term can follow it.
            lease_remaining_ms: table.granted_lease_remaining().as_millis() as u64,
        }))
    }

    async fn get_term_pair(
        &self,
        request: Request<GetTermPairRequest>,
    ) -> Result<Response<GetTermPairResponse>, Status> {
        cluster_secret::check(&request, "GetTermPair")?;
        let GetTermPairRequest { tid, pid } = request.into_inner();
        let catalog = self.catalog.clone();
        let (last_term, last_offset, loaded, term_history) =
            blocking(move || catalog.term_pair(tid, pid)).await?;
        Ok(Response::new(GetTermPairResponse {
            last_term,
            last_offset,
            loaded,
            term_history,
        }))
    }

    async fn pause_snapshot(
        &self,
        request: Request<PauseSnapshotRequest>,
    ) -> Result<Response<PauseSnapshotResponse>, Status> {
        cluster_secret::check(&request, "PauseSnapshot")?;
        let PauseSnapshotRequest { tid, pid } = request.into_inner();
        let table = self.table(tid, pid)?;
        blocking(move || {
            table.pause_snapshots();
            Ok(())
        })
        .await?;
        Ok(Response::new(PauseSnapshotResponse {}))
    }

    async fn recover_snapshot(
        &self,
        request: Request<RecoverSnapshotRequest>,
    ) -> Result<Response<RecoverSnapshotResponse>, Status> {
        cluster_secret::check(&request, "RecoverSnapshot")?;
        let RecoverSnapshotRequest { tid, pid } = request.into_inner();
        self.table(tid, pid)?.resume_snapshots();
        Ok(Response::new(RecoverSnapshotResponse {}))
    }

    async fn send_snapshot(
        &self,
        request: Request<SendSnapshotRequest>,
    ) -> Result<Response<SendSnapshotResponse>, Status> {
        cluster_secret::check(&request, "SendSnapshot")?;
        let SendSnapshotRequest { tid, pid, endpoint } = request.into_inner();
        tessera_common::Endpoint::parse(&endpoint).map_err(TabletError::InvalidArgument)?;
        let table = self.table(tid, pid)?;
        let state = table.replica_state();
        let leader = if state.role() == TableRole::Leader {
            self.replicators.endpoint().to_string()
        } else {
            state.leader.clone()
        };
        let offset = transfer::send_snapshot(table, state.term, &leader, &endpoint)
            .await
            .map_err(|e| Status::from(TabletError::InvalidArgument(e)))?;
        Ok(Response::new(SendSnapshotResponse { offset }))
    }

    async fn receive_snapshot(
        &self,
        request: Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<Response<ReceiveSnapshotResponse>, Status> {
        cluster_secret::check(&request, "ReceiveSnapshot")?;
        let (catalog, replicators) = (self.catalog.clone(), self.replicators.clone());
        let chunks = request.into_inner();
        // In a task of its own, as `blocking_then`: a sender gone once the install has run
        // must not leave the links of the replaced copy shipping.
        let received = tokio::spawn(async move {
            let received = transfer::receive_snapshot(catalog.clone(), chunks).await?;
            // Installed or refused, the catalog may hold a new copy of the replica (a
            // refused snapshot reloads it): its replication follows that copy.
            match catalog.get(received.tid, received.pid) {
                Ok(current) => replicators.sync_table(&current),
                // Refused and not loaded again: the replaced copy's links stop with it.
                Err(_) => replicators.stop_table_unless_loaded(received.tid, received.pid),
            }
            Ok::<_, TabletError>(received)
        })
        .await
        .map_err(|e| Status::internal(format!("snapshot receive task failed: {e}")))??;
        let table = received.outcome?;
        Ok(Response::new(ReceiveSnapshotResponse {
            offset: table.snapshot_offset(),
        }))
    }

    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            endpoint: self.replicators.endpoint().to_string(),
            registered_session: Some(
                self.lease
                    .as_ref()
                    .map_or(0, |lease| lease.registered_session()),
            ),
        }))
    }

    async fn get_follower_status(
        &self,
        request: Request<GetFollowerStatusRequest>,
    ) -> Result<Response<GetFollowerStatusResponse>, Status> {
        cluster_secret::check(&request, "GetFollowerStatus")?;
        let GetFollowerStatusRequest { tid, pid } = request.into_inner();
        let table = self.table(tid, pid)?;
        Ok(Response::new(GetFollowerStatusResponse {
            leader_offset: table.last_offset(),
            commit_offset: table.commit_offset(),
            term: table.replica_state().term,
            followers: self.replicators.follower_status(&table),
        }))
    }
}

/// A follower's answer to one AppendEntries request, ready or once its entries are
/// durable.
enum Reply {
    Now(AppendEntriesResponse),
    WhenDurable {
        table: Arc<Table>,
        last: u64,
        term: u64,
        /// How many entries the request carried (many are applied off the async worker).
        entries: usize,
    },
}

/// Requests with at most this many entries (the usual case once a follower has caught
/// up) are appended and applied on the async worker; bigger ones (catching up, up to
/// 1 MiB) on the blocking pool, so they do not hold up other partitions.
const INLINE_APPEND_ENTRIES: usize = 256;

impl Reply {
    async fn when_durable(self) -> AppendEntriesResponse {
        let (table, last, term, entries) = match self {
            Reply::Now(response) => return response,
            Reply::WhenDurable {
                table,
                last,
                term,
                entries,
            } => (table, last, term, entries),
        };
        let settled = match table.durable_offset_reached(last).await {
            Ok(()) if entries <= INLINE_APPEND_ENTRIES => table.settle_append(last),
            Ok(()) => {
                let worker = table.clone();
                tokio::task::spawn_blocking(move || worker.settle_append(last))
                    .await
                    .unwrap_or_else(|e| Err(StorageError::Failed(e.to_string())))
            }
            Err(e) => Err(e),
        };
        match settled {
            Ok(()) => append_response(AppendResult::Ok, term, last, String::new()),
            Err(e) => append_response(
                AppendResult::Unavailable,
                term,
                table.last_offset(),
                e.to_string(),
            ),
        }
    }
}

fn append_response(
    result: AppendResult,
    term: u64,
    last_offset: u64,
    message: String,
) -> AppendEntriesResponse {
    AppendEntriesResponse {
        result: result as i32,
        term,
        last_offset,
        message,
    }
}

/// Handles one AppendEntries request on the follower. Appending is short (writes to the
/// page cache) and runs here; the fsync is left to [`Reply::when_durable`].
async fn follower_append(replicators: &Arc<Replicators>, request: AppendEntriesRequest) -> Reply {
    let (tid, pid) = (request.tid, request.pid);
    let respond = |result, term, last_offset, message| {
        Reply::Now(append_response(result, term, last_offset, message))
    };
    let table = match replicators.catalog().get(tid, pid) {
        Ok(table) => table,
        Err(e) => return respond(AppendResult::Unavailable, 0, 0, e.to_string()),
    };
    let entries = request.entries.len();
    // A request that makes this replica adopt a term or a leader fsyncs its state first,
    // and one that meets a fence or role change in progress waits for that fsync: both
    // wait on a blocking thread, not on one of the runtime's few (in a mass failover
    // thousands of them arrive at once).
    let inline = entries <= INLINE_APPEND_ENTRIES && table.follows(request.term, &request.leader);
    let outcome = if inline {
        table.log_append(&request)
    } else {
        let worker = table.clone();
        match tokio::task::spawn_blocking(move || worker.log_append(&request)).await {
            Ok(outcome) => outcome,
            Err(e) => return respond(AppendResult::Unavailable, 0, 0, e.to_string()),
        }
    };
    // The request may have turned a leader into a follower: stop its links.
    replicators.sync_table(&table);
    let term = table.replica_state().term;
    match outcome {
        Ok(AppendOutcome::Appended(last)) => Reply::WhenDurable {
            table,
            last,
            term,
            entries,
        },
        Ok(AppendOutcome::Mismatch(last)) => {
            respond(AppendResult::Mismatch, term, last, String::new())
        }
        Ok(AppendOutcome::StaleTerm(current)) => respond(
            AppendResult::StaleTerm,
            current,
            table.last_offset(),
            String::new(),
        ),
        Ok(AppendOutcome::NeedSnapshot) => respond(
            AppendResult::NeedSnapshot,
            term,
            table.last_offset(),
            String::new(),
        ),
        Ok(AppendOutcome::Truncate(keep)) => {
            let catalog = replicators.catalog().clone();
            match tokio::task::spawn_blocking(move || catalog.truncate_and_reload(tid, pid, keep))
                .await
            {
                Ok(Ok(_)) => respond(AppendResult::Mismatch, term, keep, String::new()),
                Ok(Err(e)) => respond(AppendResult::Unavailable, term, 0, e.to_string()),
                Err(e) => respond(AppendResult::Unavailable, term, 0, e.to_string()),
            }
        }
        Err(e) => respond(
            AppendResult::Unavailable,
            term,
            table.last_offset(),
            e.to_string(),
        ),
    }
}
