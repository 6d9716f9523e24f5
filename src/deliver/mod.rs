//! Delivery over SSH: the only code that knows SSH.
//!
//! Takes a [`HostPlan`] (plain data: where to connect, which directories and files must exist,
//! which credmons to wake, which files to read back first) and carries it out over one SSH
//! session: strict known_hosts check, public-key login, account ids resolved once (one exec),
//! every directory on the way judged by the remote-write rule ([`rule`]), then per file, all
//! over SFTP and on the open handle where it matters: a temp file created exclusively with its
//! final mode, written, fsynced, given its owner (fsetstat), checked, and put in place with one
//! atomic `posix-rename@openssh.com`; the final path is checked before "delivered" is said.
//! The result is a [`HostOutcome`] with one entry per file: a failure in one file never stops
//! the others. What needs no token (connect, host key, ids, credmon probes, expected files) can
//! be done first with [`open`], and the plan carried out later on that session ([`push_opened`]). [`credd_layout`] builds the plan entries of a credd credential-spool destination.
//!
//! Must never: write anything to a host whose key known_hosts does not hold; change an owner or
//! mode by name (only on a handle, or `chown -h` on a directory it just created); follow a
//! symbolic link at a final component or write below one; leave a token readable by others,
//! partially written under its final name, or in a temp file it can still remove; put token
//! bytes on a command line, in an error or in a log line (logs carry a short hash); signal a
//! process that is not the credd user's credmon; read configuration or touch state (callers map
//! their configuration onto these types and record the outcome).

mod batch;
mod command;
mod credmon;
mod dirs;
mod error;
mod ids;
mod knownhosts;
mod layout;
mod pipe;
mod remove;
mod rule;
mod schedd;
mod session;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ssh2::{ErrorCode, FileStat, OpenFlags, OpenType};

pub use command::{homes, list_dirs, read_text, run_command, secret_output};
pub use error::DeliverError;
pub use credmon::{CredmonProbe, CredmonSeen, FileSeen, Liveness, ProbeFile};
pub use layout::{CreddContents, SPOOL_DIR_MODE, TOP_MODE, TopFile, USE_MODE, credd_layout, credd_paths};
pub use remove::{PathOutcome, Removal, remove_from_host};
pub use schedd::read_schedd;

use crate::credd_names::{self, ScheddRead};
use crate::secret::{Secret, short_hash_bytes};
use credmon::is_no_such_file;
use dirs::{Dirs, realpath};
use ids::{CONDOR_GROUP, CONDOR_USER, Ids};
use session::{Remote, Renamed, rpath, sh_quote};

/// Failpoints (`deliver::<place>`), compiled in only with the `failpoints` feature. A callback
/// configured with `fail::cfg_callback` runs on the delivering thread and can ask
/// [`failpoints::context`] which host and path the point was reached for.
#[cfg(feature = "failpoints")]
pub mod failpoints {
    use std::cell::RefCell;

    thread_local! {
        static CONTEXT: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
    }

    /// (host, path) of the failpoint being evaluated on this thread.
    pub fn context() -> (String, String) {
        CONTEXT.with(|c| c.borrow().clone())
    }

    pub(crate) fn set(host: &str, path: &str) {
        CONTEXT.with(|c| *c.borrow_mut() = (host.to_string(), path.to_string()));
    }
}

macro_rules! failpoint {
    ($name:literal, $host:expr, $path:expr) => {{
        #[cfg(feature = "failpoints")]
        {
            failpoints::set(&$host, &$path);
            fail::fail_point!($name);
        }
    }};
}

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
    /// The only host keys accepted are this file's entries for `address` on `port`, read with
    /// OpenSSH's rules (`[address]:port` unless the port is 22, `@revoked` honoured).
    pub known_hosts: PathBuf,
    /// Bounds the TCP connect and every SSH operation after it.
    pub timeout: Duration,
}

/// Final owner of a file or created directory, by name (resolved to numbers on the host). An
/// empty `group` means the user's primary group.
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
    /// The directory from which the remote-write rule is applied: it and every directory below
    /// it down to the file's own are checked; those above it are trusted. A credd file's root is
    /// the spool. May contain `{uid}`.
    pub root: String,
    /// Account whose uid fills `{uid}`.
    pub uid_of: Option<String>,
    pub content: Secret,
    pub mode: u32,
    /// `None` leaves the file to the login user.
    pub owner: Option<Owner>,
    /// Write the file only where there is none, and never replace one: a credd `.use` belongs
    /// to the credmon once it exists.
    pub only_if_absent: bool,
    /// The id of a file of the same plan that must land (or be kept) first: a handle's files
    /// are not put in place when their parent `.top` failed.
    pub after: Option<String>,
    /// Leave the file alone when it already holds exactly this content with its mode and
    /// owner (the caller knows it delivered this content before): nothing is written, and a
    /// credmon is not woken for it.
    pub keep_if_same: bool,
}

/// A directory the delivery manages: created with `mode` and `owner` when missing (its parent
/// must pass the rule), and accepted when owned by `owner` (or root) and writable by nobody else.
#[derive(Clone, Debug)]
pub struct RemoteDir {
    pub path: String,
    pub mode: u32,
    pub owner: Option<Owner>,
    /// Remove `<path>.mark` once a file in it is delivered, as `condor_store_cred` does (the
    /// credd sweeps an account directory whose `.mark` is older than its sweep delay).
    pub clear_mark: bool,
}

/// A credmon to wake after files under its spool were delivered.
#[derive(Clone, Debug)]
pub struct Credmon {
    pub spool: String,
    /// The credd's user (the spool owner): the credmon named by `<spool>/pid` must run as it.
    pub user: String,
}

/// Everything to do on one host, in one session.
#[derive(Clone, Debug)]
pub struct HostPlan {
    pub target: HostTarget,
    pub dirs: Vec<RemoteDir>,
    pub files: Vec<RemoteFile>,
    pub signal_credmon: Vec<Credmon>,
    /// Files that should still be there from the last delivery, looked at before anything is
    /// written: a credd `.top` that vanished means the credmon deleted it (its Vault token was
    /// refused).
    pub expect_present: Vec<String>,
    /// Files whose content digest is read before anything is written (see [`read_back`]).
    pub read_back: Vec<String>,
    /// Credmons looked at before anything is written.
    pub probe_credmon: Vec<CredmonProbe>,
    /// Credd files whose names the schedd's credmon settings must allow; when there are any,
    /// the settings are read (see [`crate::credd_names`]) and the files of a name the credmon
    /// would ignore fail before anything is written.
    pub credd_names: Vec<CreddName>,
}

/// One credd destination's name, as its `.top` file stem.
#[derive(Clone, Debug)]
pub struct CreddName {
    /// Named in the error when the name is refused.
    pub service: String,
    /// `<stem>.top`.
    pub stem: String,
    /// A handle `<provider>_<handle>` that takes its parent's Vault token.
    pub is_handle: bool,
    /// The spool the files go to.
    pub spool: String,
    /// The [`RemoteFile::id`]s that fail when the name is refused.
    pub file_ids: Vec<String>,
}

/// What a host's session can do before any token is known (all of it comes from the
/// inventory): connect, check the host key, log in, resolve the named accounts and groups, and
/// look at the credmons and the files expected from the last delivery. [`open`] does it while
/// tokens are still being fetched; [`push_opened`] then carries out the host's plan on that
/// same session.
#[derive(Clone, Debug)]
pub struct Opening {
    pub target: HostTarget,
    pub probe_credmon: Vec<CredmonProbe>,
    pub expect_present: Vec<String>,
    /// Owners whose ids the plan will need (more are resolved later if it names others).
    pub owners: Vec<Owner>,
    /// Accounts whose uid fills `{uid}` or whose credmon is signalled.
    pub accounts: Vec<String>,
    /// Read the schedd's credmon settings with the ids (the host takes credd destinations).
    pub read_schedd: bool,
}

/// A host's open session, and what it showed before anything was written.
pub struct Opened {
    remote: Remote,
    ids: Ids,
    credmon: Vec<CredmonSeen>,
    missing: Vec<Missing>,
    /// The schedd's credmon settings, read with the ids when [`Opening::read_schedd`] asked.
    schedd: Option<ScheddRead>,
    /// The directories of the probed and expected files, as they were listed.
    listed: Listings,
}

