//! Running `tessera-ops` against a test cluster, and checks shared by its tests.

use tessera_common::auth::AuthChannel;
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::{ConfGetRequest, ConfSetRequest, ShowOpStatusRequest};

use crate::{binary, ZooKeeper};

/// Runs `tessera-ops --cmd=<cmd> <args…>`; returns whether it succeeded and its output.
pub async fn run(zk: &ZooKeeper, cmd: &str, args: &[&str]) -> (bool, String) {
    run_against(&zk.connect_string(), cmd, args).await
}

/// [`run`] against the cluster whose ZooKeeper connect string is `zk_cluster`.
pub async fn run_against(zk_cluster: &str, cmd: &str, args: &[&str]) -> (bool, String) {
    run_within(zk_cluster, cmd, args, 120).await
}

/// [`run_against`] with `--timeout=<timeout_s>` for the ops the command starts.
pub async fn run_within(
    zk_cluster: &str,
    cmd: &str,
    args: &[&str],
    timeout_s: u64,
) -> (bool, String) {
    let mut command = tokio::process::Command::new(binary("tessera-ops"));
    let output = crate::credentials::ops_credentials(&mut command)
        .arg(format!("--zk_cluster={zk_cluster}"))
        .arg("--zk_root_path=/tessera")
        .arg(format!("--cmd={cmd}"))
        .arg(format!("--timeout={timeout_s}"))
        .args(args)
        .output()
        .await
        .expect("run tessera-ops");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs it and fails the test, showing the output, unless it succeeded.
pub async fn run_ok(zk: &ZooKeeper, cmd: &str, args: &[&str]) -> String {
    let (ok, text) = run(zk, cmd, args).await;
    assert!(ok, "tessera-ops --cmd={cmd} {args:?} failed:\n{text}");
    text
}

pub async fn op_count(ns: &mut NameserverClient<AuthChannel>) -> usize {
    ns.show_op_status(ShowOpStatusRequest::default())
        .await
        .expect("showopstatus")
        .into_inner()
        .ops
        .len()
}

pub async fn auto_failover(ns: &mut NameserverClient<AuthChannel>) -> bool {
    ns.conf_get(ConfGetRequest {
        key: "auto_failover".into(),
    })
    .await
    .expect("confget")
    .into_inner()
    .entries
    .iter()
    .any(|e| e.value == "true")
}

pub async fn set_auto_failover(ns: &mut NameserverClient<AuthChannel>, on: bool) {
    ns.conf_set(ConfSetRequest {
        key: "auto_failover".into(),
        value: on.to_string(),
    })
    .await
    .expect("confset");
}
