//! `tessera-daemon`: restarts a crashing command, stops a crash loop, stops cleanly on
//! SIGTERM, and never leaves its command behind, even when it is killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tessera_tests::process::{kill9, log_tail, pid_alive, read_pid, signal, wait_exit};
use tessera_tests::{binary, free_port, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

struct Daemon {
    child: Child,
    pidfile: PathBuf,
    child_pidfile: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, options: &[&str], command: &[&str]) -> Daemon {
        let (pidfile, child_pidfile, log) = (
            dir.join("daemon.pid"),
            dir.join("child.pid"),
            dir.join("daemon.log"),
        );
        let child = Command::new(binary("tessera-daemon"))
            .arg(format!("--pidfile={}", pidfile.display()))
            .arg(format!("--child_pidfile={}", child_pidfile.display()))
            .arg(format!("--log={}", log.display()))
            .args(options)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn tessera-daemon");
        Daemon {
            child,
            pidfile,
            child_pidfile,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn child_pid(&self) -> Option<i32> {
        read_pid(&self.child_pidfile)
    }

    /// Waits for the command to be running under a pid other than `previous`.
    fn wait_child(&self, previous: Option<i32>) -> i32 {
        let mut pid = None;
        wait_until(DEADLINE, "the daemon to start its command", || {
            pid = self
                .child_pid()
                .filter(|p| Some(*p) != previous && pid_alive(*p));
            pid.is_some()
        });
        pid.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill9(&mut self.child);
        if let Some(pid) = self.child_pid() {
            // SAFETY: kill(2); at worst the pid is already gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn kill_pid(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid the test just read from a pidfile.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid}");
}

#[test]
fn a_crashing_command_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--restart_delay=100"],
        &["sh", "-c", "exec sleep 1000"],
    );
    let first = daemon.wait_child(None);
    assert_eq!(
        std::fs::read_to_string(&daemon.pidfile).unwrap().trim(),
        daemon.child.id().to_string(),
        "the pidfile names the daemon"
    );
    kill_pid(first, libc::SIGKILL);
    let second = daemon.wait_child(Some(first));
    assert_ne!(first, second);
    let log = daemon.log();
    assert!(
        log.contains(&format!("pid {first} was killed by SIGKILL; restarting")),
        "{log}"
    );
    // And once more: every unexpected exit is followed by a restart.
    kill_pid(second, libc::SIGKILL);
    daemon.wait_child(Some(second));
}

#[test]
fn the_restart_cap_stops_a_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(
        dir.path(),
        &[
            "--restart_delay=50",
            "--max_restarts=3",
            "--restart_window=600",
        ],
        &["sh", "-c", "echo crashing; exit 3"],
    );
    let status = wait_exit(&mut daemon.child, DEADLINE).expect("the daemon gives up");
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    let log = daemon.log();
    assert_eq!(
        log.lines().filter(|l| *l == "crashing").count(),
        4,
        "first run and three restarts: {log}"
    );
    assert!(
        log.contains("exited with status 3; giving up: 3 restarts within 600s"),
        "{log}"
    );
    assert!(!daemon.pidfile.exists(), "the pidfile is removed");
}

#[test]
fn a_clean_exit_is_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &["--restart_delay=50"], &["true"]);
    let status = wait_exit(&mut daemon.child, DEADLINE).expect("the daemon ends");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        daemon.log().matches("started").count(),
        1,
        "{}",
        daemon.log()
    );
    assert!(daemon
        .log()
        .contains("exited with status 0; not restarting"));
}

#[test]
fn sigterm_stops_the_daemon_and_its_tablet_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let tablet = binary("tessera-tablet");
    let mut daemon = Daemon::start(
        dir.path(),
        &[],
        &[
            tablet.to_str().unwrap(),
            &format!("--endpoint={endpoint}"),
            &tessera_tests::credentials::secret_flag(),
            &format!("--db_root_path={}", dir.path().join("db").display()),
        ],
    );
    let tablet_pid = daemon.wait_child(None);
    wait_until(DEADLINE, "the tablet to serve", || {
        daemon.log().contains("tablet serving")
    });
    signal(&daemon.child, libc::SIGTERM);
    let status = wait_exit(&mut daemon.child, DEADLINE).expect("the daemon stops");
    let log = daemon.log();
    assert_eq!(status.code(), Some(0), "{}", log_tail(&daemon.log, 20));
    assert!(log.contains("received SIGTERM; stopping"), "{log}");
    assert!(
        log.contains("tablet stopped"),
        "the tablet shut down cleanly: {log}"
    );
    assert!(
        log.contains(&format!("pid {tablet_pid} exited with status 0")),
        "{log}"
    );
    assert!(!pid_alive(tablet_pid), "the tablet is gone");
    assert!(!daemon.pidfile.exists() && !daemon.child_pidfile.exists());
}

#[test]
fn sigkill_of_the_daemon_takes_its_command_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &[], &["sh", "-c", "exec sleep 1000"]);
    let child = daemon.wait_child(None);
    kill9(&mut daemon.child);
    wait_until(DEADLINE, "the command to die with its daemon", || {
        !pid_alive(child)
    });
}
