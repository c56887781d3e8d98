//! Remembering, in ZooKeeper, that `tessera-ops` turned `auto_failover` off.
//!
//! Before a command turns it off it writes `<root>/tools/auto_failover_pause` with the
//! setting it found and who it is (pid, host, command, start time); it deletes the record
//! once the setting is back. A run that dies in between (Ctrl-C is handled, `kill -9` or
//! a lost machine is not) leaves the record, and the next run of any command finds it,
//! says so, and puts the setting back before doing anything else.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError};

use super::{Ops, OpsError, Result};

/// What a run that turned auto_failover off wrote down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseRecord {
    /// auto_failover before the run turned it off.
    pub was_on: bool,
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub started_ms: u64,
}

impl PauseRecord {
    fn mine(command: &str, was_on: bool) -> PauseRecord {
        PauseRecord {
            was_on,
            pid: std::process::id(),
            host: host_name(),
            command: command.to_string(),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    fn encode(&self) -> String {
        format!(
            "was_on={}\npid={}\nhost={}\ncommand={}\nstarted_ms={}\n",
            self.was_on, self.pid, self.host, self.command, self.started_ms
        )
    }

    fn decode(text: &str) -> Option<PauseRecord> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(PauseRecord {
            was_on: field("was_on")?.parse().ok()?,
            pid: field("pid")?.parse().ok()?,
            host: field("host")?.to_string(),
            command: field("command")?.to_string(),
            started_ms: field("started_ms")?.parse().ok()?,
        })
    }

    fn is_mine(&self) -> bool {
        self.pid == std::process::id() && self.host == host_name()
    }

    /// Whether the run that wrote it is still going: a `tessera-ops` process with its pid
    /// on this host. (A run on another host is taken as still going; only an operator
    /// knows better.)
    fn still_running(&self) -> bool {
        if self.host != host_name() {
            return true;
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

    async fn zk(&self) -> Result<Client> {
        Client::connector()
            .with_session_timeout(Duration::from_secs(10))
            .connect(&self.zk_cluster)
            .await
            .map_err(|e| OpsError::Connect(format!("ZooKeeper at {}: {e}", self.zk_cluster)))
    }

    async fn read_pause(&self, zk: &Client) -> Result<Option<PauseRecord>> {
        match zk.get_data(&self.pause_path()).await {
            Ok((data, _)) => Ok(PauseRecord::decode(&String::from_utf8_lossy(&data))),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn clear_pause(&self, zk: &Client) -> Result<()> {
        match zk.delete(&self.pause_path(), None).await {
            Ok(()) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Finds a run that turned auto_failover off and ended without putting it back, says
    /// so, and restores the setting it found. Refuses while that run is still going.
    pub async fn restore_interrupted(&mut self) -> Result<()> {
        let zk = self.zk().await?;
        let Some(record) = self.read_pause(&zk).await? else {
            return Ok(());
        };
        if !record.is_mine() && record.still_running() {
            return Err(OpsError::InvalidArgument(format!(
                "another run, {}, has auto_failover off and is still working; wait for it \
                 (or, if it is gone, delete {} in ZooKeeper)",
                record.describe(),
                self.pause_path()
            )));
        }
        println!(
            "an earlier run, {}, ended without restoring auto_failover (it was {}); \
             restoring it",
            record.describe(),
            if record.was_on { "on" } else { "off" }
        );
        if record.was_on {
            self.set_auto_failover(true).await?;
            println!("auto_failover is on again");
        }
        self.clear_pause(&zk).await
    }

    /// Turns auto_failover off, first writing down what it was, and returns what it was,
    /// for [`Ops::restore_auto_failover`].
    pub async fn pause_auto_failover(&mut self) -> Result<bool> {
        self.restore_interrupted().await?;
        let found = self.auto_failover().await?;
        if found {
            let zk = self.zk().await?;
            let record = PauseRecord::mine(&self.command, true);
            let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
            match zk
                .create(&self.pause_path(), record.encode().as_bytes(), &options)
                .await
            {
                Ok(_) => {}
                Err(ZkError::NoNode) => {
                    zk.mkdir(&format!("{}/tools", self.zk_root_path), &options)
                        .await
                        .or_else(|e| {
                            if e == ZkError::NodeExists {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })?;
                    zk.create(&self.pause_path(), record.encode().as_bytes(), &options)
                        .await?;
                }
                Err(e) => return Err(e.into()),
            }
            self.set_auto_failover(false).await?;
            println!("auto_failover was on: off while this command works");
        }
        Ok(found)
    }

    /// Puts auto_failover back and forgets the record; reports (and does not hide the
    /// command's result) when it cannot, leaving the record for the next run.
    pub async fn restore_auto_failover(&mut self, found: bool) {
        if !found {
            return;
        }
        let restored = async {
            self.set_auto_failover(true).await?;
            let zk = self.zk().await?;
            self.clear_pause(&zk).await
        }
        .await;
        match restored {
            Ok(()) => println!("auto_failover is on again"),
            Err(e) => eprintln!(
                "could not turn auto_failover back on ({e}); the next tessera-ops run will, \
                 or run `confset auto_failover true` in ns_client"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let record = PauseRecord::mine("recoverdata", true);
        assert_eq!(PauseRecord::decode(&record.encode()), Some(record.clone()));
        assert!(record.is_mine());
        assert!(PauseRecord::decode("was_on=maybe\n").is_none());
    }

    #[test]
    fn a_dead_run_is_not_running() {
        let record = PauseRecord {
            pid: u32::MAX,
            ..PauseRecord::mine("scalein", true)
        };
        assert!(!record.still_running());
        let elsewhere = PauseRecord {
            host: "some-other-host".into(),
            ..record
        };
        assert!(
            elsewhere.still_running(),
            "runs on other hosts are not second-guessed"
        );
    }
}
