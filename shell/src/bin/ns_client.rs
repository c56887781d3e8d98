//! `ns_client`: the operator's shell. On a terminal it is interactive (history, tab
//! completion, statements over several lines until `;`). `--cmd="…"` runs one command
//! and exits non-zero on failure; when standard input is not a terminal, statements are
//! read from it (one per line, or over several lines as interactively), stopping at the
//! first failure. Only the interactive shell asks before dropping anything.

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
    /// How show commands print: `table`, or `json` for scripts.
    #[arg(long, default_value = "table")]
    format: tessera_shell::format::Format,
    /// Never ask for confirmation, even in the interactive shell.
    #[arg(long)]
    yes: bool,
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
    shell.db = flags.database.clone();
    shell.format = flags.format;
    if shell.db != tessera_shell::shell::DEFAULT_DB {
        // `use` checks the database exists; so does the flag.
        if let Err(e) = shell.execute(&format!("use {}", flags.database)).await {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    }
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
        if !flags.yes {
            shell = shell.with_confirmation(Box::new(tessera_shell::repl::ask_on_terminal));
        }
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
    // Not a terminal: statements as the interactive shell reads them, stopping at the
    // first failure.
    let stdin = std::io::stdin();
    let mut statements = tessera_shell::repl::Statements::default();
    loop {
        let mut line = String::new();
        let read = match stdin.lock().read_line(&mut line) {
            Ok(read) => read,
            Err(e) => {
                eprintln!("cannot read input: {e}");
                return ExitCode::FAILURE;
            }
        };
        let complete = if read == 0 {
            statements.take()
        } else {
            statements.push(&line)
        };
        if let Some(text) = complete {
            if text.eq_ignore_ascii_case("quit") || text.eq_ignore_ascii_case("exit") {
                return ExitCode::SUCCESS;
            }
            match shell.execute(&text).await {
                Ok(out) if out.is_empty() => {}
                Ok(out) => println!("{out}"),
                Err(e) => {
                    eprintln!("Error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if read == 0 {
            return ExitCode::SUCCESS;
        }
    }
}