/// What happened to one file.
#[derive(Debug)]
pub struct FileOutcome {
    pub id: String,
    /// The path with `{uid}` resolved (the template if it could not be).
    pub path: String,
    pub result: Result<(), DeliverError>,
    /// Nothing was written: an [`RemoteFile::only_if_absent`] file was already there, or a
    /// [`RemoteFile::keep_if_same`] one already held this content.
    pub kept: bool,
    /// The host's mtime of the file this push put in place (seconds since the epoch).
    pub landed_mtime: Option<i64>,
}

/// Per path: `Some(short hash)` of what the file holds, `None` when there is no such file.
pub type ReadBack = Vec<(String, Result<Option<String>, DeliverError>)>;

/// A file delivered earlier that was gone before this push, and what was beside it: a credd
/// account directory that stayed with no `<user>.mark` beside it means the credmon deleted the
/// file (it refused the token); a directory swept, or a `.mark` there, is the credd's own
/// clean-up after the user's credentials were removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub path: String,
    /// The file's directory was still there.
    pub dir_present: bool,
    /// `<dir>.mark` (the credd's mark for a directory to sweep) was there.
    pub mark_present: bool,
}

impl Missing {
    /// The credmon, not the credd's clean-up, removed the file.
    pub fn refused_by_credmon(&self) -> bool {
        self.dir_present && !self.mark_present
    }
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
    pub missing: Vec<Missing>,
    /// [`HostPlan::read_back`], as read before anything was written.
    pub read_back: ReadBack,
    /// [`HostPlan::probe_credmon`], as seen before anything was written.
    pub credmon: Vec<CredmonSeen>,
    /// The schedd's credmon settings, when the plan had [`HostPlan::credd_names`].
    pub schedd: Option<ScheddRead>,
}

impl HostOutcome {
    /// Connected and every file delivered (or, in a dry run, deliverable).
    pub fn all_delivered(&self) -> bool {
        self.connected.is_ok() && self.files.iter().all(|f| f.result.is_ok())
    }
}

/// Largest file [`read_back`] hashes; a token file is far smaller.
pub const READ_BACK_MAX: u64 = 64 * 1024;

/// Carries out `plan` on its host. Blocking: run it on its own thread (`spawn_blocking`).
///
/// `dry_run` connects, verifies the host key, logs in, resolves ids and `{uid}`, and applies
/// the remote-write rule to every directory (one that would be created counts as fine), and
/// writes and signals nothing.
pub fn push_to_host(plan: &HostPlan, dry_run: bool) -> HostOutcome {
    push_to_host_unless(plan, dry_run, &AtomicBool::new(false))
}

/// [`push_to_host`] that gives up once `abandon` is set: it is looked at before the writes of
/// each group of files and before each rename, so shutdown waits for one group's round trips at
/// most. Files not
/// yet renamed fail with [`DeliverError::Abandoned`], their temp files are removed and the old
/// files stay.
pub fn push_to_host_unless(plan: &HostPlan, dry_run: bool, abandon: &AtomicBool) -> HostOutcome {
    push_opened(open(&Opening::of(plan)), plan, dry_run, abandon)
}

impl Opening {
    /// Everything `plan` looks at before writing, and the names it needs.
    pub fn of(plan: &HostPlan) -> Opening {
        Opening {
            target: plan.target.clone(),
            probe_credmon: plan.probe_credmon.clone(),
            expect_present: plan.expect_present.clone(),
            owners: plan.files.iter().filter_map(|f| f.owner.clone()).chain(plan.dirs.iter().filter_map(|d| d.owner.clone())).collect(),
            accounts: plan.files.iter().filter_map(|f| f.uid_of.clone()).chain(plan.signal_credmon.iter().map(|c| c.user.clone())).collect(),
            read_schedd: !plan.credd_names.is_empty(),
        }
    }

    /// Every account and group name to resolve, the `condor` account and group included.
    fn names(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut users = BTreeSet::from([CONDOR_USER.to_string()]);
        let mut groups = BTreeSet::from([CONDOR_GROUP.to_string()]);
        users.extend(self.accounts.iter().cloned());
        for o in &self.owners {
            Ids::want(o, &mut users, &mut groups);
        }
        (users, groups)
    }
}

/// Connects to `opening`'s host and does everything that needs no token: the account ids (one
/// exec), the credmon probes and the look at files expected from the last delivery. Blocking.
/// Writes nothing.
pub fn open(opening: &Opening) -> Result<Opened, DeliverError> {
    let host = opening.target.name.clone();
    let span = tracing::info_span!("open", host = %host);
    let _entered = span.enter();
    let remote = Remote::connect(&opening.target)?;
    // Each account directory once: the probe and the look at expected files read the listing,
    // and the push goes on from it.
    let probed = opening.probe_credmon.iter().flat_map(|p| p.files.iter().map(|f| f.top.as_str()));
    let listed = Listings::read(&remote, probed.chain(opening.expect_present.iter().map(String::as_str)));
    let credmon: Vec<CredmonSeen> = opening.probe_credmon.iter().map(|p| credmon::probe(&remote, &listed, p)).collect();
    let gone = |p: &str| matches!(listed.lstat(&remote, p), Ok(None));
    let missing: Vec<Missing> = opening
        .expect_present
        .iter()
        .filter(|p| gone(p))
        .map(|p| {
            let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
            Missing { path: p.clone(), dir_present: !dir.is_empty() && !gone(dir), mark_present: !dir.is_empty() && !gone(&format!("{dir}.mark")) }
        })
        .collect();
    for m in &missing {
        tracing::warn!(host = %host, path = %m.path, dir_present = m.dir_present, mark_present = m.mark_present, "a file delivered earlier has disappeared");
    }
    let (users, groups) = opening.names();
    let (ids, schedd) = if opening.read_schedd {
        let (ids, read) = read_schedd_settings(&remote, &users, &groups);
        (ids, Some(read))
    } else {
        (Ids::resolve(&remote, &users, &groups), None)
    };
    Ok(Opened { remote, ids, credmon, missing, schedd, listed })
}

/// Carries out `plan` on the session [`open`] made for its host (a failed opening fails every
/// file as not attempted). Blocking. What the opening saw is reported for the plan's own
/// probes and expected files only; names the opening did not resolve are resolved now. See
/// [`push_to_host_unless`].
pub fn push_opened(opened: Result<Opened, DeliverError>, plan: &HostPlan, dry_run: bool, abandon: &AtomicBool) -> HostOutcome {
    let host = plan.target.name.clone();
    let span = tracing::info_span!("push", host = %host, dry_run);
    let _entered = span.enter();

    let Opened { remote, mut ids, mut credmon, mut missing, schedd, mut listed } = match opened {
        Ok(opened) => opened,
        Err(e) => {
            tracing::debug!(host = %host, error = %e, "host failed before anything was written");
            return host_failed(plan, e);
        }
    };
    let read_back = read_back_on(&remote, &plan.read_back);
    let probed: BTreeSet<&str> = plan.probe_credmon.iter().flat_map(|p| p.files.iter().map(|f| f.id.as_str())).collect();
    for seen in &mut credmon {
        seen.files.retain(|f| probed.contains(f.id.as_str()));
    }
    credmon.retain(|seen| plan.probe_credmon.iter().any(|p| p.spool == seen.spool));
    missing.retain(|m| plan.expect_present.contains(&m.path));

    let (users, groups) = Opening::of(plan).names();
    let (users, groups) = ids.unknown(&users, &groups);
    if !users.is_empty() || !groups.is_empty() {
        ids.extend(Ids::resolve(&remote, &users, &groups));
    }
    // Read with the ids when the host was opened; a plan with credd names whose opening did
    // not read them (an opening made without that plan) reads them now.
    let schedd = match schedd {
        Some(read) => Some(read),
        None if !plan.credd_names.is_empty() => Some(read_schedd_settings(&remote, &BTreeSet::new(), &BTreeSet::new()).1),
        None => None,
    };
    let mut work: Vec<Work> = plan.files.iter().map(Work::new).collect();
    resolve_paths(&remote, &ids, &mut work);
    if let Some(read) = &schedd {
        refuse_names(&host, plan, read, &mut work);
    }
    let mut dirs = Dirs::new(plan, &ids);
    dirs.judge_all(&remote, &mut listed, &mut work, dry_run);
    listed.add(&remote, work.iter().filter(|w| w.pending()).map(|w| w.path.as_str()));
    keep_present(&remote, &listed, &mut work);
    keep_same(&remote, &listed, &mut work);
    if !dry_run {
        dirs.take_canonical(&remote, &work);
        sweep_stale(&remote, &listed, work.iter().filter(|w| w.pending() || w.kept).map(|w| w.path.as_str()));
        if work.iter().any(Work::pending) {
            remote.prepare_rename();
        }
        write_temps(&remote, &dirs, &mut work, abandon);
        rename_all(&remote, &mut work, abandon);
        if work.iter().any(|w| matches!(w.failed, Some(DeliverError::Abandoned { .. }))) {
            tracing::warn!(host = %host, "shutting down: writes not yet renamed were abandoned");
        }
        clear_marks(&remote, &listed, plan, &work);
    }

    let files: Vec<FileOutcome> = work
        .into_iter()
        .map(|w| {
            match &w.failed {
                None if dry_run => tracing::debug!(host = %host, path = %w.path, "dry run: deliverable"),
                None => tracing::debug!(host = %host, path = %w.path, sha256 = %w.file.content.short_hash(), "delivered"),
                Some(e) => tracing::debug!(host = %host, path = %w.path, error = %e, "not delivered"),
            }
            FileOutcome { id: w.file.id.clone(), path: w.path, result: w.failed.map_or(Ok(()), Err), kept: w.kept, landed_mtime: w.landed_mtime }
        })
        .collect();

    let signalled = plan
        .signal_credmon
        .iter()
        .map(|c| {
            let root = format!("{}/", c.spool.trim_end_matches('/'));
            let touched = files.iter().any(|f| f.result.is_ok() && !f.kept && f.path.starts_with(&root));
            let result = if !remote.alive() {
                Err(DeliverError::SessionLost { host: host.clone(), path: format!("{root}pid") })
            } else if dry_run || touched {
                credmon::signal(&remote, &c.spool, ids.user(&c.user).map(|(uid, _)| uid), dry_run)
            } else {
                tracing::info!(host = %host, path = %c.spool, "nothing delivered under this spool; credmon not signalled");
                Ok(false)
            };
            (c.spool.clone(), result)
        })
        .collect();

    HostOutcome { host, connected: Ok(()), files, signalled, missing, read_back, credmon, schedd }
}

