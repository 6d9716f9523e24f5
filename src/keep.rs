//! The Vault tokens the bastion keeps between cycles, each in its own 0600 file under
//! `<state-dir>/vault/`, nowhere else.
//!
//! Per service: the *current* login token (reused while it has enough life left, so the credd
//! keeps one token for weeks as condor_vault_storer does), login tokens it *superseded* (kept only
//! until no destination depends on them any more, then revoked), and per file destination the
//! child token now delivered there (revoked when a newer child replaces it).
//!
//! Owns file names and atomic writes (temp file created exclusively 0600, fsync, rename, fsync
//! of the directory). Never logs or returns a token except as the `Secret` it reads; knows
//! nothing of Vault itself.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::secret::Secret;

const DIR: &str = "vault";
const CURRENT: &str = "current";
const SUPERSEDED: &str = "superseded";
const CHILD: &str = "child";

#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("kept Vault tokens: {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("kept Vault tokens: {path} is readable by group or others (mode {mode:04o}); refusing to use it")]
    Exposed { path: PathBuf, mode: u32 },
}

/// The kept tokens of one state directory.
#[derive(Clone, Debug)]
pub struct TokenKeeper {
    dir: PathBuf,
}

/// A kept token and the file it lives in.
#[derive(Debug)]
pub struct Kept {
    pub token: Secret,
    pub path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeepError + '_ {
    move |source| KeepError::Io { path: path.to_path_buf(), source }
}

/// A destination id (`file@host:/path`) as a file-name part: its short hash.
fn dest_key(destination: &str) -> String {
    Secret::new(destination).short_hash()
}

