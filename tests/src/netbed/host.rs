//! A process on one host of the bed: started inside the host's network namespace, killed,
//! paused and restarted with real signals.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::network::Host;
use crate::process;

/// What to run and where its output goes.
pub struct HostProcess {
    pub host: Host,
    program: PathBuf,
    args: Vec<String>,
    pub log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl HostProcess {
    /// Starts `program args` on `host`, output appended to `log_path`.
    pub fn start(host: &Host, program: PathBuf, args: Vec<String>, log_path: PathBuf) -> Self {
        let mut process = HostProcess {
            host: host.clone(),
            program,
            args,
            log_path,
            child: None,
            paused: false,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.host.name);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the process log");
        let netns = self.host.netns_file();
        let fd = netns.as_raw_fd();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        // SAFETY: only setns(2), async-signal-safe, runs between fork and exec; the
        // namespace file stays open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {} on {}: {e}",
                self.program.display(),
                self.host.name
            )
        });
        drop(netns);
        self.child = Some(child);
        self.paused = false;
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The exit status if it has exited (and was not killed by the bed).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL (resuming it first if paused, so the kernel can reap it).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(&mut child);
        }
        self.paused = false;
    }

    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            if child.id() > 0 && !self.paused {
                process::signal(child, libc::SIGSTOP);
                self.paused = true;
            }
        }
    }

    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            if self.paused {
                process::signal(child, libc::SIGCONT);
                self.paused = false;
            }
        }
    }

    /// Starts it again (same host, arguments and data) unless it runs.
    pub fn restart(&mut self) {
        if !self.running() {
            self.child = None;
            self.spawn();
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log_path, lines)
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
