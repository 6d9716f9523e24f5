//! A throw-away MIT Kerberos realm (a real `krb5kdc`) and the stand-in for HTVault's Kerberos
//! login in front of the real OpenBao.
//!
//! Owns: a per-test realm [`REALM`] in its own directory (`krb5.conf`, `kdc.conf`, database made
//! with `kdb5_util create -s`), principals and keytabs made with `kadmin.local`, and `krb5kdc -n`
//! on a loopback port chosen at run time, killed on drop. The product reaches it only through
//! `KRB5_CONFIG` set on the product's own process ([`Kdc::product_env`]).
//!
//! [`NegotiateStandIn`] is a **stand-in**: OpenBao has no Kerberos auth plugin, so a small Python
//! server (`negotiate_standin.py`, Debian's `python3-gssapi`) verifies the SPNEGO token with the
//! real `host/<vault host>` keytab and answers with a *real* OpenBao token the harness created
//! with the service's policy; it forwards every other request to OpenBao, so the product keeps one
//! broker URL as in production and everything after the login runs against the real server.
//!
//! Key material never leaves this directory: every long-term key's hex (from `klist -K`) is
//! registered with [`Leaks`], and so is every Negotiate token the stand-in received
//! ([`NegotiateStandIn::register_seen_tokens`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::openbao::OpenBao;
use super::{ChildGuard, Leaks, free_port, wait_until};

/// The realm every test KDC serves.
pub const REALM: &str = "TB.TEST";

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A running KDC for [`REALM`]. Dropping it kills `krb5kdc`.
pub struct Kdc<'l> {
    child: ChildGuard,
    dir: PathBuf,
    port: u16,
    leaks: &'l Leaks,
}

