//! A real ZooKeeper server (Debian's `zookeeper` package) on a loopback port, with the
//! short session limits fast failover tests need.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{self, free_port, log_tail};
use crate::wait::wait_until;

/// A running ZooKeeper server; killed when dropped.
pub struct ZooKeeper {
    child: Option<Child>,
    pub port: u16,
    pub log_path: PathBuf,
}

/// `scripts/zookeeper.sh`, the one place that knows how to run Debian's ZooKeeper.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/zookeeper.sh")
}

impl ZooKeeper {
    /// Whether Debian's ZooKeeper is installed (scripts/test.sh installs it).
    pub fn available() -> bool {
        Path::new("/usr/share/java/zookeeper.jar").exists()
    }

    /// Starts a standalone server with its data under `dir` and waits until it answers.
    pub fn start(dir: &Path) -> ZooKeeper {
        assert!(Self::available(), "ZooKeeper is not installed: run scripts/test.sh, which installs Debian's `zookeeper` package");
        fs::create_dir_all(dir).expect("create the ZooKeeper directory");
        let port = free_port();
        let log_path = dir.join("zookeeper.log");
        let log = fs::File::create(&log_path).expect("create ZooKeeper log");
        let child = Command::new("bash")
            .arg(script())
            .arg("run")
            .arg(dir.join("zookeeper"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn scripts/zookeeper.sh");
        let mut zk = ZooKeeper {
            child: Some(child),
            port,
            log_path,
        };
        let what = format!("ZooKeeper on port {port} to serve");
        wait_until(Duration::from_secs(30), &what, || {
            if let Some(status) = zk.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "ZooKeeper exited with {status}:\n{}",
                    log_tail(&zk.log_path, 30)
                );
            }
            // `ruok` answers before the server serves; `srvr` reports a mode only once it does.
            zk.four_letter("srvr").is_some_and(|s| s.contains("Mode: "))
        });
        zk
    }

    /// `127.0.0.1:<port>`, for `--zk_cluster`.
    /// The server's process id (the script execs java).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("ZooKeeper is running").id()
    }

    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends a four-letter command and returns the answer.
    pub fn four_letter(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(command.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    /// SIGSTOP: the server freezes; clients' requests go unanswered.
    pub fn pause(&self) {
        process::signal(
            self.child.as_ref().expect("ZooKeeper is running"),
            libc::SIGSTOP,
        );
    }

    /// SIGCONT after [`ZooKeeper::pause`].
    pub fn resume(&self) {
        process::signal(
            self.child.as_ref().expect("ZooKeeper is running"),
            libc::SIGCONT,
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(&mut child);
        }
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill9();
    }
}
