//! The Vault token broker (HTVault: Vault or OpenBao in front of the IAM issuer), as the
//! reference client `htgettoken` speaks to it.
//!
//! Owns every request to Vault: login (Kerberos/SPNEGO, TLS client certificate, AppRole, an
//! existing token file), token housekeeping (`lookup-self`, child tokens,
//! `revoke-self`) and reading access tokens from the `creds` / `sts` paths. This is the only module
//! that knows Vault's paths, headers and JSON shapes; callers get typed values back.
//!
//! The SPNEGO token itself comes from [`crate::kerberos`], which alone knows GSSAPI; the client
//! certificate is loaded by [`crate::http`].
//!
//! It must never put a token, a secret_id, a role_id or a Negotiate token into an error, a log line or a `Debug`
//! output: they travel as [`Secret`] and only leave the process in a request header or body.
//! Errors name the method, the request path (never its query, never a token), the HTTP status and
//! Vault's own error text. It logs nothing above debug level: errors are returned, and logged once
//! by whoever handles them.
//!
//! Requests are paced ([`pace`]): a bound on those in flight, an optional start rate, and a
//! bounded, jittered repeat of what is safe to repeat (reads, and anything the broker declined
//! with 429 or 503 or that never left). A login or a child creation that was sent and not
//! answered is never repeated: [`BrokerError::outcome_unknown`] says so. A repeat still waiting
//! when the client's cancellation token fires (shutdown) is not made.

pub mod pace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::http::{self, BodyError, CaSource, ClientCertificate, HttpError};
use crate::redact;
use crate::kerberos::{self, KerberosError};
use crate::secret::Secret;

/// Where the broker is and how far to trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Base URL, e.g. `https://htvault.cern.ch:8200`; `/v1/...` is appended to its path.
    pub url: url::Url,
    pub ca: CaSource,
    /// Vault issuer name: the `<issuer>` path segment (e.g. `cms`), not the JWT `iss` URL.
    pub issuer: String,
    /// Bound on connecting and on every whole request.
    pub timeout: Duration,
    /// Requests in flight and started per second at most.
    pub limits: pace::Limits,
}

/// How the bastion proves itself to Vault. Holds only paths: the secrets stay on disk until a
/// login reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// `POST /v1/auth/<mount>/login`, empty body, `Authorization: Negotiate <SPNEGO token>` for
    /// the service `host@<host>`: stock HTVault's login for services, mount
    /// `kerberos-<issuer>_<role>`. The principal's keys come from `keytab`; its tickets live in
    /// `ccache`, the service's own credential cache, so that services never share tickets.
    Kerberos {
        principal: String,
        keytab: PathBuf,
        /// Absolute, or relative to a directory the caller names with
        /// [`AuthMethod::with_ccache_under`] (the state directory).
        ccache: PathBuf,
        mount: String,
        /// The host in the service name, when it is not the broker URL's host: Vault's keytab
        /// holds `host/<its canonical name>`, and the bastion may reach it by another name (a
        /// load-balancer alias, an IP address, a tunnel to localhost).
        spn_host: Option<String>,
    },
    /// `POST /v1/auth/<mount>/login` over a TLS connection presenting this client certificate;
    /// body `{"name": <cert role>}` when a role is named (else Vault tries every role).
    Cert { cert_file: PathBuf, key_file: PathBuf, mount: String, name: Option<String> },
    /// `POST /v1/auth/<mount>/login` with `role_id` and `secret_id` read from files.
    AppRole { mount: String, role_id_file: PathBuf, secret_id_file: PathBuf },
    /// An existing Vault token (e.g. `/tmp/vt_u<uid>`), proven good with `lookup-self`.
    TokenFile { path: PathBuf },
}

impl AuthMethod {
    /// The AppRole mount Vault enables by default.
    pub const DEFAULT_APPROLE_MOUNT: &'static str = "approle";
    /// The mount `bao auth enable cert` / `vault auth enable cert` creates.
    pub const DEFAULT_CERT_MOUNT: &'static str = "cert";

    /// htvault-config's Kerberos mount for a Vault issuer and role: `kerberos-<issuer>_<role>`.
    pub fn kerberos_mount(issuer: &str, role: &str) -> String {
        format!("kerberos-{issuer}_{role}")
    }

    /// This method with a relative Kerberos `ccache` placed under `dir`; anything else unchanged.
    pub fn with_ccache_under(&self, dir: &Path) -> AuthMethod {
        match self {
            AuthMethod::Kerberos { principal, keytab, ccache, mount, spn_host } if ccache.is_relative() => AuthMethod::Kerberos {
                principal: principal.clone(),
                keytab: keytab.clone(),
                ccache: dir.join(ccache),
                mount: mount.clone(),
                spn_host: spn_host.clone(),
            },
            other => other.clone(),
        }
    }
}

