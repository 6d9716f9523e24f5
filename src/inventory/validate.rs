//! The one validation pass: raw structs → [`Inventory`], every problem a [`Diagnostic`] with
//! its place. Pure: reads nothing but the parsed text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::*;
use super::raw::*;
use super::Diagnostic;
use crate::broker::AuthMethod;
use crate::http::CaSource;
use crate::scopes::Scope;

// ---------------------------------------------------------------------------------------------
// Built-in defaults
// ---------------------------------------------------------------------------------------------

pub(super) const DEFAULT_ROLE: &str = "default";
pub(super) const DEFAULT_MIN_ACCESS: Duration = Duration::from_secs(15 * 60);
pub(super) const DEFAULT_MIN_VAULT: Duration = Duration::from_secs(3600);
pub(super) const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(2 * 86400);
/// condor_vault_storer renews the credd's 28-day token when less than a week is left, and keeps
/// 7-day children for token files.
pub(super) const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(7 * 86400);
pub(super) const DEFAULT_CHILD_TTL: Duration = Duration::from_secs(7 * 86400);
/// Hourly cycles would otherwise mail a lasting failure 24 times a day.
pub(super) const DEFAULT_REMIND_EVERY: Duration = Duration::from_secs(6 * 3600);
pub(super) const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_SMTP_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_FILE_PATH: &str = "/tmp/vt_u{uid}-{oauth_service}";
/// A service's Kerberos credential cache when none is configured: relative, so the cycle places
/// it under the state directory (which the inventory does not know).
pub(super) const DEFAULT_CCACHE_DIR: &str = "krb5cc";
/// The WLCG profile's shortest recommended access-token lifetime is 15 minutes; a longest
/// one of 6 h means a larger minimum can never be met.
pub(super) const MAX_ACCESS_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// htvault-config caps Vault token leases at 28 days.
pub(super) const MAX_VAULT_LEASE: Duration = Duration::from_secs(28 * 86400);

/// Validates the parsed file at `path`: the inventory, or every problem found.
pub(super) fn validate(path: &Path, raw: RawInventory) -> Result<Inventory, Vec<Diagnostic>> {
    let mut v = Validator { file: path.to_path_buf(), diags: Vec::new(), local_files: Vec::new() };
    let inv = v.inventory(raw);
    match inv {
        Some(mut inv) if v.diags.is_empty() => {
            inv.local_files = v.local_files;
            Ok(inv)
        }
        _ => {
            v.diags.sort_by_key(|d| (d.line, d.col));
            Err(v.diags)
        }
    }
}

struct Validator {
    file: PathBuf,
    diags: Vec<Diagnostic>,
    local_files: Vec<LocalFile>,
}

fn loc<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.referenced.line(), s.referenced.column())
}

/// Characters HTCondor allows in a credd service name.
fn is_credd_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-+=_.".contains(c))
}

