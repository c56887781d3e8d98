//! The cluster secret: what shows that a call to a tablet's internal RPCs comes from a
//! process of the cluster (a nameserver, another tablet, `tessera-ops`).
//!
//! Given `--cluster_secret_file=PATH` (the same file content on every process), a
//! process sends the secret in the `x-tessera-cluster-secret` header of every internal
//! call it makes, and a tablet refuses an internal RPC — role changes, fences, replica
//! and snapshot transfer, table creation and removal — that does not carry it, with
//! `PERMISSION_DENIED`. Data RPCs (put, get, scan, …) and status reads are not internal.
//! Without a secret, nothing is sent or checked.
//!
//! The secret is a setting of the whole process, read once at start-up
//! ([`use_secret_file`]). Without TLS it travels in clear text, like any password.

use std::path::Path;
use std::sync::OnceLock;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::wire_error::{self, ErrorCode};

/// The metadata header carrying the secret.
pub const HEADER: &str = "x-tessera-cluster-secret";
/// Shorter secrets are refused: they could be guessed.
const MIN_LEN: usize = 16;

static SECRET: OnceLock<MetadataValue<Ascii>> = OnceLock::new();

/// Reads the secret (the file's first line, surrounding blanks ignored) and makes it
/// this process's. The message of an error says what is wrong with the file.
pub fn use_secret_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the cluster secret {}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim();
    if secret.len() < MIN_LEN {
        return Err(format!(
            "the cluster secret in {} is shorter than {MIN_LEN} characters",
            path.display()
        ));
    }
    if !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "the cluster secret in {} must be printable ASCII without spaces",
            path.display()
        ));
    }
    let value: MetadataValue<Ascii> = secret
        .parse()
        .map_err(|_| format!("the cluster secret in {} is not usable", path.display()))?;
    let set = SECRET.get_or_init(|| value.clone());
    if *set == value {
        Ok(())
    } else {
        Err("the cluster secret of a process is set once".into())
    }
}

/// The flag, for the binaries that take it as it is (the tablet reads it from its
/// configuration file too).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "flags", derive(clap::Args))]
#[cfg_attr(feature = "flags", command(rename_all = "snake_case"))]
pub struct ClusterSecretFlags {
    /// File whose first line is the cluster secret (16 or more printable characters),
    /// the same on every process of the cluster: internal calls carry it, and tablets
    /// refuse internal calls without it.
    #[cfg_attr(feature = "flags", arg(long))]
    pub cluster_secret_file: Option<std::path::PathBuf>,
}

impl ClusterSecretFlags {
    /// Reads the secret, if a file was given, and makes it this process's.
    pub fn apply(&self) -> Result<(), String> {
        match &self.cluster_secret_file {
            Some(path) => use_secret_file(path),
            None => Ok(()),
        }
    }
}

/// Adds the secret, if any, to every request of a client.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachSecret;

impl Interceptor for AttachSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(secret) = SECRET.get() {
            request.metadata_mut().insert(HEADER, secret.clone());
        }
        Ok(request)
    }
}

/// A channel for internal calls: every request carries the secret.
pub type InternalChannel = InterceptedService<Channel, AttachSecret>;

pub fn internal(channel: Channel) -> InternalChannel {
    InterceptedService::new(channel, AttachSecret)
}

/// The secret's bytes, if the process has one (the key that signs session tokens is
/// derived from it).
pub(crate) fn secret_bytes() -> Option<&'static [u8]> {
    SECRET.get().map(|secret| secret.as_bytes())
}

/// Whether `request` carries this process's secret (false when it has none).
pub fn is_internal<T>(request: &Request<T>) -> bool {
    let (Some(expected), Some(given)) = (SECRET.get(), request.metadata().get(HEADER)) else {
        return false;
    };
    same(given.as_bytes(), expected.as_bytes())
}

/// Refuses `request`, an internal RPC named `method`, unless it carries this process's
/// secret (always accepted when the process has none).
pub fn check<T>(request: &Request<T>, method: &str) -> Result<(), Status> {
    if SECRET.get().is_none() || is_internal(request) {
        return Ok(());
    }
    Err(wire_error::status(
        ErrorCode::PermissionDenied,
        format!(
            "permission denied: {method} is an internal call of the cluster and needs its \
             secret (--cluster_secret_file)"
        ),
    ))
}

/// Compares without stopping at the first difference, so the time taken does not tell
/// how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcde"));
    }

    #[test]
    fn bad_secret_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        assert!(use_secret_file(&short)
            .unwrap_err()
            .contains("shorter than 16"));
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "a secret with spaces in it\n").unwrap();
        assert!(use_secret_file(&spaced)
            .unwrap_err()
            .contains("printable ASCII"));
        assert!(use_secret_file(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot read"));
        assert!(SECRET.get().is_none());
    }
}
