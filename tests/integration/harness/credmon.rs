//! A stand-in for HTCondor's Vault credmon (no HTCondor can be installed here):
//! `credmon_standin.py` run by the system Python against one sshd schedd's spool. It keeps
//! `<spool>/pid`, touches `<spool>/CREDMON_COMPLETE` after every scan, rescans on SIGHUP, and
//! rewrites a `.use` from its `.top` by the real credmon's rule, reading the access token from the
//! test's OpenBao with the `.top`'s Vault token. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::openbao::OpenBao;
use super::{wait_until, ChildGuard};

pub struct CredmonStandin {
    guard: ChildGuard,
    pub spool: PathBuf,
}

impl CredmonStandin {
    /// Starts it on `spool` and waits for its first scan. `refresh`: whether it rewrites `.use`
    /// files at all (a credmon whose Vault reads fail does not).
    pub fn start(spool: &Path, bao: &OpenBao, refresh: bool) -> CredmonStandin {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/harness/credmon_standin.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script).arg(spool).arg(bao.addr()).arg(bao.ca_path());
        if !refresh {
            cmd.arg("--no-refresh");
        }
        let log = spool.parent().unwrap().join(format!("credmon-{}.log", rand::random::<u32>()));
        let mut guard = ChildGuard::spawn("credmon stand-in", cmd, &log);
        guard.wait_for_log("scan complete", Duration::from_secs(20));
        CredmonStandin { guard, spool: spool.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn log_text(&self) -> String {
        self.guard.log_text()
    }

    /// Waits (bounded) until the log says `needle` at least `n` times.
    pub fn wait_for(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_text().matches(needle).count() >= n)
    }

    /// Kills it as a crash would: its pid file stays, naming a process that is gone.
    pub fn kill(&mut self) {
        self.guard.stop();
    }
}
