//! The shared test harness: starts real peers on 127.0.0.1 with ports chosen at run time, each in
//! a per-test temp dir, and kills them on drop. After a test, [`Leaks`] greps everything the
//! product wrote or printed for every secret the harness minted.

#![allow(dead_code)]

pub mod smtp;

use std::collections::HashSet;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod bao_http;
pub mod delay_proxy;
pub mod condor;
pub mod hostile;
pub mod credmon;
pub mod kdc;
pub mod measure;
pub mod openbao;
pub mod proxy;
pub mod pushgateway;
pub mod stack;
pub mod webhook;
pub mod tokens;

/// The product binary under test: the one cargo built for the integration tests, or, for the
/// local-stack example (which shares this harness), the one beside the example's own directory.
pub fn product_bin() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_token-bastion") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("own executable path");
    // target/<profile>/examples/<example> → target/<profile>/token-bastion
    exe.parent().and_then(|p| p.parent()).map(|p| p.join("token-bastion")).expect("target directory")
}

/// Ports handed out in this process, so parallel tests never get the same one twice.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free loopback port. `pair` also requires PORT+1 to be free (OpenBao binds its cluster
/// listener there). Bounded: gives up after 200 tries.
pub fn free_port(pair: bool) -> u16 {
    let mut taken = handed_out().lock().unwrap();
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port >= 65534 || taken.contains(&port) || (pair && taken.contains(&(port + 1))) {
            continue;
        }
        if pair && !port_is_free(port + 1) {
            continue;
        }
        taken.insert(port);
        if pair {
            taken.insert(port + 1);
        }
        return port;
    }
    panic!("no free loopback port found after 200 tries");
}

/// Polls `probe` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process that is killed (and reaped) when the guard drops.
pub struct ChildGuard {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> ChildGuard {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdout(out).stderr(err).stdin(std::process::Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard { name: name.to_string(), child, log: log.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process's log contains `needle`; panics with the log if it exits or the
    /// timeout passes first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let ok = wait_until(timeout, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before ready:\n{}", self.name, self.log_text());
            }
            self.log_text().contains(needle)
        });
        assert!(ok, "{} not ready after {timeout:?}:\n{}", self.name, self.log_text());
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes (with `openssl`) a throw-away CA `<dir>/<name>-ca.pem` and an EC P-256 certificate
/// `<dir>/<name>.pem` with key `<dir>/<name>.key` (mode 0600) it signed, for `leaf_subject` with
/// the X.509 extensions `ext` (one `key=value` a line): (CA, certificate, key).
pub fn make_ca_and_leaf(dir: &Path, name: &str, ca_subject: &str, leaf_subject: &str, ext: &str) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let p = |suffix: &str| dir.join(format!("{name}{suffix}"));
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (ca_key, ca, key, csr, cert, ext_file) = (p("-ca.key"), p("-ca.pem"), p(".key"), p(".csr"), p(".pem"), p(".ext"));
    let [ca_key_s, ca_s, key_s, csr_s, cert_s, ext_s] = [&ca_key, &ca, &key, &csr, &cert, &ext_file].map(|p| p.display().to_string());
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", &ca_key_s, "-out", &ca_s, "-days", "1", "-subj", ca_subject]);
    openssl(&args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key_s, "-out", &csr_s, "-subj", leaf_subject]);
    openssl(&args);
    std::fs::write(&ext_file, ext).unwrap();
    openssl(&["x509", "-req", "-in", &csr_s, "-CA", &ca_s, "-CAkey", &ca_key_s, "-CAcreateserial", "-out", &cert_s, "-days", "1", "-extfile", &ext_s]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (ca, cert, key)
}

/// Every secret the harness minted for one test, and every place the product may have written
/// or printed one. `assert_clean` fails the test if any secret appears anywhere.
#[derive(Default)]
pub struct Leaks {
    secrets: Mutex<Vec<String>>,
    texts: Mutex<Vec<(String, String)>>,
    paths: Mutex<Vec<PathBuf>>,
    kept: Mutex<Vec<PathBuf>>,
}

impl Leaks {
    /// Remembers a secret to look for. Very short strings are ignored (they would match noise).
    pub fn secret(&self, s: &str) {
        let s = s.trim();
        if s.len() >= PREFIX {
            self.secrets.lock().unwrap().push(s.to_string());
        }
    }

    /// Remembers text the product printed (stdout, stderr, a mail body) under a label.
    pub fn text(&self, label: &str, text: &str) {
        self.texts.lock().unwrap().push((label.to_string(), text.to_string()));
    }