fn host_failed(plan: &HostPlan, e: DeliverError) -> HostOutcome {
    let host = plan.target.name.clone();
    let not_attempted = |path: String| DeliverError::NotAttempted { host: host.clone(), path };
    HostOutcome {
        host: host.clone(),
        files: plan
            .files
            .iter()
            .map(|f| FileOutcome { id: f.id.clone(), path: f.path.clone(), result: Err(not_attempted(f.path.clone())), kept: false, landed_mtime: None })
            .collect(),
        signalled: plan
            .signal_credmon
            .iter()
            .map(|c| (c.spool.clone(), Err(not_attempted(format!("{}/pid", c.spool.trim_end_matches('/'))))))
            .collect(),
        read_back: plan.read_back.iter().map(|p| (p.clone(), Err(not_attempted(p.clone())))).collect(),
        connected: Err(e),
        missing: Vec::new(),
        credmon: Vec::new(),
        schedd: None,
    }
}

/// Reads the content digest of `paths` on one host, before (and without) writing anything:
/// `Some(hash)` ([`crate::secret::short_hash_bytes`] of the bytes), or `None` when there is no
/// such file. Only regular files (lstat) of at most [`READ_BACK_MAX`] bytes are read; anything
/// else is an error for that path. `Err` when the host could not be reached at all. The content
/// itself never leaves this function.
pub fn read_back(target: &HostTarget, paths: &[String]) -> Result<ReadBack, DeliverError> {
    let span = tracing::info_span!("read_back", host = %target.name);
    let _entered = span.enter();
    let remote = Remote::connect(target)?;
    Ok(read_back_on(&remote, paths))
}

fn read_back_on(remote: &Remote, paths: &[String]) -> ReadBack {
    paths
        .iter()
        .map(|p| {
            let r = read_back_one(remote, p)
                .map_err(|detail| DeliverError::ReadBack { host: remote.host.clone(), path: p.clone(), detail });
            (p.clone(), r)
        })
        .collect()
}

fn read_back_one(remote: &Remote, path: &str) -> Result<Option<String>, String> {
    check_path(path).map_err(str::to_string)?;
    let st = match remote.lstat_opt(path) {
        Ok(Some(st)) => st,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("cannot lstat: {e}")),
    };
    if !is_regular(&st) {
        return Err("is not a regular file".into());
    }
    if st.size.unwrap_or(u64::MAX) > READ_BACK_MAX {
        return Err(format!("is larger than {READ_BACK_MAX} bytes"));
    }
    let Some(bytes) = read_regular(remote, path, READ_BACK_MAX + 1)? else { return Ok(None) };
    if bytes.len() as u64 > READ_BACK_MAX {
        return Err(format!("is larger than {READ_BACK_MAX} bytes"));
    }
    Ok(Some(short_hash_bytes(&bytes)))
}

/// At most `cap` bytes of a remote regular file, over SFTP; `None` if there is no such file.
/// Whatever the name was found to be before, the open handle is looked at too (fstat).
fn read_regular(remote: &Remote, path: &str, cap: u64) -> Result<Option<Vec<u8>>, String> {
    let Some((mut file, opened)) = open_for_reading(remote, path)? else { return Ok(None) };
    if !is_regular(&opened) {
        return Err("is not a regular file".into());
    }
    // Room for the whole file from the start: one read request and the one that finds its end.
    let room = opened.size.map_or(0, |size| size.saturating_add(1).min(cap));
    let mut bytes = Vec::with_capacity(room as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, cap), &mut bytes).map_err(|e| {
        remote.note_io();
        format!("cannot read: {e}")
    })?;
    Ok(Some(bytes))
}

/// `path` opened for reading and what its handle shows (fstat: whatever the name was found to
/// be before); `None` if there is no such file.
fn open_for_reading(remote: &Remote, path: &str) -> Result<Option<(ssh2::File, FileStat)>, String> {
    let sftp = remote.sftp().map_err(|e| e.to_string())?;
    let mut file = match sftp.open(rpath(path)) {
        Ok(f) => f,
        Err(e) if is_no_such_file(&e) => return Ok(None),
        Err(e) => {
            remote.note(&e);
            return Err(format!("cannot open: {e}"));
        }
    };
    let opened = file.stat().inspect_err(|e| remote.note(e)).map_err(|e| format!("cannot fstat: {e}"))?;
    Ok(Some((file, opened)))
}

/// Whether the file at `path`, as opened, is a regular file with the expected owner, mode and
/// size (fstat on the handle) holding exactly `content`: one read of that many bytes, since
/// the open handle showed that there are no more.
fn holds(remote: &Remote, path: &str, expected: &Expected, content: &[u8]) -> bool {
    let Ok(Some((mut file, opened))) = open_for_reading(remote, path) else { return false };
    if verify(&opened, expected).is_err() {
        return false;
    }
    let mut held = vec![0; content.len()];
    match std::io::Read::read_exact(&mut file, &mut held) {
        Ok(()) => held == content,
        Err(_) => {
            remote.note_io();
            false
        }
    }
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;

fn is_regular(st: &FileStat) -> bool {
    st.perm.is_some_and(|p| p & S_IFMT == S_IFREG)
}

/// One file on its way: its resolved path and root, the numeric owner, its temp file once
/// created, and the first failure.
struct Work<'a> {
    file: &'a RemoteFile,
    path: String,
    root: String,
    owner_ids: Option<(u32, u32)>,
    temp: Option<String>,
    failed: Option<DeliverError>,
    /// Already there and not to be replaced.
    kept: bool,
    /// mtime of the final path once it was checked after the rename.
    landed_mtime: Option<i64>,
}

impl<'a> Work<'a> {
    fn new(file: &'a RemoteFile) -> Self {
        Work { file, path: file.path.clone(), root: file.root.clone(), owner_ids: None, temp: None, failed: None, kept: false, landed_mtime: None }
    }

    fn pending(&self) -> bool {
        self.failed.is_none() && !self.kept
    }

    /// What the temp file and, after the rename, the final path must look like.
    fn expected(&self) -> Expected {
        Expected { owner: self.owner_ids, mode: self.file.mode, size: self.file.content.expose().len() as u64 }
    }
}

/// The path of the file `work[i]` must come after ([`RemoteFile::after`]), when that file
/// failed: files are renamed in plan order, so a parent's outcome is known by then.
fn parent_failed(work: &[Work], i: usize) -> Option<String> {
    let after = work[i].file.after.as_deref()?;
    work.iter().find(|o| o.file.id == after).filter(|o| o.failed.is_some()).map(|o| o.path.clone())
}

