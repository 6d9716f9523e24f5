//! The credmon seen over SSH. Before a delivery, [`probe`] looks at what says whether it works:
//! `<spool>/CREDMON_COMPLETE` (touched at the end of every scan), `<spool>/pid` and whether that
//! process exists, and the mtimes of each credd destination's `.top` and `.use` (from the
//! listing of their directory, which the push then goes on from). After a
//! delivery, [`signal`] wakes it: SIGHUP to the pid only if the process behind it is owned by
//! the credd's user and its command line is a credmon's, so that it rescans the spool at once
//! instead of at its next periodic pass. Everything is read over SFTP (`/proc/<pid>`); only the
//! `kill` itself is a command.
//!
//! Must never signal a process owned by anyone else or whose command line does not name a
//! credmon: a pid file left over from a dead credmon may point at any process by now. Never
//! reads a `.use` or `.top` (only their attributes): judging what was seen is the caller's.

use super::session::Remote;
use super::{DeliverError, Listings};

/// A pid file is a number and a newline; anything bigger is not one.
const MAX_PID_FILE: u64 = 64;
/// Enough of a command line to see the program and its script.
const MAX_CMDLINE: u64 = 4096;

/// A spool whose credmon is looked at before anything is written, and the credd files in it.
#[derive(Clone, Debug)]
pub struct CredmonProbe {
    pub spool: String,
    pub files: Vec<ProbeFile>,
}

/// One credd destination's pair of files.
#[derive(Clone, Debug)]
pub struct ProbeFile {
    /// The caller's own id for the destination, handed back in [`FileSeen`].
    pub id: String,
    pub top: String,
    pub use_file: String,
}

/// What a probe saw of one spool (times are the host's, seconds since the epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredmonSeen {
    pub spool: String,
    /// mtime of `CREDMON_COMPLETE`; `Ok(None)` when there is none.
    pub complete: Result<Option<i64>, String>,
    pub process: Liveness,
    pub files: Vec<FileSeen>,
}

/// Whether `<spool>/pid` names a running process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running(u32),
    Gone(u32),
    NoPidFile,
    /// The pid file or `/proc` could not be read, or the file holds no pid.
    Unknown(String),
}

/// mtimes of one destination's files; `None` when the file is not there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSeen {
    pub id: String,
    pub top: Result<Option<i64>, String>,
    pub use_file: Result<Option<i64>, String>,
}

/// Looks at a spool's credmon without changing anything.
pub(super) fn probe(remote: &Remote, listed: &Listings, p: &CredmonProbe) -> CredmonSeen {
    let spool = p.spool.trim_end_matches('/');
    let process = match read_pid(remote, spool) {
        Err(detail) => Liveness::Unknown(detail),
        Ok(None) => Liveness::NoPidFile,
        Ok(Some(pid)) => match remote.lstat(&format!("/proc/{pid}")) {
            Ok(_) => Liveness::Running(pid),
            Err(e) if is_no_such_file(&e) => Liveness::Gone(pid),
            Err(e) => Liveness::Unknown(format!("cannot look at process {pid}: {e}")),
        },
    };
    let files = p
        .files
        .iter()
        .map(|f| FileSeen { id: f.id.clone(), top: mtime(remote, listed, &f.top), use_file: mtime(remote, listed, &f.use_file) })
        .collect();
    CredmonSeen { spool: p.spool.clone(), complete: mtime(remote, listed, &format!("{spool}/CREDMON_COMPLETE")), process, files }
}

/// `path`'s mtime as listed (or looked at, where its directory was not listed).
fn mtime(remote: &Remote, listed: &Listings, path: &str) -> Result<Option<i64>, String> {
    match listed.lstat(remote, path) {
        Ok(Some(st)) => st.mtime.map(|t| Some(t as i64)).ok_or_else(|| format!("{path}: the server sent no mtime")),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("cannot lstat {path}: {e}")),
    }
}

/// The pid in `<spool>/pid`; `Ok(None)` when there is no pid file.
fn read_pid(remote: &Remote, spool: &str) -> Result<Option<u32>, String> {
    let pid_path = format!("{spool}/pid");
    let Some(text) = super::read_regular(remote, &pid_path, MAX_PID_FILE).map_err(|e| format!("{pid_path}: {e}"))? else {
        return Ok(None);
    };
    parse_pid(&text).map(Some).ok_or_else(|| format!("{pid_path} does not hold a process id"))
}

