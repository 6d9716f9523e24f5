//! A whole local stack for end-to-end tests of the `token-bastion` binary: OpenBao laid out like
//! HTVault with its stand-in JWT issuer, the product's state directory, and an inventory written
//! from the stack's real addresses. Tests add services, put access tokens where the broker hands
//! them out, and run the binary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::openbao::{JwtSpec, OpenBao, ServiceCreds};
use super::smtp::Smtp;
use super::sshd::Sshd;
use super::{run_product, Leaks};

/// The Vault issuer name (path segment) every stack uses.
pub const VAULT_ISSUER: &str = "cms";

/// The schedule floor every stack's product runs with: daemon tests schedule cycles seconds apart.
pub const TEST_SCHEDULE_FLOOR: &str = "1s";

/// One service as the test wants it in `services.yaml`.
#[derive(Clone, Debug)]
pub struct ServiceDef {
    pub name: String,
    pub account: String,
    pub role: String,
    pub required: Vec<String>,
    pub allowed: Option<Vec<String>>,
    pub audience: Option<String>,
    pub request_scopes: bool,
    pub min_access_lifetime: String,
    /// Raw YAML lines added to the service block (indented by the caller's intent: 4 spaces).
    pub extra: String,
}

impl ServiceDef {
    pub fn new(name: &str, required: &[&str]) -> ServiceDef {
        ServiceDef {
            name: name.into(),
            account: format!("acct{name}"),
            role: name.into(),
            required: required.iter().map(|s| s.to_string()).collect(),
            allowed: None,
            audience: None,
            request_scopes: true,
            min_access_lifetime: "15m".into(),
            extra: String::new(),
        }
    }
}

pub struct Stack<'l> {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub leaks: &'l Leaks,
    pub bao: OpenBao<'l>,
    pub creds: BTreeMap<String, ServiceCreds>,
    pub defs: BTreeMap<String, ServiceDef>,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// sshd "schedds", by inventory host name.
    pub hosts: BTreeMap<String, Sshd>,
    /// Raw YAML for each service's `destinations:` list, by service name (default: credd on
    /// every host).
    pub destinations: BTreeMap<String, String>,
    pub smtp: Option<Smtp>,
    /// Raw YAML added to the `notify:` section after `smtp` (e.g. `admins`).
    pub notify_extra: String,
    /// Top-level sections added to `services.yaml` as written (e.g. `delivery:`).
    pub sections_extra: String,
    /// `broker.url` in the inventory: OpenBao itself unless a test puts something in front.
    pub broker_url: String,
    /// Extra environment for the product's process (e.g. `KRB5_CONFIG`).
    pub env: Vec<(String, String)>,
}