/// A Vault token and what Vault said about it when it was handed out.
#[derive(Clone, Debug)]
pub struct VaultLogin {
    pub token: Secret,
    /// Lifetime left when it was issued (or looked up, for a token file).
    pub lease: Duration,
    pub policies: Vec<String>,
    pub renewable: bool,
}

/// `auth/token/lookup-self`: what Vault knows about a token now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Time left; zero for a token that never expires (root).
    pub ttl: Duration,
    /// `None` for a token that never expires.
    pub expire_time: Option<DateTime<Utc>>,
    pub policies: Vec<String>,
    pub renewable: bool,
}

/// Which access token to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRequest {
    /// The refresh-token key in Vault (htgettoken's `--credkey`, usually the account name).
    pub credkey: String,
    /// The issuer role; htgettoken's default is `"default"`.
    pub role: String,
    /// Requested scopes; any scope or audience switches to the token-exchange (`sts`) path.
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    /// Lifetime the token must still have, so a cached token that is about to expire is not
    /// handed back.
    pub minimum_seconds: u64,
}

impl AccessRequest {
    /// htgettoken's default role name.
    pub const DEFAULT_ROLE: &'static str = "default";

    fn is_exchange(&self) -> bool {
        !self.scopes.is_empty() || !self.audiences.is_empty()
    }
}

/// An access token as the broker handed it out (not yet validated).
#[derive(Clone, Debug)]
pub struct AccessTokenReply {
    pub token: Secret,
    /// `data.type`, e.g. `Bearer`.
    pub kind: String,
    pub expire_time: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker URL {url}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("broker HTTPS client: {0}")]
    Client(#[source] HttpError),
    #[error("cannot read the {what} file {path}: {source}")]
    ReadCredential { what: &'static str, path: PathBuf, #[source] source: std::io::Error },
    #[error("the {what} file {path} is empty")]
    EmptyCredential { what: &'static str, path: PathBuf },
    #[error("invalid broker request: {0}")]
    InvalidRequest(String),
    #[error("POST /v1/auth/{mount}/login: {source}")]
    Kerberos { mount: String, #[source] source: KerberosError },
    #[error("{method} {path}: no answer from the broker within {after:?}")]
    Timeout { method: Method, path: String, after: Duration },
    #[error("{method} {path}: cannot talk to the broker")]
    Transport { method: Method, path: String, #[source] source: reqwest::Error },
    /// 403: the Vault token is expired or revoked, or its policies do not allow the path.
    #[error("{method} {path}: permission denied by the broker (HTTP {status}): {errors} (Vault token expired, revoked, or missing the policy for this path)")]
    PermissionDenied { method: Method, path: String, status: u16, errors: String },
    #[error("{method} {path}: the broker answered HTTP {status}: {errors}")]
    Vault { method: Method, path: String, status: u16, errors: String },
    #[error("{method} {path}: unexpected reply (HTTP {status}): {reason}")]
    BadReply { method: Method, path: String, status: u16, reason: String },
    /// A request that may have taken effect (a login, a child creation) was sent and not
    /// answered: a token may exist that the bastion never saw (it expires with its TTL). Never
    /// repeated.
    #[error("{0}; the broker may have acted on it, so it was not repeated")]
    Unanswered(#[source] Box<BrokerError>),
    /// The reply was (or declared itself) larger than [`http::MAX_REPLY_BYTES`]; it was not read.
    #[error("{method} {path}: the broker's reply (HTTP {status}) is larger than the {} limit{}; not read", http::show_bytes(*.limit as u64), declared.map(|n| format!(" (it declares {})", http::show_bytes(n))).unwrap_or_default())]
    TooLarge { method: Method, path: String, status: u16, limit: usize, declared: Option<u64> },
    /// Shutdown's grace period ended while the request waited to be repeated (a 429/503 backoff,
    /// `Retry-After`): the attempts made were declined or never sent, so it did nothing.
    #[error("{method} {path}: shutting down: not sent (the grace period is over)")]
    Cancelled { method: Method, path: String },
}

impl BrokerError {
    /// The HTTP status Vault answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            BrokerError::Unanswered(e) => e.status(),
            BrokerError::PermissionDenied { status, .. }
            | BrokerError::Vault { status, .. }
            | BrokerError::BadReply { status, .. }
            | BrokerError::TooLarge { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The request path (`/v1/...`, without query) of a failed request.
    pub fn path(&self) -> Option<&str> {
        match self {
            BrokerError::Unanswered(e) => e.path(),
            BrokerError::Timeout { path, .. }
            | BrokerError::Transport { path, .. }
            | BrokerError::PermissionDenied { path, .. }
            | BrokerError::Vault { path, .. }
            | BrokerError::BadReply { path, .. }
            | BrokerError::TooLarge { path, .. }
            | BrokerError::Cancelled { path, .. } => Some(path),
            _ => None,
        }
    }

    /// True when shutdown stopped the request before it was repeated: nothing was done, and
    /// nothing more should start.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, BrokerError::Cancelled { .. })
    }

    /// True when Vault refused the token: the credmon deletes a `.top` whose token gets this, so
    /// such a token must never be delivered.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, BrokerError::PermissionDenied { .. })
    }

    /// True when a request that may have taken effect was sent and never answered: the
    /// bastion does not know whether a token was issued.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, BrokerError::Unanswered(_))
    }
}

/// The Vault client. Cheap to clone: the HTTP client is shared.
#[derive(Clone)]
pub struct Broker {
    http: reqwest::Client,
    /// Kept for clients that present a certificate, built per `cert` login.
    ca: CaSource,
    base: url::Url,
    issuer: String,
    timeout: Duration,
    /// Told how long each request took (metrics); never sees the request itself.
    timing: Option<Arc<dyn Fn(RequestKind, Duration) + Send + Sync>>,
    /// Shared by every clone: one bound and one rate for the whole client.
    pace: Arc<pace::Pacer>,
    /// Fired when shutdown's grace period ends: a request waiting to be repeated is not.
    cancel: CancellationToken,
}

/// What a broker request was for, as its duration is reported (the `request` metrics label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestKind {
    Login,
    LookupSelf,
    CreateChild,
    RevokeSelf,
    AccessToken,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Login => "login",
            RequestKind::LookupSelf => "lookup_self",
            RequestKind::CreateChild => "create_child",
            RequestKind::RevokeSelf => "revoke_self",
            RequestKind::AccessToken => "access_token",
        }
    }

    fn of(path: &str) -> RequestKind {
        if path.ends_with("/login") {
            RequestKind::Login
        } else if path.ends_with("/lookup-self") {
            RequestKind::LookupSelf
        } else if path.ends_with("/token/create") {
            RequestKind::CreateChild
        } else if path.ends_with("/revoke-self") {
            RequestKind::RevokeSelf
        } else {
            RequestKind::AccessToken
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("url", &self.base.as_str()).field("issuer", &self.issuer).finish()
    }
}

/// `/v1/<segments>` percent-encoded as a path, so a name can never add or escape a segment.
fn api_url(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().push("v1").extend(segments);
    }
    url
}