/// The ids of `users` and `groups` and the schedd's credmon settings, in one exec request.
fn read_schedd_settings(remote: &Remote, users: &BTreeSet<String>, groups: &BTreeSet<String>) -> (Ids, ScheddRead) {
    let purpose = "resolve account ids and read the schedd's credmon settings";
    let (ids, results) = Ids::resolve_with(remote, users, groups, purpose, schedd::commands());
    (ids, schedd::read(&remote.host, results))
}

/// Fails the files of every credd name the schedd's credmon would ignore (or cannot be judged
/// by), before anything is written; the host's other files go on.
fn refuse_names(host: &str, plan: &HostPlan, read: &ScheddRead, work: &mut [Work]) {
    match read {
        ScheddRead::Unknown(why) => {
            tracing::warn!(host = %host, reason = %why, "the schedd's credmon settings are unknown; credd names are judged by HTCondor's defaults")
        }
        ScheddRead::Read(s) => {
            let spools: BTreeSet<&str> = plan.credd_names.iter().map(|n| n.spool.as_str()).collect();
            for spool in spools {
                if let Some(other) = s.other_spool(spool) {
                    tracing::warn!(host = %host, spool = %spool, schedd_spool = %other, "the schedd's SEC_CREDENTIAL_DIRECTORY_OAUTH is not the inventory's spool");
                }
            }
        }
        ScheddRead::Refused(_) => {}
    }
    let settings = read.settings();
    for name in &plan.credd_names {
        let refusal = |path: String| match &settings {
            Ok(s) => credd_names::judge(s, &name.stem, name.is_handle)
                .map(|ignored| DeliverError::NameIgnored { host: host.to_string(), service: name.service.clone(), path, ignored: Box::new(ignored) }),
            Err(e) => Some(DeliverError::ScheddSettings { service: name.service.clone(), path, source: Box::new((*e).clone()) }),
        };
        for w in work.iter_mut().filter(|w| w.failed.is_none() && name.file_ids.contains(&w.file.id)) {
            w.failed = refusal(w.path.clone());
        }
    }
}

/// Fills `{uid}`, checks every final path and root, and finds each file's numeric owner.
fn resolve_paths(remote: &Remote, ids: &Ids, work: &mut [Work]) {
    let host = &remote.host;
    for w in work.iter_mut() {
        if w.path.contains("{uid}") || w.root.contains("{uid}") {
            let Some(account) = &w.file.uid_of else {
                w.failed = Some(DeliverError::InvalidPath {
                    host: host.clone(),
                    path: w.path.clone(),
                    reason: "contains {uid} but names no account to take it from",
                });
                continue;
            };
            match ids.user(account) {
                Ok((uid, _)) => {
                    w.path = w.path.replace("{uid}", &uid.to_string());
                    w.root = w.root.replace("{uid}", &uid.to_string());
                }
                Err(detail) => {
                    w.failed =
                        Some(DeliverError::Uid { host: host.clone(), account: account.clone(), path: w.path.clone(), detail });
                    continue;
                }
            }
        }
        if let Err(reason) = check_path(&w.path).and_then(|()| check_root(&w.root, &w.path)) {
            w.failed = Some(DeliverError::InvalidPath { host: host.clone(), path: w.path.clone(), reason });
            continue;
        }
        w.root = normalize_dir(&w.root).to_string();
        if let Some(owner) = &w.file.owner {
            match ids.owner(owner) {
                Ok(pair) => w.owner_ids = Some(pair),
                Err(detail) => {
                    w.failed =
                        Some(DeliverError::Owner { host: host.clone(), path: w.path.clone(), owner: owner.to_string(), detail });
                }
            }
        }
    }
}

/// A remote path the rest of the module can handle safely: absolute, one line, no `..`, naming
/// a file below a directory.
fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("not absolute");
    }
    if path.contains(|c: char| c.is_control()) {
        return Err("contains a control character");
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Err("contains a . or .. component");
    }
    let (_, name) = split_parent(path);
    if name.is_empty() {
        return Err("names no file");
    }
    Ok(())
}

/// The root is an absolute directory the path's own directory lies in (or is).
fn check_root(root: &str, path: &str) -> Result<(), &'static str> {
    if !root.starts_with('/') || root.contains(|c: char| c.is_control()) || root.split('/').any(|c| c == ".." || c == ".") {
        return Err("its root directory is not a plain absolute path");
    }
    match rule::chain(normalize_dir(root), split_parent(path).0) {
        Some(_) => Ok(()),
        None => Err("does not lie under its root directory"),
    }
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

/// Temp-file name for `name`: `.<name>.tb-<16 hex>`.
fn temp_name(name: &str) -> String {
    format!(".{name}.tb-{:016x}", rand::random::<u64>())
}

/// Whether `entry` is a temp-file name this module makes for `name`.
fn is_temp_of(entry: &str, name: &str) -> bool {
    let Some(rest) = entry.strip_prefix('.').and_then(|e| e.strip_prefix(name)).and_then(|e| e.strip_prefix(".tb-")) else {
        return false;
    };
    rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Unlinks stale temp files (regular files named exactly like this module's temps for a file
/// about to be written or removed) left by a killed run or a dropped connection, in the
/// directories of `paths`, as `listed` shows them.
fn sweep_stale<'a>(remote: &Remote, listed: &Listings, paths: impl Iterator<Item = &'a str>) {
    let mut by_dir: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for p in paths {
        let (dir, name) = split_parent(p);
        by_dir.entry(dir).or_default().insert(name);
    }
    for (dir, names) in by_dir {
        let Some(entries) = listed.entries(dir) else { continue };
        for (file_name, st) in entries {
            // readdir's attributes come from lstat: a link is never taken for a file.
            if !is_regular(st) || !names.iter().any(|n| is_temp_of(file_name, n)) {
                continue;
            }
            let stale = format!("{}/{file_name}", dir.trim_end_matches('/'));
            let Ok(sftp) = remote.sftp() else { return };
            match sftp.unlink(rpath(&stale)) {
                Ok(()) => tracing::info!(host = %remote.host, path = %stale, "removed a stale temp file"),
                Err(e) => {
                    remote.note(&e);
                    tracing::warn!(host = %remote.host, path = %stale, error = %e, "cannot remove a stale temp file");
                }
            }
        }
    }
}

/// Marks every [`RemoteFile::only_if_absent`] file that is already there as kept.
fn keep_present(remote: &Remote, listed: &Listings, work: &mut [Work]) {
    for w in work.iter_mut().filter(|w| w.pending() && w.file.only_if_absent) {
        match listed.lstat(remote, &w.path) {
            Ok(Some(_)) => {
                tracing::debug!(host = %remote.host, path = %w.path, "already there; left to the credmon");
                w.kept = true;
            }
            Ok(None) => {}
            Err(e) => w.failed = Some(DeliverError::Sftp { host: remote.host.clone(), op: "lstat of", path: w.path.clone(), source: e.into() }),
        }
    }
}

/// Marks every [`RemoteFile::keep_if_same`] file that already holds its content, mode and owner
/// as kept. Anything else, an error included, leaves the file to be written as usual.
/// Several files are read at once on the session's [`pipe`] (two round trips for all), else
/// one by one.
fn keep_same(remote: &Remote, listed: &Listings, work: &mut [Work]) {
    let looks_same: Vec<usize> = (0..work.len())
        .filter(|&i| {
            let w = &work[i];
            w.pending()
                && w.file.keep_if_same
                && matches!(listed.lstat(remote, &w.path), Ok(Some(st)) if verify(&st, &w.expected()).is_ok())
        })
        .collect();
    let files: Vec<(&str, usize)> = looks_same.iter().map(|&i| (work[i].path.as_str(), work[i].file.content.expose().len())).collect();
    let read = remote.pipelined_for(files.len(), |p| p.read_files(&files));
    for (k, &i) in looks_same.iter().enumerate() {
        let w = &mut work[i];
        let (expected, content) = (w.expected(), w.file.content.expose().as_bytes());
        let same = match read.as_ref().map(|all| &all[k]) {
            Some(Ok(Some((opened, held)))) => verify(opened, &expected).is_ok() && held == content,
            Some(_) => false,
            None => holds(remote, &w.path, &expected, content),
        };
        if same {
            tracing::debug!(host = %remote.host, path = %w.path, "already holds this content; left as it is");
            w.kept = true;
        }
    }
}

/// Most entries a directory may show: beyond it, files are looked at one by one and no stale
/// temp is swept there.
const MAX_LISTED: usize = 10_000;

/// The entries of the directories a session looks at, each read once (opendir and readdir: a
/// round trip per hundred entries) with the attributes sftp-server takes from lstat: whether a
/// file is there and what it is, and which stale temps lie beside it. The credd account
/// directories are listed when the host is opened (the credmon probe reads them) and the push
/// goes on from that listing; the spool is listed by the push, before its account directories
/// are judged. A directory that could not be listed is `None`: its files are looked at with
/// lstat.
#[derive(Default)]
struct Listings(HashMap<String, Option<HashMap<String, FileStat>>>);

impl Listings {
    fn read<'a>(remote: &Remote, paths: impl Iterator<Item = &'a str>) -> Listings {
        let mut listed = Listings::default();
        listed.add(remote, paths);
        listed
    }

    /// Lists the directory of each of `paths` that was not listed yet: several at once on the
    /// session's [`pipe`] (three round trips for all of them), else one by one.
    fn add<'a>(&mut self, remote: &Remote, paths: impl Iterator<Item = &'a str>) {
        let mut dirs: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for path in paths {
            let (dir, _) = split_parent(path);
            if !self.0.contains_key(dir) && seen.insert(dir) {
                dirs.push(dir);
            }
        }
        let pipelined = remote.pipelined_for(dirs.len(), |p| p.list_dirs(&dirs, MAX_LISTED));
        let Some(all) = pipelined else {
            for dir in dirs {
                self.0.insert(dir.to_string(), list(remote, dir));
            }
            return;
        };
        for (dir, listed) in dirs.into_iter().zip(all) {
            let entries = match listed {
                pipe::Listed::Entries(entries) => Some(entries),
                // One a dry run would create.
                pipe::Listed::Absent => Some(HashMap::new()),
                pipe::Listed::TooMany => {
                    tracing::warn!(host = %remote.host, path = %dir, "directory has more than {MAX_LISTED} entries; its files are looked at one by one");
                    None
                }
                pipe::Listed::Failed(e) => {
                    tracing::warn!(host = %remote.host, path = %dir, error = %e, "cannot list directory");
                    None
                }
            };
            self.0.insert(dir.to_string(), entries);
        }
    }

    /// `path`'s attributes as listed (`None`: not there), or from the host when its directory
    /// was not listed.
    fn lstat(&self, remote: &Remote, path: &str) -> Result<Option<FileStat>, ssh2::Error> {
        let (dir, name) = split_parent(path);
        if let Some(Some(entries)) = self.0.get(dir) {
            return Ok(entries.get(name).cloned());
        }
        remote.lstat_opt(path)
    }

    /// The entries of `dir`, if it was listed.
    fn entries(&self, dir: &str) -> Option<&HashMap<String, FileStat>> {
        self.0.get(dir).and_then(Option::as_ref)
    }
}

