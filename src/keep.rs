//! Token bytes: every Vault token the bastion holds, each in its own 0600 file under
//! `<state-dir>/vault/`, named by its fingerprint (`<short hash>.token`), and nowhere else.
//!
//! A byte store and nothing more. Which tokens exist, whose they are, which destinations may
//! hold them and when they are revoked is the ledger's business (`state`); nothing here decides
//! anything. It also reads, once, the per-service layout older versions kept
//! (`<service>.current`, `<service>.<hash>.superseded`, `<service>.<hash>.child`) so that the
//! cycle can import it into the ledger.
//!
//! Owns file names and atomic writes (temp file created exclusively 0600, fsync, rename, fsync
//! of the directory). Never logs or returns a token except as the `Secret` it reads; knows
//! nothing of Vault.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::secret::Secret;

const DIR: &str = "vault";
const SUFFIX: &str = ".token";
const LEGACY_CURRENT: &str = "current";
const LEGACY_SUPERSEDED: &str = "superseded";
const LEGACY_CHILD: &str = "child";

#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("kept Vault tokens: {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("kept Vault tokens: {path} is readable by group or others (mode {mode:04o}); refusing to use it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("kept Vault tokens: {path} does not hold the token its name says (sha256={found})")]
    Mismatch { path: PathBuf, found: String },
    #[error("kept Vault tokens: {hash:?} is not a token fingerprint")]
    BadName { hash: String },
}

/// The token files of one state directory.
#[derive(Clone, Debug)]
pub struct TokenKeeper {
    dir: PathBuf,
}

/// What a token file of the older per-service layout was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegacyRole {
    /// `<service>.current`: the login token reused by the next cycle.
    Current,
    /// `<service>.<hash>.superseded`: a login token a newer one replaced.
    Superseded,
    /// `<service>.<key>.child`: the child token delivered to the file destination whose id
    /// hashes to `destination_key` (see [`destination_key`]).
    Child { destination_key: String },
}

/// A token file of the older per-service layout.
#[derive(Debug)]
pub struct Legacy {
    pub service: String,
    pub role: LegacyRole,
    pub token: Secret,
    path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeepError + '_ {
    move |source| KeepError::Io { path: path.to_path_buf(), source }
}

