//! A stand-in tablet for nameserver-only simulations. It registers in ZooKeeper as a
//! tablet does and answers the control calls a nameserver makes (creates, drops, loads,
//! role changes, fences, term pairs, statuses, pings) from an in-memory map of replicas
//! that hold no rows. Data calls are refused as unimplemented. A hundred of them in one
//! process let a real nameserver manage a million partitions on one machine.
//!
//! Each runs on a runtime of its own, so [`FakeTablet::kill`] drops its listener, its
//! connections and its ZooKeeper session at once, as `kill -9` of a process would: its
//! port refuses connections, and its registration lapses when the session expires.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tessera_common::coordination::{run_registration, Lease, ZkSettings};
use tessera_common::wire_error::{self, ErrorCode, ErrorDetail};
use tessera_proto::tablet::tablet_server::{Tablet, TabletServer};
use tessera_proto::tablet::*;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// One partition replica: its place in the partition, no data.
#[derive(Debug, Clone)]
struct FakeReplica {
    db: String,
    name: String,
    mode: i32,
    role: TableRole,
    term: u64,
    leader: String,
    followers: Vec<String>,
    offline: Vec<String>,
}

type Replicas = Arc<Mutex<HashMap<(u32, u32), FakeReplica>>>;

/// A fake tablet running in this process.
pub struct FakeTablet {
    pub endpoint: String,
    replicas: Replicas,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeTablet {
    /// Starts listening on a free loopback port and registers under `root` in the
    /// ZooKeeper at `zk_cluster`, with sessions of `session`.
    pub fn start(zk_cluster: &str, root: &str, session: Duration) -> FakeTablet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-tablet")
            .enable_all()
            .build()
            .expect("a fake tablet's runtime");
        let port = crate::free_port();
        let endpoint = format!("127.0.0.1:{port}");
        let addr: SocketAddr = endpoint.parse().expect("a loopback address");
        // Bound here, so the port takes connections before the tablet registers.
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .unwrap_or_else(|e| panic!("a fake tablet cannot listen on {addr}: {e}"));
        let replicas = Replicas::default();
        let lease = Lease::for_session(session);
        let service = FakeService {
            endpoint: endpoint.clone(),
            replicas: replicas.clone(),
            lease: lease.clone(),
        };
        runtime.spawn(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("a listener on the runtime");
            let served = tonic::transport::Server::builder()
                .add_service(TabletServer::new(service).max_encoding_message_size(usize::MAX))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
            if let Err(e) = served {
                eprintln!("a fake tablet stopped serving: {e}");
            }
        });
        // Listening before registering, as a real tablet does: once registered, the
        // nameserver may call at once.
        let settings = ZkSettings {
            cluster: zk_cluster.to_string(),
            root: root.to_string(),
            session_timeout: session,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let registered = endpoint.clone();
        runtime.spawn(async move {
            // Never told to stop: the registration ends with the runtime.
            let _stop = stop;
            run_registration(settings, registered, lease, stopped).await
        });
        FakeTablet {
            endpoint,
            replicas,
            runtime: Some(runtime),
        }
    }

    /// Replicas held.
    pub fn replica_count(&self) -> usize {
        self.replicas.lock().len()
    }

    /// Replicas that lead.
    pub fn leading(&self) -> usize {
        self.replicas
            .lock()
            .values()
            .filter(|r| r.role == TableRole::Leader)
            .count()
    }

    /// Gone at once, like a killed process: the listener and every connection close, and
    /// the ZooKeeper session is left to expire.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for FakeTablet {
    fn drop(&mut self) {
        self.kill();
    }
}

struct FakeService {
    endpoint: String,
    /// Its registration, named in pings as a real tablet does.
    lease: Arc<Lease>,
    replicas: Replicas,
}

fn not_found(tid: u32, pid: u32) -> Status {
    wire_error::status(
        ErrorCode::TableNotFound,
        format!("table {tid} partition {pid} is not on this tablet"),
    )
}

fn no_data(call: &str) -> Status {
    Status::unimplemented(format!("a fake tablet holds no data: {call}"))
}

/// What a call wants of a replica's term.
#[derive(Clone, Copy)]
enum Claim<'a> {
    Fence,
    Lead,
    Follow(&'a str),
}

