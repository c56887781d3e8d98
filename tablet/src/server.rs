//! Starting and stopping a tablet: load the replicas, serve gRPC, collect expired
//! entries in the background, and on shutdown stop serving and make everything durable.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tessera_common::coordination::{run_registration, Lease, LeaseEvent, LeaseTracker, ZkSettings};
use tessera_common::user_directory::UserDirectory;
use tessera_proto::tablet::tablet_server::TabletServer;
use tracing::{info, warn};

use crate::catalog::Catalog;
use crate::config::TabletConfig;
use crate::replication::leader::Replicators;
use crate::service::TabletService;
use crate::storage::table::now_ms;
use crate::storage::{journal, FsyncPolicy, Journal, PageLimit};
use crate::watchdog::{self, Reporter};

/// Slack above `max_row_size` for the rest of a request.
const MESSAGE_OVERHEAD: usize = 4 << 20;

/// How long a stopping tablet waits for open requests (replication streams) to end.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs a tablet until `shutdown` completes.
pub async fn run(
    config: TabletConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid tablet configuration")?;
    let addr: SocketAddr = tokio::net::lookup_host(&config.endpoint)
        .await
        .with_context(|| format!("cannot resolve endpoint {}", config.endpoint))?
        .next()
        .with_context(|| format!("endpoint {} resolves to nothing", config.endpoint))?;

    let root = config.db_root_path.clone();
    let mut options = config.table_options();
    let catalog = tokio::task::spawn_blocking(move || {
        // Before any replica loads: its binlog may lack records only the journal holds
        // (after a machine crash), whatever the policy is now.
        let segment_size = options.binlog.segment_size;
        if options.binlog.fsync == FsyncPolicy::Journal {
            let (journal, _) =
                Journal::open(&root, segment_size).context("reading the tablet's journal")?;
            options.binlog.journal = Some(journal);
        } else {
            journal::recover(&root, segment_size).context("reading the tablet's journal")?;
        }
        anyhow::Ok(Catalog::open(&root, options)?)
    })
    .await
    .context("loading tables panicked")??;
    let catalog = Arc::new(catalog);
    info!(tables = catalog.tables().len(), "tables loaded");

    let (stop_gc, gc_stopped) = mpsc::channel::<()>();
    let gc = {
        let catalog = catalog.clone();
        let interval = Duration::from_secs(config.gc_interval_secs);
        std::thread::Builder::new()
            .name("ttl-gc".into())
            .spawn(move || run_gc(&catalog, interval, gc_stopped))
            .context("spawning the TTL collector")?
    };

    let replicators = Replicators::new(catalog.clone(), config.endpoint.clone());
    for table in catalog.tables() {
        replicators.sync_table(&table);
    }

    // Listening before registering: once registered, the nameserver may call at once,
    // and a connection refused then reads as a dead process.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;

    // In a cluster: register in ZooKeeper and hold a lease; leaders stop serving when it
    // lapses.
    let (stop_coordination, coordination_stopped) = tokio::sync::watch::channel(false);
    let mut reporter = Reporter::default();
    let mut users = None;
    let mut registration_lease = None;
    if !config.zk_cluster.is_empty() {
        let settings = ZkSettings {
            cluster: config.zk_cluster.clone(),
            root: config.zk_root_path.clone(),
            session_timeout: Duration::from_millis(config.zk_session_timeout_ms),
        };
        users = Some(Arc::new(UserDirectory::new(settings.clone())));
        let lease = Lease::for_session(settings.session_timeout);
        registration_lease = Some(lease.clone());
        tokio::spawn(run_registration(
            settings.clone(),
            config.endpoint.clone(),
            lease.clone(),
            coordination_stopped.clone(),
        ));
        tokio::spawn(watch_lease(
            catalog.clone(),
            lease,
            coordination_stopped.clone(),
        ));
        // Followers that stop hearing from their leader tell the nameserver at once.
        reporter = watchdog::start(
            settings.clone(),
            config.endpoint.clone(),
            catalog.clone(),
            coordination_stopped.clone(),
        );
    }

    tokio::spawn(crate::replication::heartbeat::run(
        replicators.clone(),
        coordination_stopped.clone(),
    ));
    tokio::spawn(crate::repair::repair_failed_replicas(
        replicators.clone(),
        coordination_stopped.clone(),
    ));

    let message_limit = config.max_row_size + MESSAGE_OVERHEAD;
    let page_limit = PageLimit {
        rows: config.scan_max_rows,
        bytes: config.scan_max_bytes,
    };
    let mut service = TabletService::new(replicators.clone(), page_limit, reporter);
    if let Some(users) = users {
        service = service.with_users(users);
    }
    if let Some(lease) = registration_lease {
        service = service.with_lease(lease);
    }
    let service = TabletServer::new(service)
        .max_decoding_message_size(message_limit)
        .max_encoding_message_size(usize::MAX);
    info!(endpoint = %config.endpoint, db_root_path = %config.db_root_path.display(), "tablet serving");
    let (signalled, mut stopping) = tokio::sync::watch::channel(false);
    // gRPC and HTTP/1.1 (`/metrics`) share the port, as on the nameserver.
    let metrics = crate::metrics::TabletMetrics::new();
    let grpc = tonic::service::Routes::new(service)
        .prepare()
        .into_axum_router();
    let scraped = (metrics.clone(), catalog.clone());
    let app = metrics.instrument(grpc).merge(axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, catalog) = scraped.clone();
            async move {
                let text = tokio::task::spawn_blocking(move || metrics.render(&catalog))
                    .await
                    .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        tessera_common::metrics::CONTENT_TYPE,
                    )],
                    text,
                )
            }
        }),
    ));
    let server = tessera_common::tls::tablet_server_builder()
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(app))
        .serve_with_incoming_shutdown(tessera_common::tls::incoming(listener), async move {
            shutdown.await;
            let _ = signalled.send(true);
        });
    tokio::pin!(server);
    let served = tokio::select! {
        served = &mut server => served,
        _ = stopping.wait_for(|s| *s) => {
            info!("tablet stopping");
            // A graceful stop waits for every open request, and a leader's AppendEntries
            // stream into this tablet never ends by itself: stop our own streams so peers
            // are not held up either, then give the rest a moment.
            replicators.stop_all();
            match tokio::time::timeout(STOP_GRACE, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    info!(grace = ?STOP_GRACE, "closing the replication streams still open");
                    Ok(())
                }
            }
        }
    };

    let _ = stop_coordination.send(true);
    replicators.stop_all();
    let _ = stop_gc.send(());
    let _ = gc.join();
    tokio::task::spawn_blocking(move || catalog.close_all()).await?;
    info!("tablet stopped");
    served.context("gRPC server failed")
}

