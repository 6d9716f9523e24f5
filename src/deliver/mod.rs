//! Delivery over SSH: the only code that knows SSH.
//!
//! Takes a [`HostPlan`] (plain data: where to connect, which directories and files must exist,
//! which credmons to wake) and carries it out over one SSH session: strict host-key check,
//! public-key login, `{uid}` resolution, then for every file a temp file created exclusively with
//! mode 0600, written, fsynced, given its final mode and owner, and moved over the old file with
//! one batched `mv -f` (OpenSSH's SFTP cannot rename over an existing file). The result is a
//! [`HostOutcome`] with one entry per file: a failure in one file never stops the others.
//! [`credd_layout`] builds the plan entries of a credd credential-spool destination.
//!
//! Must never: write anything to a host whose key known_hosts does not hold; leave a token
//! readable by others, partially written under its final name, or in a temp file after the run;
//! put token bytes on a command line, in an error or in a log line (logs carry a short hash);
//! signal a process that is not a credmon; read configuration or touch state (callers map
//! their configuration onto these types and record the outcome).

mod batch;
mod credmon;
mod error;
mod layout;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use ssh2::{FileStat, OpenFlags, OpenType};

pub use error::DeliverError;
pub use layout::{SPOOL_DIR_MODE, TOP_MODE, TopFile, USE_MODE, credd_layout};

use crate::secret::Secret;
use batch::{Batch, one_line};
use session::{Remote, rpath, sh_quote};

/// Where and as whom to log in.
#[derive(Clone, Debug)]
pub struct HostTarget {
    /// Inventory alias; named in every error and log line about this host.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub key_file: PathBuf,
    pub key_passphrase: Option<Secret>,
    /// The only host keys accepted are this file's entries for `address` (`[address]:port`
    /// when the port is not 22).
    pub known_hosts: PathBuf,
    /// Bounds the TCP connect and every SSH operation after it.
    pub timeout: Duration,
}

/// Final owner of a file or created directory, by name. An empty `group` leaves the group as
/// `chown user` sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub user: String,
    pub group: String,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() { write!(f, "{}", self.user) } else { write!(f, "{}:{}", self.user, self.group) }
    }
}

/// One file to deliver.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    /// Destination id reported back in the outcome, e.g. `wmagent/credd@schedd1/.top`.
    pub id: String,
    /// Absolute remote path; may contain `{uid}`.
    pub path: String,
    /// Account whose `id -u` fills `{uid}`.
    pub uid_of: Option<String>,
    pub content: Secret,
    pub mode: u32,
    pub owner: Option<Owner>,
}

/// A directory that must exist; created with `mode` and `owner` when missing (its parent must
/// exist). An existing directory is left as it is.
#[derive(Clone, Debug)]
pub struct RemoteDir {
    pub path: String,
    pub mode: u32,
    pub owner: Option<Owner>,
}

/// Everything to do on one host, in one session.
#[derive(Clone, Debug)]
pub struct HostPlan {
    pub target: HostTarget,
    pub dirs: Vec<RemoteDir>,
    pub files: Vec<RemoteFile>,
    /// Spool roots whose `<spool>/pid` credmon is sent SIGHUP after files under it were delivered.
    pub signal_credmon: Vec<String>,
    /// Files that should still be there from the last delivery, looked at before anything is
    /// written: a credd `.top` that vanished means the credmon deleted it (its Vault token was
    /// refused).
    pub expect_present: Vec<String>,
}

/// What happened to one file.
#[derive(Debug)]
pub struct FileOutcome {
    pub id: String,
    /// The path with `{uid}` resolved (the template if it could not be).
    pub path: String,
    pub result: Result<(), DeliverError>,
}

/// What happened on one host.
#[derive(Debug)]
pub struct HostOutcome {
    pub host: String,
    /// Connect, host-key check, login and SFTP start. When this failed nothing was attempted.
    pub connected: Result<(), DeliverError>,
    pub files: Vec<FileOutcome>,
    /// Per spool root: whether its credmon was sent SIGHUP.
    pub signalled: Vec<(String, Result<bool, DeliverError>)>,
    /// Paths of [`HostPlan::expect_present`] that were missing before this push.
    pub missing: Vec<String>,
}

