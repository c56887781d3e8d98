//! Remembering, in ZooKeeper, that `tessera-ops` turned `auto_failover` off.
//!
//! A run that turns it off first takes `<root>/tools/auto_failover_pause_owner`, an
//! ephemeral node (so it goes with the run's ZooKeeper session, and only one run holds it
//! at a time), then writes `<root>/tools/auto_failover_pause`: who it is (pid, host,
//! command, start time), the setting it found, and the version of the setting's node
//! once it turned it off. It deletes the record once the setting is back, then lets the
//! owner node go. A run that dies in between (Ctrl-C is handled, `kill -9` or a lost
//! machine is not) leaves the record; the next run of any command takes the owner node
//! (waiting for the dead run's session to end, when that run was on this host), finds the
//! record, says so, and puts the setting back before doing anything else — unless someone
//! changed the setting since (then it is theirs and stays as it is). Everything that
//! touches the record happens while holding the owner node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_common::zk_auth;
use zookeeper_client::{Client, CreateMode, Error as ZkError};

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

    /// Whether the process that wrote it is certainly gone: it ran on this host and no
    /// `tessera-ops` process has its pid. (On another host only its ZooKeeper session
    /// tells, by the owner node going away.)
    fn process_gone(&self) -> bool {
        self.host == host_name()
            && !std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
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

/// How long to wait for the owner node of a run that is gone from this host (its
/// ZooKeeper session ends within its timeout).
const OWNER_WAIT: Duration = Duration::from_secs(30);
/// The session timeout of a run's own ZooKeeper session.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

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
        let zk = zk_auth::connector()
            .with_session_timeout(SESSION_TIMEOUT)
            .connect(&self.zk_cluster)
            .await
            .map_err(|e| OpsError::Connect(format!("ZooKeeper at {}: {e}", self.zk_cluster)))?;
        let options = CreateMode::Persistent.with_acls(zk_auth::acls());
        match zk
            .mkdir(&format!("{}/tools", self.zk_root_path), &options)
            .await
        {
            Ok(()) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(e.into()),
        }
        self.zk_session = Some(zk.clone());
        Ok(zk)
    }

    /// Takes the owner node. A holder that is gone from this host (killed, or this very
    /// process before an interruption) is waited for; a live one, or one on another host,
    /// is working: refused.
    async fn acquire_owner(&mut self, zk: &Client) -> Result<()> {
        let me = PauseRecord::mine(&self.command);
        let ephemeral = CreateMode::Ephemeral.with_acls(zk_auth::acls());
        let deadline = tokio::time::Instant::now() + OWNER_WAIT;
        let mut told = false;
        loop {
            match zk
                .create(&self.owner_path(), me.encode().as_bytes(), &ephemeral)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ZkError::NodeExists) => {}
                Err(e) => return Err(e.into()),
            }
            let holder = match zk.get_data(&self.owner_path()).await {
                Ok((data, _)) => PauseRecord::decode(&String::from_utf8_lossy(&data)),
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err(e.into()),
            };
            let gone = holder
                .as_ref()
                .is_some_and(|h| h.process_gone() || h.is_mine());
            if !gone || tokio::time::Instant::now() >= deadline {
                let who = holder.map_or_else(|| "unknown".to_string(), |h| h.describe());
                return Err(OpsError::InvalidArgument(format!(
                    "another tessera-ops run, {who}, has auto_failover off and is working; \
                     wait for it"
                )));
            }
            if !told {
                println!(
                    "waiting for the ZooKeeper session of an interrupted run to end (up to {} s)",
                    SESSION_TIMEOUT.as_secs()
                );
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn release_owner(&self, zk: &Client) -> Result<()> {
        match zk.delete(&self.owner_path(), None).await {
            Ok(()) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_pause(&self, zk: &Client) -> Result<Option<PauseRecord>> {
        match zk.get_data(&self.pause_path()).await {
            Ok((data, _)) => Ok(PauseRecord::decode(&String::from_utf8_lossy(&data))),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_pause(&self, zk: &Client, record: &PauseRecord) -> Result<()> {
        zk.set_data(&self.pause_path(), record.encode().as_bytes(), None)
            .await?;
        Ok(())
    }

    async fn delete_pause(&self, zk: &Client) -> Result<()> {
        match zk.delete(&self.pause_path(), None).await {
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

    /// With the owner node held: puts back what `record` says was found, unless the
    /// setting changed since the run turned it off (someone else's decision, kept), then
    /// forgets the record.
    async fn restore_from(&mut self, zk: &Client, record: &PauseRecord) -> Result<()> {
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
        self.delete_pause(zk).await
    }

    /// With the owner node held: a record left means its run ended without putting the
    /// setting back; says so and restores it.
    async fn restore_left_record(&mut self, zk: &Client) -> Result<()> {
        let Some(record) = self.read_pause(zk).await? else {
            return Ok(());
        };
        if record.is_mine() {
            if record.off_version.is_none() {
                // Interrupted while turning it off: let that request land first, so it
                // cannot undo the restore.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        } else {
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
        }
        self.restore_from(zk, &record).await
    }

    /// Finds a run that turned auto_failover off and ended without putting it back, says
    /// so, and restores the setting it found. Refuses while another run is working.
    pub async fn restore_interrupted(&mut self) -> Result<()> {
        let zk = self.zk().await?;
        self.acquire_owner(&zk).await?;
        let restored = self.restore_left_record(&zk).await;
        self.release_owner(&zk).await?;
        restored
    }

    /// Turns auto_failover off, first writing down what it was, and returns what it was,
    /// for [`Ops::restore_auto_failover`]. Only one run at a time may have it off.
    pub async fn pause_auto_failover(&mut self) -> Result<bool> {
        let zk = self.zk().await?;
        self.acquire_owner(&zk).await?;
        let paused = async {
            self.restore_left_record(&zk).await?;
            let options = CreateMode::Persistent.with_acls(zk_auth::acls());
            let mut record = PauseRecord::mine(&self.command);
            zk.create(&self.pause_path(), record.encode().as_bytes(), &options)
                .await?;
            let found = self.auto_failover().await?;
            record.was_on = Some(found);
            self.write_pause(&zk, &record).await?;
            if !found {
                // Nothing to put back.
                self.delete_pause(&zk).await?;
                return Ok(false);
            }
            if let Err(e) = self.set_auto_failover(false).await {
                // Turned down (a user who may not change it): nothing changed, and the
                // record would only make the next run report a run that never did
                // anything. Otherwise the change may still land: the record stays, so
                // the next run puts the setting back.
                if matches!(e, OpsError::Denied(_)) {
                    self.delete_pause(&zk).await?;
                }
                return Err(e);
            }
            record.off_version = self.setting_version(&zk).await?;
            self.write_pause(&zk, &record).await?;
            println!("auto_failover was on: off while this command works");
            Ok(true)
        }
        .await;
        if !matches!(paused, Ok(true)) {
            // Nothing is off (or the record says what is): the owner node can go.
            let _ = self.release_owner(&zk).await;
        }
        paused
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
                Some(record) => self.restore_from(&zk, &record).await?,
                None => {
                    // The record could not be read back; put back what was found.
                    self.set_auto_failover(true).await?;
                    println!("auto_failover is on again");
                }
            }
            self.release_owner(&zk).await
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
    fn a_dead_run_is_gone() {
        let record = PauseRecord {
            pid: u32::MAX,
            ..PauseRecord::mine("scalein")
        };
        assert!(record.process_gone(), "no such process here");
        let elsewhere = PauseRecord {
            host: "some-other-host".into(),
            ..record
        };
        assert!(
            !elsewhere.process_gone(),
            "runs on other hosts are told by their session"
        );
    }
}
