//! `sbin/start-all.sh` and `sbin/stop-all.sh` with a configuration of their own: ZooKeeper,
//! a nameserver and two tablets come up under the daemon, a crashed tablet is restarted
//! by its daemon, and stop-all stops everything cleanly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tessera_tests::process::{pid_alive, read_pid};
use tessera_tests::{binary, free_port, wait_until, ZooKeeper};

const DEADLINE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(conf: &Path, name: &str) -> String {
    let output = Command::new("bash")
        .arg(repo().join("sbin").join(name))
        .env("TESSERA_CONF", conf)
        .output()
        .expect("run the script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{name} failed:\n{text}");
    text
}

fn ns_client(zk: &str, command: &str) -> String {
    let output = tessera_tests::credentials::ns_client_command()
        .arg(format!("--zk_cluster={zk}"))
        .arg("--zk_root_path=/sbin_test")
        .arg(format!("--cmd={command}"))
        .output()
        .expect("run ns_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs stop-all.sh (best effort) when dropped, also when the test panics.
struct StopAllOnDrop(PathBuf);

impl Drop for StopAllOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("sbin").join("stop-all.sh"))
            .env("TESSERA_CONF", &self.0)
            .output();
    }
}

#[test]
fn start_all_and_stop_all_run_a_local_cluster_under_the_daemon() {
    if !ZooKeeper::available() {
        panic!("ZooKeeper is not installed: run scripts/zookeeper.sh install");
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let (zk_port, ns_port, t1, t2) = (free_port(), free_port(), free_port(), free_port());
    let conf = base.join("conf");
    let run = base.join("run");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("hosts"),
        format!(
            "[zookeeper]\n127.0.0.1:{zk_port} {zk}\n\n[nameserver]\n127.0.0.1:{ns_port}\n\n\
             [tablet]\n# a comment\n127.0.0.1:{t1} {d1}\n127.0.0.1:{t2} {d2}\n\
             10.255.255.1:9527 /elsewhere\n\n[taskmanager]\n",
            zk = base.join("zk").display(),
            d1 = base.join("tablet1").display(),
            d2 = base.join("tablet2").display(),
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("tessera.env"),
        format!(
            "ZK_ROOT_PATH=/sbin_test\nZK_SESSION_TIMEOUT=2000\nTESSERA_BIN={}\nRUN_DIR={}\n\
             DAEMON_RESTART_DELAY=200\nTABLET_ARGS={secret}\nNAMESERVER_ARGS=\"{nameserver}\"\n\
             TASKMANAGER_ARGS={secret}\n",
            binary("tessera-tablet").parent().unwrap().display(),
            run.display(),
            secret = tessera_tests::credentials::secret_flag(),
            nameserver = tessera_tests::credentials::nameserver_flags().join(" "),
        ),
    )
    .unwrap();

    // Whatever happens below, nothing started here outlives the test.
    let _cleanup = StopAllOnDrop(conf.clone());
    let out = script(&conf, "start-all.sh");
    assert!(
        out.contains("4 processes started"),
        "ZooKeeper, nameserver, two tablets:\n{out}"
    );
    assert!(
        !out.contains("9527"),
        "the other machine's tablet is not started here:\n{out}"
    );
    let zk = format!("127.0.0.1:{zk_port}");
    wait_until(DEADLINE, "two healthy tablets", || {
        ns_client(&zk, "showtablet")
            .matches("kTabletHealthy")
            .count()
            == 2
    });
    let again = script(&conf, "start-all.sh");
    assert!(again.contains("0 processes started"), "{again}");

    // A tablet crashes: its daemon starts it again.
    let child_pidfile = run.join(format!("tablet-{t1}.child.pid"));
    let first = read_pid(&child_pidfile).expect("the tablet's pid");
    // SAFETY: kill(2) on the pid the daemon wrote.
    unsafe { libc::kill(first, libc::SIGKILL) };
    wait_until(DEADLINE, "the daemon to restart the tablet", || {
        read_pid(&child_pidfile).is_some_and(|p| p != first && pid_alive(p))
    });
    wait_until(DEADLINE, "two healthy tablets again", || {
        ns_client(&zk, "showtablet")
            .matches("kTabletHealthy")
            .count()
            == 2
    });

    let children: Vec<i32> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".child.pid"))
        .filter_map(|p| read_pid(&p))
        .collect();
    assert_eq!(children.len(), 4);
    let out = script(&conf, "stop-all.sh");
    assert!(out.contains("stopping tablet-"), "{out}");
    for pid in children {
        assert!(!pid_alive(pid), "process {pid} still runs after stop-all");
    }
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".pid"))
        .collect();
    assert!(left.is_empty(), "pid files left: {left:?}");
    let log = std::fs::read_to_string(run.join("logs").join(format!("tablet-{t2}.log"))).unwrap();
    assert!(
        log.contains("tablet stopped"),
        "the tablet stopped cleanly:\n{log}"
    );
}