impl HostOutcome {
    /// Connected and every file delivered (or, in a dry run, deliverable).
    pub fn all_delivered(&self) -> bool {
        self.connected.is_ok() && self.files.iter().all(|f| f.result.is_ok())
    }
}

/// Carries out `plan` on its host. Blocking: run it on its own thread (`spawn_blocking`).
///
/// `dry_run` connects, verifies the host key, logs in, resolves `{uid}` and checks that every
/// target directory exists or could be created, and writes and signals nothing.
pub fn push_to_host(plan: &HostPlan, dry_run: bool) -> HostOutcome {
    push_to_host_unless(plan, dry_run, &AtomicBool::new(false))
}

/// [`push_to_host`] that gives up when `abandon` is set before its files are renamed into
/// place: temp files are removed, the old files stay, and every file not yet renamed fails
/// with [`DeliverError::Abandoned`]. A rename batch already started runs to its end (each
/// `mv` is atomic), so no file is ever left half replaced.
pub fn push_to_host_unless(plan: &HostPlan, dry_run: bool, abandon: &AtomicBool) -> HostOutcome {
    let host = plan.target.name.clone();
    let span = tracing::info_span!("push", host = %host, dry_run);
    let _entered = span.enter();

    let remote = match Remote::connect(&plan.target) {
        Ok(remote) => remote,
        Err(e) => {
            tracing::debug!(host = %host, error = %e, "host failed before anything was written");
            return host_failed(plan, e);
        }
    };

    let missing: Vec<String> = plan
        .expect_present
        .iter()
        .filter(|p| matches!(remote.sftp().lstat(rpath(p)), Err(ref e) if credmon::is_no_such_file(e)))
        .cloned()
        .collect();
    for p in &missing {
        tracing::warn!(host = %host, path = %p, "a file delivered earlier has disappeared");
    }

    let mut work: Vec<Work> = plan.files.iter().map(Work::new).collect();
    resolve_paths(&remote, &mut work);
    check_dirs(&remote, plan, &mut work, dry_run);
    if !dry_run {
        write_temps(&remote, &mut work);
        set_owners(&remote, &mut work);
        if abandon.load(Ordering::SeqCst) {
            abandon_all(&remote, &mut work);
        } else {
            rename_all(&remote, &mut work);
        }
    }

    let files: Vec<FileOutcome> = work
        .into_iter()
        .map(|w| {
            match &w.failed {
                None if dry_run => tracing::debug!(host = %host, path = %w.path, "dry run: deliverable"),
                None => tracing::debug!(host = %host, path = %w.path, sha256 = %w.file.content.short_hash(), "delivered"),
                Some(e) => tracing::debug!(host = %host, path = %w.path, error = %e, "not delivered"),
            }
            FileOutcome { id: w.file.id.clone(), path: w.path, result: w.failed.map_or(Ok(()), Err) }
        })
        .collect();

    let signalled = plan
        .signal_credmon
        .iter()
        .map(|spool| {
            let root = format!("{}/", spool.trim_end_matches('/'));
            let touched = files.iter().any(|f| f.result.is_ok() && f.path.starts_with(&root));
            let result = if dry_run || touched {
                credmon::signal(&remote, spool, dry_run)
            } else {
                tracing::info!(host = %host, path = %spool, "nothing delivered under this spool; credmon not signalled");
                Ok(false)
            };
            (spool.clone(), result)
        })
        .collect();

    HostOutcome { host, connected: Ok(()), files, signalled, missing }
}

fn host_failed(plan: &HostPlan, e: DeliverError) -> HostOutcome {
    let host = plan.target.name.clone();
    let not_attempted = |path: String| DeliverError::NotAttempted { host: host.clone(), path };
    HostOutcome {
        host: host.clone(),
        files: plan
            .files
            .iter()
            .map(|f| FileOutcome { id: f.id.clone(), path: f.path.clone(), result: Err(not_attempted(f.path.clone())) })
            .collect(),
        signalled: plan
            .signal_credmon
            .iter()
            .map(|s| (s.clone(), Err(not_attempted(format!("{}/pid", s.trim_end_matches('/'))))))
            .collect(),
        connected: Err(e),
        missing: Vec::new(),
    }
}

