//! A tablet keeps a file open per replica, so it takes the whole open-file allowance at
//! start-up: started with a soft limit below the hard one, it runs with the hard one.
//! (Its own test binary: the soft limit is lowered for this process, which the tablet
//! inherits.)

use tessera_tests::TabletProcess;

/// The soft and hard "Max open files" of a running process.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("an open-file limit");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test]
async fn a_tablet_raises_its_open_file_limit_to_the_hard_limit() {
    let (_, hard) = rlimit::Resource::NOFILE.get().expect("read the limit");
    let low = 256.min(hard);
    if low == hard {
        // Nothing to raise on a machine whose hard limit is this low.
        return;
    }
    rlimit::Resource::NOFILE
        .set(low, hard)
        .expect("lower this process's soft limit");
    let dir = tempfile::tempdir().unwrap();
    let tablet = TabletProcess::start(dir.path(), &[]).await;
    let (soft, tablet_hard) = open_file_limits(tablet.pid());
    assert_eq!(tablet_hard, hard);
    assert_eq!(
        soft,
        hard,
        "the tablet took the hard limit:\n{}",
        tablet.log()
    );
    assert!(tablet.log().contains("open-file limit raised"));
}
