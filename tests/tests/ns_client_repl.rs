//! The interactive `ns_client` in a real pseudo-terminal (tmux): completion of commands
//! and table names, history recall, a `create table` over two lines, the confirmation
//! before a drop, and the history file.

use std::process::Command;
use std::time::Duration;

use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::{binary, wait_until};

/// A tmux server of its own, killed on drop.
struct Terminal {
    socket: String,
}

impl Terminal {
    fn start(command: &str) -> Terminal {
        let socket = format!("tessera-repl-{}", std::process::id());
        let status = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-s",
                "repl",
                "-x",
                "220",
                "-y",
                "80",
                command,
            ])
            .status()
            .expect("tmux is installed (scripts/test.sh installs it)");
        assert!(status.success(), "tmux new-session failed");
        Terminal { socket }
    }

    /// Types `text` literally, then presses each of `keys` (tmux key names).
    fn type_and_press(&self, text: &str, keys: &[&str]) {
        // tmux reads an argument ending in `;` as a command separator, so each `;` is
        // sent as its escaped key `\;`.
        for (i, piece) in text.split(';').enumerate() {
            if i > 0 {
                self.press("\\;");
            }
            if !piece.is_empty() {
                let status = Command::new("tmux")
                    .args([
                        "-L",
                        &self.socket,
                        "send-keys",
                        "-t",
                        "repl",
                        "-l",
                        "--",
                        piece,
                    ])
                    .status()
                    .unwrap();
                assert!(status.success(), "typing {piece:?}");
            }
        }
        for key in keys {
            self.press(key);
        }
    }

    fn press(&self, key: &str) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "repl", key])
            .status()
            .unwrap();
        assert!(status.success(), "pressing {key}");
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "capture-pane",
                "-p",
                "-t",
                "repl",
                "-S",
                "-2000",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `condition`; on timeout the panic shows it.
    fn wait_for(&self, what: &str, condition: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if condition(&screen) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_shell_edits_completes_and_remembers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: Some(3000),
            tablet_args: &[],
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        },
    )
    .await;
    cluster.create_table("orders", 1, 3).await;
    let history = dir.path().join("history");
    let terminal = Terminal::start(&format!(
        "{} --zk_cluster={} --zk_root_path=/tessera --history_file={} --user=root --password={}",
        binary("ns_client").display(),
        cluster.zk.connect_string(),
        history.display(),
        tessera_tests::credentials::ROOT_PASSWORD
    ));
    terminal.wait_for("the prompt", |s| s.contains("default>"));

    terminal.type_and_press("showns", &["Enter"]);
    terminal.wait_for("showns output", |s| s.matches("leader").count() == 1);

    // Tab completes a command...
    terminal.type_and_press("confg", &["Tab", "Enter"]);
    terminal.wait_for("confget through completion", |s| {
        s.contains("auto_failover")
    });
    // ...and a table name.
    terminal.type_and_press("showschema ord", &["Tab", "Enter"]);
    terminal.wait_for("showschema orders through completion", |s| {
        s.contains("writer") && s.contains("int64")
    });

    // History: three steps back is showns.
    terminal.type_and_press("", &["Up", "Up", "Up", "Enter"]);
    terminal.wait_for("showns recalled from history", |s| {
        s.matches("leader").count() == 2
    });

    // A statement over two lines, until the `;`.
    terminal.type_and_press("create table t2 (a string,", &["Enter"]);
    terminal.wait_for("the continuation prompt", |s| s.contains("    ->"));
    terminal.type_and_press("index(key=a));", &["Enter"]);
    terminal.wait_for("the table to be created", |s| {
        s.contains("Create table t2 ok")
    });

    // Dropping asks first: `no` keeps the table, `yes` drops it.
    terminal.type_and_press("drop table t2", &["Enter"]);
    terminal.wait_for("the confirmation question", |s| {
        s.contains("Drop table t2? yes/no:")
    });
    terminal.type_and_press("no", &["Enter"]);
    terminal.wait_for("the drop to be cancelled", |s| s.contains("Drop cancelled"));
    terminal.type_and_press("showtable t2", &["Enter"]);
    terminal.wait_for("t2 still to exist", |s| s.matches("| t2 ").count() >= 3);
    terminal.type_and_press("drop table t2", &["Enter"]);
    terminal.wait_for("the question again", |s| {
        s.matches("Drop table t2? yes/no:").count() == 2
    });
    terminal.type_and_press("yes", &["Enter"]);
    terminal.wait_for("the table to be dropped", |s| {
        s.contains("drop table t2 ok")
    });

    terminal.type_and_press("quit", &["Enter"]);
    wait_until(
        Duration::from_secs(30),
        "the history file to be written",
        || {
            std::fs::read_to_string(&history)
                .is_ok_and(|h| h.contains("create table t2 (a string, index(key=a));"))
        },
    );
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(
        saved.contains("showns")
            && saved.contains("confget")
            && saved.contains("showschema orders"),
        "{saved}"
    );
}
