//! `tessera-ops --zk_cluster=… --zk_root_path=… --cmd=<command>`: cluster-wide
//! operations. See `tessera_tools::ops` and docs/OPERATIONS.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tessera_ns_client::nameserver::log_in_process;
use tessera_tools::ops::{balance, leaders, recoverdata, status, Ops, OpsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
enum Command {
    /// After a whole-cluster restart: load the most advanced replica of every partition
    /// as leader and bring the others back.
    Recoverdata,
    /// Move leaders off (--from) or onto (--to) an endpoint.
    Changeleader,
    /// Spread replicas onto every healthy tablet until balanced.
    Scaleout,
    /// Move every replica off --endpoints.
    Scalein,
    /// Move leaders off --endpoints before upgrading them.
    #[value(name = "pre-upgrade")]
    PreUpgrade,
    /// Bring upgraded endpoints back and give them their leaders again.
    #[value(name = "post-upgrade")]
    PostUpgrade,
    /// The ops of the pipeline (--filter=kFailed to see only failed ones).
    Showopstatus,
    /// One line per table: replicas alive, leaders, lag, status.
    Showtablestatus,
}

/// Cluster-wide operations on a Tessera cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "tessera-ops", version, rename_all = "snake_case")]
struct Args {
    /// ZooKeeper connect string (host:port[,host:port…]).
    #[arg(long)]
    zk_cluster: String,
    /// Root path of the cluster in ZooKeeper.
    #[arg(long, default_value = "/tessera")]
    zk_root_path: String,
    #[arg(long, value_enum)]
    cmd: Command,
    #[command(flatten)]
    zk_auth: tessera_common::zk_auth::ZkAuthFlags,
    #[command(flatten)]
    cluster_secret: tessera_common::cluster_secret::ClusterSecretFlags,
    #[command(flatten)]
    tls: tessera_common::tls::TlsFlags,
    // The user to act as on the nameserver, an administrator (`grant all on *.*`):
    // required with --cluster_secret_file, which only covers the tablets' internal calls.
    #[command(flatten)]
    login: tessera_common::auth::LoginFlags,
    /// recoverdata: print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// recoverdata: promote even when too few replicas answer to be sure no acknowledged
    /// write is lost.
    #[arg(long)]
    force: bool,
    /// Comma-separated endpoints (scalein, pre-upgrade, post-upgrade).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// changeleader: move every leader off this endpoint.
    #[arg(long)]
    from: Option<String>,
    /// changeleader: make this endpoint lead every partition it holds a replica of.
    #[arg(long)]
    to: Option<String>,
    /// showopstatus: only ops in this status (kInited, kDoing, kDone, kFailed, kCanceled).
    #[arg(long)]
    filter: Option<String>,
    /// Seconds to wait for the ops a command starts.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

fn require_endpoints(args: &Args) -> Result<(), OpsError> {
    if args.endpoints.iter().all(|e| e.trim().is_empty()) {
        let name = args
            .cmd
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        return Err(OpsError::InvalidArgument(format!(
            "{name} needs --endpoints=host:port[,host:port…]"
        )));
    }
    Ok(())
}

/// Runs a command that changes replicas with auto_failover off, restoring it after.
async fn with_auto_failover_off<F>(ops: &mut Ops, run: F) -> Result<bool, OpsError>
where
    F: for<'a> FnOnce(
        &'a mut Ops,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<bool, OpsError>> + 'a>,
    >,
{
    let found = ops.pause_auto_failover().await?;
    let result = run(ops).await;
    ops.restore_auto_failover(found).await;
    result
}

async fn run(args: Args) -> Result<bool, OpsError> {
    let mut ops = Ops::connect(
        &args.zk_cluster,
        &args.zk_root_path,
        Duration::from_secs(args.timeout),
    )
    .await?;
    ops.command = args
        .cmd
        .to_possible_value()
        .map_or_else(|| "tessera-ops".into(), |v| v.get_name().to_string());
    // A run that died with auto_failover off is undone before anything else (a dry run
    // changes nothing, so it only reports it).
    if !args.dry_run {
        if let Err(e) = ops.restore_interrupted().await {
            // Commands that change nothing go on; the others are refused when they try
            // to turn auto_failover off.
            eprintln!("tessera-ops: note: {e}");
        }
    }
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    match args.cmd {
        Command::Recoverdata => {
            let report = recoverdata::recoverdata(&mut ops, args.dry_run, args.force).await?;
            println!("{}", report.summary());
            Ok(report.all_ok())
        }
        Command::Showopstatus => {
            println!(
                "{}",
                status::showopstatus(&mut ops, args.filter.as_deref()).await?
            );
            Ok(true)
        }
        Command::Showtablestatus => {
            println!("{}", status::showtablestatus(&mut ops).await?);
            Ok(true)
        }
        Command::Changeleader => match (args.from, args.to) {
            (Some(from), None) => {
                let from = vec![from];
                with_auto_failover_off(&mut ops, |ops| {
                    Box::pin(async move { leaders::move_off(ops, &from).await })
                })
                .await
            }
            (None, Some(to)) => {
                with_auto_failover_off(&mut ops, |ops| {
                    Box::pin(async move { leaders::move_onto(ops, &to, None).await })
                })
                .await
            }
            _ => Err(OpsError::InvalidArgument(
                "changeleader needs exactly one of --from=endpoint or --to=endpoint".into(),
            )),
        },
        Command::Scaleout => {
            with_auto_failover_off(&mut ops, |ops| Box::pin(balance::scaleout(ops))).await
        }
        Command::Scalein => {
            require_endpoints(&args)?;
            with_auto_failover_off(&mut ops, |ops| {
                Box::pin(async move { balance::scalein(ops, &endpoints).await })
            })
            .await
        }
        Command::PreUpgrade => {
            require_endpoints(&args)?;
            with_auto_failover_off(&mut ops, |ops| {
                Box::pin(async move { leaders::pre_upgrade(ops, &endpoints).await })
            })
            .await
        }
        Command::PostUpgrade => {
            with_auto_failover_off(&mut ops, |ops| {
                Box::pin(async move { leaders::post_upgrade(ops, &endpoints).await })
            })
            .await
        }
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM), naming the signal.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// After an interruption: puts back the auto_failover setting this run turned off.
async fn restore_after_interruption(args: &Args) {
    let restored = async {
        let mut ops = Ops::connect(
            &args.zk_cluster,
            &args.zk_root_path,
            Duration::from_secs(30),
        )
        .await?;
        ops.restore_interrupted().await
    };
    match tokio::time::timeout(Duration::from_secs(30), restored).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!(
            "tessera-ops: could not restore auto_failover ({e}); the next run will, or run \
             `confset auto_failover true` in ns_client"
        ),
        Err(_) => eprintln!(
            "tessera-ops: could not restore auto_failover in time; the next run will, or run \
             `confset auto_failover true` in ns_client"
        ),
    }
}

/// Logs in as `--user`, which a cluster with authentication requires: the secret lets
/// this tool make the tablets' internal calls, and the user's grants decide what it may
/// do through the nameserver (a session token is judged as its user even beside the
/// secret). The session is renewed for long runs.
async fn log_in(args: &Args) -> Result<(), String> {
    let Some(user) = &args.login.user else {
        if args.cluster_secret.cluster_secret_file.is_some() {
            return Err(
                "a cluster with authentication needs --user (an administrator) \
                        and --password or TESSERA_PASSWORD besides --cluster_secret_file"
                    .into(),
            );
        }
        return Ok(());
    };
    let password = args
        .login
        .given_password()
        .ok_or_else(|| format!("--user {user} needs --password or TESSERA_PASSWORD"))?;
    log_in_process(&args.zk_cluster, &args.zk_root_path, user, &password)
        .await
        .map_err(|e| format!("cannot log in as {user}: {e}"))
}

#[tokio::main(worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args
        .zk_auth
        .apply()
        .and_then(|()| args.cluster_secret.apply())
        .and_then(|()| args.tls.apply(tessera_common::tls::Role::Client))
    {
        eprintln!("tessera-ops: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = log_in(&args).await {
        eprintln!("tessera-ops: {e}");
        return ExitCode::from(2);
    }
    let outcome = tokio::select! {
        outcome = run(args.clone()) => outcome,
        signal = interrupted() => {
            eprintln!("tessera-ops: interrupted by {signal}; ops already started go on in the nameserver");
            restore_after_interruption(&args).await;
            return ExitCode::from(130);
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("tessera-ops: finished with failures (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tessera-ops: {e}");
            ExitCode::FAILURE
        }
    }
}