impl<'l> Kdc<'l> {
    pub fn start(dir: &Path, leaks: &'l Leaks) -> Kdc<'l> {
        std::fs::create_dir_all(dir).unwrap();
        let master = random_hex(16);
        leaks.secret(&master);
        let mut last_log = String::new();
        // A port free when probed can be taken before krb5kdc binds it (shared machine): retry.
        for attempt in 0..4 {
            let port = free_port(false);
            write_configs(dir, port);
            if attempt == 0 {
                let out = kdc_command(dir, "/usr/sbin/kdb5_util").args(["create", "-s", "-r", REALM, "-P", &master]).output().expect("run kdb5_util");
                assert!(out.status.success(), "kdb5_util create: {}", String::from_utf8_lossy(&out.stderr));
            }
            let log = dir.join(format!("krb5kdc-{attempt}.log"));
            let mut cmd = kdc_command(dir, "/usr/sbin/krb5kdc");
            cmd.args(["-n", "-r", REALM]);
            let mut child = ChildGuard::spawn("krb5kdc", cmd, &log);
            let up = wait_until(Duration::from_secs(10), || {
                matches!(child.child.try_wait(), Ok(Some(_))) || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up && child.child.try_wait().ok().flatten().is_none() {
                return Kdc { child, dir: dir.to_path_buf(), port, leaks };
            }
            last_log = child.log_text();
            child.stop();
        }
        panic!("krb5kdc did not start on any of 4 ports; last log:\n{last_log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The client configuration the product must read (`KRB5_CONFIG`).
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.join("krb5.conf")
    }

    /// Environment for the product's process: this realm's configuration, and a process-wide
    /// credential cache that must stay unused (each service has its own).
    pub fn product_env(&self) -> Vec<(String, String)> {
        vec![
            ("KRB5_CONFIG".into(), self.krb5_conf().display().to_string()),
            ("KRB5CCNAME".into(), format!("FILE:{}", self.process_ccache().display())),
            ("KRB5_CLIENT_KTNAME".into(), format!("FILE:{}", self.dir.join("process-wide.keytab").display())),
        ]
    }

    /// The `KRB5CCNAME` given to the product: a login that used it would leave it behind.
    pub fn process_ccache(&self) -> PathBuf {
        self.dir.join("process-wide.ccache")
    }

    /// Runs one `kadmin.local` query; panics with its output on failure.
    pub fn kadmin(&self, query: &str) -> String {
        let out = kdc_command(&self.dir, "/usr/sbin/kadmin.local").args(["-r", REALM, "-q", query]).output().expect("run kadmin.local");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // kadmin.local exits 0 even when the query failed; MIT's messages read "...: X while Y".
        assert!(out.status.success() && !text.contains(" while "), "kadmin.local -q {query:?}:\n{text}");
        text
    }

    /// Adds `name@REALM` with random keys and returns the full principal.
    pub fn add_principal(&self, name: &str) -> String {
        let principal = format!("{name}@{REALM}");
        self.kadmin(&format!("addprinc -randkey {principal}"));
        principal
    }

    /// Writes the principal's keys to a keytab (mode 0600). Exporting gives the principal new
    /// random keys, so an earlier keytab of the same principal goes stale.
    pub fn export_keytab(&self, principal: &str, keytab: &Path) {
        if let Some(parent) = keytab.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        self.kadmin(&format!("ktadd -k {} {principal}", keytab.display()));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(keytab, std::fs::Permissions::from_mode(0o600)).unwrap();
        for key in keytab_key_hexes(keytab) {
            self.leaks.secret(&key);
        }
    }

    /// New random keys for `principal`: every keytab exported before holds stale keys.
    pub fn rotate_keys(&self, principal: &str) {
        self.kadmin(&format!("cpw -randkey {principal}"));
    }
}

/// The long-term keys in a keytab, as `klist -K` prints them (hex, without `0x`).
pub fn keytab_key_hexes(keytab: &Path) -> Vec<String> {
    let out = Command::new("klist").args(["-k", "-t", "-K", "-e"]).arg(keytab).output().expect("run klist");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("(0x").skip(1).filter_map(|s| s.split(')').next()).map(str::to_string).collect()
}

/// The default principal of a credential cache, as `klist -c` reports it (`None`: no cache).
pub fn ccache_principal(ccache: &Path) -> Option<String> {
    let out = Command::new("klist").arg("-c").arg(format!("FILE:{}", ccache.display())).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("Default principal: ")).map(str::to_string)
}

fn kdc_command(dir: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("KRB5_CONFIG", dir.join("krb5.conf")).env("KRB5_KDC_PROFILE", dir.join("kdc.conf")).env_remove("KRB5CCNAME").current_dir(dir);
    cmd
}

/// `krb5.conf` and `kdc.conf` for [`REALM`] on `port`. Names are taken as written (no DNS, no
/// reverse lookups): `localhost` stays `localhost` in `host/localhost`. Clients use TCP only.
fn write_configs(dir: &Path, port: u16) {
    let d = dir.display();
    std::fs::write(
        dir.join("krb5.conf"),
        format!(
            "[libdefaults]\n  default_realm = {REALM}\n  dns_lookup_kdc = false\n  dns_lookup_realm = false\n  dns_canonicalize_hostname = false\n  rdns = false\n  udp_preference_limit = 1\n  kdc_timeout = 5s\n  max_retries = 1\n\n[realms]\n  {REALM} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("kdc.conf"),
        format!(
            "[kdcdefaults]\n  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n\n[realms]\n  {REALM} = {{\n    database_name = {d}/principal\n    key_stash_file = {d}/stash\n    acl_file = {d}/kadm5.acl\n    kdc_listen = 127.0.0.1:{port}\n    kdc_tcp_listen = 127.0.0.1:{port}\n  }}\n\n[logging]\n  kdc = STDERR\n"
        ),
    )
    .unwrap();
}

/// One login the stand-in saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenLogin {
    pub mount: String,
    pub principal: String,
    pub granted: bool,
}

/// STAND-IN for HTVault's `kerberos-<issuer>_<role>` login (see the module docs). Dropping it
/// kills the server.
pub struct NegotiateStandIn {
    child: ChildGuard,
    dir: PathBuf,
    port: u16,
    host: String,
    logins: PathBuf,
    grants: std::sync::Mutex<BTreeMap<String, BTreeMap<String, Value>>>,
}

impl NegotiateStandIn {
    /// Starts the stand-in in `dir`, answering for `host/<host>@REALM` (a principal it creates in
    /// `kdc`), serving TLS with OpenBao's dev certificate (valid for localhost and 127.0.0.1, so
    /// the product trusts it with the same CA file) and forwarding to `bao`.
    pub fn start(dir: &Path, kdc: &Kdc, bao: &OpenBao, host: &str) -> NegotiateStandIn {
        std::fs::create_dir_all(dir).unwrap();
        let service = kdc.add_principal(&format!("host/{host}"));
        let keytab = dir.join("host.keytab");
        kdc.export_keytab(&service, &keytab);
        let logins = dir.join("logins.json");
        write_private(&logins, "{}");
        let seen = dir.join("seen-negotiate-tokens");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/harness/negotiate_standin.py");
        let mut last_log = String::new();
        for attempt in 0..4 {
            let port = free_port(false);
            let log = dir.join(format!("standin-{attempt}.log"));
            let mut cmd = Command::new("/usr/bin/python3");
            cmd.arg("-u")
                .arg(&script)
                .arg(format!("--listen=127.0.0.1:{port}"))
                .arg(format!("--cert={}", bao.dir().join("vault-cert.pem").display()))
                .arg(format!("--key={}", bao.dir().join("vault-key.pem").display()))
                .arg(format!("--upstream={}", bao.addr()))
                .arg(format!("--upstream-ca={}", bao.ca_path().display()))
                .arg(format!("--keytab={}", keytab.display()))
                .arg(format!("--logins={}", logins.display()))
                .arg(format!("--seen={}", seen.display()))
                .env("KRB5_CONFIG", kdc.krb5_conf())
                .env_remove("KRB5CCNAME")
                .env_remove("KRB5_KTNAME")
                .current_dir(dir);
            let mut child = ChildGuard::spawn("negotiate stand-in", cmd, &log);
            let ready = format!("stand-in listening on 127.0.0.1:{port} pid {}", child.pid());
            let up = wait_until(Duration::from_secs(10), || {
                matches!(child.child.try_wait(), Ok(Some(_))) || child.log_text().contains(&ready)
            });
            if up && child.child.try_wait().ok().flatten().is_none() {
                return NegotiateStandIn { child, dir: dir.to_path_buf(), port, host: host.into(), logins, grants: Default::default() };
            }
            last_log = child.log_text();
            child.stop();
        }
        panic!("the Negotiate stand-in did not start; last log:\n{last_log}");
    }

    /// `https://<host>:<port>`: what the product's `broker.url` is set to.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    /// The same server by IP address (its certificate covers 127.0.0.1 too).
    pub fn url_by_ip(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Lets `principal` log in on `mount` and be handed `token` (a real OpenBao token).
    pub fn grant(&self, mount: &str, principal: &str, token: &str, lease: Duration, policies: &[&str]) {
        let mut grants = self.grants.lock().unwrap();
        grants.entry(mount.to_string()).or_default().insert(
            principal.to_string(),
            json!({"token": token, "lease_duration": lease.as_secs(), "policies": policies}),
        );
        write_private(&self.logins, &serde_json::to_string(&*grants).unwrap());
    }

    /// Every Kerberos login attempt that carried a token the acceptor verified.
    pub fn logins_seen(&self) -> Vec<SeenLogin> {
        self.child
            .log_text()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("login mount=")?;
                let (mount, rest) = rest.split_once(" principal=")?;
                let (principal, granted) = rest.split_once(" granted=")?;
                Some(SeenLogin { mount: mount.into(), principal: principal.into(), granted: granted == "True" })
            })
            .collect()
    }

    /// Registers every Negotiate token received so far with `leaks`: a captured one could be
    /// replayed, so the product must never print it.
    pub fn register_seen_tokens(&self, leaks: &Leaks) {
        let text = std::fs::read_to_string(self.dir.join("seen-negotiate-tokens")).unwrap_or_default();
        for token in text.lines() {
            leaks.secret(token);
        }
        for token in self.issued_all() {
            leaks.secret(&token);
        }
    }

    fn issued_lines(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(self.dir.join("issued-tokens")).unwrap_or_default();
        text.lines().filter_map(|l| l.split_once(' ')).map(|(m, t)| (m.to_string(), t.to_string())).collect()
    }

    fn issued_all(&self) -> Vec<String> {
        self.issued_lines().into_iter().map(|(_, t)| t).collect()
    }

    /// The OpenBao tokens handed out by logins on `mount`, oldest first (each login mints its
    /// own, a child of the granted token).
    pub fn issued(&self, mount: &str) -> Vec<String> {
        self.issued_lines().into_iter().filter(|(m, _)| m == mount).map(|(_, t)| t).collect()
    }

    pub fn log_text(&self) -> String {
        self.child.log_text()
    }
}
