//! TLS on every link of the cluster: clients to servers, and servers to each other.
//!
//! A cluster runs with TLS when its processes are given certificates, all signed by one
//! certificate authority:
//! - every server (tablet, nameserver, taskmanager) serves its gRPC and HTTP port over
//!   TLS with `--tls_cert` and `--tls_key`, and checks the servers it calls against
//!   `--tls_ca`;
//! - every client (`ns_client`, the SDK, `tessera-ops`, `tessera-bench`) is given
//!   `--tls_ca` and checks the server's certificate against it.
//!
//! A server's certificate must name the host its endpoint uses (an IP address or a DNS
//! name in its subject alternative names): clients check it. A cluster is all TLS or
//! none; a plaintext client cannot talk to a TLS server.
//!
//! Like the cluster secret, TLS is a setting of the whole process, read once at start-up
//! ([`use_tls`]); every channel made through [`endpoint`] and every server made through
//! [`server_builder`] follows it.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A TLS handshake that takes longer is dropped (a client that connects and says
/// nothing must not hold a server's resources).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests in flight on one connection (more wait their turn): one client cannot make
/// a server hold unbounded work.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 1024;

#[derive(Debug, Clone)]
struct Settings {
    /// The files' contents, so a second, different setting is noticed.
    given: (Vec<u8>, Vec<u8>, Vec<u8>),
    ca_pem: Vec<u8>,
    client: ClientTlsConfig,
    /// A server's TLS: the handshake is made here (not by tonic) so that HTTP/1.1
    /// clients can negotiate it by ALPN too, for the HTTP pages.
    server: Option<Arc<rustls::ServerConfig>>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Which side of the links a process is: a server also calls other servers, so it
/// needs both its own certificate and the authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// The flags, as every binary takes them (the tablet reads them from its configuration
/// file too).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "flags", derive(clap::Args))]
#[cfg_attr(feature = "flags", command(rename_all = "snake_case"))]
pub struct TlsFlags {
    /// PEM file of the certificate authority that signs the cluster's certificates.
    /// With it, this process talks to the cluster over TLS and checks each server's
    /// certificate against it.
    #[cfg_attr(feature = "flags", arg(long))]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate (chain) a server serves TLS with; needs --tls_key and --tls_ca.
    #[cfg_attr(feature = "flags", arg(long))]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls_cert.
    #[cfg_attr(feature = "flags", arg(long))]
    pub tls_key: Option<PathBuf>,
}

impl TlsFlags {
    /// Makes these settings the process's (nothing to do when no flag is given). The
    /// message of an error says which flag or file is wrong.
    pub fn apply(&self, role: Role) -> Result<(), String> {
        use_tls(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            role,
        )
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(format!("the {what} {} is not a PEM file", path.display()));
    }
    Ok(bytes)
}

/// An error with its causes: a transport error's own message says little.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Reads the files and makes TLS this process's setting. Paths that are `None` (or
/// empty) are not given; with none given, the process runs without TLS. Only the first
/// call takes effect; a later one must give the same files (or none).
pub fn use_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    role: Role,
) -> Result<(), String> {
    fn given(path: Option<&Path>) -> Option<&Path> {
        path.filter(|p| !p.as_os_str().is_empty())
    }
    let (ca, cert, key) = (given(ca), given(cert), given(key));
    let settings = match (ca, cert, key, role) {
        (None, None, None, _) => return Ok(()),
        (_, Some(_), None, _) | (_, None, Some(_), _) => {
            return Err("--tls_cert and --tls_key go together".into())
        }
        (None, Some(_), Some(_), Role::Server) => {
            return Err(
                "--tls_cert needs --tls_ca: a server of a TLS cluster calls the \
                        others over TLS and checks them against the authority"
                    .into(),
            )
        }
        (None, Some(_), Some(_), Role::Client) => {
            return Err("--tls_cert and --tls_key are for servers; a client needs \
                        --tls_ca (the authority that signs the servers' certificates)"
                .into())
        }
        (Some(_), None, None, Role::Server) => {
            return Err(
                "--tls_ca on a server needs --tls_cert and --tls_key: every server \
                        of a TLS cluster serves TLS"
                    .into(),
            )
        }
        (Some(ca), cert, key, role) => settings(ca, cert.zip(key), role)?,
    };
    let set = SETTINGS.get_or_init(|| settings.clone());
    if set.given == settings.given {
        Ok(())
    } else {
        Err("the TLS settings of a process are set once".into())
    }
}

