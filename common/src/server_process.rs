//! What every server binary does the same way: logging to stderr and waiting for the
//! signal to stop.

use std::time::Duration;

use tracing_subscriber::EnvFilter;

/// Logs to stderr at `info` (or `RUST_LOG`), with colour only on a terminal: log files
/// must stay greppable.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Checks the settings of a process elected through ZooKeeper (`what`: nameserver,
/// taskmanager).
pub fn validate_elected(
    what: &str,
    endpoint: &str,
    zk_cluster: &str,
    zk_root_path: &str,
    zk_session_timeout: Duration,
) -> Result<(), String> {
    crate::Endpoint::parse(endpoint)?;
    if zk_cluster.is_empty() {
        return Err(format!(
            "zk_cluster is required: the {what} is elected through ZooKeeper"
        ));
    }
    if !zk_root_path.starts_with('/') {
        return Err(format!("zk_root_path `{zk_root_path}` must start with /"));
    }
    if zk_session_timeout < Duration::from_millis(400) {
        return Err("zk_session_timeout must be at least 400 ms".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elected_settings_are_checked() {
        let ok = |e, c, r, ms| validate_elected("nameserver", e, c, r, Duration::from_millis(ms));
        assert!(ok("127.0.0.1:7527", "127.0.0.1:2181", "/tessera", 10_000).is_ok());
        assert!(ok("127.0.0.1:7527", "", "/tessera", 10_000)
            .unwrap_err()
            .contains("nameserver is elected"));
        assert!(ok("127.0.0.1:7527", "zk:2181", "tessera", 10_000).is_err());
        assert!(ok("127.0.0.1:7527", "zk:2181", "/tessera", 100).is_err());
        assert!(ok("nonsense", "zk:2181", "/tessera", 10_000).is_err());
    }
}