/// How the older layout named a child's destination in its file name: the short hash of the
/// destination id.
pub fn destination_key(destination: &str) -> String {
    Secret::new(destination).short_hash()
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TokenKeeper {
    /// `<state_dir>/vault`, created 0700 when missing.
    pub fn open(state_dir: &Path) -> Result<TokenKeeper, KeepError> {
        let dir = state_dir.join(DIR);
        DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io(&dir))?;
        Ok(TokenKeeper { dir })
    }

    fn path_of(&self, hash: &str) -> Result<PathBuf, KeepError> {
        if !is_fingerprint(hash) {
            return Err(KeepError::BadName { hash: hash.to_string() });
        }
        Ok(self.dir.join(format!("{hash}{SUFFIX}")))
    }

    /// Stores `token` under its fingerprint (a no-op when it is already there) and returns the
    /// fingerprint. Durable when it returns: the file and the directory entry are fsynced.
    pub fn put(&self, token: &Secret) -> Result<String, KeepError> {
        let hash = token.short_hash();
        let path = self.path_of(&hash)?;
        if self.read(&path)?.is_some_and(|t| t == *token) {
            return Ok(hash);
        }
        self.write(&path, token)?;
        Ok(hash)
    }

    /// The token stored under `hash`, if any.
    pub fn get(&self, hash: &str) -> Result<Option<Secret>, KeepError> {
        let path = self.path_of(hash)?;
        let Some(token) = self.read(&path)? else { return Ok(None) };
        let found = token.short_hash();
        if found != hash {
            return Err(KeepError::Mismatch { path, found });
        }
        Ok(Some(token))
    }

    /// Deletes the token stored under `hash` (after it was revoked, or found dead). A token that
    /// is not there counts as deleted.
    pub fn forget(&self, hash: &str) -> Result<(), KeepError> {
        let path = self.path_of(hash)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The fingerprints of every stored token.
    pub fn hashes(&self) -> Result<Vec<String>, KeepError> {
        let mut out: Vec<String> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(SUFFIX)).filter(|h| is_fingerprint(h)).map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every token file of the older per-service layout still present.
    pub fn legacy(&self) -> Result<Vec<Legacy>, KeepError> {
        let mut names: Vec<String> =
            fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if name.starts_with('.') || name.ends_with(SUFFIX) {
                continue;
            }
            // Service names hold no dot: `<service>.current` or `<service>.<hash>.<role>`.
            let parts: Vec<&str> = name.split('.').collect();
            let role = match parts.as_slice() {
                [_, LEGACY_CURRENT] => LegacyRole::Current,
                [_, _, LEGACY_SUPERSEDED] => LegacyRole::Superseded,
                [_, key, LEGACY_CHILD] => LegacyRole::Child { destination_key: key.to_string() },
                _ => continue,
            };
            let path = self.dir.join(&name);
            if let Some(token) = self.read(&path)? {
                out.push(Legacy { service: parts[0].to_string(), role, token, path });
            }
        }
        Ok(out)
    }

    /// Deletes a file of the older layout once its token is in the ledger and stored anew.
    pub fn remove_legacy(&self, legacy: &Legacy) -> Result<(), KeepError> {
        match fs::remove_file(&legacy.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&legacy.path)(e)),
        }
    }

    fn read(&self, path: &Path) -> Result<Option<Secret>, KeepError> {
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
        Ok(Some(Secret::new(token)))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn tokens_live_in_private_files_named_by_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let keep = TokenKeeper::open(dir.path()).unwrap();
        assert_eq!(fs::metadata(dir.path().join("vault")).unwrap().mode() & 0o777, 0o700);
        let first = Secret::new("s.first");
        let hash = keep.put(&first).unwrap();
        assert_eq!(hash, first.short_hash());
        let path = dir.path().join("vault").join(format!("{hash}.token"));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(keep.get(&hash).unwrap(), Some(first.clone()));
        assert_eq!(keep.put(&first).unwrap(), hash, "storing again is a no-op");
        let second = keep.put(&Secret::new("s.second")).unwrap();
        let mut both = vec![hash.clone(), second.clone()];
        both.sort();
        assert_eq!(keep.hashes().unwrap(), both);
        keep.forget(&hash).unwrap();
        keep.forget(&hash).unwrap();
        assert_eq!(keep.get(&hash).unwrap(), None);
        assert_eq!(keep.hashes().unwrap(), [second]);
        // No temp file is left behind.
        assert!(fs::read_dir(dir.path().join("vault")).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with('.')));
        assert!(matches!(keep.get("../../etc/x"), Err(KeepError::BadName { .. })));
    }

    #[test]
    fn an_exposed_or_mislabelled_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keep = TokenKeeper::open(dir.path()).unwrap();
        let hash = keep.put(&Secret::new("s.first")).unwrap();
        let path = dir.path().join("vault").join(format!("{hash}.token"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = keep.get(&hash).unwrap_err().to_string();
        assert!(err.contains("readable by group or others") && !err.contains("s.first"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "s.other\n").unwrap();
        let err = keep.get(&hash).unwrap_err().to_string();
        assert!(err.contains("does not hold the token its name says") && !err.contains("s.other"), "{err}");
    }

    #[test]
    fn the_older_layout_is_read_for_the_import() {
        let dir = tempfile::tempdir().unwrap();
        let keep = TokenKeeper::open(dir.path()).unwrap();
        let vault = dir.path().join("vault");
        let put = |name: &str, token: &str| {
            let p = vault.join(name);
            fs::write(&p, format!("{token}\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        };
        let dest = destination_key("file@h:/tmp/x");
        put("prod.current", "s.cur");
        put("prod.0123456789ab.superseded", "s.old");
        put(&format!("prod.{dest}.child"), "s.child");
        put("crab.current", "s.crab");
        keep.put(&Secret::new("s.new")).unwrap();
        let mut found: Vec<(String, String, LegacyRole)> =
            keep.legacy().unwrap().into_iter().map(|l| (l.service, l.token.expose().to_string(), l.role)).collect();
        found.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(
            found,
            [
                ("crab".into(), "s.crab".into(), LegacyRole::Current),
                ("prod".into(), "s.child".into(), LegacyRole::Child { destination_key: dest }),
                ("prod".into(), "s.cur".into(), LegacyRole::Current),
                ("prod".into(), "s.old".into(), LegacyRole::Superseded),
            ]
        );
        for l in keep.legacy().unwrap() {
            keep.remove_legacy(&l).unwrap();
        }
        assert!(keep.legacy().unwrap().is_empty());
        assert_eq!(keep.hashes().unwrap().len(), 1, "the new layout is left alone");
    }
}