/// Reads the pid file, checks the process, and (unless `dry_run`) signals it. `Ok(false)` means
/// nothing was signalled: no pid file, no such process, or not the credd user's credmon.
/// `credd_uid` is the uid the credmon must run as.
pub(crate) fn signal(remote: &Remote, spool: &str, credd_uid: Result<u32, String>, dry_run: bool) -> Result<bool, DeliverError> {
    let host = remote.host.clone();
    let pid_path = format!("{}/pid", spool.trim_end_matches('/'));
    let pid_err = |detail: String| DeliverError::PidFile { host: host.clone(), path: pid_path.clone(), detail };

    let Some(text) = super::read_regular(remote, &pid_path, MAX_PID_FILE).map_err(pid_err)? else {
        tracing::warn!(host = %host, path = %pid_path, "no credmon pid file; credmon not signalled");
        return Ok(false);
    };
    let pid = parse_pid(&text).ok_or_else(|| pid_err("does not hold a process id".into()))?;
    let credd_uid = credd_uid.map_err(|e| pid_err(format!("cannot tell whose credmon to accept: {e}")))?;

    let owner = match remote.lstat(&format!("/proc/{pid}")) {
        Ok(st) => st.uid,
        Err(e) if is_no_such_file(&e) => {
            tracing::warn!(host = %host, path = %pid_path, pid, "pid file names no running process; credmon not signalled");
            return Ok(false);
        }
        Err(e) => return Err(pid_err(format!("cannot look at process {pid}: {e}"))),
    };
    if owner != Some(credd_uid) {
        tracing::warn!(host = %host, path = %pid_path, pid, uid = ?owner, credd_uid, "pid file names a process of another user; not signalled");
        return Ok(false);
    }
    let Some(cmdline) = super::read_regular(remote, &format!("/proc/{pid}/cmdline"), MAX_CMDLINE)
        .map_err(|e| pid_err(format!("cannot read the command line of process {pid}: {e}")))?
    else {
        return Ok(false);
    };
    if !is_credmon(&cmdline) {
        tracing::warn!(host = %host, path = %pid_path, pid, "pid file names a process that is not a credmon; not signalled");
        return Ok(false);
    }
    if dry_run {
        tracing::info!(host = %host, path = %pid_path, pid, "dry run: credmon found, not signalled");
        return Ok(false);
    }
    let kill = remote.exec("signal credmon", &format!("kill -HUP {pid}"))?;
    if kill.status != 0 {
        return Err(DeliverError::Signal { host, path: pid_path, pid, detail: kill.detail() });
    }
    tracing::info!(host = %host, path = %pid_path, pid, "credmon signalled to rescan");
    Ok(true)
}

pub(crate) fn is_no_such_file(e: &ssh2::Error) -> bool {
    // SSH_FX_NO_SUCH_FILE
    matches!(e.code(), ssh2::ErrorCode::SFTP(2))
}

/// A positive pid other than 1 (never signal init), surrounded by whitespace at most.
pub(crate) fn parse_pid(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = text.parse().ok()?;
    (pid > 1).then_some(pid)
}

/// Whether a `/proc/<pid>/cmdline` (NUL-separated arguments) is a credmon's. The credmon is a
/// Python script, so its name is the program or, behind an interpreter and its options, the
/// script; later arguments (file names an editor or `tail` was given) do not count.
pub(crate) fn is_credmon(cmdline: &[u8]) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    let mut candidates = Vec::new();
    if let Some(first) = args.first() {
        candidates.push(*first);
        if is_interpreter(first) {
            // The script is the first argument after the interpreter's options.
            if let Some(script) = args.iter().skip(1).find(|a| !a.starts_with(b"-")) {
                candidates.push(*script);
            }
        }
    }
    candidates.iter().any(|arg| {
        let base = arg.rsplit(|b| *b == b'/').next().unwrap_or(arg);
        base.windows(b"credmon".len()).any(|w| w == b"credmon")
    })
}

fn is_interpreter(arg: &[u8]) -> bool {
    let base = arg.rsplit(|b| *b == b'/').next().unwrap_or(arg);
    base.starts_with(b"python") || base.starts_with(b"platform-python")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cmdline: &str, expected: bool) {
        assert_eq!(is_credmon(cmdline.replace(' ', "\0").as_bytes()), expected, "{cmdline}");
    }

    #[test]
    fn credmon_command_lines() {
        check("/usr/bin/python3 -s /usr/sbin/condor_credmon_vault -f", true);
        check("python3 /usr/sbin/condor_credmon_oauth", true);
        check("condor_credmon_vault", true);
        check("/usr/libexec/condor/condor_credmon_vault", true);
        check("/usr/bin/sleep 60", false);
        check("vim /etc/condor/credmon.conf", false);
        check("/usr/bin/python3 /opt/other.py condor_credmon_vault", false);
        check("", false);
    }

    #[test]
    fn pid_files() {
        assert_eq!(parse_pid(b"1234\n"), Some(1234));
        assert_eq!(parse_pid(b" 42 "), Some(42));
        assert_eq!(parse_pid(b"1\n"), None);
        assert_eq!(parse_pid(b"0"), None);
        assert_eq!(parse_pid(b"-5"), None);
        assert_eq!(parse_pid(b"12 34"), None);
        assert_eq!(parse_pid(b"$(reboot)"), None);
        assert_eq!(parse_pid(b""), None);
    }
}