/// `dir`'s entries by name; empty when there is no such directory (one a dry run would create).
fn list(remote: &Remote, dir: &str) -> Option<HashMap<String, FileStat>> {
    let sftp = remote.sftp().ok()?;
    let mut handle = match sftp.opendir(rpath(dir)) {
        Ok(h) => h,
        Err(e) if is_no_such_file(&e) => return Some(HashMap::new()),
        Err(e) => {
            remote.note(&e);
            tracing::warn!(host = %remote.host, path = %dir, error = %e, "cannot list directory");
            return None;
        }
    };
    let mut entries = HashMap::new();
    loop {
        match handle.readdir() {
            Ok((name, st)) => {
                if entries.len() >= MAX_LISTED {
                    tracing::warn!(host = %remote.host, path = %dir, "directory has more than {MAX_LISTED} entries; its files are looked at one by one");
                    return None;
                }
                if let Some(name) = name.to_str() {
                    entries.insert(name.to_string(), st);
                }
            }
            Err(e) if e.code() == ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_FILE) => return Some(entries),
            Err(e) => {
                remote.note(&e);
                tracing::warn!(host = %remote.host, path = %dir, error = %e, "cannot list directory");
                return None;
            }
        }
    }
}

/// Writes the temp file of every pending file, [`pipe::MAX_OPEN`] files at a time: on the
/// session's [`pipe`] each step goes out for all of them at once (create; realpath; write,
/// fsync, owner and close: three round trips), else one file after another ([`write_temp`]).
/// The same checks either way: nothing is written into a temp file that is not where it was
/// meant to be, and a temp file that failed is removed.
fn write_temps(remote: &Remote, dirs: &Dirs, work: &mut [Work], abandon: &AtomicBool) {
    let pending: Vec<usize> = (0..work.len()).filter(|&i| work[i].pending()).collect();
    for chunk in pending.chunks(pipe::MAX_OPEN) {
        let mut ready = Vec::new();
        for &i in chunk {
            let w = &mut work[i];
            if abandon.load(Ordering::SeqCst) {
                w.failed = Some(DeliverError::Abandoned { host: remote.host.clone(), path: w.path.clone() });
            } else if !remote.alive() {
                w.failed = Some(DeliverError::SessionLost { host: remote.host.clone(), path: w.path.clone() });
            } else {
                ready.push(i);
            }
        }
        let pipelined = remote.pipelined_for(ready.len(), |p| Ok(p.can_fsync())).unwrap_or(false);
        if !(pipelined && write_pipelined(remote, dirs, work, &ready)) {
            for i in ready {
                if work[i].pending() && work[i].temp.is_none() {
                    write_temp(remote, dirs, &mut work[i]);
                }
            }
        }
    }
}

/// [`write_temps`] on the [`pipe`] for the files `ready`. `false` if the pipe could not be
/// used before anything was created: the caller writes them one by one.
fn write_pipelined(remote: &Remote, dirs: &Dirs, work: &mut [Work], ready: &[usize]) -> bool {
    let mut temps = Vec::with_capacity(ready.len());
    for &i in ready {
        let w = &work[i];
        failpoint!("deliver::before_write", remote.host, w.path);
        let (dir, name) = split_parent(&w.path);
        temps.push((format!("{}/{}", dir.trim_end_matches('/'), temp_name(name)), dir.to_string()));
    }
    let specs: Vec<(&str, u32)> = temps.iter().zip(ready).map(|((temp, _), &i)| (temp.as_str(), work[i].file.mode)).collect();
    let Some(created) = remote.pipelined(|p| p.create(&specs)) else { return false };
    let mut fills = Vec::new();
    let mut filled = Vec::new();
    for ((created, (temp, dir)), &i) in created.into_iter().zip(temps).zip(ready) {
        let w = &mut work[i];
        let created = match created {
            Ok(c) => c,
            Err(detail) => {
                let source = std::io::Error::other(detail);
                w.failed = Some(DeliverError::Sftp { host: remote.host.clone(), op: "create of temp file", path: temp, source });
                continue;
            }
        };
        w.temp = Some(temp.clone());
        // As in `write_temp`: nothing is written until the temp file is known to be where it
        // was meant to be.
        let expected = dirs.canonical(&dir).map(|c| format!("{}/{}", c.trim_end_matches('/'), split_parent(&temp).1));
        match (expected, created.realpath) {
            (Ok(expected), Ok(actual)) if expected == actual => {
                if w.owner_ids.is_some() {
                    failpoint!("deliver::before_fsetstat", remote.host, temp);
                }
                fills.push((created.handle, Some((w.file.content.expose().as_bytes(), w.owner_ids))));
            }
            (expected, actual) => {
                let detail = match (expected, actual) {
                    (Ok(_), Ok(actual)) => format!("the temp file was created at {actual}: a directory on the way was replaced"),
                    (Err(e), _) | (_, Err(e)) => e,
                };
                w.failed = Some(DeliverError::TempChanged { host: remote.host.clone(), path: w.path.clone(), detail });
                fills.push((created.handle, None));
            }
        }
        filled.push(i);
    }
    let results = remote.pipelined(|p| p.fill(fills));
    for (k, &i) in filled.iter().enumerate() {
        let w = &mut work[i];
        let temp = w.temp.clone().unwrap_or_default();
        let sftp_err = |op: &'static str, detail: String| DeliverError::Sftp {
            host: remote.host.clone(),
            op,
            path: temp.clone(),
            source: std::io::Error::other(detail),
        };
        let failed = match results.as_ref().map(|r| &r[k]) {
            _ if w.failed.is_some() => None,
            Some(Ok(())) => None,
            None => Some(sftp_err("write of", "the second SFTP channel broke".into())),
            Some(Err((pipe::Step::Owner, detail))) => {
                let (uid, gid) = w.owner_ids.unwrap_or_default();
                let owner = w.file.owner.as_ref().map(Owner::to_string).unwrap_or_default();
                Some(DeliverError::Owner { host: remote.host.clone(), path: w.path.clone(), owner, detail: format!("fsetstat {uid}:{gid} refused: {detail}") })
            }
            Some(Err((pipe::Step::Fsync, detail))) => Some(sftp_err("fsync of", detail.clone())),
            Some(Err((_, detail))) => Some(sftp_err("write of", detail.clone())),
        };
        if let Some(e) = failed {
            w.failed = Some(e);
        }
        if w.failed.is_some() {
            remove_temp(remote, w);
        }
    }
    true
}

