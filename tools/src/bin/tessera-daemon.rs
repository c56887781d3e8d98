//! `tessera-daemon [--pidfile=F] [--child_pidfile=F] [--log=F] -- <command…>`: runs a
//! server process and keeps it running. See `tessera_tools::daemon`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tessera_tools::daemon::{self, DaemonConfig};

/// Runs a command, restarts it when it exits unexpectedly, and stops it with the daemon.
#[derive(Debug, Parser)]
#[command(name = "tessera-daemon", version, rename_all = "snake_case")]
struct Args {
    /// Write the daemon's pid here (removed when it exits).
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// Write the running command's pid here (rewritten on every restart).
    #[arg(long)]
    child_pidfile: Option<PathBuf>,
    /// Append the daemon's messages and the command's output to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Milliseconds to wait before restarting a command that exited.
    #[arg(long, default_value_t = 2000)]
    restart_delay: u64,
    /// Give up after this many restarts within --restart_window.
    #[arg(long, default_value_t = 5)]
    max_restarts: usize,
    /// Seconds over which restarts are counted.
    #[arg(long, default_value_t = 300)]
    restart_window: u64,
    /// Seconds to wait for the command to stop after SIGTERM/SIGINT before SIGKILL.
    #[arg(long, default_value_t = 60)]
    stop_timeout: u64,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = daemon::init_logging(args.log.as_deref()) {
        eprintln!("tessera-daemon: cannot open the log: {e}");
        return ExitCode::from(2);
    }
    let config = DaemonConfig {
        command: args.command,
        pidfile: args.pidfile,
        child_pidfile: args.child_pidfile,
        log: args.log,
        restart_delay: Duration::from_millis(args.restart_delay),
        max_restarts: args.max_restarts,
        restart_window: Duration::from_secs(args.restart_window),
        stop_timeout: Duration::from_secs(args.stop_timeout),
    };
    // One thread only: the command's parent-death signal is tied to the forking thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tessera-daemon: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(exit) => ExitCode::from(exit.code() as u8),
        Err(e) => {
            eprintln!("tessera-daemon: {e}");
            ExitCode::from(2)
        }
    }
}