/// Fences every leader replica while the lease is not valid. A lease renewed again in
/// the session it lapsed in lets them serve again (nobody can have replaced them: the
/// session never expired); after a new session they wait to be told their role.
async fn watch_lease(
    catalog: Arc<Catalog>,
    lease: Arc<Lease>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const CHECK: Duration = Duration::from_millis(20);
    let mut tracker = LeaseTracker::default();
    loop {
        let event = tracker.look(&lease);
        match event {
            LeaseEvent::Held => {}
            LeaseEvent::Acquired => {
                info!(lease = ?lease.valid_for(), session = lease.session(), "ZooKeeper lease acquired");
                for table in catalog.tables() {
                    table.lease_acquired_in_new_session();
                }
            }
            LeaseEvent::Regained => {
                info!(lease = ?lease.valid_for(), session = lease.session(), "ZooKeeper lease regained in the same session");
                for table in catalog.tables() {
                    table.lease_regained();
                }
            }
            LeaseEvent::Lapsed | LeaseEvent::Lost => {
                if event == LeaseEvent::Lapsed {
                    warn!(lease = ?lease.valid_for(), "ZooKeeper lease lapsed: leader replicas stop serving");
                }
                for table in catalog.tables() {
                    table.lease_lost();
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK) => {}
            _ = stop.changed() => return,
        }
    }
}

fn run_gc(catalog: &Catalog, interval: Duration, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        for table in catalog.tables() {
            let removed = table.gc(now_ms());
            if removed > 0 {
                let meta = table.meta();
                info!(
                    tid = meta.tid,
                    pid = meta.pid,
                    removed,
                    "expired entries collected"
                );
            }
        }
    }
}