fn access_segments<'a>(issuer: &'a str, req: &AccessRequest, key: &'a str) -> [&'a str; 5] {
    let kind = if req.is_exchange() { "sts" } else { "creds" };
    ["secret", "oauth", kind, issuer, key]
}

/// The request path for an access token: `/v1/secret/oauth/creds/<issuer>/<credkey>:<role>`, or
/// `/v1/secret/oauth/sts/...` when scopes or audiences are asked for (token exchange).
pub fn access_path(issuer: &str, req: &AccessRequest) -> String {
    let base = url::Url::parse("https://broker.invalid/").expect("static URL parses");
    let key = format!("{}:{}", req.credkey, req.role);
    api_url(&base, &access_segments(issuer, req, &key)).path().to_string()
}

/// The query of an access-token request; scopes and audiences only when there are any.
fn access_query(req: &AccessRequest) -> Vec<(&'static str, String)> {
    let mut query = vec![("minimum_seconds", req.minimum_seconds.to_string())];
    if !req.scopes.is_empty() {
        query.push(("scopes", req.scopes.join(",")));
    }
    if !req.audiences.is_empty() {
        query.push(("audiences", req.audiences.join(",")));
    }
    query
}

/// The most of Vault's error text an error carries: enough to act on, not a whole page.
const MAX_ERROR_CHARS: usize = 512;

/// Vault's `{"errors":[...]}` as one bounded line. Every secret sent with the request (the
/// `X-Vault-Token`, a secret_id, a Negotiate token), and every other secret the process holds,
/// is blotted out in case a server or a proxy echoes it back.
fn vault_errors(body: &Value, sent: &[&Secret]) -> String {
    let mut text = match body.get("errors").and_then(Value::as_array) {
        Some(errors) if !errors.is_empty() => {
            errors.iter().map(|e| e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string())).collect::<Vec<_>>().join("; ")
        }
        _ => "(no error text)".to_string(),
    };
    for secret in sent {
        if !secret.is_empty() {
            text = text.replace(secret.expose(), redact::REDACTED);
        }
    }
    redact::excerpt(&redact::scrub(&text), MAX_ERROR_CHARS).into_owned()
}

/// A trimmed, non-empty secret from a file.
fn read_secret_file(what: &'static str, path: &Path) -> Result<Secret, BrokerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| BrokerError::ReadCredential { what, path: path.to_path_buf(), source })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(BrokerError::EmptyCredential { what, path: path.to_path_buf() });
    }
    Ok(Secret::new(value))
}

