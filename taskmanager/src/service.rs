//! The gRPC service. Submitting and stopping need the leader; reading jobs does not.

use std::sync::Arc;

use tessera_common::auth::{db_or_default, Need};
use tessera_common::user_directory::UserDirectory;
use tessera_proto::taskmanager::task_manager_server::TaskManager as TaskManagerApi;
use tessera_proto::taskmanager::*;
use tonic::{Request, Response, Status};

use crate::state::TaskManager;

pub struct TaskManagerService {
    state: Arc<TaskManager>,
    /// Who may run which job (when the cluster runs with authentication). The jobs
    /// themselves then run with the cluster secret.
    users: UserDirectory,
}

impl TaskManagerService {
    pub fn new(state: Arc<TaskManager>) -> TaskManagerService {
        let users = UserDirectory::new(state.settings.clone());
        TaskManagerService { state, users }
    }

    async fn authorize<T>(
        &self,
        request: &Request<T>,
        need: Need,
        db: Option<&str>,
        table: Option<&str>,
    ) -> Result<(), Status> {
        UserDirectory::authorize(Some(&self.users), request, need, db, table).await
    }
}

#[tonic::async_trait]
impl TaskManagerApi for TaskManagerService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<JobInfo>, Status> {
        {
            let r = request.get_ref();
            // An import writes the table, an export reads it; anything else (a snapshot
            // of every partition) administers the cluster.
            let (need, db, table) = match r.job_type.as_str() {
                "ImportData" => (
                    Need::Write,
                    Some(db_or_default(&r.db)),
                    Some(r.table.as_str()),
                ),
                "ExportData" => (
                    Need::Read,
                    Some(db_or_default(&r.db)),
                    Some(r.table.as_str()),
                ),
                _ => (Need::Admin, None, None),
            };
            self.authorize(&request, need, db, table).await?;
        }
        Ok(Response::new(
            self.state.submit(request.into_inner()).await?,
        ))
    }

    async fn show_jobs(
        &self,
        request: Request<ShowJobsRequest>,
    ) -> Result<Response<ShowJobsResponse>, Status> {
        self.authorize(&request, Need::LoggedIn, None, None).await?;
        Ok(Response::new(ShowJobsResponse {
            jobs: self.state.jobs().await?,
        }))
    }

    async fn show_job(&self, request: Request<JobIdRequest>) -> Result<Response<JobInfo>, Status> {
        self.authorize(&request, Need::LoggedIn, None, None).await?;
        Ok(Response::new(
            self.state.job(request.into_inner().id).await?,
        ))
    }

    async fn stop_job(&self, request: Request<JobIdRequest>) -> Result<Response<JobInfo>, Status> {
        // Stopping a job is judged as starting it: by the job's table, or as
        // administration for a job of the whole cluster.
        self.authorize(&request, Need::LoggedIn, None, None).await?;
        let job = self.state.job(request.get_ref().id).await?;
        let db = db_or_default(&job.db);
        let (need, db, table) = match job.job_type.as_str() {
            "ImportData" => (Need::Write, Some(db), Some(job.table.as_str())),
            "ExportData" => (Need::Read, Some(db), Some(job.table.as_str())),
            _ => (Need::Admin, None, None),
        };
        self.authorize(&request, need, db, table).await?;
        Ok(Response::new(
            self.state.stop_job(request.into_inner().id).await?,
        ))
    }
}
