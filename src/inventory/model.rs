//! The validated inventory: what every other module reads. Built only by [`super::validate`];
//! holds defaults applied, templates resolved and references checked, so nothing downstream
//! looks a setting up by string or re-checks it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::broker::{AccessRequest, AuthMethod, BrokerConfig};
use crate::http::CaSource;
use crate::scopes::Scope;

/// The whole validated inventory. Maps are keyed by the inventory's own names.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub source: PathBuf,
    pub broker: BrokerSpec,
    pub issuers: BTreeMap<String, IssuerSpec>,
    pub hosts: BTreeMap<String, HostSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    pub notify: NotifySpec,
    pub delivery: DeliverySpec,
    /// Every local file the inventory names, with where it is named: checked by
    /// [`super::check_local_files`].
    pub local_files: Vec<LocalFile>,
}

impl Inventory {
    /// The `vault_url` written into `spec`'s credd `.top` files: the broker's `vault_url` origin
    /// and the creds or sts path the credmon reads the service's access tokens from.
    pub fn top_vault_url(&self, spec: &ServiceSpec) -> String {
        format!("{}{}", self.broker.vault_url, crate::broker::access_path(&self.broker.issuer, &spec.access_request(0)))
    }

    /// The `vault_url` of a handle's `.top`: the sts path for the handle's own scopes and audience.
    pub fn handle_vault_url(&self, spec: &ServiceSpec, handle: &HandleSpec) -> String {
        format!("{}{}", self.broker.vault_url, crate::broker::access_path(&self.broker.issuer, &spec.handle_request(handle, 0)))
    }
}

#[derive(Clone, Debug)]
pub struct BrokerSpec {
    pub url: url::Url,
    pub ca: CaSource,
    /// The Vault issuer name: the `<issuer>` in `kerberos-<issuer>_<role>` and in
    /// `secret/oauth/creds/<issuer>/...` — not a JWT `iss` URL.
    pub issuer: String,
    /// Base URL written into credd `.top` files (`https://host:8200`, no trailing slash); the
    /// credmon needs the creds or sts path appended.
    pub vault_url: String,
    pub timeout: Duration,
    /// Requests in flight and started per second at most.
    pub limits: crate::broker::pace::Limits,
}

impl BrokerSpec {
    /// What the broker client needs of this section.
    pub fn client_config(&self) -> BrokerConfig {
        BrokerConfig { url: self.url.clone(), ca: self.ca.clone(), issuer: self.issuer.clone(), timeout: self.timeout, limits: self.limits }
    }
}

/// How a cycle spreads its deliveries over the hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverySpec {
    /// Hosts written to at once, each over its one SSH connection.
    pub hosts_at_once: usize,
}

impl DeliverySpec {
    pub const DEFAULT_HOSTS_AT_ONCE: usize = 8;
}

impl Default for DeliverySpec {
    fn default() -> DeliverySpec {
        DeliverySpec { hosts_at_once: DeliverySpec::DEFAULT_HOSTS_AT_ONCE }
    }
}

/// A JWT issuer whose tokens the bastion accepts.
#[derive(Clone, Debug)]
pub struct IssuerSpec {
    pub name: String,
    /// The `iss` claim exactly as the issuer writes it; keys are discovered from
    /// `<url>/.well-known/openid-configuration`.
    pub url: String,
    pub ca: CaSource,
    /// Audiences services of this issuer may ask for; empty means any.
    pub audiences: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub user: String,
    /// `None`: the user's login group.
    pub group: Option<String>,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{}:{}", self.user, g),
            None => f.write_str(&self.user),
        }
    }
}

/// A schedd or other node reached over SSH.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub key_file: PathBuf,
    pub key_passphrase_file: Option<PathBuf>,
    pub known_hosts: PathBuf,
    /// The credd credential spool (`SEC_CREDENTIAL_DIRECTORY_OAUTH`), when the host runs a credd.
    pub spool: Option<String>,
    pub spool_owner: Owner,
    /// Send SIGHUP to the credmon after a delivery so it rescans at once.
    pub signal_credmon: bool,
    pub timeout: Duration,
    /// Absolute directories (no trailing `/`) under which this host's token files lie; every
    /// `file` destination on the host is under one of them.
    pub file_roots: Vec<String>,
}