fn settings(ca: &Path, identity: Option<(&Path, &Path)>, role: Role) -> Result<Settings, String> {
    let ca_pem = read(ca, "TLS certificate authority")?;
    if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "the TLS certificate authority {} holds no certificate",
            ca.display()
        ));
    }
    let client = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    // Fails here, at start-up, on an authority that does not parse.
    Endpoint::from_static("https://127.0.0.1:1")
        .tls_config(client.clone())
        .map_err(|e| {
            format!(
                "cannot use the TLS certificate authority {}: {}",
                ca.display(),
                chain(&e)
            )
        })?;
    let (mut cert_pem, mut key_pem, mut server) = (Vec::new(), Vec::new(), None);
    if let (Some((cert, key)), Role::Server) = (identity, role) {
        cert_pem = read(cert, "TLS certificate")?;
        key_pem = read(key, "TLS private key")?;
        let config = server_config(&cert_pem, &key_pem).map_err(|e| {
            format!(
                "cannot serve TLS with {} and {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
        server = Some(Arc::new(config));
    }
    Ok(Settings {
        given: (ca_pem.clone(), cert_pem, key_pem),
        ca_pem,
        client,
        server,
    })
}

/// A server configuration from PEM: the certificate chain and its private key, offering
/// HTTP/2 and HTTP/1.1 by ALPN.
fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the private key does not parse: {e}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether this process talks TLS.
pub fn enabled() -> bool {
    SETTINGS.get().is_some()
}

/// The certificate authority's PEM, for a process's own HTTPS client.
pub fn ca_pem() -> Option<&'static [u8]> {
    SETTINGS.get().map(|s| s.ca_pem.as_slice())
}

/// The URL scheme of the cluster's ports for this process.
pub fn scheme() -> &'static str {
    if enabled() {
        "https"
    } else {
        "http"
    }
}

/// A channel's endpoint for `address` (`host:port`), over TLS when the process uses it.
/// `connect_timeout` bounds the connection and the TLS handshake each (a peer that
/// accepts but is paused must not hold a caller longer than a refusing one).
pub fn endpoint(
    address: &str,
    connect_timeout: Duration,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("{}://{address}", scheme()))?
        .connect_timeout(connect_timeout);
    match SETTINGS.get() {
        Some(settings) => endpoint.tls_config(settings.client.clone().timeout(connect_timeout)),
        None => Ok(endpoint),
    }
}

/// How often a server pings a connection's peer, and how long it waits for the answer
/// before it closes the connection: a peer that stopped (SIGSTOP, a cut link) would
/// otherwise hold its calls open for ever, a snapshot stream it was sending among them.
pub const SERVER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const SERVER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A server builder with a bound on the requests in flight per connection, which closes
/// connections whose peer stops answering its pings. It serves the connections of
/// [`incoming`], which are TLS when the process uses it.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_REQUESTS_PER_CONNECTION)
        .max_concurrent_streams(Some(MAX_REQUESTS_PER_CONNECTION as u32))
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(SERVER_KEEPALIVE_TIMEOUT))
}

/// [`server_builder`] for a tablet. Replication multiplexes up to 64 long-lived streams
/// on one connection: each stream may hold its own window's worth unread (a partition
/// slow to append) without using up the connection's window for the others.
pub fn tablet_server_builder() -> tonic::transport::Server {
    server_builder()
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(STREAM_WINDOW * 64))
}

/// The flow-control window a server gives each stream (hyper's default).
const STREAM_WINDOW: u32 = 1 << 20;

/// A connection a server accepted: plain TCP, or TLS over it.
pub enum ServerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            ServerIo::Plain(tcp) => tcp.connect_info(),
            ServerIo::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(tcp) => tcp.is_write_vectored(),
            ServerIo::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ServerIo::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepted connections of `listener`, with Nagle off (small gRPC messages must not
/// wait for delayed ACKs), for `serve_with_incoming*`; under TLS, each after its
/// handshake, made in a task of its own (a slow client holds up nobody) and bounded by
/// [`HANDSHAKE_TIMEOUT`]. A failure to accept (out of file descriptors, say) is logged
/// and retried after a pause rather than in a busy loop. Accepting stops when the
/// server drops the stream.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<ServerIo>> {
    let acceptor = SETTINGS
        .get()
        .and_then(|s| s.server.clone())
        .map(tokio_rustls::TlsAcceptor::from);
    const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);
    let (accepted, stream) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = listener.accept() => next,
                () = accepted.closed() => return,
            };
            match next {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    let Some(acceptor) = acceptor.clone() else {
                        if accepted.send(Ok(ServerIo::Plain(tcp))).await.is_err() {
                            return;
                        }
                        continue;
                    };
                    let accepted = accepted.clone();
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                let _ = accepted.send(Ok(ServerIo::Tls(Box::new(tls)))).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    });
                }
                // The peer gave up before we got to it: nothing wrong here.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; trying again in a second");
                    tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(stream)
}