/// Creates `w`'s temp file exclusively with its final mode, checks it is where it was meant to
/// be, writes, fsyncs and sets its owner on the open handle.
fn write_temp(remote: &Remote, dirs: &Dirs, w: &mut Work) {
    let (dir, name) = split_parent(&w.path);
    let dir = dir.to_string();
    let temp = format!("{}/{}", dir.trim_end_matches('/'), temp_name(name));
    let sftp_err = |op: &'static str, source: std::io::Error| DeliverError::Sftp {
        host: remote.host.clone(),
        op,
        path: temp.clone(),
        source,
    };
    failpoint!("deliver::before_write", remote.host, w.path);
    let sftp = match remote.sftp() {
        Ok(s) => s,
        Err(e) => {
            w.failed = Some(sftp_err("create of temp file", e.into()));
            return;
        }
    };
    // EXCLUSIVE: never reuse (or follow a link planted at) an existing name; the final mode in
    // the open itself, or the server would create it readable by others for a moment. A handle
    // opened for writing writes even to a 0400 file it created.
    let mut file = match sftp.open_mode(rpath(&temp), OpenFlags::WRITE | OpenFlags::EXCLUSIVE, w.file.mode as i32, OpenType::File) {
        Ok(f) => f,
        Err(e) => {
            remote.note(&e);
            w.failed = Some(sftp_err("create of temp file", e.into()));
            return;
        }
    };
    w.temp = Some(temp.clone());
    // The directories were judged by name; a link swapped in since would have taken the open
    // elsewhere. Nothing is written until the temp file is known to be where it was meant to be.
    let expected = dirs.canonical(&dir).map(|c| format!("{}/{}", c.trim_end_matches('/'), split_parent(&temp).1));
    match (expected, realpath(remote, &temp)) {
        (Ok(expected), Ok(actual)) if expected == actual => {}
        (expected, actual) => {
            drop(file);
            let detail = match (expected, actual) {
                (Ok(_), Ok(actual)) => format!("the temp file was created at {actual}: a directory on the way was replaced"),
                (Err(e), _) | (_, Err(e)) => e,
            };
            w.failed = Some(DeliverError::TempChanged { host: remote.host.clone(), path: w.path.clone(), detail });
            remove_temp(remote, w);
            return;
        }
    }
    let mut written = file.write_all(w.file.content.expose().as_bytes()).map_err(|e| {
        remote.note_io();
        sftp_err("write of", e)
    });
    if written.is_ok() {
        written = file.fsync().map_err(|e| {
            remote.note(&e);
            sftp_err("fsync of", e.into())
        });
    }
    if written.is_ok()
        && let Some((uid, gid)) = w.owner_ids
    {
        failpoint!("deliver::before_fsetstat", remote.host, temp);
        // fsetstat: the server applies it with fchown on this handle, whatever the name now
        // points at. SFTP v3 carries uid and gid together.
        let ids = FileStat { size: None, uid: Some(uid), gid: Some(gid), perm: None, atime: None, mtime: None };
        if let Err(e) = file.setstat(ids) {
            remote.note(&e);
            let owner = w.file.owner.as_ref().map(Owner::to_string).unwrap_or_default();
            written = Err(DeliverError::Owner {
                host: remote.host.clone(),
                path: w.path.clone(),
                owner,
                detail: format!("fsetstat {uid}:{gid} refused: {e}"),
            });
        }
    }
    drop(file);
    if let Err(e) = written {
        w.failed = Some(e);
        remove_temp(remote, w);
    }
}

/// What a delivered file (or its temp file just before the rename) must be.
#[derive(Debug, Clone, Copy)]
struct Expected {
    owner: Option<(u32, u32)>,
    mode: u32,
    size: u64,
}

/// `Ok` if an lstat shows a regular file with the expected owner, mode and size.
fn verify(st: &FileStat, e: &Expected) -> Result<(), String> {
    let perm = st.perm.unwrap_or(0);
    if perm & S_IFMT != S_IFREG {
        return Err(if perm & S_IFMT == 0o120_000 { "is a symbolic link".into() } else { "is not a regular file".into() });
    }
    if perm & 0o7777 != e.mode {
        return Err(format!("has mode {:04o}, not {:04o}", perm & 0o7777, e.mode));
    }
    if let Some((uid, gid)) = e.owner
        && (st.uid, st.gid) != (Some(uid), Some(gid))
    {
        return Err(format!("is owned by {}:{}, not {uid}:{gid}", st.uid.unwrap_or(u32::MAX), st.gid.unwrap_or(u32::MAX)));
    }
    if st.size != Some(e.size) {
        return Err(format!("holds {} bytes, not {}", st.size.unwrap_or(0), e.size));
    }
    Ok(())
}

/// Puts every written temp file in place, one atomic `posix-rename@openssh.com` each (batched
/// `mv -f` where the server lacks the extension), and checks each final path.
fn rename_all(remote: &Remote, work: &mut [Work], abandon: &AtomicBool) {
    let written = work.iter().filter(|w| w.pending() && w.temp.is_some()).count();
    if remote.pipelined_for(written, |p| Ok(p.can_posix_rename())).unwrap_or(false) {
        rename_pipelined(remote, work, abandon);
    }
    let mut fallback: Vec<usize> = Vec::new();
    for i in 0..work.len() {
        let parent = parent_failed(work, i);
        let w = &mut work[i];
        // Renamed already (on the pipe), or never written.
        if !w.pending() || w.temp.is_none() {
            continue;
        }
        if !may_rename(remote, w, parent, abandon) || !temp_intact(remote, w) {
            continue;
        }
        failpoint!("deliver::before_rename", remote.host, w.path);
        let temp = w.temp.clone().expect("pending files have a temp file");
        if w.file.only_if_absent {
            rename_if_absent(remote, w, &temp);
            continue;
        }
        if !fallback.is_empty() {
            fallback.push(i);
            continue;
        }
        let renamed = remote.rename(&temp, &w.path);
        #[cfg(feature = "failpoints")]
        let renamed = after_rename_before_reply(renamed, &remote.host, &w.path);
        match renamed {
            Renamed::Done => {
                w.temp = None;
                check_landed(remote, w);
            }
            Renamed::Unsupported => {
                tracing::warn!(
                    host = %remote.host,
                    "server lacks posix-rename@openssh.com: replacing files with batched mv -f over exec"
                );
                fallback.push(i);
            }
            Renamed::Refused(detail) => refused(remote, w, detail),
            Renamed::Unknown(detail) => unanswered(remote, w, &detail),
        }
    }
    if fallback.is_empty() {
        return;
    }
    let commands: Vec<String> = fallback
        .iter()
        .map(|&i| {
            let w = &work[i];
            // -T: if the final path is a directory, fail instead of moving the token into it.
            format!("mv -f -T -- {} {}", sh_quote(w.temp.as_deref().unwrap_or_default()), sh_quote(&w.path))
        })
        .collect();
    if abandon.load(Ordering::SeqCst) {
        for &i in &fallback {
            remove_temp(remote, &mut work[i]);
            work[i].failed = Some(DeliverError::Abandoned { host: remote.host.clone(), path: work[i].path.clone() });
        }
        return;
    }
    for (&i, result) in fallback.iter().zip(batch::run(remote, "replace files", commands)) {
        let w = &mut work[i];
        match result {
            Ok(_) => {
                w.temp = None;
                check_landed(remote, w);
            }
            Err(batch::ItemError::Unknown(detail)) => {
                w.temp = None;
                w.failed = Some(DeliverError::OutcomeUnknown { host: remote.host.clone(), path: w.path.clone(), detail });
            }
            Err(e @ (batch::ItemError::Failed(_) | batch::ItemError::Exited { .. })) => {
                w.failed = Some(DeliverError::Rename { host: remote.host.clone(), path: w.path.clone(), detail: e.to_string() });
                remove_temp(remote, w);
            }
        }
    }
}