/// One request's identity, carried into every error it produces.
struct Call<'a> {
    method: Method,
    url: url::Url,
    path: String,
    sent: Vec<&'a Secret>,
    /// `Authorization: Negotiate <token>`, for a Kerberos login.
    negotiate: Option<&'a Secret>,
    /// A client of its own (presenting a certificate) instead of the broker's.
    client: Option<reqwest::Client>,
}

impl Call<'_> {
    fn bad_reply(&self, status: u16, reason: impl Into<String>) -> BrokerError {
        BrokerError::BadReply { method: self.method.clone(), path: self.path.clone(), status, reason: reason.into() }
    }
}

/// A successful reply: its status and JSON body (`Null` for 204).
struct Reply {
    status: u16,
    body: Value,
}

impl Broker {
    pub fn new(cfg: &BrokerConfig) -> Result<Broker, BrokerError> {
        let shown = {
            let mut u = cfg.url.clone();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        };
        let bad = |reason| BrokerError::BadUrl { url: shown.clone(), reason };
        if cfg.url.scheme() != "https" {
            return Err(bad("must be https://"));
        }
        if cfg.url.cannot_be_a_base() || cfg.url.host().is_none() {
            return Err(bad("has no host"));
        }
        if !cfg.url.username().is_empty() || cfg.url.password().is_some() {
            return Err(bad("must not carry credentials"));
        }
        if cfg.issuer.is_empty() {
            return Err(BrokerError::InvalidRequest("the Vault issuer name is empty".into()));
        }
        let http = http::client(&cfg.ca, cfg.timeout).map_err(BrokerError::Client)?;
        Ok(Broker {
            http,
            ca: cfg.ca.clone(),
            base: cfg.url.clone(),
            issuer: cfg.issuer.clone(),
            timeout: cfg.timeout,
            timing: None,
            pace: Arc::new(pace::Pacer::new(cfg.limits)),
            cancel: CancellationToken::new(),
        })
    }

