//! The harness can run a real ZooKeeper server (installed by scripts/test.sh).

use tessera_tests::ZooKeeper;

#[test]
fn zookeeper_starts_answers_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut zk = ZooKeeper::start(dir.path());
    let stat = zk.four_letter("srvr").expect("srvr answer");
    assert!(stat.contains("Mode: standalone"), "{stat}");
    zk.kill9();
    assert!(
        zk.four_letter("ruok").is_none(),
        "ZooKeeper is gone after SIGKILL"
    );
}
