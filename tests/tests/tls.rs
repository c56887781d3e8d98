//! TLS on every link (`--tls_ca`, `--tls_cert`, `--tls_key`): a cluster whose certificates
//! come from a throwaway authority works end to end — the SDK, `ns_client`, replication,
//! a failover, the taskmanager and the HTTP pages — while a plaintext client gets
//! nowhere. This test process talks TLS too (the setting is per process, so the test has
//! a binary of its own).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tessera_common::tls::{use_tls, Role};
use tessera_common::Value;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::GetTableStatusRequest;
use tessera_tests::binary;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::process::http_get;
use tessera_tests::routed::{leaders, table_rows};
use tessera_tests::workload::sdk_row;

/// Writes a new authority and one certificate for loopback signed by it; returns the
/// paths of the authority's certificate, the certificate and its key.
fn throwaway_certificates(dir: &Path) -> [std::path::PathBuf; 3] {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    let paths = [
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ];
    std::fs::write(&paths[0], ca_cert.pem()).unwrap();
    std::fs::write(&paths[1], cert.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_runs_end_to_end_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = throwaway_certificates(dir.path());
    use_tls(Some(&ca), None, None, Role::Client).expect("this process uses TLS");
    let flags = [
        format!("--tls_ca={}", ca.display()),
        format!("--tls_cert={}", cert.display()),
        format!("--tls_key={}", key.display()),
    ];
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let tablet_args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--quorum_timeout=3000"])
        .collect();
    let mut cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            tablet_args: &tablet_args,
            nameserver_args: &args,
            ..NsClusterSpec::fast_failover()
        },
    )
    .await;
    // Tables are created through the nameserver, which creates the replicas on the
    // tablets and makes them follow their leaders: every link is TLS.
    cluster.create_table("t1", 2, 3).await;
    let client = cluster.sdk(Duration::from_secs(60)).await;
    for (i, writer) in ["a", "b", "c"].iter().enumerate() {
        client
            .put("default", "t1", sdk_row(writer, i as i64))
            .await
            .expect("a put through the SDK over TLS");
    }

    // A plaintext client is refused by every server.
    let tablet = cluster.tablets[0].endpoint.clone();
    let plaintext = TabletClient::connect(format!("http://{tablet}")).await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(mut client) => client
            .get_table_status(GetTableStatusRequest::default())
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a plaintext client got an answer from a TLS tablet"
    );
    let plain_http = std::net::TcpStream::connect(&cluster.nameserver.endpoint)
        .and_then(|mut tcp| {
            use std::io::{Read, Write};
            tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
            tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer);
            Ok(answer)
        })
        .unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&plain_http).contains("200 OK"),
        "the nameserver's HTTP page answered plaintext"
    );
    // Its HTTP page over TLS.
    let (status, body) = http_get(&cluster.nameserver.endpoint, "/metrics");
    assert_eq!(status, 200, "metrics over TLS: {body}");

    // ns_client with the authority. (Without it, it gets nowhere, retrying until its
    // deadline: the plaintext client above shows the refusal faster.)
    let shown = tessera_tests::credentials::ns_client_command()
        .arg(format!("--zk_cluster={}", cluster.zk.connect_string()))
        .arg("--zk_root_path=/tessera")
        .arg("--cmd=showtable t1")
        .arg(format!("--tls_ca={}", ca.display()))
        .output()
        .expect("run ns_client");
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && stdout.contains("t1") && stdout.contains("leader"),
        "showtable over TLS: {}{stdout}",
        String::from_utf8_lossy(&shown.stderr)
    );

    // The taskmanager serves TLS too (its leader check answers over HTTPS).
    let _taskmanager = cluster.start_taskmanager(dir.path(), &args).await;

    // The nameserver fences and promotes over TLS, and replication resumes over it.
    let mut ns = cluster.ns().await;
    let leader = leaders(&table_rows(&mut ns, "t1").await)[&0].clone();
    let index = cluster.tablet_index(&leader);
    cluster.tablets[index].kill9();
    client
        .put("default", "t1", sdk_row("after", 9))
        .await
        .expect("a put after the failover, over TLS");
    for writer in ["a", "b", "c", "after"] {
        assert!(
            client
                .get("default", "t1", vec![Value::String(writer.into())])
                .await
                .expect("get over TLS")
                .is_some(),
            "{writer}'s row survived the failover"
        );
    }
}

/// A server refuses to start with half a TLS configuration, and says which flag is
/// missing.
#[test]
fn a_server_with_half_a_tls_configuration_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = throwaway_certificates(dir.path());
    let cases: [(&[String], &str); 3] = [
        (&[format!("--tls_cert={}", cert.display())], "--tls_key"),
        (&[format!("--tls_ca={}", ca.display())], "--tls_cert"),
        (
            &[
                format!("--tls_cert={}", ca.display()),
                format!("--tls_key={}", ca.display()),
                format!("--tls_ca={}", ca.display()),
            ],
            "cannot serve TLS",
        ),
    ];
    // A client: certificates without the authority, and an authority that holds none.
    for (flags, expected) in [
        (
            vec![
                format!("--tls_cert={}", cert.display()),
                format!("--tls_key={}", key.display()),
            ],
            "needs --tls_ca",
        ),
        (
            vec![format!("--tls_ca={}", key.display())],
            "holds no certificate",
        ),
    ] {
        let out = Command::new(binary("ns_client"))
            .arg("--zk_cluster=127.0.0.1:1")
            .arg("--cmd=showtablet")
            .args(&flags)
            .output()
            .expect("run ns_client");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{flags:?}: expected a refusal naming {expected}, got {stderr}"
        );
    }
    for (flags, expected) in cases {
        let out = Command::new(binary("tessera-nameserver"))
            .arg("--endpoint=127.0.0.1:1")
            .arg("--zk_cluster=127.0.0.1:1")
            .args(flags)
            .output()
            .expect("run the nameserver");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{flags:?}: expected a refusal naming {expected}, got {stderr}"
        );
    }
}