    /// Gives up, with [`BrokerError::Cancelled`], a request waiting to be repeated (a 429/503
    /// backoff, `Retry-After`) once `cancel` fires: the attempt that was declined did nothing and
    /// no other is sent. First attempts and requests in flight are not affected.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Broker {
        self.cancel = cancel;
        self
    }

    /// Reports every request's duration (answered or not) to `timing`.
    pub fn with_timing(mut self, timing: Arc<dyn Fn(RequestKind, Duration) + Send + Sync>) -> Broker {
        self.timing = Some(timing);
        self
    }

    /// The Vault issuer name this broker reads access tokens for.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Requests made more than once so far (declined with 429/503, never sent, or reads left
    /// unanswered), by kind: the attempts beyond the first.
    pub fn repeats(&self) -> BTreeMap<RequestKind, u64> {
        self.pace.repeats()
    }

    pub async fn login(&self, auth: &AuthMethod) -> Result<VaultLogin, BrokerError> {
        match auth {
            AuthMethod::AppRole { mount, role_id_file, secret_id_file } => {
                let role_id = read_secret_file("role_id", role_id_file)?;
                let secret_id = read_secret_file("secret_id", secret_id_file)?;
                self.approle_login(mount, &role_id, &secret_id).await
            }
            AuthMethod::TokenFile { path } => {
                let token = read_secret_file("Vault token", path)?;
                let info = self.lookup_self(&token).await?;
                Ok(VaultLogin { token, lease: info.ttl, policies: info.policies, renewable: info.renewable })
            }
            AuthMethod::Kerberos { principal, keytab, ccache, mount, spn_host } => {
                let identity = kerberos::ClientIdentity { principal: principal.clone(), keytab: keytab.clone(), ccache: ccache.clone() };
                self.kerberos_login(mount, &identity, spn_host.as_deref()).await
            }
            AuthMethod::Cert { cert_file, key_file, mount, name } => {
                let certificate = ClientCertificate { cert_file, key_file };
                self.cert_login(mount, certificate, name.as_deref()).await
            }
        }
    }

    async fn kerberos_login(&self, mount: &str, identity: &kerberos::ClientIdentity, spn_host: Option<&str>) -> Result<VaultLogin, BrokerError> {
        let host = match spn_host {
            Some(h) => h.to_string(),
            // A URL host in brackets ([::1]) is no host name a KDC knows; take it bare.
            None => self.base.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string(),
        };
        let token = kerberos::negotiate(identity, &host, self.timeout)
            .await
            .map_err(|source| BrokerError::Kerberos { mount: mount.to_string(), source })?;
        let mut call = self.call(Method::POST, &["auth", mount, "login"]);
        call.negotiate = Some(&token);
        let reply = self.send(&call, None, &[], None).await?;
        parse_auth(&call, &reply)
    }

    async fn cert_login(&self, mount: &str, certificate: ClientCertificate<'_>, name: Option<&str>) -> Result<VaultLogin, BrokerError> {
        let mount = if mount.is_empty() { AuthMethod::DEFAULT_CERT_MOUNT } else { mount };
        let client = http::client_presenting(&self.ca, self.timeout, Some(certificate)).map_err(BrokerError::Client)?;
        let body = match name {
            Some(name) => serde_json::json!({ "name": name }),
            None => serde_json::json!({}),
        };
        let mut call = self.call(Method::POST, &["auth", mount, "login"]);
        call.client = Some(client);
        let reply = self.send(&call, None, &[], Some(&body)).await?;
        parse_auth(&call, &reply)
    }

    async fn approle_login(&self, mount: &str, role_id: &Secret, secret_id: &Secret) -> Result<VaultLogin, BrokerError> {
        let mount = if mount.is_empty() { AuthMethod::DEFAULT_APPROLE_MOUNT } else { mount };
        let body = serde_json::json!({ "role_id": role_id.expose(), "secret_id": secret_id.expose() });
        let mut call = self.call(Method::POST, &["auth", mount, "login"]);
        call.sent = vec![role_id, secret_id];
        let reply = self.send(&call, None, &[], Some(&body)).await?;
        parse_auth(&call, &reply)
    }

    pub async fn lookup_self(&self, token: &Secret) -> Result<TokenInfo, BrokerError> {
        let call = self.call(Method::GET, &["auth", "token", "lookup-self"]);
        let reply = self.send(&call, Some(token), &[], None).await?;
        let data = reply.body.get("data").filter(|d| d.is_object()).ok_or_else(|| call.bad_reply(reply.status, "no data"))?;
        let ttl = data.get("ttl").and_then(Value::as_u64).ok_or_else(|| call.bad_reply(reply.status, "no data.ttl"))?;
        let expire_time = match data.get("expire_time") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_time(&call, reply.status, "data.expire_time", v)?),
        };
        Ok(TokenInfo {
            ttl: Duration::from_secs(ttl),
            expire_time,
            policies: string_list(data.get("policies")),
            renewable: data.get("renewable").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    pub async fn access_token(&self, vault_token: &Secret, req: &AccessRequest) -> Result<AccessTokenReply, BrokerError> {
        for (what, value) in [("credkey", &req.credkey), ("role", &req.role)] {
            if value.is_empty() {
                return Err(BrokerError::InvalidRequest(format!("the {what} of an access-token request is empty")));
            }
        }
        let key = format!("{}:{}", req.credkey, req.role);
        let call = self.call(Method::GET, &access_segments(&self.issuer, req, &key));
        let reply = self.send(&call, Some(vault_token), &access_query(req), None).await?;
        let data = reply.body.get("data").filter(|d| d.is_object()).ok_or_else(|| call.bad_reply(reply.status, "no data"))?;
        let token = match data.get("access_token").and_then(Value::as_str) {
            Some(t) if !t.trim().is_empty() => Secret::new(t.trim()),
            _ => return Err(call.bad_reply(reply.status, "no data.access_token")),
        };
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("Bearer").to_string();
        let expire_time = match data.get("expire_time") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_time(&call, reply.status, "data.expire_time", v)?),
        };
        Ok(AccessTokenReply { token, kind, expire_time })
    }

    /// A non-renewable child of `parent`. Vault may grant less than `ttl` (role or system max);
    /// the child dies with its parent whatever its own TTL.
    pub async fn create_child(&self, parent: &Secret, ttl: Duration) -> Result<VaultLogin, BrokerError> {
        if ttl.as_secs() == 0 {
            // Vault reads a zero TTL as "the default", which can be far longer than asked for.
            return Err(BrokerError::InvalidRequest("a child token needs a TTL of at least one second".into()));
        }
        let body = serde_json::json!({ "ttl": format!("{}s", ttl.as_secs()), "renewable": "false" });
        let call = self.call(Method::POST, &["auth", "token", "create"]);
        let reply = self.send(&call, Some(parent), &[], Some(&body)).await?;
        parse_auth(&call, &reply)
    }

    pub async fn revoke_self(&self, token: &Secret) -> Result<(), BrokerError> {
        let call = self.call(Method::POST, &["auth", "token", "revoke-self"]);
        self.send(&call, Some(token), &[], None).await.map(|_| ())
    }

    fn report_timing(&self, call: &Call<'_>, started: Instant) {
        if let Some(timing) = &self.timing {
            timing(RequestKind::of(&call.path), started.elapsed());
        }
    }

    fn call<'a>(&self, method: Method, segments: &[&str]) -> Call<'a> {
        let url = api_url(&self.base, segments);
        Call { method, path: url.path().to_string(), url, sent: Vec::new(), negotiate: None, client: None }
    }

    /// Sends a request, in its turn ([`pace::Pacer::turn`]), as many times as [`pace::next_wait`]
    /// allows (a GET is safe to repeat; nothing else is once it may have been acted on), and
    /// turns anything but a 2xx JSON answer into a [`BrokerError`].
    async fn send(&self, call: &Call<'_>, token: Option<&Secret>, query: &[(&str, String)], body: Option<&Value>) -> Result<Reply, BrokerError> {
        let safe = call.method == Method::GET;
        let mut attempt = 1;
        let cancelled = || BrokerError::Cancelled { method: call.method.clone(), path: call.path.clone() };
        loop {
            // A first attempt goes out whatever happens (a revocation after a failed record must);
            // a repeat is never started past the grace period.
            let turn = if attempt == 1 {
                self.pace.turn().await
            } else {
                tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return Err(cancelled()),
                    turn = self.pace.turn() => turn,
                }
            };
            let (result, ended) = self.send_once(call, token, query, body).await;
            drop(turn);
            let Err(e) = result else { return result };
            let Some(wait) = pace::next_wait(safe, ended, attempt, rand::random::<f64>()) else {
                return Err(if ended == pace::Ended::Unanswered && !safe { BrokerError::Unanswered(Box::new(e)) } else { e });
            };
            tracing::debug!(method = %call.method, path = %call.path, attempt, wait_ms = wait.as_millis() as u64, error = %e, "broker request repeated");
            self.pace.count_repeat(RequestKind::of(&call.path));
            if !pace::backoff(wait, &self.cancel).await {
                return Err(cancelled());
            }
            attempt += 1;
        }
    }

    /// One attempt of [`Self::send`], and how it ended as far as repeating it goes.
    async fn send_once(&self, call: &Call<'_>, token: Option<&Secret>, query: &[(&str, String)], body: Option<&Value>) -> (Result<Reply, BrokerError>, pace::Ended) {
        let client = call.client.as_ref().unwrap_or(&self.http);
        // Whatever is sent may come back in an error text.
        let sent: Vec<&Secret> = call.sent.iter().copied().chain(token).chain(call.negotiate).collect();
        let mut request = client.request(call.method.clone(), call.url.clone());
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(token) = token {
            let Ok(mut value) = reqwest::header::HeaderValue::from_str(token.expose()) else {
                return (Err(BrokerError::InvalidRequest("the Vault token holds characters not allowed in a header".into())), pace::Ended::Answered);
            };
            value.set_sensitive(true);
            request = request.header("X-Vault-Token", value);
        }
        if let Some(negotiate) = call.negotiate {
            let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Negotiate {}", negotiate.expose())) else {
                return (Err(BrokerError::InvalidRequest("the Negotiate token holds characters not allowed in a header".into())), pace::Ended::Answered);
            };
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let outcome = request.send().await;
        let response = match outcome {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(method = %call.method, path = %call.path, elapsed_ms = started.elapsed().as_millis() as u64, "broker request failed");
                self.report_timing(call, started);
                let ended = if e.is_connect() { pace::Ended::NotSent } else { pace::Ended::Unanswered };
                return (Err(self.transport_error(call, e)), ended);
            }
        };
        let status = response.status();
        let ended = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => pace::Ended::Declined {
                retry_after: response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(pace::retry_after),
            },
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => pace::Ended::Unanswered,
            _ => pace::Ended::Answered,
        };
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| redact::excerpt(&String::from_utf8_lossy(v.as_bytes()), 80).into_owned());
        let bytes = http::read_body(response, http::MAX_REPLY_BYTES).await.map_err(|e| match e {
            BodyError::Read(source) => self.transport_error(call, source),
            BodyError::TooLarge { limit, declared } => BrokerError::TooLarge {
                method: call.method.clone(),
                path: call.path.clone(),
                status: status.as_u16(),
                limit,
                declared,
            },
        });
        self.report_timing(call, started);
        let bytes = match bytes {
            Ok(b) => b,
            Err(e @ BrokerError::TooLarge { .. }) => return (Err(e), ended),
            Err(e) => return (Err(e), pace::Ended::Unanswered),
        };
        tracing::debug!(method = %call.method, path = %call.path, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "broker request");
        let parsed: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) { Some(Value::Null) } else { serde_json::from_slice(&bytes).ok() };
        let not_json = || match &content_type {
            Some(t) => format!("the body ({} bytes, {t}) is not JSON", bytes.len()),
            None => format!("the body ({} bytes) is not JSON", bytes.len()),
        };
        (self.judge(call, &sent, status, parsed, not_json), ended)
    }

    /// A whole reply as a [`Reply`] or the [`BrokerError`] it amounts to.
    fn judge(&self, call: &Call<'_>, sent: &[&Secret], status: StatusCode, parsed: Option<Value>, not_json: impl Fn() -> String) -> Result<Reply, BrokerError> {
        if status.is_success() {
            let body = parsed.ok_or_else(|| call.bad_reply(status.as_u16(), not_json()))?;
            // E.g. "Endpoint ignored these unrecognized parameters: [minimum_seconds]" is how a
            // broker without the oauthapp plugin behind these paths gives itself away.
            if let Some(warnings) = body.get("warnings").and_then(Value::as_array).filter(|w| !w.is_empty()) {
                tracing::debug!(method = %call.method, path = %call.path, warnings = %vault_errors(&serde_json::json!({ "errors": warnings }), sent), "broker warnings");
            }
            return Ok(Reply { status: status.as_u16(), body });
        }
        let errors = match &parsed {
            Some(body) => vault_errors(body, sent),
            None => format!("({})", not_json()),
        };
        let (method, path, status) = (call.method.clone(), call.path.clone(), status.as_u16());
        if status == StatusCode::FORBIDDEN.as_u16() {
            Err(BrokerError::PermissionDenied { method, path, status, errors })
        } else {
            Err(BrokerError::Vault { method, path, status, errors })
        }
    }

    fn transport_error(&self, call: &Call<'_>, e: reqwest::Error) -> BrokerError {
        let (method, path) = (call.method.clone(), call.path.clone());
        if e.is_timeout() {
            BrokerError::Timeout { method, path, after: self.timeout }
        } else {
            // The URL adds nothing the path does not say, and its query is nobody's business.
            BrokerError::Transport { method, path, source: e.without_url() }
        }
    }
}

