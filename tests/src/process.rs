//! Child processes: finding the binaries, picking ports, and killing with real signals.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// Path of a workspace binary, next to the test executable's `deps/` directory.
/// `scripts/test.sh` builds the binaries before running the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test.sh does)",
        path.display()
    );
    path
}

/// The lowest port the kernel hands out for outgoing connections.
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A loopback port that was free a moment ago, below the kernel's ephemeral range: a
/// server started on it a little later (ZooKeeper takes seconds) does not find it taken
/// by one of the many outgoing connections a cluster test makes meanwhile. Picked at
/// random, so concurrent tests seldom pick the same one.
pub fn free_port() -> u16 {
    const LOWEST: u16 = 10_000;
    let highest = ephemeral_ports_start();
    if highest > LOWEST + 1_000 {
        for _ in 0..64 {
            let port = fastrand::u16(LOWEST..highest);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Sends `signal` to the child.
pub fn signal(child: &Child, signal: libc::c_int) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits for the child to exit; `None` if it is still running after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child with SIGKILL and reaps it.
pub fn kill9(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        signal(child, libc::SIGKILL);
        let _ = child.wait();
    }
}

/// Spawns a workspace binary with stdout and stderr appended to `log_path`.
pub fn spawn_logged(name: &str, args: &[String], log_path: &std::path::Path) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open the process log");
    std::process::Command::new(binary(name))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An HTTP/1.1 GET on loopback (HTTPS when this process uses TLS): (status code, body).
pub fn http_get(endpoint: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect(endpoint).expect("connect for HTTP");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut stream: Box<dyn ReadWrite> = match tessera_common::tls::ca_pem() {
        Some(ca) => Box::new(tls_client(endpoint, ca, tcp)),
        None => Box::new(tcp),
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut bytes = Vec::new();
    if let Err(e) = stream.read_to_end(&mut bytes) {
        // A TLS server may close without a close_notify once it has answered.
        assert!(
            e.kind() == std::io::ErrorKind::UnexpectedEof && !bytes.is_empty(),
            "read response: {e}"
        );
    }
    let response = String::from_utf8_lossy(&bytes).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// A TLS client stream to `endpoint` that trusts the authority `ca` (PEM) and asks for
/// HTTP/1.1 by ALPN, as curl --http1.1 and most HTTP libraries do.
fn tls_client(
    endpoint: &str,
    ca: &[u8],
    tcp: std::net::TcpStream,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host);
    let name = ServerName::try_from(host.to_string()).expect("server name");
    let connection =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("TLS client");
    rustls::StreamOwned::new(connection, tcp)
}

/// Whether a process runs (and is not a zombie waiting to be reaped).
pub fn pid_alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state != "Z"))
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses
/// and may hold spaces): the process state first, the stat's third field. `None` if
/// there is no such process.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User plus system CPU time a process has used so far (zero if there is no such
/// process).
pub fn cpu_time(pid: u32) -> Duration {
    let fields = stat_fields(pid as i32).unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are the 14th and 15th fields; `fields` starts at the 3rd.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / per_second)
}

/// The pid a pidfile names, if it exists and holds one.
pub fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `tessera_op_node_writes{with="metadata"}` on a nameserver's `/metrics`: the op ends
/// written in the transaction that records a partition's new leader.
pub fn op_ends_written_with_metadata(endpoint: &str) -> f64 {
    let (code, body) = http_get(endpoint, "/metrics");
    assert_eq!(code, 200, "{endpoint}/metrics: {body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("the metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("tessera_op_node_writes"))
        .filter(|s| s.labels.get("with") == Some("metadata"))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
