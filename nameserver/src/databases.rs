//! Databases: a node each under `<root>/db`, so that a database exists before its first
//! table and `use` of a misspelt name is an error. A database holding tables exists even
//! without its node (tables created before databases had nodes, or by a client that
//! never created one), and `default` always exists.

use std::collections::BTreeSet;

use tracing::info;
use zookeeper_client::Error as ZkError;

use crate::error::{NsError, Result};
use crate::state::{check_name, Nameserver, DEFAULT_DB};

impl Nameserver {
    /// Every database: `default`, the created ones, and those holding tables.
    pub async fn databases(&self) -> Result<Vec<String>> {
        let client = self.client()?;
        let mut dbs: BTreeSet<String> = match client.list_children(&self.paths.databases()).await {
            Ok(names) => names.into_iter().collect(),
            Err(ZkError::NoNode) => BTreeSet::new(),
            Err(e) => return Err(e.into()),
        };
        dbs.extend(self.tables().await?.into_iter().map(|t| t.db));
        dbs.insert(DEFAULT_DB.to_string());
        Ok(dbs.into_iter().collect())
    }

    pub async fn create_database(&self, name: &str) -> Result<()> {
        check_name("database", name)?;
        let lock = self.lock().await?;
        let _admin = self.admin.lock().await;
        let exists = || NsError::InvalidArgument(format!("database `{name}` already exists"));
        if self.databases().await?.iter().any(|db| db == name) {
            return Err(exists());
        }
        match lock
            .create(&self.paths.database(name), b"", &crate::state::persistent())
            .await
        {
            Ok(_) => {}
            Err(ZkError::NodeExists) => return Err(exists()),
            Err(e) => return Err(e.into()),
        }
        info!(db = name, "database created");
        Ok(())
    }

    /// Records `db` as a database if it has no node yet: a table created in it (by an
    /// SDK, or before databases had nodes) makes it exist, and it stays after its last
    /// table is dropped until `dropdb`. Call under the admin lock.
    pub(crate) async fn record_database(
        &self,
        lock: &zookeeper_client::OwnedLockClient,
        db: &str,
    ) -> Result<()> {
        match lock
            .create(&self.paths.database(db), b"", &crate::state::persistent())
            .await
        {
            Ok(_) | Err(ZkError::NodeExists) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Drops an empty database; refused while it holds tables, and for `default`.
    pub async fn drop_database(&self, name: &str) -> Result<()> {
        check_name("database", name)?;
        if name == DEFAULT_DB {
            return Err(NsError::InvalidArgument(
                "the default database cannot be dropped".into(),
            ));
        }
        let lock = self.lock().await?;
        let _admin = self.admin.lock().await;
        let tables: Vec<String> = self
            .tables()
            .await?
            .into_iter()
            .filter(|t| t.db == name)
            .map(|t| t.name)
            .collect();
        if !tables.is_empty() {
            return Err(NsError::InvalidArgument(format!(
                "database `{name}` still holds {} table(s) ({}); drop them first",
                tables.len(),
                tables.join(", ")
            )));
        }
        match lock.delete(&self.paths.database(name), None).await {
            Ok(()) => {
                info!(db = name, "database dropped");
                Ok(())
            }
            Err(ZkError::NoNode) => Err(NsError::InvalidArgument(format!(
                "database `{name}` does not exist"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