/// `auth.client_token` & co. of a login or token-create reply.
fn parse_auth(call: &Call<'_>, reply: &Reply) -> Result<VaultLogin, BrokerError> {
    let auth = reply.body.get("auth").filter(|a| a.is_object()).ok_or_else(|| call.bad_reply(reply.status, "no auth"))?;
    let token = match auth.get("client_token").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Secret::new(t),
        _ => return Err(call.bad_reply(reply.status, "no auth.client_token")),
    };
    let lease = auth.get("lease_duration").and_then(Value::as_u64).ok_or_else(|| call.bad_reply(reply.status, "no auth.lease_duration"))?;
    Ok(VaultLogin {
        token,
        lease: Duration::from_secs(lease),
        policies: string_list(auth.get("policies")),
        renewable: auth.get("renewable").and_then(Value::as_bool).unwrap_or(false),
    })
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default()
}

fn parse_time(call: &Call<'_>, status: u16, field: &str, v: &Value) -> Result<DateTime<Utc>, BrokerError> {
    let text = v.as_str().ok_or_else(|| call.bad_reply(status, format!("{field} is not a string")))?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| call.bad_reply(status, format!("{field} \"{}\" is not RFC 3339: {e}", redact::excerpt(&redact::scrub(text), 64))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_kinds_follow_the_path() {
        let check = |path: &str, kind| assert_eq!(RequestKind::of(path), kind, "{path}");
        check("/v1/auth/approle/login", RequestKind::Login);
        check("/v1/auth/kerberos-cms_prod/login", RequestKind::Login);
        check("/v1/auth/token/lookup-self", RequestKind::LookupSelf);
        check("/v1/auth/token/create", RequestKind::CreateChild);
        check("/v1/auth/token/revoke-self", RequestKind::RevokeSelf);
        check("/v1/secret/oauth/sts/cms/x:y", RequestKind::AccessToken);
    }

    fn request(scopes: &[&str], audiences: &[&str]) -> AccessRequest {
        AccessRequest {
            credkey: "wmagent".into(),
            role: AccessRequest::DEFAULT_ROLE.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            minimum_seconds: 1200,
        }
    }

    fn check(issuer: &str, req: &AccessRequest, path: &str, query: &[(&str, &str)]) {
        assert_eq!(access_path(issuer, req), path);
        let got: Vec<(&str, String)> = access_query(req);
        let want: Vec<(&str, String)> = query.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn plain_request_reads_the_creds_path() {
        check("cms", &request(&[], &[]), "/v1/secret/oauth/creds/cms/wmagent:default", &[("minimum_seconds", "1200")]);
    }

    #[test]
    fn scopes_or_audiences_switch_to_the_sts_path() {
        check(
            "cms",
            &request(&["storage.read:/store", "compute.create"], &[]),
            "/v1/secret/oauth/sts/cms/wmagent:default",
            &[("minimum_seconds", "1200"), ("scopes", "storage.read:/store,compute.create")],
        );
        check(
            "cms",
            &request(&[], &["https://wlcg.cern.ch/jwt/v1/any"]),
            "/v1/secret/oauth/sts/cms/wmagent:default",
            &[("minimum_seconds", "1200"), ("audiences", "https://wlcg.cern.ch/jwt/v1/any")],
        );
        check(
            "cms",
            &request(&["compute.read"], &["a", "b"]),
            "/v1/secret/oauth/sts/cms/wmagent:default",
            &[("minimum_seconds", "1200"), ("scopes", "compute.read"), ("audiences", "a,b")],
        );
    }

    #[test]
    fn names_cannot_add_path_segments() {
        let mut req = request(&[], &[]);
        req.credkey = "../../sys/x".into();
        req.role = "r?o#le".into();
        check("cm/s", &req, "/v1/secret/oauth/creds/cm%2Fs/..%2F..%2Fsys%2Fx:r%3Fo%23le", &[("minimum_seconds", "1200")]);
    }

    #[test]
    fn base_path_is_kept_and_query_dropped() {
        let base = url::Url::parse("https://vault.example:8200/prefix/?x=1").unwrap();
        assert_eq!(api_url(&base, &["auth", "token", "lookup-self"]).as_str(), "https://vault.example:8200/prefix/v1/auth/token/lookup-self");
        let bare = url::Url::parse("https://vault.example:8200").unwrap();
        assert_eq!(api_url(&bare, &["auth", "approle", "login"]).path(), "/v1/auth/approle/login");
    }

    #[test]
    fn vault_errors_are_joined_and_echoed_secrets_blotted_out() {
        let secret = Secret::new("s.SENDSECRETID");
        let body = serde_json::json!({"errors": ["permission denied", "bad s.SENDSECRETID here"]});
        assert_eq!(vault_errors(&body, &[&secret]), "permission denied; bad [redacted] here");
        assert_eq!(vault_errors(&serde_json::json!({"errors": []}), &[]), "(no error text)");
        assert_eq!(vault_errors(&Value::Null, &[]), "(no error text)");
    }

    #[test]
    fn errors_name_status_path_and_vault_text() {
        let e = BrokerError::PermissionDenied {
            method: Method::GET,
            path: "/v1/secret/oauth/creds/cms/wmagent:default".into(),
            status: 403,
            errors: "permission denied".into(),
        };
        let shown = e.to_string();
        assert!(shown.starts_with("GET /v1/secret/oauth/creds/cms/wmagent:default: permission denied by the broker (HTTP 403): permission denied"), "{shown}");
        assert_eq!(e.status(), Some(403));
        assert_eq!(e.path(), Some("/v1/secret/oauth/creds/cms/wmagent:default"));
        assert!(e.is_permission_denied());

        let e = BrokerError::Vault { method: Method::POST, path: "/v1/auth/approle/login".into(), status: 400, errors: "invalid role or secret ID".into() };
        assert_eq!(e.to_string(), "POST /v1/auth/approle/login: the broker answered HTTP 400: invalid role or secret ID");
        assert!(!e.is_permission_denied());
    }

    #[test]
    fn credential_files_are_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("secret_id");
        std::fs::write(&good, "  abc-123\n").unwrap();
        assert_eq!(read_secret_file("secret_id", &good).unwrap().expose(), "abc-123");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = read_secret_file("secret_id", &empty).unwrap_err();
        assert_eq!(e.to_string(), format!("the secret_id file {} is empty", empty.display()));

        let missing = dir.path().join("missing");
        let e = read_secret_file("role_id", &missing).unwrap_err();
        assert!(e.to_string().starts_with(&format!("cannot read the role_id file {}: ", missing.display())), "{e}");
    }

    #[test]
    fn debug_output_holds_no_token() {
        let login = VaultLogin { token: Secret::new("s.TOPSECRETTOKEN"), lease: Duration::from_secs(60), policies: vec!["p".into()], renewable: false };
        let reply = AccessTokenReply { token: Secret::new("eyJTOPSECRET.jwt.sig"), kind: "Bearer".into(), expire_time: None };
        let shown = format!("{login:?} {reply:?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
    }

    #[test]
    fn plain_http_and_credentials_in_the_url_are_refused() {
        let cfg = |u: &str| BrokerConfig { url: url::Url::parse(u).unwrap(), ca: CaSource::System, issuer: "cms".into(), timeout: Duration::from_secs(5), limits: Default::default() };
        assert!(matches!(Broker::new(&cfg("http://vault:8200")), Err(BrokerError::BadUrl { .. })));
        let e = Broker::new(&cfg("https://user:hunter2pass@vault:8200")).unwrap_err();
        assert!(matches!(e, BrokerError::BadUrl { .. }));
        assert!(!format!("{e} {e:?}").contains("hunter2pass"), "{e}");
    }
}
