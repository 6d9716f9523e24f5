//! Real OpenSSH sshd "schedds" on 127.0.0.1, one per call, each with its own temporary ed25519
//! host key, client key pair, known_hosts line and spool directory, all under the test's temp
//! dir. Killed on drop.
//!
//! The SFTP subsystem is OpenSSH's own `sftp-server` (the code `internal-sftp` runs in-process)
//! at `-l DEBUG3`, started through a two-line wrapper that sends its log to a file: in-process,
//! `internal-sftp` logs through syslog only, which a test cannot read. The log shows every
//! request (open flags and mode, fsync, fsetstat owner, posix-rename) for tests to check.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use token_bastion::deliver::HostTarget;

use super::{ChildGuard, Leaks, free_port, wait_until};

const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    /// The temp dir holding everything of this instance.
    pub dir: PathBuf,
    pub port: u16,
    /// Private key authorized for every account (root included) on this instance.
    pub client_key: PathBuf,
    /// `[127.0.0.1]:<port> ssh-ed25519 <key>` for the current host key.
    pub known_hosts: PathBuf,
    /// An empty directory standing in for the credd's credential spool (mode 0755).
    pub spool: PathBuf,
    config: PathBuf,
    host_key: PathBuf,
    log: PathBuf,
    sftp_log: PathBuf,
    child: Option<ChildGuard>,
}

impl Sshd {
    /// Starts an sshd in `dir` (made traversable so that unprivileged test accounts can read
    /// the shared authorized_keys). Its log is registered with `leaks`: nothing delivered may
    /// show up there.
    pub fn start(dir: &Path, leaks: &Leaks) -> Sshd {
        Sshd::start_with(dir, leaks, true)
    }

    /// [`Sshd::start`] with SFTP served by the stock `sftp-server` as Debian's sshd_config has
    /// it, without the per-request debug log: for measurements, where that log would be part
    /// of what is measured. [`Sshd::sftp_log`] stays empty.
    pub fn start_quiet(dir: &Path, leaks: &Leaks) -> Sshd {
        Sshd::start_with(dir, leaks, false)
    }

    fn start_with(dir: &Path, leaks: &Leaks, sftp_debug_log: bool) -> Sshd {
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let host_key = dir.join("ssh_host_ed25519_key");
        let client_key = dir.join("client_ed25519");
        keygen(&host_key);
        keygen(&client_key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o644)).unwrap();
        let spool = dir.join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();

