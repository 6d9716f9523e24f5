//! The few whole commands a host is asked to run outside a delivery: a command whose stdout is a
//! secret (`condor_token_create` printing a token), a command whose output only matters by its
//! exit status (`condor_reconfig`), the home directories of accounts (`getent passwd`), and a
//! small text file read back over SFTP (a `config.d` file before it is merged).
//!
//! Must never put a command's secret stdout in an error, a log line or anything but the
//! [`Secret`] it is read into; never read more than the cap it is given.

use std::collections::BTreeMap;

use super::batch::{self, one_line};
use super::session::{Remote, sh_quote};
use super::{DeliverError, HostTarget, check_path, read_regular};
use crate::secret::Secret;

/// How much of a failing command's stderr an error keeps.
const STDERR_SHOWN: usize = 300;

/// Runs `command` on the host and returns its stdout as a secret, at most `cap` bytes with the
/// trailing newline removed. A non-zero exit, an empty or over-long stdout fail without a byte
/// of stdout in the error; stderr is shown scrubbed of every registered secret (stdout included).
pub fn secret_output(target: &HostTarget, purpose: &str, command: &str, cap: usize) -> Result<Secret, DeliverError> {
    let span = tracing::info_span!("command", host = %target.name, purpose);
    let _entered = span.enter();
    let remote = Remote::connect(target)?;
    let out = remote.exec(purpose, command)?;
    let size = out.stdout.len();
    // Registered before anything looks at it, so the scrub below removes it from stderr too.
    let stdout = Secret::new(out.stdout);
    let fail = |detail: String| DeliverError::Exec { host: target.name.clone(), purpose: purpose.to_string(), detail };
    if out.status != 0 {
        let stderr = crate::redact::scrub(&out.stderr).into_owned();
        return Err(fail(format!("exit status {}: {}", out.status, crate::redact::excerpt(&stderr, STDERR_SHOWN))));
    }
    if size > cap {
        return Err(fail(format!("printed more than {cap} bytes")));
    }
    let text = stdout.expose().trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(fail("printed nothing".into()));
    }
    Ok(Secret::new(text))
}

/// Runs `command` on the host; `Ok` on exit status 0, else an error with its output (commands
/// run here are never given secrets).
pub fn run_command(target: &HostTarget, purpose: &str, command: &str) -> Result<(), DeliverError> {
    let remote = Remote::connect(target)?;
    let out = remote.exec(purpose, command)?;
    if out.status == 0 {
        Ok(())
    } else {
        Err(DeliverError::Exec { host: target.name.clone(), purpose: purpose.to_string(), detail: format!("exit status {}: {}", out.status, out.detail()) })
    }
}

/// The home directory of each account, as the host's NSS knows it (`getent passwd`, one exec).
pub fn homes(target: &HostTarget, accounts: &[String]) -> Result<BTreeMap<String, Result<String, String>>, DeliverError> {
    let remote = Remote::connect(target)?;
    let commands: Vec<String> = accounts.iter().map(|a| format!("getent passwd {}", sh_quote(a))).collect();
    let mut out = BTreeMap::new();
    for (account, result) in accounts.iter().zip(batch::run(&remote, "look up home directories", commands)) {
        let home = result.map_err(|_| "no such account".to_string()).and_then(|line| {
            line.trim().split(':').nth(5).filter(|h| check_path(h).is_ok() && *h != "/").map(str::to_string).ok_or_else(|| format!("getent printed no home directory: {}", one_line(&line)))
        });
        out.insert(account.clone(), home);
    }
    Ok(out)
}

/// A remote regular file's text, at most `cap` bytes; `None` when there is no such file.
pub fn read_text(target: &HostTarget, path: &str, cap: u64) -> Result<Option<String>, DeliverError> {
    let remote = Remote::connect(target)?;
    let fail = |detail: String| DeliverError::ReadBack { host: target.name.clone(), path: path.to_string(), detail };
    check_path(path).map_err(|e| fail(e.to_string()))?;
    match read_regular(&remote, path, cap + 1).map_err(fail)? {
        None => Ok(None),
        Some(bytes) if bytes.len() as u64 > cap => Err(fail(format!("is larger than {cap} bytes"))),
        Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| fail("is not UTF-8 text".into())),
    }
}

/// The most names [`list_dirs`] reports per directory.
const LISTED_MAX: usize = 200;

/// Per directory: the names in it, or why it could not be listed.
pub type Listing = Vec<(String, Result<Vec<String>, String>)>;

/// The names in each directory (not `.` and `..`), at most 200 each, over SFTP; a directory
/// that cannot be read is an error for it alone.
pub fn list_dirs(target: &HostTarget, dirs: &[String]) -> Result<Listing, DeliverError> {
    let remote = Remote::connect(target)?;
    Ok(dirs
        .iter()
        .map(|dir| {
            let listed = remote.sftp().and_then(|sftp| sftp.readdir(super::session::rpath(dir))).map_err(|e| {
                remote.note(&e);
                format!("cannot list {dir}: {e}")
            });
            let names = listed.map(|entries| {
                let mut names: Vec<String> = entries
                    .iter()
                    .filter_map(|(p, _)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .filter(|n| n != "." && n != "..")
                    .collect();
                names.sort();
                names.truncate(LISTED_MAX);
                names
            });
            (dir.clone(), names)
        })
        .collect())
}