/// A rename the server refused: the old file stays, the temp file goes.
fn refused(remote: &Remote, w: &mut Work, detail: String) {
    w.failed = Some(DeliverError::Rename { host: remote.host.clone(), path: w.path.clone(), detail });
    remove_temp(remote, w);
}

/// A rename sent without an answer: the file may be in place or not, and the temp file is no
/// longer known to be at its name.
fn unanswered(remote: &Remote, w: &mut Work, detail: &str) {
    w.temp = None;
    w.failed = Some(DeliverError::OutcomeUnknown {
        host: remote.host.clone(),
        path: w.path.clone(),
        detail: format!("the rename was sent and no answer came ({detail}); the connection is given up"),
    });
}

/// Whether `w` (whose temp file is written) goes on to its rename: not if the file it must come
/// after failed (`parent`), the push is abandoned or the session is lost. Fails it otherwise.
fn may_rename(remote: &Remote, w: &mut Work, parent: Option<String>, abandon: &AtomicBool) -> bool {
    if let Some(parent) = parent {
        remove_temp(remote, w);
        w.failed = Some(DeliverError::ParentNotDelivered { host: remote.host.clone(), path: w.path.clone(), parent });
        return false;
    }
    if abandon.load(Ordering::SeqCst) {
        remove_temp(remote, w);
        w.failed = Some(DeliverError::Abandoned { host: remote.host.clone(), path: w.path.clone() });
        return false;
    }
    if !remote.alive() {
        w.failed = Some(DeliverError::SessionLost { host: remote.host.clone(), path: w.path.clone() });
        return false;
    }
    true
}

/// [`rename_all`] on the [`pipe`], in rounds: each round takes every file whose parent (the
/// file it comes after) is settled, and sends a step for all of them at once: lstat of the temp
/// files, the renames in plan order, lstat of the final paths. Three round trips per round, the
/// same checks as one file at a time. Whatever is left (a pipe that broke before the renames
/// were sent) goes on one file at a time.
fn rename_pipelined(remote: &Remote, work: &mut [Work], abandon: &AtomicBool) {
    let unrenamed = |w: &Work| w.pending() && w.temp.is_some();
    loop {
        let round: Vec<usize> = (0..work.len())
            .filter(|&i| unrenamed(&work[i]))
            .filter(|&i| {
                let after = work[i].file.after.as_deref();
                !work.iter().any(|o| Some(o.file.id.as_str()) == after && unrenamed(o))
            })
            .collect();
        if round.is_empty() {
            return;
        }
        let temps: Vec<&str> = round.iter().map(|&i| work[i].temp.as_deref().unwrap_or_default()).collect();
        let Some(stats) = remote.pipelined(|p| p.lstat_each(&temps)) else { return };
        // File by file, as one at a time would: a shutdown asked for during one file's turn
        // leaves the files after it as they were.
        let mut intact = Vec::new();
        for (st, i) in stats.into_iter().zip(round) {
            let parent = parent_failed(work, i);
            if !may_rename(remote, &mut work[i], parent, abandon) {
                continue;
            }
            if judge_temp(remote, &mut work[i], st.map_err(|code| format!("cannot lstat it: {}", pipe::status_text(code)))) {
                failpoint!("deliver::before_rename", remote.host, work[i].path);
                intact.push(i);
            }
        }
        let renames: Vec<(&str, &str, bool)> =
            intact.iter().map(|&i| (work[i].temp.as_deref().unwrap_or_default(), work[i].path.as_str(), !work[i].file.only_if_absent)).collect();
        let Some(statuses) = remote.rename_each(&renames) else { return };
        let mut look = Vec::new();
        for (status, i) in statuses.into_iter().zip(intact) {
            let w = &mut work[i];
            let renamed = match status {
                Some(pipe::FX_OK) => Renamed::Done,
                Some(code) => Renamed::Refused(pipe::status_text(code)),
                None => Renamed::Unknown("the connection broke before the answer came".into()),
            };
            #[cfg(feature = "failpoints")]
            let renamed = if w.file.only_if_absent { renamed } else { after_rename_before_reply(renamed, &remote.host, &w.path) };
            match renamed {
                Renamed::Done => {
                    w.temp = None;
                    failpoint!("deliver::after_rename", remote.host, w.path);
                    look.push(i);
                }
                // Something is there already: the credmon's, if the final path shows a file.
                Renamed::Refused(_) if w.file.only_if_absent && remote.alive() => look.push(i),
                r @ (Renamed::Refused(_) | Renamed::Unsupported) => {
                    let detail = match r {
                        Renamed::Refused(detail) => detail,
                        _ => "the server does not offer posix-rename@openssh.com".into(),
                    };
                    refused(remote, w, detail);
                }
                Renamed::Unknown(detail) if w.file.only_if_absent => {
                    w.failed = Some(DeliverError::Rename { host: remote.host.clone(), path: w.path.clone(), detail });
                }
                Renamed::Unknown(detail) => unanswered(remote, w, &detail),
            }
        }
        let finals: Vec<&str> = look.iter().map(|&i| work[i].path.as_str()).collect();
        let stats = remote.pipelined(|p| p.lstat_each(&finals));
        for (k, i) in look.into_iter().enumerate() {
            let w = &mut work[i];
            let st = match stats.as_ref().map(|s| &s[k]) {
                Some(Ok(st)) => Ok(st.clone()),
                Some(Err(code)) => Err(format!("cannot lstat it: {}", pipe::status_text(*code))),
                None => Err("cannot lstat it: the second SFTP channel broke".into()),
            };
            if w.temp.is_some() {
                // An only-if-absent file whose rename was refused.
                if st.is_ok() {
                    tracing::debug!(host = %remote.host, path = %w.path, "appeared meanwhile; left to the credmon");
                    w.kept = true;
                } else {
                    w.failed = Some(DeliverError::Rename { host: remote.host.clone(), path: w.path.clone(), detail: "the rename was refused".into() });
                }
                remove_temp(remote, w);
            } else {
                judge_landed(remote, w, st);
            }
        }
    }
}

/// Puts an [`RemoteFile::only_if_absent`] file in place without replacing anything: if one
/// appeared since it was looked for (the credmon wrote it), that one stays.
fn rename_if_absent(remote: &Remote, w: &mut Work, temp: &str) {
    match remote.rename_no_replace(temp, &w.path) {
        Ok(()) => {
            w.temp = None;
            check_landed(remote, w);
        }
        Err(e) => {
            if remote.alive() && remote.lstat(&w.path).is_ok() {
                tracing::debug!(host = %remote.host, path = %w.path, "appeared meanwhile; left to the credmon");
                w.kept = true;
            } else {
                w.failed = Some(DeliverError::Rename { host: remote.host.clone(), path: w.path.clone(), detail: e.to_string() });
            }
            remove_temp(remote, w);
        }
    }
}

/// Failpoint `deliver::after_rename_before_reply`: the server renamed the file; `panic` kills
/// the process before the answer is used, `return` loses the answer (the rename's outcome is
/// then unknown, as when a connection drops at that moment).
#[cfg(feature = "failpoints")]
fn after_rename_before_reply(renamed: Renamed, host: &str, path: &str) -> Renamed {
    failpoints::set(host, path);
    match (fail::eval("deliver::after_rename_before_reply", |_| ()), renamed) {
        (Some(()), Renamed::Done) => Renamed::Unknown("the answer to the rename was lost (failpoint)".into()),
        (_, renamed) => renamed,
    }
}

/// The temp file is still the regular file written, with its owner and mode: nothing was
/// swapped in under its name since. Fails the file (removing what is at the temp name) if not.
fn temp_intact(remote: &Remote, w: &mut Work) -> bool {
    let temp = w.temp.clone().expect("pending files have a temp file");
    let st = remote.lstat(&temp).map_err(|e| format!("cannot lstat it: {e}"));
    judge_temp(remote, w, st)
}

/// [`temp_intact`]'s verdict on the temp file's lstat.
fn judge_temp(remote: &Remote, w: &mut Work, st: Result<FileStat, String>) -> bool {
    let temp = w.temp.clone().expect("pending files have a temp file");
    match st.and_then(|st| verify(&st, &w.expected())) {
        Ok(()) => true,
        Err(detail) => {
            w.failed = Some(DeliverError::TempChanged { host: remote.host.clone(), path: w.path.clone(), detail: format!("{temp} {detail}") });
            remove_temp(remote, w);
            false
        }
    }
}

/// After the rename: the final path must be a regular file with the expected owner, mode and
/// size before the file counts as delivered.
fn check_landed(remote: &Remote, w: &mut Work) {
    failpoint!("deliver::after_rename", remote.host, w.path);
    judge_landed(remote, w, remote.lstat(&w.path).map_err(|e| format!("cannot lstat it: {e}")));
}

