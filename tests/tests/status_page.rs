//! The nameserver's status page in a real headless browser (Debian's chromium, installed
//! by `scripts/chromium.sh` if missing): a tablet killed under a running cluster shows
//! as offline, its replicas as dead, and the ops moving its partitions appear; a standby
//! points at the leader; a screenshot is saved beside the test's other output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tessera_tests::nscluster::{NsCluster, NsClusterSpec};

fn chromium_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/chromium.sh")
}

fn install_chromium() {
    let status = Command::new(chromium_script())
        .arg("install")
        .status()
        .expect("run scripts/chromium.sh");
    assert!(status.success(), "chromium could not be installed");
}

/// The page's DOM as the browser built it.
fn dom(url: &str) -> String {
    let out = Command::new(chromium_script())
        .args(["dom", url])
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tablet_row(endpoint: &str, state_class: &str, state: &str) -> String {
    format!(
        "<tr data-endpoint=\"{endpoint}\"><td>{endpoint}</td><td class=\"{state_class}\">{state}</td>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_killed_tablet_offline_and_its_partitions_moving() {
    install_chromium();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::three_tablets()).await;
    cluster.create_table("orders", 4, 3).await;
    let url = format!("http://{}/", cluster.nameserver.endpoint);

    let page = dom(&url);
    for tablet in &cluster.tablets {
        assert!(
            page.contains(&tablet_row(&tablet.endpoint, "ok", "kTabletHealthy")),
            "{} healthy on the page:\n{page}",
            tablet.endpoint
        );
    }
    assert!(
        page.contains("default.orders") && page.contains("leader"),
        "{page}"
    );
    assert!(
        !page.contains("id=\"leaderless\""),
        "no banner while every partition leads:\n{page}"
    );
    assert!(page.contains("id=\"auto-failover\">on<"), "{page}");

    // A standby points at the leader.
    let standby = tessera_tests::nameserver::NameserverProcess::start(
        &dir.path().join("standby"),
        &cluster.zk,
        2000,
    )
    .await;
    let standby_page = dom(&format!("http://{}/", standby.endpoint));
    assert!(
        standby_page.contains(&format!(
            "<a id=\"leader\" href=\"http://{0}/\">{0}</a>",
            cluster.nameserver.endpoint
        )),
        "the standby's page names the leader:\n{standby_page}"
    );

    // Kill the tablet leading the most partitions.
    let rows = tessera_tests::routed::table_rows(&mut cluster.ns().await, "orders").await;
    let victim = cluster
        .tablets
        .iter()
        .map(|t| t.endpoint.clone())
        .max_by_key(|e| {
            rows.iter()
                .filter(|r| r.role == "leader" && &r.endpoint == e)
                .count()
        })
        .unwrap();
    let index = cluster.tablet_index(&victim);
    cluster.tablets[index].kill9();

    let mut last = String::new();
    let shown = tessera_tests::wait::poll_until_async(Duration::from_secs(60), || {
        last = dom(&url);
        let page = last.clone();
        let victim = victim.clone();
        async move {
            let offline = page.contains(&tablet_row(&victim, "bad", "kTabletOffline"));
            // Every replica it held marked dead, and the ops that moved its partitions.
            let replicas: Vec<&str> = page
                .split("<tr ")
                .filter(|row| {
                    row.starts_with("data-pid=")
                        && row.contains(&format!("data-endpoint=\"{victim}\""))
                })
                .collect();
            let dead = !replicas.is_empty()
                && replicas
                    .iter()
                    .all(|row| row.contains("<td class=\"bad\">no</td>"));
            let moving = page.contains("kChangeLeader") || page.contains("kOfflineReplica");
            offline && dead && moving
        }
    })
    .await;
    assert!(
        shown,
        "the page never showed {victim} offline with its partitions moving:\n{last}"
    );

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status_page.png");
    let _ = std::fs::remove_file(&screenshot);
    let status = Command::new(chromium_script())
        .args(["screenshot", &url, screenshot.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "chromium could not take a screenshot");
    let png = std::fs::read(&screenshot).expect("a screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    println!("status page screenshot: {}", screenshot.display());
}
