//! The credentials of the clusters a test starts: servers run with authentication unless
//! told otherwise, so every server the harness starts gets one cluster secret (and every
//! nameserver root's password), and the test process itself holds the secret, so its own
//! calls (the harness's, the SDK's) are the cluster's internal calls.
//!
//! The files live in a folder of the test process's own, made on first use.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Root's password in every test cluster.
pub const ROOT_PASSWORD: &str = "root-password-for-tests";

pub struct Credentials {
    pub secret_file: PathBuf,
    pub root_password_file: PathBuf,
}

static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();

/// The credentials, written (and the secret made this process's) on first use.
pub fn credentials() -> &'static Credentials {
    CREDENTIALS.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("tessera-test-credentials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the credentials folder");
        let secret_file = dir.join("cluster.secret");
        let root_password_file = dir.join("root.password");
        std::fs::write(&secret_file, "a-cluster-secret-for-tests-0123\n")
            .expect("write the cluster secret");
        std::fs::write(&root_password_file, format!("{ROOT_PASSWORD}\n"))
            .expect("write root's password");
        tessera_common::cluster_secret::use_secret_file(&secret_file)
            .expect("the test process takes the cluster secret");
        Credentials {
            secret_file,
            root_password_file,
        }
    })
}

/// The flag giving a server the cluster secret.
pub fn secret_flag() -> String {
    format!(
        "--cluster_secret_file={}",
        credentials().secret_file.display()
    )
}

/// The flags a nameserver needs: the secret and root's first password.
pub fn nameserver_flags() -> Vec<String> {
    vec![
        secret_flag(),
        format!(
            "--root_password_file={}",
            credentials().root_password_file.display()
        ),
    ]
}

/// Adds the credentials to a server's flags, unless the test chose its own (or
/// `--insecure`).
pub fn with_server_credentials(args: &mut Vec<String>, nameserver: bool) {
    let chosen = |args: &[String], flag: &str| args.iter().any(|a| a.starts_with(flag));
    if chosen(args, "--insecure") {
        return;
    }
    if !chosen(args, "--cluster_secret_file") {
        args.push(secret_flag());
    }
    if nameserver && !chosen(args, "--root_password_file") {
        args.push(nameserver_flags().remove(1));
    }
}

/// An `ns_client` command logged in as root.
pub fn ns_client_command() -> std::process::Command {
    let mut command = std::process::Command::new(crate::binary("ns_client"));
    command
        .arg("--user=root")
        .env("TESSERA_PASSWORD", ROOT_PASSWORD);
    command
}

/// The flags and environment that let `tessera-ops` act on a test cluster: the secret
/// (for the tablets' internal calls) and root's login (for the nameserver).
pub fn ops_credentials(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    command
        .arg(secret_flag())
        .arg("--user=root")
        .env("TESSERA_PASSWORD", ROOT_PASSWORD)
}
