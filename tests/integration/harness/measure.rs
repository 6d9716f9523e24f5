//! What the benchmark measures about the peers and the product, read from the outside: a child
//! process's CPU time and peak RSS (`wait4`), a running process's CPU time and that of the
//! children it has reaped (`/proc/<pid>/stat`), SSH logins in an sshd log, and the requests in
//! OpenBao's audit log by kind.
//!
//! Never asserts anything about time: it reports numbers, the caller decides what they mean.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use token_bastion::broker::RequestKind as BrokerRequest;

/// A finished child process as `wait4` saw it.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub status: ExitStatus,
    pub wall: Duration,
    /// User plus system CPU time of the process (and of any children it reaped).
    pub cpu: Duration,
    /// Peak resident set size.
    pub max_rss_kib: u64,
}

/// Starts `cmd`, waits for it with `wait4` and returns its status, wall time, CPU time and
/// peak RSS. Give the command files for stdout and stderr (piped output is not read here).
pub fn run_measured(cmd: &mut Command) -> std::io::Result<Measured> {
    let started = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own unreaped child; `status` and `usage` outlive the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let wall = started.elapsed();
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    // `child` is reaped already; dropping a std Child neither waits nor kills.
    drop(child);
    Ok(Measured {
        status: ExitStatus::from_raw(status),
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
    })
}

/// CPU time of a running process (all its threads), plus with `reaped` that of every child it
/// has waited for (which includes theirs): `/proc/<pid>/stat` fields utime, stime, cutime,
/// cstime. `None` when the process is gone.
pub fn process_cpu(pid: u32, reaped: bool) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = cpu_ticks(&stat, reaped)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Clock ticks from a `/proc/<pid>/stat` line: utime + stime (+ cutime + cstime).
fn cpu_ticks(stat: &str, reaped: bool) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses; fields after it start at 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<u64> = rest.split_whitespace().skip(11).take(4).map(|f| f.parse().unwrap_or(0)).collect();
    if fields.len() < 4 {
        return None;
    }
    Some(if reaped { fields.iter().sum() } else { fields[0] + fields[1] })
}

/// The children of a process (its main thread's, which is all a single-threaded server has).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits (polling, at most `timeout`) until `pid` has no children left; false if some remain.
pub fn wait_for_no_children(pid: u32, timeout: Duration) -> bool {
    super::wait_until(timeout, || children(pid).is_empty())
}

/// How many public-key logins an sshd log (`LogLevel VERBOSE` or more) records.
pub fn accepted_logins(log: &str) -> usize {
    log.lines().filter(|l| l.contains("Accepted publickey for ")).count()
}

/// The bytes a file gained since `offset` (none if it shrank), and its length now.
pub fn read_since(path: &Path, offset: u64) -> (String, u64) {
    let Ok(mut f) = std::fs::File::open(path) else { return (String::new(), offset) };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len <= offset || f.seek(SeekFrom::Start(offset)).is_err() {
        return (String::new(), len);
    }
    let mut bytes = Vec::new();
    let _ = f.take(len - offset).read_to_end(&mut bytes);
    (String::from_utf8_lossy(&bytes).into_owned(), len)
}

/// What a request in OpenBao's audit log was, by its path: one of the product's own broker
/// request kinds, or not a broker request at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestKind {
    Broker(BrokerRequest),
    /// Issuer discovery and keys (`identity/oidc/…`): the stand-in issuer, not the broker.
    Issuer,
    Other,
}

impl RequestKind {
    pub fn of_path(path: &str) -> RequestKind {
        match path {
            "auth/token/lookup-self" => RequestKind::Broker(BrokerRequest::LookupSelf),
            "auth/token/create" => RequestKind::Broker(BrokerRequest::CreateChild),
            "auth/token/revoke-self" => RequestKind::Broker(BrokerRequest::RevokeSelf),
            p if p.starts_with("auth/") && p.ends_with("/login") => RequestKind::Broker(BrokerRequest::Login),
            p if p.starts_with("secret/oauth/") => RequestKind::Broker(BrokerRequest::AccessToken),
            p if p.starts_with("identity/oidc/") => RequestKind::Issuer,
            _ => RequestKind::Other,
        }
    }

    pub fn is_broker(self) -> bool {
        !matches!(self, RequestKind::Issuer)
    }

    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Broker(k) => k.as_str(),
            RequestKind::Issuer => "issuer",
            RequestKind::Other => "other",
        }
    }
}

/// Requests (not responses) in OpenBao audit log lines, counted by kind.
pub fn audit_requests_by_kind(audit: &str) -> BTreeMap<RequestKind, usize> {
    let mut counts = BTreeMap::new();
    for line in audit.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if entry["type"] != "request" {
            continue;
        }
        let path = entry["request"]["path"].as_str().unwrap_or_default();
        *counts.entry(RequestKind::of_path(path)).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "4242 (sshd: a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 20 10 20 0 1 0 55 1000 10";
        assert_eq!(cpu_ticks(stat, false), Some(10));
        assert_eq!(cpu_ticks(stat, true), Some(40));
        assert_eq!(cpu_ticks("1 (x) S 1", true), None);
    }

    #[test]
    fn a_child_is_measured_and_reaped() {
        let m = run_measured(Command::new("sh").args(["-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exit 3"])).unwrap();
        assert_eq!(m.status.code(), Some(3));
        assert!(m.cpu > Duration::ZERO, "{m:?}");
        assert!(m.max_rss_kib > 0, "{m:?}");
        assert!(process_cpu(std::process::id(), true).is_some());
    }

    #[test]
    fn audit_requests_are_counted_by_kind_and_responses_are_not() {
        let log = [
            r#"{"type":"request","request":{"path":"auth/approle/login"}}"#,
            r#"{"type":"response","request":{"path":"auth/approle/login"}}"#,
            r#"{"type":"request","request":{"path":"auth/token/lookup-self"}}"#,
            r#"{"type":"request","request":{"path":"secret/oauth/sts/cms/a:b"}}"#,
            r#"{"type":"request","request":{"path":"secret/oauth/sts/cms/c:d"}}"#,
            r#"{"type":"request","request":{"path":"identity/oidc/.well-known/keys"}}"#,
            "not json",
        ]
        .join("\n");
        let counts = audit_requests_by_kind(&log);
        assert_eq!(counts.get(&RequestKind::Broker(BrokerRequest::Login)), Some(&1));
        assert_eq!(counts.get(&RequestKind::Broker(BrokerRequest::LookupSelf)), Some(&1));
        assert_eq!(counts.get(&RequestKind::Broker(BrokerRequest::AccessToken)), Some(&2));
        assert_eq!(counts.get(&RequestKind::Issuer), Some(&1));
        assert_eq!(counts.values().sum::<usize>(), 5);
        assert!(!RequestKind::Issuer.is_broker());
    }

    #[test]
    fn logins_are_counted_from_the_sshd_log() {
        let log = "Server listening on 127.0.0.1 port 1.\nAccepted publickey for root from 127.0.0.1 port 2 ssh2: ED25519 SHA256:x\nConnection closed\nAccepted publickey for root from 127.0.0.1 port 3 ssh2: ED25519 SHA256:y\n";
        assert_eq!(accepted_logins(log), 2);
    }

    #[test]
    fn only_what_a_file_gained_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "one\n").unwrap();
        let (_, at) = read_since(&p, 0);
        std::fs::write(&p, "one\ntwo\n").unwrap();
        assert_eq!(read_since(&p, at), ("two\n".to_string(), 8));
    }
}