        let sftp_log = dir.join("sftp-server.log");
        // Written by sftp-server as whichever account logged in.
        std::fs::write(&sftp_log, "").unwrap();
        std::fs::set_permissions(&sftp_log, std::fs::Permissions::from_mode(0o666)).unwrap();
        leaks.path(&sftp_log);
        let sftp_wrapper = dir.join("sftp-server-logged");
        std::fs::write(
            &sftp_wrapper,
            format!("#!/bin/sh\nexec /usr/lib/openssh/sftp-server -e -l DEBUG3 2>>{}\n", sftp_log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&sftp_wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

        // Every session's HOME is this schedd's own (empty) directory, not the login account's
        // home on this machine: bash started by sshd reads `~/.bashrc`, and a developer's
        // (pyenv's init, ~0.2 CPU-s) would otherwise run at every exec and every SFTP session,
        // which a schedd's service shell does not do.
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PidFile {pid}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\n\
                 UseDNS no\n\
                 PrintMotd no\n\
                 LogLevel VERBOSE\n\
                 MaxStartups 100:30:200\n\
                 SetEnv PATH={bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME={home}\n\
                 Subsystem sftp {sftp}\n",
                bin = dir.join("bin").display(),
                home = home.display(),
                sftp = if sftp_debug_log { sftp_wrapper.display().to_string() } else { "/usr/lib/openssh/sftp-server".into() },
                host_key = host_key.display(),
                authorized = authorized.display(),
                pid = dir.join("sshd.pid").display(),
            ),
        )
        .unwrap();

        // Commands a test puts here (stand-ins for HTCondor's tools) are first on the PATH of
        // every session.
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::set_permissions(dir.join("bin"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = dir.join("sshd.log");
        leaks.path(&log);
        let mut sshd = Sshd {
            dir: dir.to_path_buf(),
            port: 0,
            client_key,
            known_hosts: dir.join("known_hosts"),
            spool,
            config,
            host_key,
            log,
            sftp_log,
            child: None,
        };
        // Another process on this shared machine may take the port between probe and bind.
        for _ in 0..5 {
            sshd.port = free_port(false);
            if sshd.launch() {
                sshd.write_known_hosts();
                return sshd;
            }
        }
        panic!("sshd did not start on any of 5 ports:\n{}", sshd.log_text());
    }

    /// A delivery target for `user` on this instance.
    pub fn target(&self, name: &str, user: &str) -> HostTarget {
        HostTarget {
            name: name.to_string(),
            address: "127.0.0.1".into(),
            port: self.port,
            user: user.to_string(),
            key_file: self.client_key.clone(),
            key_passphrase: None,
            known_hosts: self.known_hosts.clone(),
            timeout: Duration::from_secs(10),
        }
    }

    /// A second client key, encrypted with `passphrase`, authorized like the first.
    pub fn passphrase_key(&self, passphrase: &str) -> PathBuf {
        let key = self.dir.join("client_passphrase_ed25519");
        keygen_with(&key, passphrase);
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let mut authorized = std::fs::OpenOptions::new().append(true).open(self.dir.join("authorized_keys")).unwrap();
        std::io::Write::write_all(&mut authorized, public.as_bytes()).unwrap();
        key
    }

    /// The known_hosts line for the current host key.
    pub fn known_hosts_line(&self) -> String {
        let public = std::fs::read_to_string(self.host_key.with_extension("pub")).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("[127.0.0.1]:{} {kind} {key}\n", self.port)
    }

    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The listening sshd's pid; every connection's processes descend from it.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sshd running").pid()
    }

    /// Makes the next call of `command` (e.g. `getent`) on this host take `secs` seconds longer: a
    /// wrapper of that name, first on the PATH of every SSH session, sleeps once and then runs
    /// the real one. For tests that need a delivery in flight for a while.
    pub fn slow_down(&mut self, command: &str, secs: u32) {
        // `bin` is first on every session's PATH (the sshd's `SetEnv`).
        let bin = self.dir.join("bin");
        let wrapper = bin.join(command);
        // Only the first call sleeps (the marker directory is made atomically), so the delay
        // does not depend on how many times a delivery happens to run the command.
        let once = bin.join(format!(".{command}.slowed"));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nif mkdir {once} 2>/dev/null; then sleep {secs}; fi\nexec /usr/bin/env PATH=/usr/sbin:/usr/bin:/sbin:/bin {command} \"$@\"\n",
                once = once.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Serves SFTP through a stand-in that hides `posix-rename@openssh.com` (see
    /// `sftp_without_posix_rename.py`): a server without the extension. Restarts sshd.
    pub fn hide_posix_rename(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/harness/sftp_without_posix_rename.py");
        let wrapper = self.dir.join("sftp-server-logged");
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec /usr/bin/python3 {} {}\n", script.display(), self.sftp_log.display()))
            .unwrap();
        self.restart();
    }

    /// Makes each sftp-server process (one per SFTP channel) log to a file of its own in
    /// `sftp-logs/`, read with [`Sshd::sftp_logs_by_process`], instead of the shared log: to
    /// see which channel carried a request.
    pub fn log_sftp_per_process(&self, leaks: &Leaks) {
        let logs = self.dir.join("sftp-logs");
        std::fs::create_dir_all(&logs).unwrap();
        // Written by sftp-server as whichever account logged in.
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o1777)).unwrap();
        leaks.path(&logs);
        let wrapper = self.dir.join("sftp-server-logged");
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec /usr/lib/openssh/sftp-server -e -l DEBUG3 2>>{}/$$.log\n", logs.display())).unwrap();
    }

    /// What each sftp-server process logged, after [`Sshd::log_sftp_per_process`], in the order
    /// the processes started.
    pub fn sftp_logs_by_process(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("sftp-logs")) else { return Vec::new() };
        let mut logs: Vec<(std::time::SystemTime, String)> = entries
            .map(|e| {
                let path = e.unwrap().path();
                let meta = std::fs::metadata(&path).unwrap();
                (meta.created().or_else(|_| meta.modified()).unwrap(), std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        logs.sort_by_key(|(at, _)| *at);
        logs.into_iter().map(|(_, log)| log).collect()
    }

    /// Serves the next SFTP channel opened on this sshd with the real sftp-server and every
    /// later one with the hostile stand-in `sftp_hostile.py` in `mode`: in the next push, the
    /// second channel breaks the protocol and the first does not. Returns the file where the
    /// stand-in says what it did.
    pub fn hostile_second_sftp(&self, mode: &str) -> PathBuf {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/harness/sftp_hostile.py");
        let said = self.dir.join("sftp-hostile.log");
        let first = self.dir.join("sftp-first-opened");
        let _ = std::fs::remove_dir(&first);
        let wrapper = self.dir.join("sftp-server-logged");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nif mkdir {first} 2>/dev/null; then exec /usr/lib/openssh/sftp-server -e -l DEBUG3 2>>{log}; fi\nexec /usr/bin/python3 {script} {mode} {said}\n",
                first = first.display(),
                log = self.sftp_log.display(),
                script = script.display(),
                said = said.display(),
            ),
        )
        .unwrap();
        said
    }

    /// Allows at most `n` channels at once per connection (sshd's `MaxSessions`). Restarts sshd.
    pub fn limit_sessions(&mut self, n: u32) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(&format!("MaxSessions {n}\n"));
        std::fs::write(&self.config, config).unwrap();
        self.restart();
    }