/// [`check_landed`]'s verdict on the final path's lstat.
fn judge_landed(remote: &Remote, w: &mut Work, st: Result<FileStat, String>) {
    let verdict = st.and_then(|st| {
        w.landed_mtime = st.mtime.map(|t| t as i64);
        verify(&st, &w.expected())
    });
    if let Err(detail) = verdict {
        w.failed = Some(DeliverError::OutcomeUnknown {
            host: remote.host.clone(),
            path: w.path.clone(),
            detail: format!("renamed into place, but the file there then {detail}"),
        });
    }
}

/// Removes `<dir>.mark` of every managed directory that got a file, as `condor_store_cred`
/// does; only a regular file (lstat), and only beside a directory that passed the rule.
fn clear_marks(remote: &Remote, listed: &Listings, plan: &HostPlan, work: &[Work]) {
    for d in plan.dirs.iter().filter(|d| d.clear_mark) {
        let dir = normalize_dir(&d.path);
        if !work.iter().any(|w| w.failed.is_none() && split_parent(&w.path).0 == dir) {
            continue;
        }
        let mark = format!("{dir}.mark");
        // As the spool was listed before the push: a mark the credd makes during the push is
        // there for its sweep, as it would be had it come a moment later.
        match listed.lstat(remote, &mark) {
            Ok(Some(st)) if is_regular(&st) => {
                match remote.sftp().and_then(|s| s.unlink(rpath(&mark)).inspect_err(|e| remote.note(e))) {
                    Ok(()) => tracing::info!(host = %remote.host, path = %mark, "removed the credd's sweep mark"),
                    Err(e) if is_no_such_file(&e) => {}
                    Err(e) => tracing::warn!(host = %remote.host, path = %mark, error = %e, "cannot remove the credd's sweep mark"),
                }
            }
            Ok(Some(_)) => tracing::warn!(host = %remote.host, path = %mark, "sweep mark is not a regular file; left alone"),
            Ok(None) => {}
            Err(e) => tracing::warn!(host = %remote.host, path = %mark, error = %e, "cannot look at the credd's sweep mark"),
        }
    }
}

/// Best effort, never over a dead session (the next connection sweeps it): a temp file that
/// cannot be removed is logged (by path), and the file's own failure stays what is reported.
fn remove_temp(remote: &Remote, w: &mut Work) {
    let Some(temp) = w.temp.take() else { return };
    if !remote.alive() {
        tracing::warn!(host = %remote.host, path = %temp, "connection lost: temp file left for the next delivery to remove");
        return;
    }
    if let Ok(sftp) = remote.sftp()
        && let Err(e) = sftp.unlink(rpath(&temp))
        && !is_no_such_file(&e)
    {
        remote.note(&e);
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
        check("/a/../etc/shadow", Err("contains a . or .. component"));
        check("/a/./b", Err("contains a . or .. component"));
        check("/a/b/", Err("names no file"));
        check("/a/\nb", Err("contains a control character"));
        check("/a/\tb", Err("contains a control character"));
    }

    #[test]
    fn roots() {
        assert_eq!(check_root("/tmp", "/tmp/bt_u0"), Ok(()));
        assert_eq!(check_root("/tmp/", "/tmp/bt_u0"), Ok(()));
        assert_eq!(check_root("/", "/bt"), Ok(()));
        assert_eq!(check_root("/data", "/data/t0/tokens/bt"), Ok(()));
        assert_eq!(check_root("/data", "/datax/bt"), Err("does not lie under its root directory"));
        assert_eq!(check_root("/data/t0", "/data/bt"), Err("does not lie under its root directory"));
        assert_eq!(check_root("data", "/data/bt"), Err("its root directory is not a plain absolute path"));
        assert_eq!(check_root("/data/../etc", "/etc/bt"), Err("its root directory is not a plain absolute path"));
    }

    #[test]
    fn parents() {
        assert_eq!(split_parent("/a/b/c"), ("/a/b", "c"));
        assert_eq!(split_parent("/c"), ("/", "c"));
        assert_eq!(normalize_dir("/a/b/"), "/a/b");
        assert_eq!(normalize_dir("/"), "/");
    }

    #[test]
    fn temp_names_are_recognised_exactly() {
        let t = temp_name("svc.top");
        assert!(is_temp_of(&t, "svc.top"), "{t}");
        assert!(!is_temp_of(&t, "svc.use"));
        assert!(!is_temp_of(&t, "svc"));
        assert!(is_temp_of(".svc.top.tb-0123456789abcdef", "svc.top"));
        assert!(!is_temp_of(".svc.top.tb-0123456789ABCDEF", "svc.top"));
        assert!(!is_temp_of(".svc.top.tb-0123456789abcde", "svc.top"));
        assert!(!is_temp_of(".svc.top.tb-0123456789abcdef0", "svc.top"));
        assert!(!is_temp_of("svc.top.tb-0123456789abcdef", "svc.top"));
        assert!(!is_temp_of(".svc.top", "svc.top"));
    }

    fn stat(kind: u32, mode: u32, uid: u32, gid: u32, size: u64) -> FileStat {
        FileStat { size: Some(size), uid: Some(uid), gid: Some(gid), perm: Some(kind | mode), atime: None, mtime: None }
    }

    #[test]
    fn landed_files_are_checked_for_kind_owner_mode_and_size() {
        let e = Expected { owner: Some((5, 6)), mode: 0o600, size: 10 };
        assert_eq!(verify(&stat(S_IFREG, 0o600, 5, 6, 10), &e), Ok(()));
        assert_eq!(verify(&stat(0o120_000, 0o777, 5, 6, 10), &e), Err("is a symbolic link".into()));
        assert_eq!(verify(&stat(0o040_000, 0o700, 5, 6, 10), &e), Err("is not a regular file".into()));
        assert_eq!(verify(&stat(S_IFREG, 0o644, 5, 6, 10), &e), Err("has mode 0644, not 0600".into()));
        assert_eq!(verify(&stat(S_IFREG, 0o600, 0, 6, 10), &e), Err("is owned by 0:6, not 5:6".into()));
        assert_eq!(verify(&stat(S_IFREG, 0o600, 5, 0, 10), &e), Err("is owned by 5:0, not 5:6".into()));
        assert_eq!(verify(&stat(S_IFREG, 0o600, 5, 6, 9), &e), Err("holds 9 bytes, not 10".into()));
        let anyone = Expected { owner: None, ..e };
        assert_eq!(verify(&stat(S_IFREG, 0o600, 0, 0, 10), &anyone), Ok(()));
    }

    #[test]
    fn only_the_unanswered_rename_may_have_landed() {
        let host = "h".to_string();
        let path = "/p".to_string();
        assert!(DeliverError::OutcomeUnknown { host: host.clone(), path: path.clone(), detail: String::new() }.may_have_landed());
        assert!(!DeliverError::Rename { host: host.clone(), path: path.clone(), detail: String::new() }.may_have_landed());
        assert!(!DeliverError::Abandoned { host: host.clone(), path: path.clone() }.may_have_landed());
        assert!(!DeliverError::SessionLost { host, path }.may_have_landed());
    }

    #[test]
    fn an_unreachable_host_fails_every_file_by_name_and_leaks_nothing() {
        let plan = HostPlan {
            expect_present: Vec::new(),
            read_back: vec!["/tmp/bt_u0".into()],
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
                root: "/tmp".into(),
                uid_of: Some("root".into()),
                content: Secret::new("eyJTOKENsecret"),
                mode: 0o600,
                owner: None,
                only_if_absent: false,
                after: None,
                keep_if_same: false,
            }],
            signal_credmon: vec![Credmon { spool: "/spool".into(), user: "root".into() }],
            probe_credmon: vec![],
            credd_names: vec![],
        };
        let out = push_to_host(&plan, false);
        let err = out.connected.as_ref().unwrap_err();
        assert!(matches!(err, DeliverError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("schedd-x"));
        assert!(matches!(out.files[0].result, Err(DeliverError::NotAttempted { .. })));
        assert!(out.signalled[0].1.is_err());
        assert!(matches!(out.read_back[0].1, Err(DeliverError::NotAttempted { .. })));
        assert!(!out.all_delivered());
        let shown = format!("{out:?} {plan:?} {err}");
        assert!(!shown.contains("eyJTOKENsecret") && !shown.contains("PASSPHRASEsecret"));
    }
}
