//! The gRPC face of a tablet. Handlers validate the request, then run storage work on
//! the blocking pool (a put may wait for an fsync).

use std::sync::Arc;

use tessera_common::Value;
use tessera_proto::common::Row;
use tessera_proto::tablet::tablet_server::Tablet;
use tessera_proto::tablet::*;
use tonic::{Request, Response, Status};

use crate::catalog::Catalog;
use crate::error::{Result as TabletResult, TabletError};
use crate::storage::table::RowAt;
use crate::storage::Table;

pub struct TabletService {
    catalog: Arc<Catalog>,
    scan_max_rows: usize,
}

impl TabletService {
    pub fn new(catalog: Arc<Catalog>, scan_max_rows: usize) -> TabletService {
        TabletService {
            catalog,
            scan_max_rows,
        }
    }

    fn table(&self, tid: u32, pid: u32) -> Result<Arc<Table>, Status> {
        Ok(self.catalog.get(tid, pid)?)
    }

    fn limit(&self, requested: u32) -> usize {
        match requested as usize {
            0 => self.scan_max_rows,
            n => n.min(self.scan_max_rows),
        }
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

fn rows_out(rows: Vec<RowAt>) -> (Vec<Row>, Vec<i64>) {
    rows.into_iter()
        .map(|r| (Value::row_to_proto(&r.values), r.ts))
        .unzip()
}

#[tonic::async_trait]
impl Tablet for TabletService {
    async fn create_table(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Result<Response<CreateTableResponse>, Status> {
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
        let DropTableRequest { tid, pid } = request.into_inner();
        let catalog = self.catalog.clone();
        blocking(move || catalog.drop_table(tid, pid)).await?;
        Ok(Response::new(DropTableResponse {}))
    }

    async fn load_table(
        &self,
        request: Request<LoadTableRequest>,
    ) -> Result<Response<LoadTableResponse>, Status> {
        let LoadTableRequest { tid, pid } = request.into_inner();
        let catalog = self.catalog.clone();
        let table = blocking(move || catalog.load(tid, pid)).await?;
        Ok(Response::new(LoadTableResponse {
            status: Some(table.status()),
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let row = values(request.row.as_ref(), "put")?;
        let version = blocking(move || Ok(table.put(&row)?)).await?;
        Ok(Response::new(PutResponse {
            term: version.term,
            offset: version.offset,
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let key = key_values(&request.key)?;
        let (version, found) =
            blocking(move || Ok(table.get(&request.index, &key, request.ts)?)).await?;
        Ok(Response::new(GetResponse {
            ts: found.as_ref().map_or(0, |r| r.ts),
            row: found.map(|r| Value::row_to_proto(&r.values)),
            term: version.term,
            offset: version.offset,
        }))
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let key = key_values(&request.key)?;
        let limit = self.limit(request.limit);
        let (version, rows) = blocking(move || {
            Ok(table.scan(&request.index, &key, request.max_ts, request.min_ts, limit)?)
        })
        .await?;
        let (rows, ts) = rows_out(rows);
        Ok(Response::new(ScanResponse {
            rows,
            ts,
            term: version.term,
            offset: version.offset,
        }))
    }

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let key = key_values(&request.key)?;
        let (version, count) = blocking(move || Ok(table.count(&request.index, &key)?)).await?;
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
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let limit = self.limit(request.limit);
        let (version, rows) = blocking(move || Ok(table.preview(limit)?)).await?;
        let (rows, _) = rows_out(rows);
        Ok(Response::new(PreviewResponse {
            rows,
            term: version.term,
            offset: version.offset,
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let request = request.into_inner();
        let table = self.table(request.tid, request.pid)?;
        let key = key_values(&request.key)?;
        let (version, deleted) = blocking(move || Ok(table.delete(&request.index, &key)?)).await?;
        Ok(Response::new(DeleteResponse {
            deleted,
            term: version.term,
            offset: version.offset,
        }))
    }

    async fn make_snapshot(
        &self,
        request: Request<MakeSnapshotRequest>,
    ) -> Result<Response<MakeSnapshotResponse>, Status> {
        let MakeSnapshotRequest { tid, pid } = request.into_inner();
        let table = self.table(tid, pid)?;
        let (offset, record_count) = blocking(move || Ok(table.make_snapshot()?)).await?;
        Ok(Response::new(MakeSnapshotResponse {
            offset,
            record_count,
        }))
    }

    async fn get_table_status(
        &self,
        request: Request<GetTableStatusRequest>,
    ) -> Result<Response<GetTableStatusResponse>, Status> {
        let GetTableStatusRequest { tid, pid } = request.into_inner();
        let tables = self.catalog.statuses(tid, pid);
        if tables.is_empty() {
            if let (Some(tid), Some(pid)) = (tid, pid) {
                return Err(TabletError::TableNotFound { tid, pid }.into());
            }
        }
        Ok(Response::new(GetTableStatusResponse { tables }))
    }
}
