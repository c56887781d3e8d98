//! Where jobs may read and write files: only under the job data directory
//! (`--job_data_dir`). A job's path is taken relative to it, or absolute inside it;
//! anything that leaves it (`..`, an absolute path elsewhere, a symbolic link pointing
//! out) is refused, so a cluster user cannot make the taskmanager read or write the
//! server's other files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use crate::error::{Result, TmError};

#[derive(Debug, Clone)]
pub struct JobFiles {
    /// Canonical (absolute, no symbolic links).
    root: PathBuf,
}

impl JobFiles {
    /// The job data directory, created if missing.
    pub fn open(root: &Path) -> std::io::Result<JobFiles> {
        std::fs::create_dir_all(root)?;
        Ok(JobFiles {
            root: root.canonicalize()?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn given(&self, given: &str) -> Result<PathBuf> {
        if given.is_empty() {
            return Err(TmError::InvalidArgument("a file path is required".into()));
        }
        Ok(self.root.join(given))
    }

    fn outside(&self, given: &str) -> TmError {
        TmError::PermissionDenied(format!(
            "{given} is outside the job data directory {} (jobs read and write files only \
             there; see --job_data_dir)",
            self.root.display()
        ))
    }

    /// The file an import reads: an existing regular file inside the directory, with
    /// every symbolic link resolved.
    pub fn input(&self, given: &str) -> Result<PathBuf> {
        let path = self.given(given)?;
        let real = path.canonicalize().map_err(|e| {
            TmError::InvalidArgument(format!(
                "{given} is not a file in the job data directory {}: {e}",
                self.root.display()
            ))
        })?;
        if !real.starts_with(&self.root) {
            return Err(self.outside(given));
        }
        if !real.is_file() {
            return Err(TmError::InvalidArgument(format!("{given} is not a file")));
        }
        Ok(real)
    }

    /// Where an export writes: a plain file name in an existing directory inside the
    /// job data directory. An existing file there may be replaced; a symbolic link or
    /// anything but a regular file may not.
    pub fn output(&self, given: &str) -> Result<PathBuf> {
        let path = self.given(given)?;
        let name = match path.components().next_back() {
            Some(Component::Normal(name)) => name.to_owned(),
            _ => {
                return Err(TmError::InvalidArgument(format!(
                    "{given} does not name a file"
                )))
            }
        };
        let parent = path.parent().unwrap_or(&self.root);
        let real_parent = parent.canonicalize().map_err(|e| {
            TmError::InvalidArgument(format!(
                "the directory of {given} is not usable in the job data directory: {e}"
            ))
        })?;
        if !real_parent.starts_with(&self.root) {
            return Err(self.outside(given));
        }
        let target = real_parent.join(name);
        if let Ok(meta) = target.symlink_metadata() {
            if !meta.file_type().is_file() {
                return Err(TmError::InvalidArgument(format!(
                    "{given} exists and is not a regular file; it is not replaced"
                )));
            }
        }
        Ok(target)
    }
}

/// A file written whole or not at all: the content goes to a partial file beside it
/// (created anew, never through a link), which is fsynced and renamed over `target`, and the
/// directory is fsynced, so after a crash `target` is either the old file or the new
/// one, complete.
/// Dropped before [`AtomicFile::commit`], it removes the partial file.
pub struct AtomicFile {
    part: PathBuf,
    target: PathBuf,
    file: File,
    committed: bool,
}

impl AtomicFile {
    /// `owner` names the writer (an export's job): the partial file is
    /// `<target>.<owner>.<unique>.part`, so two writers of one target (two jobs, or a
    /// job's old and new run during a change of leader) never share it, and what an
    /// earlier run of the same owner left behind is removed.
    pub fn create(target: &Path, owner: &str) -> Result<AtomicFile> {
        let dir = target.parent().unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .ok_or_else(|| TmError::InvalidArgument(format!("{} names no file", target.display())))?
            .to_string_lossy()
            .into_owned();
        let mine = format!("{name}.{owner}.");
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.starts_with(&mine) && file.ends_with(".part") {
                    // Removing a link removes the link, not what it points to.
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let part = dir.join(format!("{mine}{unique}.part"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .map_err(|e| io(&part, "creating", e))?;
        Ok(AtomicFile {
            part,
            target: target.to_path_buf(),
            file,
            committed: false,
        })
    }

    pub fn part(&self) -> &Path {
        &self.part
    }

    /// Makes the content durable and visible under the target name.
    pub fn commit(mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(|e| io(&self.part, "writing", e))?;
        self.file
            .sync_all()
            .map_err(|e| io(&self.part, "syncing", e))?;
        std::fs::rename(&self.part, &self.target).map_err(|e| io(&self.part, "renaming", e))?;
        self.committed = true;
        let dir = self.target.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, "syncing the directory", e))
    }

    /// Gives up: the partial file is removed.
    pub fn abandon(self) {}
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn io(path: &Path, doing: &str, e: std::io::Error) -> TmError {
    TmError::Io(format!("{doing} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, JobFiles) {
        let jobs = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let files = JobFiles::open(&jobs.path().join("data")).unwrap();
        std::fs::write(files.root().join("in.csv"), "a,b\n").unwrap();
        std::fs::create_dir(files.root().join("sub")).unwrap();
        std::fs::write(elsewhere.path().join("secret"), "x").unwrap();
        (jobs, elsewhere, files)
    }

    fn denied(result: Result<PathBuf>) -> String {
        match result {
            Err(TmError::PermissionDenied(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn paths_inside_are_accepted_relative_or_absolute() {
        let (_jobs, _elsewhere, files) = setup();
        let root = files.root().to_path_buf();
        assert_eq!(files.input("in.csv").unwrap(), root.join("in.csv"));
        let absolute = root.join("in.csv");
        assert_eq!(files.input(absolute.to_str().unwrap()).unwrap(), absolute);
        assert_eq!(
            files.output("sub/out.csv").unwrap(),
            root.join("sub/out.csv")
        );
        assert_eq!(files.output("sub/../x.csv").unwrap(), root.join("x.csv"));
    }

    #[test]
    fn paths_leaving_the_directory_are_refused() {
        let (_jobs, elsewhere, files) = setup();
        let secret = elsewhere.path().join("secret");
        let message = denied(files.input(secret.to_str().unwrap()));
        assert!(
            message.contains("outside the job data directory"),
            "{message}"
        );
        denied(files.input("../../../../../../etc/passwd"));
        denied(files.output(secret.to_str().unwrap()));
        denied(files.output("../escape.csv"));
        denied(files.output("/etc/cron.d/evil"));

        // Links out, to a file or to a directory, are followed and refused.
        std::os::unix::fs::symlink(&secret, files.root().join("link")).unwrap();
        denied(files.input("link"));
        std::os::unix::fs::symlink(elsewhere.path(), files.root().join("out")).unwrap();
        denied(files.output("out/file.csv"));
        denied(files.input("out/secret"));
        // A link inside cannot be written through, even to a place inside.
        std::os::unix::fs::symlink(files.root().join("in.csv"), files.root().join("alias"))
            .unwrap();
        assert!(matches!(
            files.output("alias"),
            Err(TmError::InvalidArgument(_))
        ));
        assert!(matches!(
            files.output("sub"),
            Err(TmError::InvalidArgument(_))
        ));
        assert!(matches!(files.output(""), Err(TmError::InvalidArgument(_))));
        assert!(matches!(
            files.input("nosuch.csv"),
            Err(TmError::InvalidArgument(_))
        ));
    }

    #[test]
    fn an_atomic_file_replaces_the_target_whole_and_never_writes_through_a_link() {
        let (_jobs, elsewhere, files) = setup();
        let target = files.output("out.csv").unwrap();
        // A planted `.part` link must not redirect the write.
        let secret = elsewhere.path().join("secret");
        std::os::unix::fs::symlink(&secret, files.root().join("out.csv.job1.1.part")).unwrap();
        let mut out = AtomicFile::create(&target, "job1").unwrap();
        out.write_all(b"new content").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new content");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "x");
        assert!(
            !files.root().join("out.csv.job1.1.part").exists(),
            "a leftover is removed"
        );

        // Two writers of one target do not share a partial file.
        let mut first = AtomicFile::create(&target, "job2").unwrap();
        let mut second = AtomicFile::create(&target, "job3").unwrap();
        first.write_all(b"first, whole").unwrap();
        second.write_all(b"second, half").unwrap();
        first.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "first, whole");
        second.abandon();

        let mut out = AtomicFile::create(&target, "job4").unwrap();
        out.write_all(b"half").unwrap();
        out.abandon();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "first, whole");
        let left: Vec<_> = std::fs::read_dir(files.root())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .collect();
        assert!(
            left.is_empty(),
            "abandoned partial files are removed: {left:?}"
        );
    }
}