/// One file on its way: its resolved path, its temp file once created, and the first failure.
struct Work<'a> {
    file: &'a RemoteFile,
    path: String,
    temp: Option<String>,
    failed: Option<DeliverError>,
}

impl<'a> Work<'a> {
    fn new(file: &'a RemoteFile) -> Self {
        Work { file, path: file.path.clone(), temp: None, failed: None }
    }

    fn pending(&self) -> bool {
        self.failed.is_none()
    }
}

/// Fills `{uid}` from `id -u <account>` (once per account) and checks every final path.
fn resolve_paths(remote: &Remote, work: &mut [Work]) {
    let host = &remote.host;
    let mut uids: HashMap<String, Result<u32, String>> = HashMap::new();
    for w in work.iter_mut() {
        if w.path.contains("{uid}") {
            let Some(account) = &w.file.uid_of else {
                w.failed = Some(DeliverError::InvalidPath {
                    host: host.clone(),
                    path: w.path.clone(),
                    reason: "contains {uid} but names no account to take it from",
                });
                continue;
            };
            let uid = uids.entry(account.clone()).or_insert_with(|| lookup_uid(remote, account)).clone();
            match uid {
                Ok(uid) => w.path = w.path.replace("{uid}", &uid.to_string()),
                Err(detail) => {
                    w.failed = Some(DeliverError::Uid {
                        host: host.clone(),
                        account: account.clone(),
                        path: w.path.clone(),
                        detail,
                    });
                    continue;
                }
            }
        }
        if let Err(reason) = check_path(&w.path) {
            w.failed = Some(DeliverError::InvalidPath { host: host.clone(), path: w.path.clone(), reason });
        }
    }
}

fn lookup_uid(remote: &Remote, account: &str) -> Result<u32, String> {
    let out = remote
        .exec("look up uid", &format!("id -u -- {}", sh_quote(account)))
        .map_err(|e| e.to_string())?;
    let text = out.stdout.trim();
    if out.status != 0 {
        return Err(format!("id -u exited {}: {}", out.status, out.detail()));
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("id -u printed no uid: {}", one_line(text)));
    }
    text.parse().map_err(|_| format!("id -u printed no uid: {}", one_line(text)))
}

/// A remote path the rest of the module can handle safely: absolute, one line, no `..`, naming
/// a file below a directory.
fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("not absolute");
    }
    if path.contains(['\0', '\n', '\r']) {
        return Err("contains a control character");
    }
    if path.split('/').any(|c| c == "..") {
        return Err("contains a .. component");
    }
    let (_, name) = split_parent(path);
    if name.is_empty() || name == "." {
        return Err("names no file");
    }
    Ok(())
}

/// `(parent, name)`; the parent of `/x` is `/`.
fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

