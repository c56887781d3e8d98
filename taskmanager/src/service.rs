//! The gRPC service. Submitting and stopping need the leader; reading jobs does not.

use std::sync::Arc;

use tessera_proto::taskmanager::task_manager_server::TaskManager as TaskManagerApi;
use tessera_proto::taskmanager::*;
use tonic::{Request, Response, Status};

use crate::state::TaskManager;

pub struct TaskManagerService {
    state: Arc<TaskManager>,
}

impl TaskManagerService {
    pub fn new(state: Arc<TaskManager>) -> TaskManagerService {
        TaskManagerService { state }
    }
}

#[tonic::async_trait]
impl TaskManagerApi for TaskManagerService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<JobInfo>, Status> {
        Ok(Response::new(
            self.state.submit(request.into_inner()).await?,
        ))
    }

    async fn show_jobs(
        &self,
        _: Request<ShowJobsRequest>,
    ) -> Result<Response<ShowJobsResponse>, Status> {
        Ok(Response::new(ShowJobsResponse {
            jobs: self.state.jobs().await?,
        }))
    }

    async fn show_job(&self, request: Request<JobIdRequest>) -> Result<Response<JobInfo>, Status> {
        Ok(Response::new(
            self.state.job(request.into_inner().id).await?,
        ))
    }

    async fn stop_job(&self, request: Request<JobIdRequest>) -> Result<Response<JobInfo>, Status> {
        Ok(Response::new(
            self.state.stop_job(request.into_inner().id).await?,
        ))
    }
}