    /// Stops and starts again on the same port (known_hosts stays as it is).
    pub fn restart(&mut self) {
        self.stop();
        // The old listener was killed and reaped; its socket is closed, so the port is free
        // unless something else grabbed it, which is a failure worth seeing.
        assert!(self.launch(), "sshd did not restart on port {}:\n{}", self.port, self.log_text());
    }

    /// Replaces the host key with a fresh one and restarts, leaving known_hosts with the old
    /// key: what a reinstalled host, or a man in the middle, looks like.
    pub fn regenerate_host_key(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.host_key);
        let _ = std::fs::remove_file(self.host_key.with_extension("pub"));
        keygen(&self.host_key);
        assert!(self.launch(), "sshd did not restart on port {}:\n{}", self.port, self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Everything sftp-server logged so far (every session, every account).
    pub fn sftp_log(&self) -> String {
        std::fs::read_to_string(&self.sftp_log).unwrap_or_default()
    }

    fn write_known_hosts(&self) {
        std::fs::write(&self.known_hosts, self.known_hosts_line()).unwrap();
    }

    /// Starts sshd on `self.port`; false if it exited before listening (port taken).
    fn launch(&mut self) -> bool {
        let before = self.log_text().len();
        let mut cmd = Command::new(SSHD);
        cmd.arg("-D").arg("-e").arg("-f").arg(&self.config).arg("-p").arg(self.port.to_string());
        let mut child = ChildGuard::spawn("sshd", cmd, &self.log);
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(_)) = child.child.try_wait() {
                exited = true;
                return true;
            }
            self.log_text()[before..].contains("Server listening")
        });
        if exited || !ready {
            child.stop();
            let log = self.log_text();
            assert!(
                log[before..].contains("Address already in use") || log[before..].contains("Cannot bind"),
                "sshd failed to start:\n{log}"
            );
            return false;
        }
        self.child = Some(child);
        true
    }
}

fn keygen(path: &Path) {
    keygen_with(path, "");
}

fn keygen_with(path: &Path, passphrase: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", "token-bastion-test", "-f"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
}