/// A tablet's rule, so the simulation catches a nameserver that breaks it: an older
/// term is stale; in the replica's own term, one that leads or follows someone may only
/// be asked the same again (no second fence, no second leader, no other leader's
/// follower); term 0 is no term.
fn check_term(replica: &FakeReplica, term: u64, claim: Claim<'_>) -> Result<(), Status> {
    if term == 0 {
        return Err(Status::invalid_argument("a role change needs a term"));
    }
    // The nameserver reads the term in the detail: the replica's for a stale one, to
    // take a newer one; the claimed one for a taken one.
    let refused = |message: String, term: u64| {
        wire_error::status_from_detail(ErrorDetail {
            code: ErrorCode::StaleTerm as i32,
            message,
            term,
            ..ErrorDetail::default()
        })
    };
    if term < replica.term {
        return Err(refused(
            format!("term {term} is older than the replica's {}", replica.term),
            replica.term,
        ));
    }
    if term > replica.term {
        return Ok(());
    }
    let leading = replica.role == TableRole::Leader;
    let differs = match claim {
        Claim::Fence => true,
        Claim::Lead => !leading,
        Claim::Follow(leader) => leading || replica.leader != leader,
    };
    if differs && (leading || !replica.leader.is_empty()) {
        return Err(refused(format!("term {term} already has a leader"), term));
    }
    Ok(())
}

/// Only a leader ships to followers.
fn check_leads(replica: &FakeReplica) -> Result<(), Status> {
    if replica.role != TableRole::Leader {
        return Err(wire_error::status(
            ErrorCode::NotLeader,
            "this replica does not lead",
        ));
    }
    Ok(())
}

impl FakeService {
    fn status(&self, tid: u32, pid: u32, replica: &FakeReplica) -> TableStatus {
        TableStatus {
            tid,
            pid,
            db: replica.db.clone(),
            name: replica.name.clone(),
            term: replica.term,
            role: replica.role as i32,
            state: TableState::Normal as i32,
            mode: replica.mode,
            followers: replica.followers.clone(),
            leader: replica.leader.clone(),
            offline: replica.offline.clone(),
            ..TableStatus::default()
        }
    }

    /// Runs `change` on the replica and answers with its status.
    fn with_replica<T>(
        &self,
        tid: u32,
        pid: u32,
        change: impl FnOnce(&mut FakeReplica) -> Result<T, Status>,
    ) -> Result<(T, TableStatus), Status> {
        let mut replicas = self.replicas.lock();
        let replica = replicas
            .get_mut(&(tid, pid))
            .ok_or_else(|| not_found(tid, pid))?;
        let out = change(replica)?;
        Ok((out, self.status(tid, pid, replica)))
    }
}