impl TokenKeeper {
    /// `<state_dir>/vault`, created 0700 when missing.
    pub fn open(state_dir: &Path) -> Result<TokenKeeper, KeepError> {
        let dir = state_dir.join(DIR);
        DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io(&dir))?;
        Ok(TokenKeeper { dir })
    }

    fn current_path(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.{CURRENT}"))
    }

    fn child_path(&self, service: &str, destination: &str) -> PathBuf {
        self.dir.join(format!("{service}.{}.{CHILD}", dest_key(destination)))
    }

    fn read(&self, path: &Path) -> Result<Option<Kept>, KeepError> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeepError::Exposed { path: path.to_path_buf(), mode });
        }
        let text = fs::read_to_string(path).map_err(io(path))?;
        let token = text.trim();
        if token.is_empty() {
            return Ok(None);
        }
        Ok(Some(Kept { token: Secret::new(token), path: path.to_path_buf() }))
    }

    /// Writes `token` to `path` atomically with mode 0600.
    fn write(&self, path: &Path, token: &Secret) -> Result<(), KeepError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("token");
        let temp = self.dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).map_err(io(&temp))?;
            f.write_all(format!("{}\n", token.expose()).as_bytes()).map_err(io(&temp))?;
            f.sync_all().map_err(io(&temp))?;
            fs::rename(&temp, path).map_err(io(path))?;
            fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// The service's current login token, if one is kept.
    pub fn current(&self, service: &str) -> Result<Option<Kept>, KeepError> {
        self.read(&self.current_path(service))
    }

    /// Makes `token` the service's current login token; the one it replaces (if any) is kept as
    /// superseded until [`Self::forget`] after its revocation.
    pub fn set_current(&self, service: &str, token: &Secret) -> Result<(), KeepError> {
        let path = self.current_path(service);
        if let Some(old) = self.read(&path)?
            && old.token != *token {
                let to = self.dir.join(format!("{service}.{}.{SUPERSEDED}", old.token.short_hash()));
                fs::rename(&path, &to).map_err(io(&to))?;
            }
        self.write(&path, token)
    }

    /// Login tokens of the service that a newer one replaced, not yet revoked.
    pub fn superseded(&self, service: &str) -> Result<Vec<Kept>, KeepError> {
        self.matching(service, SUPERSEDED)
    }

    /// The child token now delivered to a file destination.
    pub fn child(&self, service: &str, destination: &str) -> Result<Option<Kept>, KeepError> {
        self.read(&self.child_path(service, destination))
    }

    /// Records the child token now delivered to a file destination; returns the one it replaced.
    pub fn set_child(&self, service: &str, destination: &str, token: &Secret) -> Result<Option<Kept>, KeepError> {
        let path = self.child_path(service, destination);
        let old = self.read(&path)?;
        self.write(&path, token)?;
        Ok(old.filter(|o| o.token != *token).map(|o| Kept { token: o.token, path: PathBuf::new() }))
    }

    /// Every token kept for the service: current, superseded and children.
    pub fn all(&self, service: &str) -> Result<Vec<Kept>, KeepError> {
        let mut out: Vec<Kept> = self.current(service)?.into_iter().collect();
        out.extend(self.superseded(service)?);
        out.extend(self.matching(service, CHILD)?);
        Ok(out)
    }

    /// Services that have any token kept (the inventory may have dropped some of them).
    pub fn services(&self) -> Result<Vec<String>, KeepError> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') {
                    return None;
                }
                name.split('.').next().map(str::to_string)
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Deletes a kept token's file (after it was revoked, or found dead).
    pub fn forget(&self, kept: &Kept) -> Result<(), KeepError> {
        if kept.path.as_os_str().is_empty() {
            return Ok(());
        }
        match fs::remove_file(&kept.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&kept.path)(e)),
        }
    }

    fn matching(&self, service: &str, suffix: &str) -> Result<Vec<Kept>, KeepError> {
        let prefix = format!("{service}.");
        let end = format!(".{suffix}");
        let mut paths: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    // `<service>.<hash>.<suffix>` (service names hold no dot).
                    n.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(&end)).is_some_and(|mid| !mid.contains('.'))
                })
            })
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for p in paths {
            if let Some(k) = self.read(&p)? {
                out.push(k);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn current_superseded_and_children_live_in_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let keep = TokenKeeper::open(dir.path()).unwrap();
        assert_eq!(fs::metadata(dir.path().join("vault")).unwrap().mode() & 0o777, 0o700);
        assert!(keep.current("prod").unwrap().is_none());

        keep.set_current("prod", &Secret::new("s.first")).unwrap();
        let cur = keep.current("prod").unwrap().unwrap();
        assert_eq!(cur.token.expose(), "s.first");
        assert_eq!(fs::metadata(&cur.path).unwrap().mode() & 0o777, 0o600);

        // Same token again: nothing superseded.
        keep.set_current("prod", &Secret::new("s.first")).unwrap();
        assert!(keep.superseded("prod").unwrap().is_empty());

        keep.set_current("prod", &Secret::new("s.second")).unwrap();
        assert_eq!(keep.current("prod").unwrap().unwrap().token.expose(), "s.second");
        let old = keep.superseded("prod").unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].token.expose(), "s.first");

        assert!(keep.set_child("prod", "file@h:/tmp/x", &Secret::new("s.child1")).unwrap().is_none());
        let replaced = keep.set_child("prod", "file@h:/tmp/x", &Secret::new("s.child2")).unwrap().unwrap();
        assert_eq!(replaced.token.expose(), "s.child1");
        assert_eq!(keep.child("prod", "file@h:/tmp/x").unwrap().unwrap().token.expose(), "s.child2");

        keep.set_current("crab", &Secret::new("s.other")).unwrap();
        let all: Vec<String> = keep.all("prod").unwrap().iter().map(|k| k.token.expose().to_string()).collect();
        assert_eq!(all, ["s.second", "s.first", "s.child2"]);
        assert_eq!(keep.services().unwrap(), ["crab", "prod"]);

        keep.forget(&old.into_iter().next().unwrap()).unwrap();
        assert!(keep.superseded("prod").unwrap().is_empty());
        // No temp file is left behind.
        assert!(fs::read_dir(dir.path().join("vault")).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with('.')));
    }

    #[test]
    fn an_exposed_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keep = TokenKeeper::open(dir.path()).unwrap();
        keep.set_current("prod", &Secret::new("s.first")).unwrap();
        let path = dir.path().join("vault/prod.current");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = keep.current("prod").unwrap_err().to_string();
        assert!(err.contains("readable by group or others") && !err.contains("s.first"), "{err}");
    }
}
