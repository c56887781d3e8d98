//! The nameserver's gRPC face.

use std::sync::Arc;

use tessera_proto::nameserver::nameserver_server::Nameserver as NameserverRpc;
use tessera_proto::nameserver::*;
use tonic::{Request, Response, Status};

use tessera_common::auth::Need;

use crate::error::NsError;
use crate::schema_change::Change;
use crate::state::Nameserver;

pub struct NameserverService {
    state: Arc<Nameserver>,
}

impl NameserverService {
    pub fn new(state: Arc<Nameserver>) -> NameserverService {
        NameserverService { state }
    }
}

#[tonic::async_trait]
impl NameserverRpc for NameserverService {
    async fn create_table(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Result<Response<CreateTableResponse>, Status> {
        {
            let db = crate::state::db_or_default(&request.get_ref().db);
            self.state
                .authorize(&request, Need::Admin, Some(db), None)
                .await?;
        }
        let table = self.state.create_table(request.into_inner()).await?;
        Ok(Response::new(CreateTableResponse { table: Some(table) }))
    }

    async fn drop_table(
        &self,
        request: Request<DropTableRequest>,
    ) -> Result<Response<DropTableResponse>, Status> {
        {
            let r = request.get_ref();
            let db = crate::state::db_or_default(&r.db);
            self.state
                .authorize(&request, Need::Admin, Some(db), Some(&r.name))
                .await?;
        }
        let request = request.into_inner();
        self.state.drop_table(&request.db, &request.name).await?;
        Ok(Response::new(DropTableResponse {}))
    }

    async fn show_table(
        &self,
        request: Request<ShowTableRequest>,
    ) -> Result<Response<ShowTableResponse>, Status> {
        self.state
            .authorize(&request, Need::LoggedIn, None, None)
            .await?;
        let request = request.into_inner();
        let rows = self.state.show_table(&request.db, &request.name).await?;
        Ok(Response::new(ShowTableResponse { rows }))
    }

    async fn show_tablet(
        &self,
        request: Request<ShowTabletRequest>,
    ) -> Result<Response<ShowTabletResponse>, Status> {
        self.state
            .authorize(&request, Need::LoggedIn, None, None)
            .await?;
        Ok(Response::new(ShowTabletResponse {
            tablets: self.state.tablets(),
        }))
    }

    async fn show_ns(
        &self,
        request: Request<ShowNsRequest>,
    ) -> Result<Response<ShowNsResponse>, Status> {
        self.state
            .authorize(&request, Need::LoggedIn, None, None)
            .await?;
        let nameservers = self
            .state
            .nameservers()
            .await?
            .into_iter()
            .map(|(endpoint, leads)| NsInfo {
                endpoint,
                role: if leads { "leader" } else { "standby" }.into(),
            })
            .collect();
        Ok(Response::new(ShowNsResponse { nameservers }))
    }

    async fn show_schema(
        &self,
        request: Request<ShowSchemaRequest>,
    ) -> Result<Response<ShowSchemaResponse>, Status> {
        self.state
            .authorize(&request, Need::LoggedIn, None, None)
            .await?;
        let request = request.into_inner();
        let db = crate::state::db_or_default(&request.db);
        let table = self.state.table(db, &request.name).await?;
        Ok(Response::new(ShowSchemaResponse { table: Some(table) }))
    }

    async fn conf_get(
        &self,
        request: Request<ConfGetRequest>,
    ) -> Result<Response<ConfGetResponse>, Status> {
        self.state
            .authorize(&request, Need::LoggedIn, None, None)
            .await?;
        let key = request.into_inner().key;
        let entries = self
            .state
            .conf_get()
            .await?
            .into_iter()
            .filter(|e| key.is_empty() || e.key == key)
            .collect::<Vec<_>>();
        if entries.is_empty() {
            return Err(crate::error::NsError::InvalidArgument(format!(
                "unknown configuration key `{key}`"
            ))
            .into());
        }
        Ok(Response::new(ConfGetResponse { entries }))
    }

    async fn conf_set(
        &self,
        request: Request<ConfSetRequest>,
    ) -> Result<Response<ConfSetResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let request = request.into_inner();
        self.state.conf_set(&request.key, &request.value).await?;
        Ok(Response::new(ConfSetResponse {}))
    }