fn set_role(
    replica: &mut FakeReplica,
    role: TableRole,
    term: u64,
    leader: String,
    followers: Vec<String>,
    offline: Vec<String>,
) -> Result<(), Status> {
    let claim = match role {
        TableRole::Leader => Claim::Lead,
        TableRole::Follower => Claim::Follow(&leader),
    };
    check_term(replica, term, claim)?;
    replica.role = role;
    replica.term = term;
    if role == TableRole::Leader {
        replica.leader.clear();
        replica.followers = followers;
        replica.offline = offline;
    } else {
        replica.leader = leader;
        replica.followers.clear();
        replica.offline.clear();
    }
    Ok(())
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Tablet for FakeService {
    async fn create_table(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Answer<CreateTableResponse> {
        let meta = request
            .into_inner()
            .meta
            .ok_or_else(|| Status::invalid_argument("create table needs its meta"))?;
        let replica = FakeReplica {
            db: meta.db.clone(),
            name: meta.name.clone(),
            mode: meta.mode,
            role: meta.role(),
            term: meta.term,
            leader: meta.leader.clone(),
            followers: Vec::new(),
            offline: Vec::new(),
        };
        let mut replicas = self.replicas.lock();
        if replicas.contains_key(&(meta.tid, meta.pid)) {
            return Err(wire_error::status(
                ErrorCode::TableExists,
                format!("table {} partition {} already exists", meta.tid, meta.pid),
            ));
        }
        let status = self.status(meta.tid, meta.pid, &replica);
        replicas.insert((meta.tid, meta.pid), replica);
        Ok(Response::new(CreateTableResponse {
            status: Some(status),
        }))
    }

    async fn drop_table(&self, request: Request<DropTableRequest>) -> Answer<DropTableResponse> {
        let DropTableRequest { tid, pid } = request.into_inner();
        match self.replicas.lock().remove(&(tid, pid)) {
            Some(_) => Ok(Response::new(DropTableResponse {})),
            None => Err(not_found(tid, pid)),
        }
    }

    async fn load_table(&self, request: Request<LoadTableRequest>) -> Answer<LoadTableResponse> {
        let request = request.into_inner();
        let role = request.role.map(|_| request.role());
        let (_, status) = self.with_replica(request.tid, request.pid, |replica| match role {
            Some(role) => set_role(
                replica,
                role,
                request.term,
                request.leader.clone(),
                request.followers.clone(),
                request.offline.clone(),
            ),
            None => Ok(()),
        })?;
        Ok(Response::new(LoadTableResponse {
            status: Some(status),
        }))
    }

    async fn put(&self, _: Request<PutRequest>) -> Answer<PutResponse> {
        Err(no_data("put"))
    }

    async fn put_batch(&self, _: Request<PutBatchRequest>) -> Answer<PutBatchResponse> {
        Err(no_data("put_batch"))
    }

    async fn get(&self, _: Request<GetRequest>) -> Answer<GetResponse> {
        Err(no_data("get"))
    }

    async fn scan(&self, _: Request<ScanRequest>) -> Answer<ScanResponse> {
        Err(no_data("scan"))
    }

    async fn count(&self, _: Request<CountRequest>) -> Answer<CountResponse> {
        Err(no_data("count"))
    }

    async fn preview(&self, _: Request<PreviewRequest>) -> Answer<PreviewResponse> {
        Err(no_data("preview"))
    }

    async fn delete(&self, _: Request<DeleteRequest>) -> Answer<DeleteResponse> {
        Err(no_data("delete"))
    }

    async fn delete_range(&self, _: Request<DeleteRequest>) -> Answer<DeleteResponse> {
        Err(no_data("delete_range"))
    }

    async fn register_writer(
        &self,
        _: Request<RegisterWriterRequest>,
    ) -> Answer<RegisterWriterResponse> {
        Err(no_data("register_writer"))
    }

    async fn make_snapshot(
        &self,
        request: Request<MakeSnapshotRequest>,
    ) -> Answer<MakeSnapshotResponse> {
        let MakeSnapshotRequest { tid, pid } = request.into_inner();
        self.with_replica(tid, pid, |_| Ok(()))?;
        Ok(Response::new(MakeSnapshotResponse::default()))
    }

    async fn get_table_status(
        &self,
        request: Request<GetTableStatusRequest>,
    ) -> Answer<GetTableStatusResponse> {
        let GetTableStatusRequest { tid, pid } = request.into_inner();
        let replicas = self.replicas.lock();
        let tables: Vec<TableStatus> = replicas
            .iter()
            .filter(|((t, p), _)| {
                tid.is_none_or(|tid| tid == *t) && pid.is_none_or(|pid| pid == *p)
            })
            .map(|((t, p), replica)| self.status(*t, *p, replica))
            .collect();
        if let (Some(tid), Some(pid), true) = (tid, pid, tables.is_empty()) {
            return Err(not_found(tid, pid));
        }
        Ok(Response::new(GetTableStatusResponse { tables }))
    }

    async fn set_ttl(&self, request: Request<SetTtlRequest>) -> Answer<SetTtlResponse> {
        let request = request.into_inner();
        self.with_replica(request.tid, request.pid, |_| Ok(()))?;
        Ok(Response::new(SetTtlResponse::default()))
    }

    async fn change_schema(
        &self,
        request: Request<ChangeSchemaRequest>,
    ) -> Answer<ChangeSchemaResponse> {
        let request = request.into_inner();
        self.with_replica(request.tid, request.pid, |_| Ok(()))?;
        Ok(Response::new(ChangeSchemaResponse::default()))
    }

    type AppendEntriesStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<AppendEntriesResponse, Status>> + Send>>;

    async fn append_entries(
        &self,
        _: Request<Streaming<AppendEntriesRequest>>,
    ) -> Answer<Self::AppendEntriesStream> {
        Err(no_data("append_entries"))
    }

    async fn heartbeat(&self, _: Request<HeartbeatRequest>) -> Answer<HeartbeatResponse> {
        Err(no_data("heartbeat"))
    }

    async fn change_role(&self, request: Request<ChangeRoleRequest>) -> Answer<ChangeRoleResponse> {
        let request = request.into_inner();
        let role = request.role();
        let (_, status) = self.with_replica(request.tid, request.pid, |replica| {
            set_role(
                replica,
                role,
                request.term,
                request.leader,
                request.followers,
                request.offline,
            )
        })?;
        Ok(Response::new(ChangeRoleResponse {
            status: Some(status),
        }))
    }

    async fn add_replica(&self, request: Request<AddReplicaRequest>) -> Answer<AddReplicaResponse> {
        let AddReplicaRequest { tid, pid, endpoint } = request.into_inner();
        self.with_replica(tid, pid, |replica| {
            check_leads(replica)?;
            // Shipped to again if it was offline.
            replica.offline.retain(|o| *o != endpoint);
            if !replica.followers.contains(&endpoint) {
                replica.followers.push(endpoint);
            }
            Ok(())
        })?;
        Ok(Response::new(AddReplicaResponse {}))
    }

    async fn del_replica(&self, request: Request<DelReplicaRequest>) -> Answer<DelReplicaResponse> {
        let DelReplicaRequest {
            tid,
            pid,
            endpoint,
            keep_vote,
        } = request.into_inner();
        self.with_replica(tid, pid, |replica| {
            check_leads(replica)?;
            if keep_vote {
                if !replica.offline.contains(&endpoint) {
                    replica.offline.push(endpoint);
                }
            } else {
                replica.followers.retain(|f| *f != endpoint);
                replica.offline.retain(|f| *f != endpoint);
            }
            Ok(())
        })?;
        Ok(Response::new(DelReplicaResponse {}))
    }

    async fn fence(&self, request: Request<FenceRequest>) -> Answer<FenceResponse> {
        let FenceRequest { tid, pid, term } = request.into_inner();
        self.with_replica(tid, pid, |replica| {
            check_term(replica, term, Claim::Fence)?;
            replica.term = term;
            replica.role = TableRole::Follower;
            replica.leader.clear();
            replica.followers.clear();
            replica.offline.clear();
            Ok(())
        })?;
        // No records: every replica of a partition is as far as the others.
        Ok(Response::new(FenceResponse {
            term,
            ..FenceResponse::default()
        }))
    }

    async fn get_term_pair(
        &self,
        request: Request<GetTermPairRequest>,
    ) -> Answer<GetTermPairResponse> {
        let GetTermPairRequest { tid, pid } = request.into_inner();
        self.with_replica(tid, pid, |_| Ok(()))?;
        Ok(Response::new(GetTermPairResponse {
            loaded: true,
            ..GetTermPairResponse::default()
        }))
    }

    async fn pause_snapshot(
        &self,
        _: Request<PauseSnapshotRequest>,
    ) -> Answer<PauseSnapshotResponse> {
        Ok(Response::new(PauseSnapshotResponse {}))
    }

    async fn recover_snapshot(
        &self,
        _: Request<RecoverSnapshotRequest>,
    ) -> Answer<RecoverSnapshotResponse> {
        Ok(Response::new(RecoverSnapshotResponse {}))
    }

    async fn send_snapshot(&self, _: Request<SendSnapshotRequest>) -> Answer<SendSnapshotResponse> {
        Err(no_data("send_snapshot"))
    }

    async fn receive_snapshot(
        &self,
        _: Request<Streaming<SnapshotChunk>>,
    ) -> Answer<ReceiveSnapshotResponse> {
        Err(no_data("receive_snapshot"))
    }

    async fn get_follower_status(
        &self,
        request: Request<GetFollowerStatusRequest>,
    ) -> Answer<GetFollowerStatusResponse> {
        let GetFollowerStatusRequest { tid, pid } = request.into_inner();
        let (followers, status) = self.with_replica(tid, pid, |replica| {
            Ok(replica
                .followers
                .iter()
                .map(|f| FollowerStatus {
                    endpoint: f.clone(),
                    connected: !replica.offline.contains(f),
                    ..FollowerStatus::default()
                })
                .collect())
        })?;
        Ok(Response::new(GetFollowerStatusResponse {
            term: status.term,
            followers,
            ..GetFollowerStatusResponse::default()
        }))
    }

    async fn ping(&self, _: Request<PingRequest>) -> Answer<PingResponse> {
        Ok(Response::new(PingResponse {
            endpoint: self.endpoint.clone(),
            registered_session: Some(self.lease.registered_session()),
        }))
    }
}