    /// Remembers a file or a directory tree the product wrote that must hold no secret (logs,
    /// state DB, mail spool). Token files delivered on purpose must not be registered.
    pub fn path(&self, p: &Path) {
        self.paths.lock().unwrap().push(p.to_path_buf());
    }

    /// A directory where the product keeps tokens on purpose (its state directory's `vault/`):
    /// not searched, but every file in it must be mode 0600 or stricter.
    pub fn kept_tokens(&self, p: &Path) {
        self.kept.lock().unwrap().push(p.to_path_buf());
    }

    pub fn record_output(&self, label: &str, out: &Output) {
        self.text(&format!("{label} stdout"), &String::from_utf8_lossy(&out.stdout));
        self.text(&format!("{label} stderr"), &String::from_utf8_lossy(&out.stderr));
    }

    fn files_under(p: &Path, acc: &mut Vec<PathBuf>) {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    Self::files_under(&e.path(), acc);
                }
            }
        } else if p.is_file() {
            acc.push(p.to_path_buf());
        }
    }

    /// Panics naming the place (never the secret) if any minted secret appears in any recorded
    /// text or file.
    pub fn assert_clean(&self) {
        let secrets = self.secrets.lock().unwrap().clone();
        let mut found = Vec::new();
        for (label, text) in self.texts.lock().unwrap().iter() {
            for (i, s) in secrets.iter().enumerate() {
                if text.contains(s.as_str()) {
                    found.push(format!("secret #{i} in {label}"));
                }
            }
        }
        let mut files = Vec::new();
        for p in self.paths.lock().unwrap().iter() {
            Self::files_under(p, &mut files);
        }
        let kept = self.kept.lock().unwrap().clone();
        let mut kept_files = Vec::new();
        for p in &kept {
            Self::files_under(p, &mut kept_files);
        }
        for f in &kept_files {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(f).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
            if mode & 0o077 != 0 {
                found.push(format!("kept token file {} has mode {mode:o}", f.display()));
            }
        }
        files.retain(|f| !kept.iter().any(|k| f.starts_with(k)));
        // One pass per file, looking up each position's first bytes among the secrets' (every
        // secret is at least 8 bytes): long runs leave logs and databases too large to search
        // once per secret.
        let mut by_prefix: std::collections::HashMap<&[u8], Vec<usize>> = std::collections::HashMap::new();
        for (i, s) in secrets.iter().enumerate() {
            by_prefix.entry(&s.as_bytes()[..PREFIX]).or_default().push(i);
        }
        for f in files {
            let mut bytes = Vec::new();
            if std::fs::File::open(&f).and_then(|mut h| h.read_to_end(&mut bytes)).is_err() {
                continue;
            }
            let mut hits = std::collections::BTreeSet::new();
            for at in 0..bytes.len().saturating_sub(PREFIX - 1) {
                for &i in by_prefix.get(&bytes[at..at + PREFIX]).into_iter().flatten() {
                    if bytes[at..].starts_with(secrets[i].as_bytes()) {
                        hits.insert(i);
                    }
                }
            }
            found.extend(hits.into_iter().map(|i| format!("secret #{i} in {}", f.display())));
        }
        assert!(found.is_empty(), "minted secrets leaked: {found:?}");
    }
}

/// The shortest secret the leak check looks for.
const PREFIX: usize = 8;

/// Runs the product with `args`, the given extra environment, and records its output for the
/// leak check.
pub fn run_product(leaks: &Leaks, label: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(product_bin());
    cmd.args(args).env("NO_COLOR", "1").env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run token-bastion");
    leaks.record_output(label, &out);
    out
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn leak_check_finds_a_secret_in_a_file_and_in_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.db"), b"xx hvs.SECRETSECRET yy").unwrap();
        let leaks = Leaks::default();
        leaks.secret("hvs.SECRETSECRET");
        leaks.path(dir.path());
        let caught = std::panic::catch_unwind(|| leaks.assert_clean());
        assert!(caught.is_err(), "a secret in a registered file must be caught");

        let leaks = Leaks::default();
        leaks.secret("eyJsecretjwt.payload");
        leaks.text("stderr", "clean line");
        leaks.assert_clean();
        leaks.text("stderr", "oops eyJsecretjwt.payload");
        assert!(std::panic::catch_unwind(|| leaks.assert_clean()).is_err());
    }

    #[test]
    fn ports_are_not_handed_out_twice() {
        let a = free_port(true);
        let b = free_port(true);
        assert_ne!(a, b);
        assert_ne!(a + 1, b);
        assert_ne!(a, b + 1);
    }
}
pub mod sshd;
