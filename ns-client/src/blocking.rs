//! The SDK for programs without a Tokio runtime: the same client, each call waiting for
//! its answer. The client runs a small runtime of its own (one worker thread, which also
//! follows metadata changes in the background).
//!
//! ```no_run
//! use tessera_common::Value;
//! use tessera_ns_client::blocking::Client;
//!
//! let client = Client::connect("127.0.0.1:2181", "/tessera")?;
//! client.put(
//!     "default",
//!     "t1",
//!     vec![Value::String("user1".into()), Value::Timestamp(1), Value::Double(0.5)],
//! )?;
//! let row = client.get("default", "t1", vec![Value::String("user1".into())])?;
//! # Ok::<(), tessera_ns_client::ClientError>(())
//! ```
//!
//! Use it only outside a Tokio runtime: calling it from async code would block a
//! runtime thread, and [`Client::connect`] refuses to start there.

use tessera_common::{Schema, Value};

use crate::{ClientError, ClientOptions};

pub struct Client {
    /// `Some` until dropped: the async client goes first, inside the runtime.
    inner: Option<crate::Client>,
    /// `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

/// The refusal of a blocking call made from async code, where it would block (and
/// Tokio would panic).
fn inside_a_runtime() -> ClientError {
    ClientError::InvalidArgument(
        "the blocking client cannot run inside a Tokio runtime: use tessera_ns_client::Client \
         there"
            .into(),
    )
}

impl Client {
    pub fn connect(zk_cluster: &str, zk_root_path: &str) -> Result<Client, ClientError> {
        Client::connect_with(zk_cluster, zk_root_path, ClientOptions::default())
    }

    pub fn connect_with(
        zk_cluster: &str,
        zk_root_path: &str,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(inside_a_runtime());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tessera-sdk")
            .enable_all()
            .build()
            .map_err(|e| ClientError::InvalidArgument(format!("cannot start a runtime: {e}")))?;
        let inner = runtime.block_on(crate::Client::connect_with(
            zk_cluster,
            zk_root_path,
            options,
        ))?;
        Ok(Client {
            inner: Some(inner),
            runtime: Some(runtime),
        })
    }

    /// Runs one call of the async client to its end.
    fn wait<'a, T, F>(&'a self, call: impl FnOnce(&'a crate::Client) -> F) -> Result<T, ClientError>
    where
        F: std::future::Future<Output = Result<T, ClientError>>,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(inside_a_runtime());
        }
        let inner = self.inner.as_ref().expect("present until dropped");
        let runtime = self.runtime.as_ref().expect("present until dropped");
        runtime.block_on(call(inner))
    }

    /// See [`crate::Client::put`].
    pub fn put(&self, db: &str, name: &str, row: Vec<Value>) -> Result<(u64, u64), ClientError> {
        self.wait(|c| c.put(db, name, row))
    }

    /// See [`crate::Client::put_batch`].
    pub fn put_batch(
        &self,
        db: &str,
        name: &str,
        rows: Vec<Vec<Value>>,
    ) -> Result<Vec<(u64, u64)>, ClientError> {
        self.wait(|c| c.put_batch(db, name, rows))
    }

    /// See [`crate::Client::get`].
    pub fn get(
        &self,
        db: &str,
        name: &str,
        key_values: Vec<Value>,
    ) -> Result<Option<Vec<Value>>, ClientError> {
        self.wait(|c| c.get(db, name, key_values))
    }

    /// See [`crate::Client::scan`].
    pub fn scan(
        &self,
        db: &str,
        name: &str,
        key_values: Vec<Value>,
        max_ts: Option<i64>,
        min_ts: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Vec<Value>>, ClientError> {
        self.wait(|c| c.scan(db, name, key_values, max_ts, min_ts, limit))
    }

    /// See [`crate::Client::scan_index`].
    #[allow(clippy::too_many_arguments)]
    pub fn scan_index(
        &self,
        db: &str,
        name: &str,
        index: &str,
        key_values: Vec<Value>,
        max_ts: Option<i64>,
        min_ts: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Vec<Value>>, ClientError> {
        self.wait(|c| c.scan_index(db, name, index, key_values, max_ts, min_ts, limit))
    }

    /// See [`crate::Client::count`].
    pub fn count(&self, db: &str, name: &str, key_values: Vec<Value>) -> Result<u64, ClientError> {
        self.wait(|c| c.count(db, name, key_values))
    }

    /// See [`crate::Client::preview`].
    pub fn preview(
        &self,
        db: &str,
        name: &str,
        limit: u32,
    ) -> Result<Vec<Vec<Value>>, ClientError> {
        self.wait(|c| c.preview(db, name, limit))
    }

    /// See [`crate::Client::delete`].
    pub fn delete(&self, db: &str, name: &str, key_values: Vec<Value>) -> Result<u64, ClientError> {
        self.wait(|c| c.delete(db, name, key_values))
    }

    /// See [`crate::Client::schema`].
    pub fn schema(&self, db: &str, name: &str) -> Result<Schema, ClientError> {
        self.wait(|c| c.schema(db, name))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        {
            // The client's tasks and connections end inside their runtime.
            let _inside = runtime.enter();
            self.inner.take();
        }
        // Dropping a runtime where blocking is not allowed (async code) would panic.
        runtime.shutdown_background();
    }
}
