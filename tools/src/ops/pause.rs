//! Remembering, in ZooKeeper, that `tessera-ops` turned `auto_failover` off.
//!
//! Before a command turns it off it creates `<root>/tools/auto_failover_pause` (only one
//! run at a time can) with who it is (pid, host, command, start time), then the setting
//! it found and the version of the setting's node once it turned it off; it deletes the
//! record once the setting is back. While it works its ZooKeeper session also holds the
//! ephemeral `<root>/tools/auto_failover_pause_owner`. A run that dies in between (Ctrl-C
//! is handled, `kill -9` or a lost machine is not) leaves the record, and the next run of
//! any command finds it, says so, and puts the setting back before doing anything else —
//! unless someone changed the setting since (then it is theirs and stays as it is).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError};

use super::{Ops, OpsError, Result};

/// What a run that turned auto_failover off wrote down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseRecord {
    /// auto_failover before the run turned it off (None: not read yet).
    pub was_on: Option<bool>,
    /// Version of the setting's node right after the run turned it off (None: not yet).
    pub off_version: Option<i32>,
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub started_ms: u64,
}

impl PauseRecord {
    fn mine(command: &str) -> PauseRecord {
        PauseRecord {
            was_on: None,
            off_version: None,
            pid: std::process::id(),
            host: host_name(),
            command: command.to_string(),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    fn encode(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
        format!(
            "was_on={}\noff_version={}\npid={}\nhost={}\ncommand={}\nstarted_ms={}\n",
            opt(self.was_on.map(|v| v.to_string())),
            opt(self.off_version.map(|v| v.to_string())),
            self.pid,
            self.host,
            self.command,
            self.started_ms
        )
    }

    fn decode(text: &str) -> Option<PauseRecord> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(PauseRecord {
            was_on: field("was_on")?.parse().ok(),
            off_version: field("off_version")?.parse().ok(),
            pid: field("pid")?.parse().ok()?,
            host: field("host")?.to_string(),
            command: field("command")?.to_string(),
            started_ms: field("started_ms")?.parse().ok()?,
        })
    }

    fn is_mine(&self) -> bool {
        self.pid == std::process::id() && self.host == host_name()
    }

    /// Whether the run that wrote it is still going: on this host, a `tessera-ops`
    /// process with its pid; elsewhere, `owner_alive` (its ZooKeeper session still holds
    /// the owner node).
    fn still_running(&self, owner_alive: bool) -> bool {
        if self.host != host_name() {
            return owner_alive;
        }
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .is_ok_and(|comm| comm.trim().starts_with("tessera-ops"))
    }

    fn describe(&self) -> String {
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(self.started_ms);
        format!(
            "`{}` (pid {} on {}, started {} s ago)",
            self.command,
            self.pid,
            self.host,
            age / 1000
        )
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl Ops {
    fn pause_path(&self) -> String {
        format!("{}/tools/auto_failover_pause", self.zk_root_path)
    }

    fn owner_path(&self) -> String {
        format!("{}/tools/auto_failover_pause_owner", self.zk_root_path)
    }

    fn setting_path(&self) -> String {
        format!("{}/config/auto_failover", self.zk_root_path)
    }

    /// This run's ZooKeeper session, opened once and kept until the process exits (it
    /// holds the owner node while the run has auto_failover off).
    async fn zk(&mut self) -> Result<Client> {
        if let Some(zk) = &self.zk_session {
            return Ok(zk.clone());
        }
        let zk = Client::connector()
            .with_session_timeout(Duration::from_secs(10))
            .connect(&self.zk_cluster)
            .await
            .map_err(|e| OpsError::Connect(format!("ZooKeeper at {}: {e}", self.zk_cluster)))?;
        self.zk_session = Some(zk.clone());
        Ok(zk)
    }

    async fn read_pause(&self, zk: &Client) -> Result<Option<(PauseRecord, i32)>> {
        match zk.get_data(&self.pause_path()).await {
            Ok((data, stat)) => Ok(PauseRecord::decode(&String::from_utf8_lossy(&data))
                .map(|record| (record, stat.version))),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_pause(&self, zk: &Client, record: &PauseRecord) -> Result<()> {
        zk.set_data(&self.pause_path(), record.encode().as_bytes(), None)
            .await?;
        Ok(())
    }

    /// Deletes the record (only as read, at `version`, when given) and the owner node.
    async fn clear_pause(&self, zk: &Client, version: Option<i32>) -> Result<()> {
        match zk.delete(&self.pause_path(), version).await {
            Ok(()) | Err(ZkError::NoNode) => {}
            Err(ZkError::BadVersion) => {
                return Err(OpsError::InvalidArgument(
                    "the auto_failover pause record changed meanwhile; run again".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        match zk.delete(&self.owner_path(), None).await {
            Ok(()) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn setting_version(&self, zk: &Client) -> Result<Option<i32>> {
        Ok(zk
            .check_stat(&self.setting_path())
            .await?
            .map(|stat| stat.version))
    }

    /// Puts back what `record` says was found, unless the setting changed since the run
    /// turned it off (someone else's decision, kept), then forgets the record.
    async fn restore_from(
        &mut self,
        zk: &Client,
        record: &PauseRecord,
        record_version: i32,
    ) -> Result<()> {
        let changed_since = match record.off_version {
            Some(off) => self.setting_version(zk).await? != Some(off),
            None => false,
        };
        if changed_since {
            println!(
                "auto_failover was changed by someone else since {} turned it off; leaving it \
                 as it is",
                record.describe()
            );
        } else if record.was_on == Some(true) {
            self.set_auto_failover(true).await?;
            println!("auto_failover is on again");
        }
        self.clear_pause(zk, Some(record_version)).await
    }

    /// Finds a run that turned auto_failover off and ended without putting it back, says
    /// so, and restores the setting it found. Refuses while that run is still going.
    pub async fn restore_interrupted(&mut self) -> Result<()> {
        let zk = self.zk().await?;
        let Some((record, version)) = self.read_pause(&zk).await? else {
            return Ok(());
        };
        if !record.is_mine() {
            // The owner node is created before the record and goes with its run's session.
            let owner_alive = zk.check_stat(&self.owner_path()).await?.is_some();
            if record.still_running(owner_alive) {
                return Err(OpsError::InvalidArgument(format!(
                    "another run, {}, has auto_failover off and is still working; wait for it",
                    record.describe()
                )));
            }
            println!(
                "an earlier run, {}, ended without restoring auto_failover (it was {}); \
                 restoring it",
                record.describe(),
                match record.was_on {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "not read yet",
                }
            );
        } else if record.off_version.is_none() {
            // This run was interrupted while turning it off: let that request land first,
            // so it cannot undo the restore.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.restore_from(&zk, &record, version).await
    }

    /// Turns auto_failover off, first writing down what it was, and returns what it was,
    /// for [`Ops::restore_auto_failover`]. Only one run at a time may have it off.
    pub async fn pause_auto_failover(&mut self) -> Result<bool> {
        self.restore_interrupted().await?;
        let zk = self.zk().await?;
        let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
        match zk
            .mkdir(&format!("{}/tools", self.zk_root_path), &options)
            .await
        {
            Ok(()) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(e.into()),
        }
        // The owner node first (only one run can hold it), then the record, both before
        // the setting is read: a second run cannot slip in between, and a run that sees a
        // record always sees its owner while the owner lives.
        let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
        let mut record = PauseRecord::mine(&self.command);
        match zk
            .create(&self.owner_path(), record.encode().as_bytes(), &ephemeral)
            .await
        {
            Ok(_) => {}
            Err(ZkError::NodeExists) => {
                return Err(OpsError::InvalidArgument(
                    "another tessera-ops run has auto_failover off and is working; wait for it"
                        .into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        match zk
            .create(&self.pause_path(), record.encode().as_bytes(), &options)
            .await
        {
            Ok(_) => {}
            Err(ZkError::NodeExists) => {
                return Err(OpsError::InvalidArgument(
                    "another tessera-ops run just turned auto_failover off; wait for it".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let found = self.auto_failover().await?;
        record.was_on = Some(found);
        self.write_pause(&zk, &record).await?;
        if !found {
            // Nothing to put back.
            self.clear_pause(&zk, None).await?;
            return Ok(false);
        }
        self.set_auto_failover(false).await?;
        record.off_version = self.setting_version(&zk).await?;
        self.write_pause(&zk, &record).await?;
        println!("auto_failover was on: off while this command works");
        Ok(true)
    }

    /// Puts auto_failover back and forgets the record; reports (and does not hide the
    /// command's result) when it cannot, leaving the record for the next run.
    pub async fn restore_auto_failover(&mut self, found: bool) {
        if !found {
            return;
        }
        let restored = async {
            let zk = self.zk().await?;
            match self.read_pause(&zk).await? {
                Some((record, version)) if record.is_mine() => {
                    self.restore_from(&zk, &record, version).await
                }
                // Gone: another run took it for an interrupted one and restored the
                // setting already (or someone deleted it); nothing is ours to put back.
                _ => {
                    println!("auto_failover was restored by another run");
                    Ok(())
                }
            }
        }
        .await;
        if let Err(e) = restored {
            eprintln!(
                "could not turn auto_failover back on ({e}); the next tessera-ops run will, \
                 or run `confset auto_failover true` in ns_client"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let mut record = PauseRecord::mine("recoverdata");
        assert_eq!(PauseRecord::decode(&record.encode()), Some(record.clone()));
        record.was_on = Some(true);
        record.off_version = Some(7);
        assert_eq!(PauseRecord::decode(&record.encode()), Some(record.clone()));
        assert!(record.is_mine());
        assert!(PauseRecord::decode("was_on=true\n").is_none());
    }

    #[test]
    fn a_dead_run_is_not_running() {
        let record = PauseRecord {
            pid: u32::MAX,
            ..PauseRecord::mine("scalein")
        };
        assert!(!record.still_running(true), "no such process here");
        let elsewhere = PauseRecord {
            host: "some-other-host".into(),
            ..record
        };
        assert!(
            elsewhere.still_running(true),
            "its session holds the owner node"
        );
        assert!(!elsewhere.still_running(false), "its session is gone");
    }
}
