//! `ns_client`: the operator's shell. On a terminal it is interactive (history, tab
//! completion, statements over several lines until `;`). `--cmd="…"` runs one command
//! and exits non-zero on failure; when standard input is not a terminal, commands are
//! read from it one per line, stopping at the first failure.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use clap::Parser;
use tessera_ns_client::nameserver::NameserverConnection;
use tessera_shell::shell::Shell;

#[derive(Parser, Debug)]
#[command(
    name = "ns_client",
    version,
    about = "Tessera operator shell",
    rename_all = "snake_case"
)]
struct Flags {
    /// ZooKeeper connect string (host:port[,host:port…]).
    #[arg(long)]
    zk_cluster: String,
    /// Root path of the cluster in ZooKeeper.
    #[arg(long, default_value = "/tessera")]
    zk_root_path: String,
    /// Run this command and exit (non-zero on failure).
    #[arg(long)]
    cmd: Option<String>,
    /// Accepted for OpenMLDB compatibility; `--cmd` is never interactive.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    interactive: bool,
    /// Database to start in.
    #[arg(long, default_value = "default")]
    database: String,
    /// History file of the interactive shell (default: ~/.tessera_ns_client_history).
    #[arg(long)]
    history_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: tessera_common::tls::TlsFlags,
    #[command(flatten)]
    login: tessera_common::auth::LoginFlags,
}

/// The password for `--user`: the flag, the environment, or (interactive only) a prompt.
fn password(flags: &Flags) -> Result<String, String> {
    if let Some(password) = flags.login.given_password() {
        return Ok(password);
    }
    if flags.cmd.is_some() {
        return Err("--user needs --password or TESSERA_PASSWORD with --cmd".into());
    }
    rpassword::prompt_password("Password: ").map_err(|e| format!("cannot read the password: {e}"))
}

// Multi-threaded: the interactive shell blocks the main thread while it reads a line,
// and the ZooKeeper session must keep beating meanwhile.
#[tokio::main(worker_threads = 2)]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    if let Err(e) = flags.tls.apply(tessera_common::tls::Role::Client) {
        eprintln!("ns_client: {e}");
        return ExitCode::from(2);
    }
    let ns = match NameserverConnection::connect(&flags.zk_cluster, &flags.zk_root_path).await {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("cannot connect to the cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ns = ns;
    if let Some(user) = &flags.login.user {
        let logged_in = match password(&flags) {
            Ok(password) => match ns.login(user, &password).await {
                Ok(()) => {
                    tessera_ns_client::nameserver::NameserverConnection::keep_logged_in(
                        &flags.zk_cluster,
                        &flags.zk_root_path,
                        user,
                        &password,
                    );
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = logged_in {
            eprintln!("cannot log in as {user}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let data =
        match tessera_ns_client::Client::connect(&flags.zk_cluster, &flags.zk_root_path).await {
            Ok(client) => client,
            Err(e) => {
                eprintln!("cannot connect to the cluster: {e}");
                return ExitCode::FAILURE;
            }
        };
    let mut shell = Shell::new(ns).with_data(data);
    match tessera_ns_client::nameserver::TaskManagerConnection::connect(
        &flags.zk_cluster,
        &flags.zk_root_path,
    )
    .await
    {
        Ok(tm) => shell = shell.with_taskmanager(tm),
        Err(e) => eprintln!("no taskmanager connection ({e}); job commands are unavailable"),
    }
    shell.db = flags.database;
    if let Some(cmd) = flags.cmd {
        return match shell.execute(&cmd).await {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let interactive = std::io::stdin().is_terminal() && flags.interactive;
    if interactive {
        let history = flags
            .history_file
            .unwrap_or_else(tessera_shell::repl::default_history_file);
        return match tessera_shell::repl::run(&mut shell, history).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let stdin = std::io::stdin();
    // Not a terminal: one command per line, stopping at the first failure.
    loop {
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) => {
                eprintln!("cannot read input: {e}");
                return ExitCode::FAILURE;
            }
        }
        let trimmed = line.trim();
        if trimmed.eq_ignore_ascii_case("quit") || trimmed.eq_ignore_ascii_case("exit") {
            return ExitCode::SUCCESS;
        }
        match shell.execute(trimmed).await {
            Ok(out) if out.is_empty() => {}
            Ok(out) => println!("{out}"),
            Err(e) => {
                eprintln!("Error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}