/// The root of `host.file_roots` that `path` lies under: the longest one that is a prefix of
/// `path` ending on a component boundary (`/data` holds `/data/x`, not `/database`).
pub fn file_root_for<'h>(host: &'h HostSpec, path: &str) -> Option<&'h str> {
    host.file_roots
        .iter()
        .filter(|root| super::rules::is_under(path, root))
        .max_by_key(|root| root.len())
        .map(String::as_str)
}

/// What a token file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileContent {
    VaultToken,
    AccessToken,
}

impl fmt::Display for FileContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileContent::VaultToken => "vault_token",
            FileContent::AccessToken => "access_token",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestinationKind {
    /// `<spool>/<account>/<oauth_service>.top` and `.use`, spool and owner from the host.
    Credd,
    /// `<spool>/<account>/<oauth_service>_<name>.top` and `.use` beside the service's own credd
    /// files on the same host: the handle `name` of [`ServiceSpec::handles`], whose `.top` holds
    /// no Vault token (the credmon takes its parent's).
    Handle { name: String },
    /// A token file; `path` may still hold `{uid}`, resolved on the host (`getent passwd <account>`).
    /// `ttl`: lifetime of the child token a Vault-token file receives (never beyond its parent's).
    File { path: String, content: FileContent, owner: Owner, mode: u32, ttl: Duration },
    /// The service's HTCondor IDToken in a client's `tokens.d`, owned by the service account,
    /// mode 0600. `path` may start with `~<account>/`, resolved on the host.
    IdToken { path: String },
}

/// A handle destination's id: `handle@<host>:<name>`.
pub fn handle_id(host: &str, name: &str) -> String {
    format!("handle@{host}:{name}")
}

/// One place one service's tokens go: one host, one layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Stable name used in state, status and mail: `credd@<host>` or `file@<host>:<path>`.
    pub id: String,
    pub host: String,
    pub kind: DestinationKind,
}

#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// The inventory's key for the service.
    pub name: String,
    /// HTCondor's name for the service (`issuer[_role]`): the name jobs list in
    /// `use_oauth_services` and the stem of the `.top`/`.use` files.
    pub oauth_service: String,
    /// The Unix account whose jobs use the tokens (the credd spool directory).
    pub account: String,
    pub credkey: String,
    /// The broker role (`<credkey>:<role>` in the creds path); `default` when not given.
    pub role: String,
    /// Key into [`Inventory::issuers`].
    pub issuer: String,
    pub required: Vec<Scope>,
    pub allowed: Vec<Scope>,
    /// Ask the broker for exactly `required` (sts path) rather than the client's default scopes.
    pub request_scopes: bool,
    pub audience: Option<String>,
    pub min_access_lifetime: Duration,
    pub min_vault_lifetime: Duration,
    /// A kept login token is reused while it has more than this left; below it the service
    /// logs in again and the new token is delivered.
    pub renew_before: Duration,
    pub expiry_warning: Duration,
    /// Failures in a row at a destination before on-call is told; urgent conditions (see
    /// `cycle::mail`) are told at once.
    pub alert_after: u32,
    pub owners: Vec<String>,
    /// When the daemon runs this service (UTC); hourly unless set.
    pub schedule: crate::schedule::Schedule,
    /// How this service logs in to the broker, templates resolved.
    pub login: AuthMethod,
    pub destinations: Vec<Destination>,
    /// The service's HTCondor IDToken, if it has one; its destinations are among
    /// `destinations` ([`DestinationKind::IdToken`]).
    pub idtoken: Option<IdTokenSpec>,
    /// Handles of its credd destinations, each name once; their destinations are among
    /// `destinations` ([`DestinationKind::Handle`]).
    pub handles: Vec<HandleSpec>,
}

/// A handle: an access token with narrower scopes (or its own audience) read with the
/// service's Vault token, for `<oauth_service>_<name>.top`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleSpec {
    pub name: String,
    /// Requested, and the most a token may grant; each inside one of the service's allowed.
    pub scopes: Vec<Scope>,
    pub audience: Option<String>,
}