impl<'l> Stack<'l> {
    pub fn new(leaks: &'l Leaks) -> Stack<'l> {
        let dir = tempfile::Builder::new().prefix("tb-stack-").tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let bao = OpenBao::start(&root.join("bao"), leaks);
        let state_dir = root.join("state");
        leaks.path(&state_dir);
        leaks.kept_tokens(&state_dir.join("vault"));
        leaks.kept_tokens(&state_dir.join("idtoken"));
        let broker_url = bao.addr().to_string();
        Stack {
            broker_url,
            // Test services may run seconds apart.
            env: vec![(token_bastion::inventory::SCHEDULE_FLOOR_ENV.into(), TEST_SCHEDULE_FLOOR.into())],
            _dir: dir,
            config: root.join("services.yaml"),
            root,
            leaks,
            bao,
            creds: BTreeMap::new(),
            defs: BTreeMap::new(),
            state_dir,
            hosts: BTreeMap::new(),
            destinations: BTreeMap::new(),
            smtp: None,
            notify_extra: String::new(),
            sections_extra: String::new(),
        }
    }

    /// Starts `n` sshd schedds named `schedd1`…`schedd<n>`.
    pub fn with_hosts(mut self, n: usize) -> Self {
        for i in 1..=n {
            self.add_host(&format!("schedd{i}"));
        }
        self
    }

    pub fn add_host(&mut self, name: &str) -> &Sshd {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let sshd = Sshd::start(&dir, self.leaks);
        self.hosts.insert(name.to_string(), sshd);
        &self.hosts[name]
    }

    pub fn host(&self, name: &str) -> &Sshd {
        &self.hosts[name]
    }

    pub fn host_mut(&mut self, name: &str) -> &mut Sshd {
        self.hosts.get_mut(name).unwrap()
    }

    /// Starts the SMTP sink and mails admins `oncall@example.org`.
    pub fn with_smtp(mut self) -> Self {
        let dir = self.root.join("smtp");
        std::fs::create_dir_all(&dir).unwrap();
        let smtp = Smtp::start(&dir, self.leaks);
        self.smtp = Some(smtp);
        self.notify_extra = "  admins: [oncall@example.org]\n".into();
        self
    }

    /// Adds a service: an AppRole in OpenBao and an entry in the inventory.
    pub fn add_service(&mut self, def: ServiceDef) -> &ServiceCreds {
        let creds = self.bao.add_service(&def.name, VAULT_ISSUER, &def.account, &def.role);
        let name = def.name.clone();
        self.defs.insert(name.clone(), def);
        self.creds.insert(name.clone(), creds);
        &self.creds[&name]
    }

    /// Mints a JWT with the stand-in issuer and stores it where the broker hands out the
    /// service's access token (the sts path when the service requests scopes or an audience).
    pub fn put_token(&self, service: &str, spec: &JwtSpec) -> String {
        let def = &self.defs[service];
        let jwt = self.bao.mint_jwt(spec);
        let sts = def.request_scopes && !def.required.is_empty() || def.audience.is_some();
        let exp = chrono::Utc::now() + chrono::Duration::from_std(spec.ttl).unwrap();
        self.bao.put_access_token(VAULT_ISSUER, &def.account, &def.role, sts, &jwt, Some(exp));
        jwt
    }

    /// Writes `services.yaml` from the stack's state.
    pub fn write_inventory(&self) {
        let mut y = String::new();
        let ca = self.bao.ca_path();
        writeln!(y, "broker:").unwrap();
        writeln!(y, "  url: {}", self.broker_url).unwrap();
        writeln!(y, "  ca_file: {}", ca.display()).unwrap();
        writeln!(y, "  issuer: {VAULT_ISSUER}").unwrap();
        writeln!(y, "  vault_url: https://htvault.example:8200").unwrap();
        writeln!(y, "  timeout: 20s").unwrap();
        writeln!(y, "  auth:\n    method: approle").unwrap();
        writeln!(y, "    role_id_file: {}/{{service}}.role_id", self.bao.dir().display()).unwrap();
        writeln!(y, "    secret_id_file: {}/{{service}}.secret_id", self.bao.dir().display()).unwrap();
        writeln!(y, "issuers:\n  bao:").unwrap();
        writeln!(y, "    url: {}", self.bao.issuer_url()).unwrap();
        writeln!(y, "    ca_file: {}", ca.display()).unwrap();
        writeln!(y, "hosts:").unwrap();
        if self.hosts.is_empty() {
            // The inventory needs a host; tests that never reach delivery never connect to it.
            writeln!(y, "  unused:\n    address: 127.0.0.1\n    port: 1\n    user: root").unwrap();
            writeln!(y, "    key_file: {}/no-key\n    known_hosts: {}/no-known-hosts", self.root.display(), self.root.display()).unwrap();
            writeln!(y, "    spool: /nonexistent").unwrap();
        }
        for (name, h) in &self.hosts {
            writeln!(y, "  {name}:\n    address: 127.0.0.1\n    port: {}\n    user: root", h.port).unwrap();
            writeln!(y, "    key_file: {}\n    known_hosts: {}", h.client_key.display(), h.known_hosts.display()).unwrap();
            writeln!(y, "    spool: {}\n    timeout: 10s", h.spool.display()).unwrap();
        }
        if let Some(smtp) = &self.smtp {
            writeln!(y, "notify:\n  smtp:\n    host: 127.0.0.1\n    port: {}\n    tls: none\n    from: token-bastion@example.org", smtp.port).unwrap();
            y.push_str(&self.notify_extra);
        }
        y.push_str(&self.sections_extra);
        writeln!(y, "defaults:\n  min_vault_lifetime: 10m\n  expiry_warning: 10m").unwrap();
        writeln!(y, "services:").unwrap();
        for def in self.defs.values() {
            writeln!(y, "  {}:", def.name).unwrap();
            writeln!(y, "    account: {}", def.account).unwrap();
            writeln!(y, "    role: {}", def.role).unwrap();
            writeln!(y, "    required: [{}]", def.required.join(", ")).unwrap();
            if let Some(a) = &def.allowed {
                writeln!(y, "    allowed: [{}]", a.join(", ")).unwrap();
            }
            if let Some(a) = &def.audience {
                writeln!(y, "    audience: {a}").unwrap();
            }
            writeln!(y, "    request_scopes: {}", def.request_scopes).unwrap();
            writeln!(y, "    min_access_lifetime: {}", def.min_access_lifetime).unwrap();
            writeln!(y, "    owners: [{}-owner@example.org]", def.name).unwrap();
            y.push_str(&def.extra);
            match self.destinations.get(&def.name) {
                Some(d) => y.push_str(d),
                None => {
                    let hosts: Vec<&str> = if self.hosts.is_empty() { vec!["unused"] } else { self.hosts.keys().map(String::as_str).collect() };
                    writeln!(y, "    destinations:\n      - credd:\n          hosts: [{}]", hosts.join(", ")).unwrap()
                }
            }
        }
        std::fs::write(&self.config, y).unwrap();
        // What `check` accepts must give the credmon a vault_url it accepts.
        let floor = humantime::parse_duration(TEST_SCHEDULE_FLOOR).unwrap();
        if let Ok(inv) = token_bastion::inventory::parse_bytes(&self.config, &std::fs::read(&self.config).unwrap(), floor) {
            for spec in inv.services.values() {
                let url = inv.top_vault_url(spec);
                assert!(credmon_accepts(&url), "the credmon would refuse {url} ({})", spec.name);
            }
        }
    }

    pub fn inventory_text(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap()
    }

    /// Runs the product against this stack's inventory and state directory.
    pub fn run(&self, label: &str, args: &[&str]) -> Output {
        let config = self.config.to_str().unwrap();
        let state = self.state_dir.to_str().unwrap();
        let mut all = vec!["--config", config, "--state-dir", state];
        all.extend_from_slice(args);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_product(self.leaks, label, &all, &env)
    }

    /// Starts the product like [`Stack::run`] without waiting for it (stdout and stderr piped),
    /// for a test that kills it; hand the child to [`Stack::reap`].
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut cmd = std::process::Command::new(super::product_bin());
        cmd.arg("--config").arg(&self.config).arg("--state-dir").arg(&self.state_dir).args(args);
        cmd.env("NO_COLOR", "1").env_remove("RUST_LOG").envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).stdin(std::process::Stdio::null());
        cmd.spawn().expect("start token-bastion")
    }

    /// Waits for a child from [`Stack::spawn`] and records its output for the leak check.
    pub fn reap(&self, label: &str, child: std::process::Child) -> Output {
        let out = child.wait_with_output().expect("wait for token-bastion");
        self.leaks.record_output(label, &out);
        out
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Whether the Vault credmon accepts `url` as a `.top` file's `vault_url`, restated from
/// HTCondor's `VaultCredmon.request_url` (urllib3's `parse_url`): scheme `https`, port 8200,
/// a path starting `/v1`. Written apart from the product's own check on purpose.
pub fn credmon_accepts(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else { return false };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let port = host_port.rsplit_once(':').map(|(_, p)| p);
    let path = tail.split(['?', '#']).next().unwrap_or_default();
    port.is_some_and(|p| p.parse::<u32>() == Ok(8200)) && path.starts_with("/v1")
}

/// stdout and stderr of a run, for assertion messages.
pub fn shown(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
