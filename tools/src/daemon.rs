//! `tessera-daemon`: keeps one server process running.
//!
//! The daemon starts the command, restarts it when it exits unexpectedly (a non-zero
//! status or a signal; a clean exit with status 0 ends the daemon too), waits
//! `restart_delay` between restarts, and gives up when the command had to be restarted
//! `max_restarts` times within `restart_window`. SIGTERM and SIGINT are forwarded to the
//! command; the daemon waits for it to stop (SIGKILL after `stop_timeout`) and exits.
//!
//! The command is started with a parent-death signal (SIGKILL), so it never outlives the
//! daemon, even when the daemon itself is killed with SIGKILL. The kernel sends that
//! signal when the *thread* that forked the command exits; the daemon therefore runs on a
//! single-threaded runtime, whose one thread lives as long as the process.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// What the daemon runs and how it keeps it running.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub command: Vec<String>,
    pub pidfile: Option<PathBuf>,
    pub child_pidfile: Option<PathBuf>,
    /// The daemon's own messages and the command's stdout and stderr are appended here.
    pub log: Option<PathBuf>,
    pub restart_delay: Duration,
    pub max_restarts: usize,
    pub restart_window: Duration,
    pub stop_timeout: Duration,
}

/// How the daemon ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DaemonExit {
    /// Stopped by SIGTERM or SIGINT, after the command stopped.
    Stopped,
    /// The command exited with status 0 on its own.
    CommandFinished,
    /// Too many restarts within the window.
    GaveUp,
    /// The command could not be started at all.
    SpawnFailed,
}

impl DaemonExit {
    pub fn code(&self) -> i32 {
        match self {
            DaemonExit::Stopped | DaemonExit::CommandFinished => 0,
            DaemonExit::GaveUp => 1,
            DaemonExit::SpawnFailed => 2,
        }
    }
}

/// Where the daemon's messages go (through `tracing`, set up by [`init_logging`]) and
/// where the command's output goes: the log file, or the daemon's own stdout and stderr.
struct DaemonLog {
    file: Option<File>,
}

impl DaemonLog {
    fn open(path: Option<&Path>) -> std::io::Result<DaemonLog> {
        let file = match path {
            Some(path) => Some(open_log(path)?),
            None => None,
        };
        Ok(DaemonLog { file })
    }

    fn say(&self, message: &str) {
        info!("{message}");
    }

    fn child_stdio(&self) -> std::io::Result<(Stdio, Stdio)> {
        match &self.file {
            Some(file) => Ok((file.try_clone()?.into(), file.try_clone()?.into())),
            None => Ok((Stdio::inherit(), Stdio::inherit())),
        }
    }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Sends the daemon's messages to `log` (appending) or to stderr.
pub fn init_logging(log: Option<&Path>) -> std::io::Result<()> {
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false);
    match log {
        Some(path) => builder
            .with_writer(std::sync::Mutex::new(open_log(path)?))
            .init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn write_pid(path: Option<&Path>, pid: u32) {
    if let Some(path) = path {
        let _ = std::fs::write(path, format!("{pid}\n"));
    }
}

fn remove(path: Option<&Path>) {
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("was killed by {signal}"),
            Err(_) => format!("was killed by signal {signal}"),
        },
        _ => "ended".into(),
    }
}

fn spawn(config: &DaemonConfig, log: &DaemonLog) -> std::io::Result<Child> {
    let (stdout, stderr) = log.child_stdio()?;
    let daemon_pid = std::process::id();
    let mut command = Command::new(&config.command[0]);
    command
        .args(&config.command[1..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe calls
    // (prctl, getppid).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The daemon may have died between fork and prctl: then nobody would signal.
            if std::os::unix::process::parent_id() != daemon_pid {
                return Err(std::io::Error::other(
                    "the daemon died while starting the command",
                ));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Restarts within the window, oldest first.
struct RestartBudget {
    recent: VecDeque<Instant>,
    max: usize,
    window: Duration,
}

impl RestartBudget {
    /// Records a restart; false when it would be one too many.
    fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// Runs the daemon until it stops or gives up. Must run on a current-thread runtime (see
/// the module comment).
pub async fn run(config: DaemonConfig) -> std::io::Result<DaemonExit> {
    let log = DaemonLog::open(config.log.as_deref())?;
    write_pid(config.pidfile.as_deref(), std::process::id());
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut budget = RestartBudget {
        recent: VecDeque::new(),
        max: config.max_restarts,
        window: config.restart_window,
    };
    let command_line = config.command.join(" ");
    let exit = loop {
        let mut child = match spawn(&config, &log) {
            Ok(child) => child,
            Err(e) => {
                log.say(&format!("cannot start `{command_line}`: {e}"));
                break DaemonExit::SpawnFailed;
            }
        };
        let pid = child.id().unwrap_or(0);
        write_pid(config.child_pidfile.as_deref(), pid);
        log.say(&format!("started `{command_line}` as pid {pid}"));

        let stop_signal = tokio::select! {
            status = child.wait() => {
                let status = status?;
                if status.success() {
                    log.say(&format!("pid {pid} {}; not restarting", describe(status)));
                    break DaemonExit::CommandFinished;
                }
                if !budget.allow(Instant::now()) {
                    log.say(&format!(
                        "pid {pid} {}; giving up: {} restarts within {:?}",
                        describe(status), config.max_restarts, config.restart_window
                    ));
                    break DaemonExit::GaveUp;
                }
                log.say(&format!(
                    "pid {pid} {}; restarting in {:?}",
                    describe(status), config.restart_delay
                ));
                remove(config.child_pidfile.as_deref());
                None
            }
            _ = terminate.recv() => Some(Signal::SIGTERM),
            _ = interrupt.recv() => Some(Signal::SIGINT),
        };
        if let Some(sig) = stop_signal {
            stop_child(&mut child, pid, sig, config.stop_timeout, &log).await;
            break DaemonExit::Stopped;
        }
        // A stop request during the delay stops the daemon without another start.
        tokio::select! {
            _ = tokio::time::sleep(config.restart_delay) => {}
            _ = terminate.recv() => break DaemonExit::Stopped,
            _ = interrupt.recv() => break DaemonExit::Stopped,
        }
    };
    if exit == DaemonExit::Stopped {
        log.say("stopped");
    }
    remove(config.child_pidfile.as_deref());
    remove(config.pidfile.as_deref());
    Ok(exit)
}

/// Forwards the stop signal and waits; SIGKILL once `timeout` has passed.
async fn stop_child(child: &mut Child, pid: u32, sig: Signal, timeout: Duration, log: &DaemonLog) {
    log.say(&format!("received {sig}; stopping pid {pid}"));
    let _ = kill(Pid::from_raw(pid as i32), sig);
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => log.say(&format!("pid {pid} {}", describe(status))),
        Ok(Err(e)) => log.say(&format!("waiting for pid {pid} failed: {e}")),
        Err(_) => {
            log.say(&format!(
                "pid {pid} did not stop within {timeout:?}; killing it"
            ));
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_budget_forgets_old_restarts() {
        let mut budget = RestartBudget {
            recent: VecDeque::new(),
            max: 2,
            window: Duration::from_secs(10),
        };
        let start = Instant::now();
        assert!(budget.allow(start));
        assert!(budget.allow(start + Duration::from_secs(1)));
        assert!(
            !budget.allow(start + Duration::from_secs(2)),
            "third within the window"
        );
        assert!(
            budget.allow(start + Duration::from_secs(12)),
            "the first aged out"
        );
    }
}