    async fn show_op_status(
        &self,
        request: Request<ShowOpStatusRequest>,
    ) -> Result<Response<ShowOpStatusResponse>, Status> {
        self.state
            .authorize(&request, Need::LoggedIn, None, None)
            .await?;
        let request = request.into_inner();
        let db = crate::state::db_or_default(&request.db);
        let ops = self
            .state
            .ops()
            .await?
            .into_iter()
            .filter(|op| request.name.is_empty() || (op.db == db && op.name == request.name))
            .filter(|op| request.pid.is_none_or(|pid| op.pid == pid))
            .collect();
        Ok(Response::new(ShowOpStatusResponse { ops }))
    }

    async fn offline_endpoint(
        &self,
        request: Request<EndpointRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let ops = self
            .state
            .offline_endpoint(&request.into_inner().endpoint)
            .await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn recover_endpoint(
        &self,
        request: Request<EndpointRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let ops = self
            .state
            .recover_endpoint(&request.into_inner().endpoint)
            .await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn recover_table(
        &self,
        request: Request<RecoverTableRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        let ops = self
            .state
            .recover_table(&r.db, &r.name, r.pid, &r.endpoint)
            .await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn change_leader(
        &self,
        request: Request<ChangeLeaderRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        let ops = self
            .state
            .change_leader(&r.db, &r.name, r.pid, &r.candidate, r.force)
            .await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn cancel_op(
        &self,
        request: Request<OpIdRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let ops = self.state.cancel_op(request.into_inner().op_id).await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn report_leader_trouble(
        &self,
        request: Request<LeaderTroubleRequest>,
    ) -> Result<Response<LeaderTroubleResponse>, Status> {
        // Only the cluster's tablets report: a stranger must not make us probe anyone.
        tessera_common::cluster_secret::check(&request, "ReportLeaderTrouble")?;
        let r = request.into_inner();
        self.state.check_leading()?;
        let verdict = self
            .state
            .leader_trouble(&r.reporter, &r.leader, &r.reason)
            .await;
        Ok(Response::new(LeaderTroubleResponse { verdict }))
    }

    async fn delete_op(
        &self,
        request: Request<OpIdRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let ops = self.state.delete_op(request.into_inner().op_id).await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn add_replica(
        &self,
        request: Request<ReplicaRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        let ops = self
            .state
            .add_replica(&r.db, &r.name, &r.pids, &r.endpoint)
            .await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn del_replica(
        &self,
        request: Request<ReplicaRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        let ops = self
            .state
            .del_replica(&r.db, &r.name, &r.pids, &r.endpoint)
            .await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn migrate(
        &self,
        request: Request<ReplicaRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        let ops = self
            .state
            .migrate(&r.db, &r.name, &r.pids, &r.source, &r.endpoint)
            .await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn make_snapshot(
        &self,
        request: Request<PartitionsRequest>,
    ) -> Result<Response<OpsResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        let ops = self.state.make_snapshot(&r.db, &r.name, &r.pids).await?;
        Ok(Response::new(OpsResponse { ops }))
    }

    async fn update_table_alive(
        &self,
        request: Request<UpdateTableAliveRequest>,
    ) -> Result<Response<UpdateTableAliveResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        let updated = self
            .state
            .update_table_alive(&r.db, &r.name, &r.pids, &r.endpoint, r.alive)
            .await?;
        Ok(Response::new(UpdateTableAliveResponse { updated }))
    }

    async fn show_db(
        &self,
        request: Request<ShowDbRequest>,
    ) -> Result<Response<ShowDbResponse>, Status> {
        self.state
            .authorize(&request, Need::LoggedIn, None, None)
            .await?;
        let dbs = self.state.databases().await?;
        Ok(Response::new(ShowDbResponse { dbs }))
    }

    async fn set_ttl(
        &self,
        request: Request<SetTtlRequest>,
    ) -> Result<Response<SetTtlResponse>, Status> {
        {
            let db = crate::state::db_or_default(&request.get_ref().db);
            self.state
                .authorize(&request, Need::Admin, Some(db), None)
                .await?;
        }
        let r = request.into_inner();
        let ttl = r.ttl.unwrap_or_default();
        let change = self.state.set_ttl(&r.db, &r.name, &r.index, &ttl).await?;
        Ok(Response::new(SetTtlResponse {
            updated: change.updated,
            pending: change.pending,
        }))
    }

    async fn change_schema(
        &self,
        request: Request<ChangeSchemaRequest>,
    ) -> Result<Response<ChangeSchemaResponse>, Status> {
        {
            let db = crate::state::db_or_default(&request.get_ref().db);
            self.state
                .authorize(&request, Need::Admin, Some(db), None)
                .await?;
        }
        let r = request.into_inner();
        use tessera_proto::nameserver::change_schema_request::Change as Wire;
        let change = match r.change {
            Some(Wire::AddIndex(index)) => Change::AddIndex(index),
            Some(Wire::DeleteIndex(name)) => Change::DeleteIndex(name),
            Some(Wire::AddColumn(column)) => Change::AddColumn(column),
            None => {
                return Err(NsError::InvalidArgument("the request names no change".into()).into())
            }
        };
        let outcome = self.state.change_schema(&r.db, &r.name, change).await?;
        Ok(Response::new(ChangeSchemaResponse {
            version: outcome.version,
            updated: outcome.updated,
            pending: outcome.pending,
        }))
    }

    async fn create_database(
        &self,
        request: Request<DatabaseRequest>,
    ) -> Result<Response<DatabaseResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        self.state
            .create_database(&request.into_inner().name)
            .await?;
        Ok(Response::new(DatabaseResponse {}))
    }

    async fn drop_database(
        &self,
        request: Request<DatabaseRequest>,
    ) -> Result<Response<DatabaseResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        self.state.drop_database(&request.into_inner().name).await?;
        Ok(Response::new(DatabaseResponse {}))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let r = request.into_inner();
        let (token, expires_in) = self.state.login(&r.user, &r.password).await?;
        Ok(Response::new(LoginResponse { token, expires_in }))
    }

    async fn create_user(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<UsersResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        self.state.create_user(&r.name, &r.password).await?;
        Ok(Response::new(UsersResponse::default()))
    }

    async fn alter_user(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<UsersResponse>, Status> {
        let target = request.get_ref().name.clone();
        self.state.authorize_user_change(&request, &target).await?;
        let r = request.into_inner();
        self.state.alter_user(&r.name, &r.password).await?;
        Ok(Response::new(UsersResponse::default()))
    }

    async fn drop_user(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<UsersResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        self.state.drop_user(&request.into_inner().name).await?;
        Ok(Response::new(UsersResponse::default()))
    }

    async fn show_users(
        &self,
        request: Request<ShowUsersRequest>,
    ) -> Result<Response<UsersResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let users = self.state.users().await?;
        Ok(Response::new(UsersResponse { users }))
    }

    async fn grant(
        &self,
        request: Request<GrantRequest>,
    ) -> Result<Response<UsersResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        self.state
            .grant(&r.user, r.grant.unwrap_or_default())
            .await?;
        Ok(Response::new(UsersResponse::default()))
    }

    async fn revoke(
        &self,
        request: Request<GrantRequest>,
    ) -> Result<Response<UsersResponse>, Status> {
        self.state
            .authorize(&request, Need::Admin, None, None)
            .await?;
        let r = request.into_inner();
        self.state
            .revoke(&r.user, r.grant.unwrap_or_default())
            .await?;
        Ok(Response::new(UsersResponse::default()))
    }
}