fn normalize_dir(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// Creates the plan's missing directories (or, in a dry run, checks they could be created) and
/// fails every file whose directory is not there.
fn check_dirs(remote: &Remote, plan: &HostPlan, work: &mut [Work], dry_run: bool) {
    let mut dirs: HashMap<String, Result<(), String>> = HashMap::new();
    for dir in &plan.dirs {
        let path = normalize_dir(&dir.path).to_string();
        let result = match check_path(&path) {
            Err(reason) => Err(format!("not acceptable: {reason}")),
            Ok(()) => ensure_dir(remote, &path, dir, dry_run),
        };
        if let Err(detail) = &result {
            tracing::debug!(host = %remote.host, path = %path, %detail, "directory not usable");
        }
        dirs.insert(path, result);
    }
    for w in work.iter_mut().filter(|w| w.pending()) {
        let parent = split_parent(&w.path).0.to_string();
        let state = dirs.entry(parent.clone()).or_insert_with(|| existing_dir(remote, &parent));
        if let Err(detail) = state {
            w.failed = Some(DeliverError::Directory { host: remote.host.clone(), path: parent, detail: detail.clone() });
        }
    }
}

enum DirState {
    Dir,
    Missing,
    NotDir,
}

fn dir_state(remote: &Remote, path: &str) -> Result<DirState, String> {
    match remote.sftp().stat(rpath(path)) {
        Ok(st) if st.is_dir() => Ok(DirState::Dir),
        Ok(_) => Ok(DirState::NotDir),
        Err(e) if credmon::is_no_such_file(&e) => Ok(DirState::Missing),
        Err(e) => Err(format!("cannot stat: {e}")),
    }
}

fn existing_dir(remote: &Remote, path: &str) -> Result<(), String> {
    match dir_state(remote, path)? {
        DirState::Dir => Ok(()),
        DirState::Missing => Err("does not exist".into()),
        DirState::NotDir => Err("is not a directory".into()),
    }
}

fn ensure_dir(remote: &Remote, path: &str, dir: &RemoteDir, dry_run: bool) -> Result<(), String> {
    match dir_state(remote, path)? {
        DirState::Dir => return Ok(()),
        DirState::NotDir => return Err("exists but is not a directory".into()),
        DirState::Missing => {}
    }
    let parent = split_parent(path).0;
    existing_dir(remote, parent).map_err(|why| format!("missing, and its parent {parent} {why}"))?;
    if dry_run {
        return Ok(());
    }
    let sftp = remote.sftp();
    // Created with its final mode, so it is never more open than asked, even for a moment.
    if let Err(e) = sftp.mkdir(rpath(path), dir.mode as i32) {
        // Someone else may have created it in the meantime; that is as good.
        return match dir_state(remote, path) {
            Ok(DirState::Dir) => Ok(()),
            _ => Err(format!("cannot create: {e}")),
        };
    }
    if let Some(owner) = &dir.owner {
        let out = remote.exec("set directory owner", &chown_command(owner, path));
        let failure = match out {
            Ok(out) if out.status == 0 => None,
            Ok(out) => Some(out.detail()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(detail) = failure {
            // A directory with the wrong owner would lock the credd out; leave things as they were.
            let _ = sftp.rmdir(rpath(path));
            return Err(format!("created, but cannot set owner {owner}: {detail}"));
        }
    }
    // mkdir's mode went through the server's umask.
    sftp.setstat(rpath(path), perm_only(dir.mode)).map_err(|e| format!("cannot set mode {:o}: {e}", dir.mode))?;
    tracing::info!(host = %remote.host, path = %path, mode = format!("{:o}", dir.mode), "directory created");
    Ok(())
}

fn perm_only(mode: u32) -> FileStat {
    FileStat { size: None, uid: None, gid: None, perm: Some(mode), atime: None, mtime: None }
}

fn chown_command(owner: &Owner, path: &str) -> String {
    format!("chown -- {} {}", sh_quote(&owner.to_string()), sh_quote(path))
}

/// A user and group name chown will take as exactly one owner.
fn owner_is_plain(owner: &Owner) -> bool {
    let ok = |s: &str| !s.contains(|c: char| c == ':' || c.is_whitespace() || c.is_control());
    !owner.user.is_empty() && ok(&owner.user) && ok(&owner.group)
}

/// Writes every pending file to a fresh temp file beside its final path, fsyncs it and gives it
/// its final mode.
fn write_temps(remote: &Remote, work: &mut [Work]) {
    for w in work.iter_mut().filter(|w| w.pending()) {
        let (dir, name) = split_parent(&w.path);
        let dir = if dir == "/" { "" } else { dir };
        let temp = format!("{dir}/.{name}.tb-{:016x}", rand::random::<u64>());
        let sftp = remote.sftp();
        let sftp_err = |op: &'static str, source: std::io::Error| DeliverError::Sftp {
            host: remote.host.clone(),
            op,
            path: temp.clone(),
            source,
        };
        // EXCLUSIVE: never reuse (or follow a symlink planted at) an existing name; mode 0600 in
        // the open itself, or the server would create it world-readable for a moment.
        let mut file = match sftp.open_mode(rpath(&temp), OpenFlags::WRITE | OpenFlags::EXCLUSIVE, 0o600, OpenType::File) {
            Ok(f) => f,
            Err(e) => {
                w.failed = Some(sftp_err("create of temp file", e.into()));
                continue;
            }
        };
        w.temp = Some(temp.clone());
        let written = file
            .write_all(w.file.content.expose().as_bytes())
            .map_err(|e| sftp_err("write of", e))
            .and_then(|()| file.fsync().map_err(|e| sftp_err("fsync of", e.into())))
            .and_then(|()| file.setstat(perm_only(w.file.mode)).map_err(|e| sftp_err("chmod of", e.into())));
        drop(file);
        if let Err(e) = written {
            w.failed = Some(e);
            remove_temp(remote, w);
        }
    }
}

/// Gives every pending temp file with a configured owner that owner, in one exec channel.
fn set_owners(remote: &Remote, work: &mut [Work]) {
    let mut batch = Batch::new();
    let mut members = Vec::new();
    for (i, w) in work.iter_mut().enumerate().filter(|(_, w)| w.pending()) {
        let Some(owner) = &w.file.owner else { continue };
        if !owner_is_plain(owner) {
            w.failed = Some(DeliverError::Owner {
                host: remote.host.clone(),
                path: w.path.clone(),
                owner: owner.to_string(),
                detail: "not a plain user[:group] name".into(),
            });
            remove_temp(remote, w);
            continue;
        }
        batch.push(chown_command(owner, w.temp.as_deref().expect("pending files have a temp file")));
        members.push(i);
    }
    if batch.is_empty() {
        return;
    }
    let results = run_batch(remote, "set file owners", &batch);
    for (&i, result) in members.iter().zip(results) {
        if let Err(detail) = result {
            let w = &mut work[i];
            let owner = w.file.owner.as_ref().map(Owner::to_string).unwrap_or_default();
            w.failed = Some(DeliverError::Owner { host: remote.host.clone(), path: w.path.clone(), owner, detail });
            remove_temp(remote, w);
        }
    }
}

/// Gives up every pending file: its temp file is removed and the old file stays.
fn abandon_all(remote: &Remote, work: &mut [Work]) {
    for w in work.iter_mut().filter(|w| w.pending()) {
        remove_temp(remote, w);
        w.failed = Some(DeliverError::Abandoned { host: remote.host.clone(), path: w.path.clone() });
    }
    tracing::warn!(host = %remote.host, "shutting down: writes not yet renamed were abandoned");
}

/// A path and what happened to it.
pub type PathOutcome = (String, Result<(), DeliverError>);

/// Removes credentials from a host (the `revoke` drill): every path with `rm -f` in one exec
/// channel over one session, with the same host-key and login rules as a delivery. A path that
/// is already gone counts as removed. `Err` when the host could not be reached at all.
pub fn remove_from_host(target: &HostTarget, paths: &[String]) -> Result<Vec<PathOutcome>, DeliverError> {
    let span = tracing::info_span!("remove", host = %target.name);
    let _entered = span.enter();
    for p in paths {
        if let Err(reason) = check_path(p) {
            return Err(DeliverError::InvalidPath { host: target.name.clone(), path: p.clone(), reason });
        }
    }
    let remote = Remote::connect(target)?;
    let mut batch = Batch::new();
    for p in paths {
        batch.push(format!("rm -f -- {}", sh_quote(p)));
    }
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let results = run_batch(&remote, "remove files", &batch);
    Ok(paths
        .iter()
        .zip(results)
        .map(|(p, r)| {
            let r = r.map_err(|detail| DeliverError::Remove { host: target.name.clone(), path: p.clone(), detail });
            match &r {
                Ok(()) => tracing::info!(host = %target.name, path = %p, "removed"),
                Err(e) => tracing::debug!(error = %e, "not removed"),
            }
            (p.clone(), r)
        })
        .collect())
}

/// Moves every pending temp file over its final path, all in one exec channel: `mv -f` within
/// one directory is rename(2), which replaces the old file atomically.
fn rename_all(remote: &Remote, work: &mut [Work]) {
    let mut batch = Batch::new();
    let mut members = Vec::new();
    for (i, w) in work.iter().enumerate().filter(|(_, w)| w.pending()) {
        let temp = w.temp.as_deref().expect("pending files have a temp file");
        // -T: if the final path is a directory, fail instead of moving the token into it.
        batch.push(format!("mv -f -T -- {} {}", sh_quote(temp), sh_quote(&w.path)));
        members.push(i);
    }
    if batch.is_empty() {
        return;
    }
    let results = run_batch(remote, "replace files", &batch);
    for (&i, result) in members.iter().zip(results) {
        let w = &mut work[i];
        match result {
            Ok(()) => w.temp = None,
            Err(detail) => {
                w.failed = Some(DeliverError::Rename { host: remote.host.clone(), path: w.path.clone(), detail });
                remove_temp(remote, w);
            }
        }
    }
}

/// Runs a batch; one result per command, failures as a one-line detail.
fn run_batch(remote: &Remote, purpose: &str, batch: &Batch) -> Vec<Result<(), String>> {
    match remote.exec(purpose, &batch.script()) {
        Err(e) => {
            let detail = e.to_string();
            (0..batch.len()).map(|_| Err(detail.clone())).collect()
        }
        Ok(out) => batch
            .parse(&out.stdout)
            .into_iter()
            .map(|r| match r.status {
                Some(0) => Ok(()),
                Some(status) => Err(format!("exit status {status}: {}", r.output)),
                None => Err(format!(
                    "the remote shell did not report a result (outcome unknown): {}",
                    one_line(&out.stderr)
                )),
            })
            .collect(),
    }
}

/// Best effort: a temp file that cannot be removed is logged (by path), and the file's own
/// failure stays what is reported.
fn remove_temp(remote: &Remote, w: &mut Work) {
    if let Some(temp) = w.temp.take()
        && let Err(e) = remote.sftp().unlink(rpath(&temp))
        && !credmon::is_no_such_file(&e)
    {
        tracing::warn!(host = %remote.host, path = %temp, error = %e, "cannot remove temp file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, expected: Result<(), &'static str>) {
        assert_eq!(check_path(path), expected, "{path}");
    }

    #[test]
    fn paths() {
        check("/var/lib/condor/oauth_credentials/u/svc.top", Ok(()));
        check("/tmp/bt_u0", Ok(()));
        check("relative/x", Err("not absolute"));
        check("/a/../etc/shadow", Err("contains a .. component"));
        check("/a/b/", Err("names no file"));
        check("/a/\nb", Err("contains a control character"));
    }

    #[test]
    fn parents() {
        assert_eq!(split_parent("/a/b/c"), ("/a/b", "c"));
        assert_eq!(split_parent("/c"), ("/", "c"));
        assert_eq!(normalize_dir("/a/b/"), "/a/b");
        assert_eq!(normalize_dir("/"), "/");
    }

    #[test]
    fn owners() {
        let o = |u: &str, g: &str| Owner { user: u.into(), group: g.into() };
        assert!(owner_is_plain(&o("root", "root")));
        assert!(owner_is_plain(&o("condor", "")));
        assert_eq!(o("condor", "").to_string(), "condor");
        assert!(!owner_is_plain(&o("", "root")));
        assert!(!owner_is_plain(&o("a:b", "root")));
        assert!(!owner_is_plain(&o("a b", "root")));
        assert_eq!(chown_command(&o("root", "root"), "/x y"), "chown -- 'root:root' '/x y'");
    }

    #[test]
    fn an_unreachable_host_fails_every_file_by_name_and_leaks_nothing() {
        let plan = HostPlan {
            expect_present: Vec::new(),
            target: HostTarget {
                name: "schedd-x".into(),
                address: "127.0.0.1".into(),
                port: 1,
                user: "root".into(),
                key_file: "/nonexistent".into(),
                key_passphrase: Some(Secret::new("PASSPHRASEsecret")),
                known_hosts: "/nonexistent".into(),
                timeout: Duration::from_secs(2),
            },
            dirs: vec![],
            files: vec![RemoteFile {
                id: "svc/file@schedd-x".into(),
                path: "/tmp/bt_u{uid}".into(),
                uid_of: Some("root".into()),
                content: Secret::new("eyJTOKENsecret"),
                mode: 0o600,
                owner: None,
            }],
            signal_credmon: vec!["/spool".into()],
        };
        let out = push_to_host(&plan, false);
        let err = out.connected.as_ref().unwrap_err();
        assert!(matches!(err, DeliverError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("schedd-x"));
        assert!(matches!(out.files[0].result, Err(DeliverError::NotAttempted { .. })));
        assert!(out.signalled[0].1.is_err());
        assert!(!out.all_delivered());
        let shown = format!("{out:?} {plan:?} {err}");
        assert!(!shown.contains("eyJTOKENsecret") && !shown.contains("PASSPHRASEsecret"));
    }
}
