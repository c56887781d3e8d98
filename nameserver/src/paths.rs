//! The ZooKeeper layout under `--zk_root_path`.

#[derive(Debug, Clone)]
pub struct Paths {
    root: String,
}

impl Paths {
    pub fn new(root: &str) -> Paths {
        Paths {
            root: root.trim_end_matches('/').to_string(),
        }
    }

    /// Election nodes (ephemeral sequential `n-…`); the lowest leads.
    pub fn leader_dir(&self) -> String {
        format!("{}/leader", self.root)
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes", self.root)
    }

    pub fn table_data(&self) -> String {
        format!("{}/table/table_data", self.root)
    }

    pub fn table(&self, db: &str, name: &str) -> String {
        format!("{}/table/table_data/{db}.{name}", self.root)
    }

    /// Databases, one node each.
    pub fn databases(&self) -> String {
        format!("{}/db", self.root)
    }

    pub fn database(&self, name: &str) -> String {
        format!("{}/db/{name}", self.root)
    }

    pub fn table_index(&self) -> String {
        format!("{}/table/table_index", self.root)
    }

    /// The term counter: every ChangeLeader takes a new term from it.
    pub fn term(&self) -> String {
        format!("{}/table/term", self.root)
    }

    pub fn table_changed(&self) -> String {
        format!("{}/notify/table_changed", self.root)
    }

    pub fn auto_failover(&self) -> String {
        format!("{}/config/auto_failover", self.root)
    }

    pub fn op_index(&self) -> String {
        format!("{}/op/op_index", self.root)
    }

    pub fn op_data(&self) -> String {
        format!("{}/op/op_data", self.root)
    }

    pub fn op(&self, op_id: u64) -> String {
        format!("{}/op/op_data/{op_id:010}", self.root)
    }

    /// Persistent directories the nameserver makes sure exist.
    /// Users, one node each (readable by the cluster's ZooKeeper identity only).
    pub fn users(&self) -> String {
        format!("{}/{}", self.root, tessera_common::zk_auth::SECRET_DIR)
    }

    pub fn user(&self, name: &str) -> String {
        format!("{}/{name}", self.users())
    }

    pub fn directories(&self) -> Vec<String> {
        vec![
            self.leader_dir(),
            self.nodes(),
            self.table_data(),
            self.databases(),
            format!("{}/notify", self.root),
            format!("{}/config", self.root),
            format!("{}/op/op_data", self.root),
            self.users(),
        ]
    }
}
