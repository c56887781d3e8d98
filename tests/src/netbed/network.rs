//! Hosts on one machine: a network namespace per host, each with one address on a bridge
//! that only this test creates, and nftables rules in each host for partitions.
//!
//! Names carry the test process's pid (`tc<pid>h<n>` namespaces, `tb<pid>` bridge), so a
//! later run can tell leftovers of a dead run (Ctrl-C, a crash) from a live one's and
//! remove them: [`remove_leftovers`].

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use crate::process::pid_alive;

/// Runs a command that must succeed; panics with its output if it does not.
pub(crate) fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e} (is it installed? scripts/chaos.sh installs iproute2 and nftables)"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Like [`run`], for teardown: failures are ignored.
fn run_quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// One host: a network namespace with an address on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub ip: String,
}

impl Host {
    /// Enters this host's network namespace on the calling thread: sockets the thread
    /// opens from now on (and threads it starts) live in it.
    pub fn enter(&self) {
        let file = self.netns_file();
        // SAFETY: setns(2) on a namespace file we hold open; it changes only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            self.netns,
            std::io::Error::last_os_error()
        );
    }

    pub(crate) fn netns_file(&self) -> File {
        File::open(format!("/run/netns/{}", self.netns))
            .unwrap_or_else(|e| panic!("open network namespace {}: {e}", self.netns))
    }

    fn nft(&self, script: &str) {
        run("ip", &["netns", "exec", &self.netns, "nft", script]);
    }
}

/// The bridge and its hosts; removed when dropped.
pub struct Network {
    bridge: String,
    pub hosts: Vec<Host>,
    /// Packets from host `.0` to host `.1` that are dropped now.
    blocked: BTreeSet<(usize, usize)>,
}

/// The first free `10.213.<n>.0/24` (the root namespace's addresses say which are used).
fn free_subnet() -> String {
    let used = run("ip", &["-4", "-o", "addr", "show"]);
    let pid = std::process::id() as usize;
    (0..250)
        .map(|i| format!("10.213.{}", (pid + i) % 250 + 1))
        .find(|prefix| !used.contains(&format!("{prefix}.")))
        .expect("a free 10.213.x.0/24 subnet")
}

/// Removes what runs of dead test processes left: their namespaces (and the processes
/// still in them), bridges and tmpfs mounts.
pub fn remove_leftovers() {
    let dead = |name: &str, prefix: &str| -> bool {
        name.strip_prefix(prefix)
            .and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
            })
            .is_some_and(|pid| !pid_alive(pid))
    };
    let namespaces = run("ip", &["netns", "list"]);
    for name in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if name.starts_with("tc") && dead(name, "tc") {
            let pids = run("ip", &["netns", "pids", name]);
            for pid in pids.split_whitespace() {
                run_quietly("kill", &["-9", pid]);
            }
            run_quietly("ip", &["netns", "del", name]);
        }
    }
    let links = run("ip", &["-o", "link", "show", "type", "bridge"]);
    for name in links.lines().filter_map(|l| l.split(": ").nth(1)) {
        if name.starts_with("tb") && dead(name, "tb") {
            run_quietly("ip", &["link", "del", name]);
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(source), Some(target)) = (fields.next(), fields.next()) {
            if source.starts_with("tschaos-") && dead(source, "tschaos-") {
                run_quietly("umount", &["-l", target]);
            }
        }
    }
}

impl Network {
    /// Creates the bridge (with address `.1` for the test process, the operator's host)
    /// and one namespace per name, host `i` at `.<10 + i>`.
    pub fn create(names: &[&str]) -> Network {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the fault-injection bed needs root for network namespaces"
        );
        remove_leftovers();
        let pid = std::process::id();
        let bridge = format!("tb{pid}");
        let prefix = free_subnet();
        let mut network = Network {
            bridge: bridge.clone(),
            hosts: Vec::new(),
            blocked: BTreeSet::new(),
        };
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        run(
            "ip",
            &["addr", "add", &format!("{prefix}.1/24"), "dev", &bridge],
        );
        run("ip", &["link", "set", &bridge, "up"]);
        for (i, name) in names.iter().enumerate() {
            let netns = format!("tc{pid}h{i}");
            let outer = format!("tv{}x{i}", pid % 1_000_000);
            let ip = format!("{prefix}.{}", 10 + i);
            run("ip", &["netns", "add", &netns]);
            network.hosts.push(Host {
                name: name.to_string(),
                netns: netns.clone(),
                ip: ip.clone(),
            });
            run(
                "ip",
                &[
                    "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &netns,
                ],
            );
            run("ip", &["link", "set", &outer, "master", &bridge]);
            run("ip", &["link", "set", &outer, "up"]);
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &netns, "ip"];
                all.extend_from_slice(args);
                run("ip", &all);
            };
            exec(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            exec(&["link", "set", "eth0", "up"]);
            exec(&["link", "set", "lo", "up"]);
            network.hosts[i].nft(
                "add table inet chaos; \
                 add chain inet chaos input { type filter hook input priority 0; policy accept; }",
            );
        }
        network
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    pub fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Drops every packet from `from` to `to` (one way), on top of what is dropped now.
    pub fn block(&mut self, pairs: &[(usize, usize)]) {
        self.blocked.extend(pairs.iter().copied());
        self.apply();
    }

    /// Cuts `a` and `b` apart in both directions: no host of one reaches one of the other.
    pub fn split(&mut self, a: &[usize], b: &[usize]) {
        let pairs: Vec<(usize, usize)> = a
            .iter()
            .flat_map(|&x| b.iter().flat_map(move |&y| [(x, y), (y, x)]))
            .collect();
        self.block(&pairs);
    }

    /// Lifts every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.apply();
    }

    /// Rewrites each host's input chain to drop what `blocked` says it must not receive.
    fn apply(&self) {
        for (to, host) in self.hosts.iter().enumerate() {
            let sources: Vec<&str> = self
                .blocked
                .iter()
                .filter(|(_, t)| *t == to)
                .map(|(from, _)| self.hosts[*from].ip.as_str())
                .collect();
            let mut script = "flush chain inet chaos input".to_string();
            if !sources.is_empty() {
                script.push_str(&format!(
                    "; add rule inet chaos input ip saddr {{ {} }} drop",
                    sources.join(", ")
                ));
            }
            host.nft(&script);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &self.hosts {
            if let Ok(pids) = Command::new("ip")
                .args(["netns", "pids", &host.netns])
                .output()
            {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    run_quietly("kill", &["-9", pid]);
                }
            }
            run_quietly("ip", &["netns", "del", &host.netns]);
        }
        run_quietly("ip", &["link", "del", &self.bridge]);
    }
}