/// What `condor_token_create` is asked for, where, and which daemons accept the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTokenSpec {
    /// `-identity`: the token's `sub`.
    pub identity: String,
    /// `-authz` levels in the order given; the token's `scope` is `condor:/<level>` each.
    pub authz: Vec<String>,
    /// `-lifetime`.
    pub lifetime: Duration,
    /// A new token is minted when less than this is left.
    pub renew_before: Duration,
    /// `-key`: the signing key's name, the token's `kid`.
    pub key: String,
    /// The `iss` the token must carry (the daemons' `TRUST_DOMAIN`).
    pub issuer: String,
    /// The host (inventory name) `condor_token_create` runs on.
    pub mint_host: String,
    /// The file name in `tokens.d`.
    pub name: String,
    /// Hosts (inventory names) whose schedds and collectors accept the token.
    pub revocation_hosts: Vec<String>,
    /// Their `config.d` directory.
    pub config_dir: String,
}

impl IdTokenSpec {
    /// What was asked, as one line: a token minted for another request is rotated.
    pub fn request(&self) -> String {
        format!("identity={} key={} iss={} lifetime={}s authz={}", self.identity, self.key, self.issuer, self.lifetime.as_secs(), self.authz.join(","))
    }

    /// The `scope` claim HTCondor writes for `authz` (absent when no level is given).
    pub fn scope(&self) -> Option<String> {
        (!self.authz.is_empty()).then(|| self.authz.iter().map(|a| format!("condor:/{a}")).collect::<Vec<_>>().join(" "))
    }
}

impl ServiceSpec {
    /// The scopes to request from the broker (empty: the creds path, no down-scoping).
    pub fn requested_scopes(&self) -> Vec<String> {
        if self.request_scopes { self.required.iter().map(|s| s.to_string()).collect() } else { Vec::new() }
    }

    /// The broker request for this service's access token, asking for `minimum_seconds` left.
    pub fn access_request(&self, minimum_seconds: u64) -> AccessRequest {
        AccessRequest {
            credkey: self.credkey.clone(),
            role: self.role.clone(),
            scopes: self.requested_scopes(),
            audiences: self.audience.iter().cloned().collect(),
            minimum_seconds,
        }
    }

    /// The broker request for one handle's access token: the sts path, the handle's scopes and
    /// audience, the service's Vault token.
    pub fn handle_request(&self, handle: &HandleSpec, minimum_seconds: u64) -> AccessRequest {
        AccessRequest {
            credkey: self.credkey.clone(),
            role: self.role.clone(),
            scopes: handle.scopes.iter().map(|s| s.to_string()).collect(),
            audiences: handle.audience.iter().cloned().collect(),
            minimum_seconds,
        }
    }

    /// HTCondor's name for a handle's credential: the credmon finds the parent by stripping
    /// the last `_…`.
    pub fn handle_stem(&self, handle: &str) -> String {
        format!("{}_{handle}", self.oauth_service)
    }

    pub fn handle(&self, name: &str) -> Option<&HandleSpec> {
        self.handles.iter().find(|h| h.name == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Tls,
}

#[derive(Clone, Debug)]
pub struct SmtpSpec {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct NotifySpec {
    /// `None`: mail is queued in the state DB but not sent.
    pub smtp: Option<SmtpSpec>,
    pub admins: Vec<String>,
    pub templates_dir: Option<PathBuf>,
    /// A condition that lasts (a failing destination, one inside its expiry warning) is mailed
    /// when it starts and then at most this often.
    pub remind_every: Duration,
    pub webhook: Option<WebhookSpec>,
}

/// An incoming webhook (Mattermost, Slack): the URL stays in its file until a message is sent.
#[derive(Clone, Debug)]
pub struct WebhookSpec {
    pub url_file: PathBuf,
    pub ca: CaSource,
    pub timeout: Duration,
}

/// What a local file the inventory names holds, and so how it is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A key, keytab, secret_id, token or password: a regular file group and others cannot read.
    Secret,
    /// A regular file (known_hosts, role_id).
    Public,
    /// A PEM file holding at least one certificate (a CA file, a client certificate).
    Certificates,
    /// A directory of PEM CA certificates, at least one (`/etc/grid-security/certificates`).
    CertificateDir,
    /// A directory (mail templates).
    Directory,
}

#[derive(Clone, Debug)]
pub struct LocalFile {
    pub path: PathBuf,
    pub kind: FileKind,
    pub line: u64,
    pub col: u64,
    pub field: String,
}