/// Account names as `useradd` accepts them; anything else cannot be a spool directory name.
fn is_account_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Validator {
    fn err_at(&mut self, (line, col): (u64, u64), field: impl Into<String>, message: impl Into<String>) {
        self.diags.push(Diagnostic { file: self.file.clone(), line, col, field: field.into(), message: message.into() });
    }

    fn err<T>(&mut self, at: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) {
        self.err_at(loc(at), field, message);
    }

    fn duration(&mut self, v: &Option<Spanned<DurationValue>>, field: &str) -> Option<Duration> {
        let v = v.as_ref()?;
        match v.value.to_duration() {
            Ok(d) => Some(d),
            Err(m) => {
                self.err(v, field, m);
                None
            }
        }
    }

    fn file(&mut self, at: (u64, u64), field: &str, path: &str, kind: FileKind) -> PathBuf {
        let p = PathBuf::from(path);
        if !p.is_absolute() {
            self.err_at(at, field, format!("`{path}` must be an absolute path"));
        }
        self.local_files.push(LocalFile { path: p.clone(), kind, line: at.0, col: at.1, field: field.into() });
        p
    }

    fn ca(&mut self, file: &Option<Spanned<String>>, dir: &Option<Spanned<String>>, field: &str) -> CaSource {
        match (file, dir) {
            (Some(f), Some(_)) => {
                self.err(f, format!("{field}.ca_file"), "give ca_file or ca_dir, not both");
                CaSource::System
            }
            (Some(f), None) => CaSource::File(self.file(loc(f), &format!("{field}.ca_file"), &f.value, FileKind::Public)),
            (None, Some(d)) => CaSource::Dir(self.file(loc(d), &format!("{field}.ca_dir"), &d.value, FileKind::Public)),
            (None, None) => CaSource::System,
        }
    }

    fn owner(&mut self, s: &Spanned<String>, field: &str) -> Option<Owner> {
        let (user, group) = match s.value.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s.value.as_str(), None),
        };
        let ok = is_account_name(user) && group.is_none_or(is_account_name);
        if !ok {
            self.err(s, field, format!("`{}` is not an owner; write user or user:group", s.value));
            return None;
        }
        Some(Owner { user: user.into(), group: group.map(str::to_string) })
    }

    fn inventory(&mut self, raw: RawInventory) -> Option<Inventory> {
        let broker = self.broker(&raw.broker);
        let issuers: BTreeMap<String, IssuerSpec> =
            raw.issuers.iter().filter_map(|(name, i)| Some((name.clone(), self.issuer(name, i)?))).collect();
        if raw.issuers.is_empty() {
            self.err(&raw.broker, "issuers", "at least one JWT issuer is needed");
        }
        let hosts: BTreeMap<String, HostSpec> =
            raw.hosts.iter().filter_map(|(name, h)| Some((name.clone(), self.host(name, h)?))).collect();
        let notify = self.notify(&raw.notify);
        let defaults = &raw.defaults;
        let mut services = BTreeMap::new();
        let mut stems: BTreeMap<(String, String), String> = BTreeMap::new();
        for (name, s) in &raw.services {
            let Some(spec) = self.service(name, s, defaults, &raw, &issuers, broker.as_ref()) else { continue };
            // Two services writing the same `<account>/<oauth_service>.top` would overwrite each
            // other on every cycle.
            let key = (spec.account.clone(), spec.oauth_service.clone());
            if let Some(other) = stems.insert(key, name.clone()) {
                self.err(
                    s,
                    format!("services.{name}"),
                    format!(
                        "service `{other}` already delivers {}/{}.top; two services cannot share an account and oauth_service",
                        spec.account, spec.oauth_service
                    ),
                );
            }
            services.insert(name.clone(), spec);
        }
        if raw.services.is_empty() {
            self.err(&raw.broker, "services", "no services defined");
        }
        let _ = self.duration(&defaults.min_access_lifetime, "defaults.min_access_lifetime");
        Some(Inventory {
            source: self.file.clone(),
            broker: broker?,
            issuers,
            hosts,
            services,
            notify: notify?,
            local_files: Vec::new(),
        })
    }

    fn broker(&mut self, b: &Spanned<RawBroker>) -> Option<BrokerSpec> {
        let raw = &b.value;
        let url = match url::Url::parse(&raw.url.value) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some() => Some(u),
            Ok(_) => {
                self.err(&raw.url, "broker.url", "the broker is reached over https only (https://host:port)");
                None
            }
            Err(e) => {
                self.err(&raw.url, "broker.url", format!("not a URL: {e}"));
                None
            }
        };
        let ca = self.ca(&raw.ca_file, &raw.ca_dir, "broker");
        let issuer = raw.issuer.value.clone();
        if issuer.is_empty() || issuer.contains('_') || !is_credd_name(&issuer) {
            self.err(&raw.issuer, "broker.issuer", format!("`{issuer}` is not a Vault issuer name (letters, digits, `-+=.`, no `_`)"));
        }
        let vault_url = self.vault_url(&raw.vault_url);
        let timeout = self.duration(&raw.timeout, "broker.timeout").unwrap_or(DEFAULT_BROKER_TIMEOUT);
        // The auth block is a template; it is resolved (and its files noted) per service.
        Some(BrokerSpec { url: url?, ca, issuer, vault_url: vault_url?, timeout })
    }

    /// The credmon accepts a `vault_url` only if it is https with the port 8200 written out and
    /// a path under `/v1`; the bastion appends that path itself, so the configured value must be
    /// the bare origin.
    fn vault_url(&mut self, s: &Spanned<String>) -> Option<String> {
        let field = "broker.vault_url";
        let text = s.value.trim_end_matches('/');
        let parsed = match url::Url::parse(text) {
            Ok(u) => u,
            Err(e) => {
                self.err(s, field, format!("not a URL: {e}"));
                return None;
            }
        };
        let authority = text.strip_prefix("https://").unwrap_or("").split(['/', '?', '#']).next().unwrap_or("");
        let problem = if parsed.scheme() != "https" {
            Some("the credmon accepts only https:// vault_url values")
        } else if parsed.port() != Some(8200) || !authority.ends_with(":8200") {
            Some("the credmon accepts only port 8200, written out (https://host:8200)")
        } else if !(parsed.path() == "/" || parsed.path().is_empty()) || parsed.query().is_some() {
            Some("give the origin only (https://host:8200); the /v1/secret/oauth/... path is appended per service")
        } else {
            None
        };
        match problem {
            Some(m) => {
                self.err(s, field, m);
                None
            }
            None => Some(text.to_string()),
        }
    }

    fn issuer(&mut self, name: &str, i: &Spanned<RawIssuer>) -> Option<IssuerSpec> {
        let field = format!("issuers.{name}");
        let raw = &i.value;
        let ok = match url::Url::parse(&raw.url.value) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some() => true,
            Ok(_) => {
                self.err(&raw.url, format!("{field}.url"), "an issuer URL must be https://");
                false
            }
            Err(e) => {
                self.err(&raw.url, format!("{field}.url"), format!("not a URL: {e}"));
                false
            }
        };
        let ca = self.ca(&raw.ca_file, &raw.ca_dir, &field);
        let audiences = raw.audiences.iter().map(|a| a.value.clone()).collect();
        ok.then(|| IssuerSpec { name: name.into(), url: raw.url.value.clone(), ca, audiences })
    }

    fn host(&mut self, name: &str, h: &Spanned<RawHost>) -> Option<HostSpec> {
        let field = format!("hosts.{name}");
        let raw = &h.value;
        let mut ok = true;
        if raw.address.value.trim().is_empty() || raw.address.value.contains(char::is_whitespace) {
            self.err(&raw.address, format!("{field}.address"), "an address is a host name or an IP address");
            ok = false;
        }
        if !is_account_name(&raw.user.value) {
            self.err(&raw.user, format!("{field}.user"), format!("`{}` is not a user name", raw.user.value));
            ok = false;
        }
        let key_file = self.file(loc(&raw.key_file), &format!("{field}.key_file"), &raw.key_file.value, FileKind::Secret);
        let key_passphrase_file = raw.key_passphrase_file.as_ref().map(|p| {
            self.file(loc(p), &format!("{field}.key_passphrase_file"), &p.value, FileKind::Secret)
        });
        let known_hosts = self.file(loc(&raw.known_hosts), &format!("{field}.known_hosts"), &raw.known_hosts.value, FileKind::Public);
        let spool = raw.spool.as_ref().and_then(|s| {
            let v = s.value.trim_end_matches('/');
            if !v.starts_with('/') || v.contains("..") || v.is_empty() {
                self.err(s, format!("{field}.spool"), format!("`{}` must be an absolute path", s.value));
                None
            } else {
                Some(v.to_string())
            }
        });
        let spool_owner = match &raw.spool_owner {
            Some(o) => self.owner(o, &format!("{field}.spool_owner"))?,
            None => Owner { user: "root".into(), group: Some("root".into()) },
        };
        let timeout = self.duration(&raw.timeout, &format!("{field}.timeout")).unwrap_or(DEFAULT_SSH_TIMEOUT);
        ok.then(|| HostSpec {
            name: name.into(),
            address: raw.address.value.clone(),
            port: raw.port.unwrap_or(22),
            user: raw.user.value.clone(),
            key_file,
            key_passphrase_file,
            known_hosts,
            spool,
            spool_owner,
            signal_credmon: raw.signal_credmon.unwrap_or(true),
            timeout,
        })
    }

    fn notify(&mut self, n: &Option<Spanned<RawNotify>>) -> Option<NotifySpec> {
        let Some(n) = n else {
            return Some(NotifySpec { smtp: None, admins: Vec::new(), templates_dir: None, remind_every: DEFAULT_REMIND_EVERY });
        };
        let raw = &n.value;
        for a in &raw.admins {
            self.mail_address(a, "notify.admins");
        }
        let smtp = match &raw.smtp {
            None => None,
            Some(s) => {
                let r = &s.value;
                let tls = match r.tls.as_ref().map(|t| t.value.as_str()) {
                    None | Some("starttls") => SmtpTls::StartTls,
                    Some("none") => SmtpTls::None,
                    Some("tls") => SmtpTls::Tls,
                    Some(other) => {
                        let t = r.tls.as_ref().expect("matched Some");
                        self.err(t, "notify.smtp.tls", format!("`{other}` is not one of none, starttls, tls"));
                        SmtpTls::StartTls
                    }
                };
                self.mail_address(&r.from, "notify.smtp.from");
                let password_file = r
                    .password_file
                    .as_ref()
                    .map(|p| self.file(loc(p), "notify.smtp.password_file", &p.value, FileKind::Secret));
                let port = r.port.unwrap_or(match tls {
                    SmtpTls::Tls => 465,
                    SmtpTls::StartTls => 587,
                    SmtpTls::None => 25,
                });
                Some(SmtpSpec {
                    host: r.host.value.clone(),
                    port,
                    tls,
                    from: r.from.value.clone(),
                    username: r.username.clone(),
                    password_file,
                    timeout: self.duration(&r.timeout, "notify.smtp.timeout").unwrap_or(DEFAULT_SMTP_TIMEOUT),
                })
            }
        };
        let templates_dir = raw.templates_dir.as_ref().map(|d| self.file(loc(d), "notify.templates_dir", &d.value, FileKind::Public));
        let remind_every = self.duration(&raw.remind_every, "notify.remind_every").unwrap_or(DEFAULT_REMIND_EVERY);
        Some(NotifySpec { smtp, admins: raw.admins.iter().map(|a| a.value.clone()).collect(), templates_dir, remind_every })
    }

    fn mail_address(&mut self, a: &Spanned<String>, field: &str) {
        let v = a.value.trim();
        let ok = v.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !v.contains(char::is_whitespace));
        if !ok {
            self.err(a, field, format!("`{}` is not a mail address", a.value));
        }
    }

    fn scopes(&mut self, list: &[Spanned<String>], field: &str) -> Vec<Scope> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.value.parse::<Scope>() {
                Ok(scope) => out.push(scope),
                Err(e) => self.err(s, format!("{field}[{i}]"), e.to_string()),
            }
        }
        out
    }

    /// A service's login with its templates filled in. `kerberos_mount` is the mount used when
    /// a Kerberos block names none (`kerberos-<broker.issuer>_<role>`).
    fn login(&mut self, auth: &Spanned<RawAuth>, field: &str, vars: &Vars, kerberos_mount: String) -> AuthMethod {
        let at = loc(auth);
        let path = |v: &mut Self, name: &str, template: &str, kind| -> PathBuf {
            let f = format!("{field}.{name}");
            let resolved = v.template(at, &f, template, vars, false);
            v.file(at, &f, &resolved, kind)
        };
        let text = |v: &mut Self, name: &str, template: &str| -> String { v.template(at, &format!("{field}.{name}"), template, vars, false) };
        match &auth.value {
            RawAuth::Approle { mount, role_id_file, secret_id_file } => AuthMethod::AppRole {
                mount: mount.clone().unwrap_or_else(|| AuthMethod::DEFAULT_APPROLE_MOUNT.into()),
                role_id_file: path(self, "role_id_file", role_id_file, FileKind::Public),
                secret_id_file: path(self, "secret_id_file", secret_id_file, FileKind::Secret),
            },
            RawAuth::TokenFile { path: p } => AuthMethod::TokenFile { path: path(self, "path", p, FileKind::Secret) },
            RawAuth::Kerberos { principal, keytab, ccache, mount, spn_host } => {
                let principal = text(self, "principal", principal);
                let realm = principal.rsplit_once('@').map(|(_, r)| r);
                if principal.contains(char::is_whitespace) || principal.starts_with('@') || realm.is_none_or(str::is_empty) {
                    self.err_at(at, format!("{field}.principal"), format!("`{principal}` is not a Kerberos principal with a realm (write e.g. \"{{account}}@CERN.CH\")"));
                }
                let ccache = match ccache {
                    Some(c) => {
                        let resolved = text(self, "ccache", c);
                        if !resolved.starts_with('/') {
                            self.err_at(at, format!("{field}.ccache"), format!("`{resolved}` must be an absolute path (leave ccache out for one per service under the state directory)"));
                        }
                        PathBuf::from(resolved)
                    }
                    None => Path::new(DEFAULT_CCACHE_DIR).join(&vars.service),
                };
                let mount = match mount {
                    Some(m) => {
                        let m = text(self, "mount", m);
                        self.mount(at, field, m)
                    }
                    None => kerberos_mount,
                };
                let spn_host = spn_host.as_ref().map(|h| text(self, "spn_host", h));
                if let Some(h) = &spn_host
                    && (h.is_empty() || h.contains(['/', '@', ':']) || h.contains(char::is_whitespace))
                {
                    self.err_at(at, format!("{field}.spn_host"), format!("`{h}` is not a host name (the service principal is host/<spn_host>@REALM)"));
                }
                AuthMethod::Kerberos { principal, keytab: path(self, "keytab", keytab, FileKind::Secret), ccache, mount, spn_host }
            }
            RawAuth::Cert { cert_file, key_file, mount, name } => {
                let mount = match mount {
                    Some(m) => {
                        let m = text(self, "mount", m);
                        self.mount(at, field, m)
                    }
                    None => AuthMethod::DEFAULT_CERT_MOUNT.into(),
                };
                AuthMethod::Cert {
                    cert_file: path(self, "cert_file", cert_file, FileKind::Public),
                    key_file: path(self, "key_file", key_file, FileKind::Secret),
                    mount,
                    name: name.as_ref().map(|n| text(self, "name", n)),
                }
            }
        }
    }

    /// An auth mount path as Vault names it (`kerberos-cms_production`, `cert`, `tls/cms`).
    fn mount(&mut self, at: (u64, u64), field: &str, mount: String) -> String {
        let bad = mount.is_empty() || mount.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") || mount.contains(['?', '#', '%']) || mount.contains(char::is_whitespace);
        if bad {
            self.err_at(at, format!("{field}.mount"), format!("`{mount}` is not an auth mount path"));
        }
        mount
    }

    /// Fills `{service}`, `{account}`, `{oauth_service}`, `{credkey}` (and keeps `{uid}` when
    /// `keep_uid`, for the host to resolve).
    fn template(&mut self, at: (u64, u64), field: &str, template: &str, vars: &Vars, keep_uid: bool) -> String {
        let mut out = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                self.err_at(at, field, format!("unclosed `{{` in `{template}`"));
                return template.into();
            };
            let name = &rest[open + 1..open + close];
            match name {
                "service" => out.push_str(&vars.service),
                "account" => out.push_str(&vars.account),
                "oauth_service" => out.push_str(&vars.oauth_service),
                "credkey" => out.push_str(&vars.credkey),
                "uid" if keep_uid => out.push_str("{uid}"),
                _ => {
                    let known = if keep_uid { "{service}, {account}, {oauth_service}, {credkey}, {uid}" } else { "{service}, {account}, {oauth_service}, {credkey}" };
                    self.err_at(at, field, format!("unknown placeholder `{{{name}}}` in `{template}`; known: {known}"));
                    out.push_str(&rest[open..=open + close]);
                }
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out
    }

    #[allow(clippy::too_many_lines)]
    fn service(
        &mut self,
        name: &str,
        s: &Spanned<RawService>,
        d: &RawDefaults,
        raw: &RawInventory,
        issuers: &BTreeMap<String, IssuerSpec>,
        broker: Option<&BrokerSpec>,
    ) -> Option<ServiceSpec> {
        let field = format!("services.{name}");
        let r = &s.value;
        let before = self.diags.len();
        // The name becomes part of file names in the state directory and of path templates.
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.err(s, field.clone(), format!("service name `{name}` may hold only letters, digits, `-` and `_`"));
        }

        let account = r.account.value.clone();
        if !is_account_name(&account) {
            self.err(&r.account, format!("{field}.account"), format!("`{account}` is not a Unix account name"));
        }
        let role = r.role.as_ref().map(|x| x.value.clone()).unwrap_or_else(|| DEFAULT_ROLE.into());
        if let Some(rr) = &r.role
            && (rr.value.is_empty() || rr.value.contains('_') || !is_credd_name(&rr.value)) {
                self.err(rr, format!("{field}.role"), format!("`{}` is not a role name (letters, digits, `-+=.`, no `_`)", rr.value));
            }
        let credkey = r.credkey.as_ref().map(|x| x.value.clone()).unwrap_or_else(|| account.clone());
        if let Some(c) = &r.credkey
            && (c.value.is_empty() || c.value.contains(['/', ':', '?', '#']) || c.value.contains(char::is_whitespace)) {
                self.err(c, format!("{field}.credkey"), format!("`{}` cannot be used in a broker path", c.value));
            }

        // HTCondor's service name: `<vault issuer>` for the default role, else
        // `<vault issuer>_<role>`; the credmon finds a handle's parent by stripping the last `_…`.
        let vault_issuer = broker.map(|b| b.issuer.clone()).unwrap_or_default();
        let derived = if role == DEFAULT_ROLE { vault_issuer.clone() } else { format!("{vault_issuer}_{role}") };
        let oauth_service = match &r.oauth_service {
            None => derived,
            Some(o) => {
                let v = o.value.clone();
                let parts: Vec<&str> = v.split('_').collect();
                if !is_credd_name(&v) {
                    self.err(o, format!("{field}.oauth_service"), format!("`{v}` has characters HTCondor refuses (allowed: letters, digits, `-+=_.`)"));
                } else if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
                    self.err(o, format!("{field}.oauth_service"), format!("`{v}` is not of the form issuer[_role]"));
                } else if broker.is_some() && parts[0] != vault_issuer {
                    self.err(o, format!("{field}.oauth_service"), format!("`{v}` must start with the broker's issuer `{vault_issuer}`"));
                }
                v
            }
        };

        let issuer = match &r.issuer {
            Some(i) => {
                if !issuers.contains_key(&i.value) && !raw.issuers.contains_key(&i.value) {
                    let known: Vec<&str> = raw.issuers.keys().map(String::as_str).collect();
                    self.err(i, format!("{field}.issuer"), format!("no issuer `{}` under issuers (known: {})", i.value, known.join(", ")));
                }
                i.value.clone()
            }
            None if raw.issuers.len() == 1 => raw.issuers.keys().next().cloned().unwrap_or_default(),
            None => {
                self.err(s, format!("{field}.issuer"), "several issuers are configured: name this service's issuer");
                String::new()
            }
        };

        let required = self.scopes(&r.required, &format!("{field}.required"));
        let allowed = match &r.allowed {
            Some(a) => self.scopes(a, &format!("{field}.allowed")),
            None => required.clone(),
        };
        if let Some(a) = &r.allowed {
            for (i, req) in required.iter().enumerate() {
                if !allowed.iter().any(|al| al.covers(req)) {
                    self.err(&r.required[i], format!("{field}.required[{i}]"), format!("`{req}` is required but not inside any allowed scope"));
                }
            }
            let _ = a;
        }
        if required.is_empty() {
            self.err(s, format!("{field}.required"), "list the scopes this service needs (least privilege needs a declaration)");
        }

        let audience = r.audience.as_ref().map(|a| a.value.clone());
        if let (Some(a), Some(spec)) = (&r.audience, issuers.get(&issuer))
            && !spec.audiences.is_empty() && !spec.audiences.contains(&a.value) {
                self.err(a, format!("{field}.audience"), format!("`{}` is not among issuer `{issuer}`'s audiences ({})", a.value, spec.audiences.join(", ")));
            }

        let min_access = self
            .duration(&r.min_access_lifetime, &format!("{field}.min_access_lifetime"))
            .or_else(|| d.min_access_lifetime.as_ref().and_then(|v| v.value.to_duration().ok()))
            .unwrap_or(DEFAULT_MIN_ACCESS);
        if min_access > MAX_ACCESS_LIFETIME {
            let at = r.min_access_lifetime.as_ref().map(loc).or(d.min_access_lifetime.as_ref().map(loc)).unwrap_or(loc(s));
            self.err_at(at, format!("{field}.min_access_lifetime"), "longer than the 6 h an access token may live: no token could pass");
        }
        let min_vault = self
            .duration(&r.min_vault_lifetime, &format!("{field}.min_vault_lifetime"))
            .or_else(|| self.duration(&d.min_vault_lifetime, "defaults.min_vault_lifetime"))
            .unwrap_or(DEFAULT_MIN_VAULT);
        if min_vault > MAX_VAULT_LEASE {
            let at = r.min_vault_lifetime.as_ref().map(loc).or(d.min_vault_lifetime.as_ref().map(loc)).unwrap_or(loc(s));
            self.err_at(at, format!("{field}.min_vault_lifetime"), "longer than the 28-day lease cap of HTVault: no token could pass");
        }
        let renew_before = self
            .duration(&r.renew_before, &format!("{field}.renew_before"))
            .or_else(|| self.duration(&d.renew_before, "defaults.renew_before"))
            .unwrap_or(DEFAULT_RENEW_BEFORE);
        let expiry_warning = self
            .duration(&r.expiry_warning, &format!("{field}.expiry_warning"))
            .or_else(|| self.duration(&d.expiry_warning, "defaults.expiry_warning"))
            .unwrap_or(DEFAULT_EXPIRY_WARNING);

        let owners_raw = r.owners.as_ref().or(d.owners.as_ref());
        let owners: Vec<String> = owners_raw.map(|o| o.iter().map(|a| a.value.clone()).collect()).unwrap_or_default();
        if let Some(list) = &r.owners {
            for a in list {
                self.mail_address(a, &format!("{field}.owners"));
            }
        }

        let schedule = match r.schedule.as_ref().or(d.schedule.as_ref()) {
            None => crate::schedule::Schedule::default(),
            Some(expr) => match crate::schedule::Schedule::parse(&expr.value) {
                Ok(sch) => sch,
                Err(e) => {
                    let f = if r.schedule.is_some() { format!("{field}.schedule") } else { "defaults.schedule".into() };
                    self.err(expr, f, e.to_string());
                    crate::schedule::Schedule::default()
                }
            },
        };

        let vars = Vars { service: name.into(), account: account.clone(), oauth_service: oauth_service.clone(), credkey: credkey.clone() };
        let kerberos_mount = AuthMethod::kerberos_mount(&vault_issuer, &role);
        let login = match &r.auth {
            Some(a) => self.login(a, &format!("{field}.auth"), &vars, kerberos_mount),
            None => self.login(&raw.broker.value.auth, "broker.auth", &vars, kerberos_mount),
        };

        let destinations = self.destinations(name, &field, r, raw, &vars);

        (self.diags.len() == before).then(|| ServiceSpec {
            name: name.into(),
            oauth_service,
            account,
            credkey,
            role,
            issuer,
            required,
            allowed,
            request_scopes: r.request_scopes.or(d.request_scopes).unwrap_or(true),
            audience,
            min_access_lifetime: min_access,
            min_vault_lifetime: min_vault,
            renew_before,
            expiry_warning,
            owners,
            schedule,
            login,
            destinations,
        })
    }

    fn destinations(&mut self, name: &str, field: &str, r: &RawService, raw: &RawInventory, vars: &Vars) -> Vec<Destination> {
        let mut out: Vec<Destination> = Vec::new();
        let mut seen = BTreeSet::new();
        if r.destinations.value.is_empty() {
            self.err(&r.destinations, format!("{field}.destinations"), "no destinations: the tokens would go nowhere");
        }
        for (di, dest) in r.destinations.value.iter().enumerate() {
            let dfield = format!("{field}.destinations[{di}]");
            let (hosts, kind) = match &dest.value {
                RawDestination::Credd { hosts } => (hosts, DestinationKind::Credd),
                RawDestination::File { hosts, path, content, owner, mode, ttl } => {
                    let ttl = self.duration(ttl, &format!("{dfield}.ttl")).unwrap_or(DEFAULT_CHILD_TTL);
                    let path_t = path.as_ref().map(|p| p.value.as_str()).unwrap_or(DEFAULT_FILE_PATH);
                    let at = path.as_ref().map(loc).unwrap_or(loc(dest));
                    let resolved = self.template(at, &format!("{dfield}.path"), path_t, vars, true);
                    if !resolved.starts_with('/') || resolved.ends_with('/') || resolved.split('/').any(|c| c == "..") {
                        self.err_at(at, format!("{dfield}.path"), format!("`{path_t}` must be an absolute file path"));
                    }
                    let content = match content.as_ref().map(|c| (c, c.value.as_str())) {
                        None | Some((_, "vault_token")) => FileContent::VaultToken,
                        Some((_, "access_token")) => FileContent::AccessToken,
                        Some((c, other)) => {
                            self.err(c, format!("{dfield}.content"), format!("`{other}` is not one of vault_token, access_token"));
                            FileContent::VaultToken
                        }
                    };
                    let owner = match owner {
                        Some(o) => self.owner(o, &format!("{dfield}.owner")).unwrap_or(Owner { user: vars.account.clone(), group: None }),
                        None => Owner { user: vars.account.clone(), group: None },
                    };
                    let mode = match mode {
                        None => 0o600,
                        Some(m) => match m.value.to_mode() {
                            Ok(mode) if mode & 0o077 != 0 => {
                                self.err(m, format!("{dfield}.mode"), format!("{mode:04o} lets group or others read a token; use 0600 or 0400"));
                                0o600
                            }
                            Ok(mode) => mode,
                            Err(e) => {
                                self.err(m, format!("{dfield}.mode"), e);
                                0o600
                            }
                        },
                    };
                    (hosts, DestinationKind::File { path: resolved, content, owner, mode, ttl })
                }
            };
            if hosts.is_empty() {
                self.err(dest, format!("{dfield}.hosts"), "list at least one host");
            }
            for (hi, h) in hosts.iter().enumerate() {
                let hfield = format!("{dfield}.hosts[{hi}]");
                let Some(host) = raw.hosts.get(&h.value) else {
                    let known: Vec<&str> = raw.hosts.keys().map(String::as_str).collect();
                    self.err(h, hfield, format!("no host `{}` under hosts (known: {})", h.value, known.join(", ")));
                    continue;
                };
                if kind == DestinationKind::Credd && host.value.spool.is_none() {
                    self.err(h, hfield.clone(), format!("host `{}` has no spool: a credd destination needs hosts.{}.spool", h.value, h.value));
                }
                let id = match &kind {
                    DestinationKind::Credd => format!("credd@{}", h.value),
                    DestinationKind::File { path, .. } => format!("file@{}:{}", h.value, path),
                };
                if !seen.insert(id.clone()) {
                    self.err(h, hfield, format!("destination {id} is listed twice for service `{name}`"));
                    continue;
                }
                out.push(Destination { id, host: h.value.clone(), kind: kind.clone() });
            }
        }
        out
    }
}

struct Vars {
    service: String,
    account: String,
    oauth_service: String,
    credkey: String,
}
