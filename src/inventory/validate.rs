//! The one validation pass: raw structs → [`Inventory`], every problem a [`Diagnostic`] with
//! its place. Pure: reads nothing but the parsed text. This file walks the sections other than
//! `services` (defaults, broker, issuers, hosts, notify) and holds what every check shares;
//! [`super::services`] walks the services, their logins and their destinations. Single-value
//! rules live in [`super::rules`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::*;
use super::raw::*;
use super::rules::{self, shown, Bounds, UrlUse};
use super::Diagnostic;
use crate::broker::pace::Limits;
use crate::http::CaSource;
use crate::schedule::Schedule;

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
/// Today's behaviour: the first failure is told. An upgrade never silences an alert on its own.
pub(super) const DEFAULT_ALERT_AFTER: u32 = 1;
/// A threshold above this would keep an hourly service's failure quiet for days.
pub(super) const MAX_ALERT_AFTER: u32 = 48;
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// More broker requests in flight than this is a typo, not a tuning.
const MAX_BROKER_CONCURRENCY: u32 = 256;
/// Requests per second beyond which a rate limits nothing a broker could serve.
const MAX_BROKER_RATE: f64 = 100_000.0;
/// Each host written to at once holds a connection and a blocking thread.
const MAX_HOSTS_AT_ONCE: u32 = 512;
pub(super) const DEFAULT_FILE_PATH: &str = "/tmp/vt_u{uid}-{oauth_service}";
/// A service's Kerberos credential cache when none is configured: relative, so the cycle places
/// it under the state directory (which the inventory does not know).
pub(super) const DEFAULT_CCACHE_DIR: &str = "krb5cc";

/// Line and column of a value in the file.
pub(super) type At = (u64, u64);

pub(super) fn loc<T>(s: &Spanned<T>) -> At {
    (s.referenced.line(), s.referenced.column())
}

/// Validates the parsed file at `path`: the inventory, or every problem found. Schedules must
/// keep runs `schedule_floor` apart.
pub(super) fn validate(path: &Path, raw: RawInventory, schedule_floor: Duration) -> Result<Inventory, Vec<Diagnostic>> {
    let mut v = Validator { file: path.to_path_buf(), diags: Vec::new(), local_files: Vec::new(), file_paths: BTreeMap::new(), schedule_floor, schedules: HashMap::new() };
    let inv = v.inventory(&raw);
    // A template in `broker.auth` is resolved once per service; its problems are reported once.
    v.diags.sort_by(|a, b| (a.line, a.col, &a.field, &a.message).cmp(&(b.line, b.col, &b.field, &b.message)));
    v.diags.dedup();
    match inv {
        Some(mut inv) if v.diags.is_empty() => {
            inv.local_files = v.local_files;
            Ok(inv)
        }
        _ => Err(v.diags),
    }
}

/// The defaults section, each value checked once where it is written.
#[derive(Default)]
pub(super) struct Defaults {
    pub(super) min_access_lifetime: Option<Duration>,
    pub(super) min_vault_lifetime: Option<Duration>,
    pub(super) renew_before: Option<Duration>,
    pub(super) expiry_warning: Option<Duration>,
    pub(super) alert_after: Option<u32>,
    pub(super) request_scopes: Option<bool>,
    pub(super) owners: Option<Vec<String>>,
    pub(super) schedule: Option<Schedule>,
}

/// What the services are checked against: the other sections, validated.
pub(super) struct Context<'a> {
    pub(super) raw: &'a RawInventory,
    pub(super) broker: Option<&'a BrokerSpec>,
    pub(super) issuers: &'a BTreeMap<String, IssuerSpec>,
    pub(super) hosts: &'a BTreeMap<String, HostSpec>,
    pub(super) defaults: &'a Defaults,
}

pub(super) struct Validator {
    pub(super) file: PathBuf,
    pub(super) diags: Vec<Diagnostic>,
    pub(super) local_files: Vec<LocalFile>,
    /// Every token file path so far, by host: `{uid}` qualified by the account it stands for.
    pub(super) file_paths: BTreeMap<(String, String), String>,
    /// The shortest time allowed between two runs of a service.
    pub(super) schedule_floor: Duration,
    /// Each schedule expression parsed and accepted so far: services that write the same one
    /// share it.
    schedules: HashMap<String, Schedule>,
}

impl Validator {
    pub(super) fn err_at(&mut self, (line, col): At, field: impl Into<String>, message: impl Into<String>) {
        self.diags.push(Diagnostic { file: self.file.clone(), line, col, field: field.into(), message: message.into() });
    }

    pub(super) fn err<T>(&mut self, at: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) {
        self.err_at(loc(at), field, message);
    }

    /// A duration within `bounds`; `None` (and a diagnostic) when it is not one, or absent.
    pub(super) fn duration(&mut self, v: &Option<Spanned<DurationValue>>, field: &str, bounds: &Bounds) -> Option<Duration> {
        let v = v.as_ref()?;
        match v.value.to_duration().and_then(|d| rules::within(d, bounds).map(|()| d)) {
            Ok(d) => Some(d),
            Err(m) => {
                self.err(v, field, m);
                None
            }
        }
    }

    /// A port other than 0.
    pub(super) fn port(&mut self, v: &Option<Spanned<u16>>, field: &str) -> Option<u16> {
        let v = v.as_ref()?;
        if v.value == 0 {
            self.err(v, field, "port 0 is no port to connect to");
            return None;
        }
        Some(v.value)
    }

    /// An absolute local path the bastion reads, noted for [`super::check_local_files`].
    pub(super) fn file(&mut self, at: At, field: &str, path: &str, kind: FileKind) -> PathBuf {
        if let Some(problem) = rules::path_problem(path) {
            self.err_at(at, field, format!("`{}`: {problem}", shown(path)));
        }
        let p = PathBuf::from(path);
        self.local_files.push(LocalFile { path: p.clone(), kind, line: at.0, col: at.1, field: field.into() });
        p
    }

    fn ca(&mut self, file: &Option<Spanned<String>>, dir: &Option<Spanned<String>>, field: &str) -> CaSource {
        match (file, dir) {
            (Some(f), Some(_)) => {
                self.err(f, format!("{field}.ca_file"), "give ca_file or ca_dir, not both");
                CaSource::System
            }
            (Some(f), None) => CaSource::File(self.file(loc(f), &format!("{field}.ca_file"), &f.value, FileKind::Certificates)),
            (None, Some(d)) => CaSource::Dir(self.file(loc(d), &format!("{field}.ca_dir"), &d.value, FileKind::CertificateDir)),
            (None, None) => CaSource::System,
        }
    }

    pub(super) fn owner(&mut self, s: &Spanned<String>, field: &str) -> Option<Owner> {
        let (user, group) = match s.value.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s.value.as_str(), None),
        };
        if let Some(problem) = rules::account_problem(user).or_else(|| group.and_then(rules::account_problem)) {
            self.err(s, field, format!("`{}` is not an owner (user or user:group): {problem}", shown(&s.value)));
            return None;
        }
        Some(Owner { user: user.into(), group: group.map(str::to_string) })
    }

    /// A name the inventory gives (a host, an issuer): it shows in destination ids, state and
    /// mail.
    fn inventory_name(&mut self, name: &str, at: At, field: &str) {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            self.err_at(at, field, format!("the name `{}` may hold only letters, digits, `-`, `_` and `.`", shown(name)));
        }
    }

    /// A mail address as the mailer parses it when it sends.
    pub(super) fn mail_address(&mut self, a: &Spanned<String>, field: &str) {
        if let Err(e) = crate::notify::mailbox(&a.value) {
            let cause = std::error::Error::source(&e).map(|c| format!(" ({c})")).unwrap_or_default();
            self.err(a, field, format!("`{}` is not a mail address{cause}", shown(&a.value)));
        }
    }

    pub(super) fn mail_addresses(&mut self, list: &[Spanned<String>], field: &str) -> Vec<String> {
        for (i, a) in list.iter().enumerate() {
            self.mail_address(a, &format!("{field}[{i}]"));
        }
        list.iter().map(|a| a.value.clone()).collect()
    }

    fn inventory(&mut self, raw: &RawInventory) -> Option<Inventory> {
        let defaults = self.defaults(&raw.defaults);
        let broker = self.broker(&raw.broker);
        let mut issuers = BTreeMap::new();
        for (name, i) in &raw.issuers {
            if let Some(spec) = self.issuer(name, i) {
                issuers.insert(name.clone(), spec);
            }
        }
        if raw.issuers.is_empty() {
            self.err(&raw.broker, "issuers", "at least one JWT issuer is needed");
        }
        let mut hosts = BTreeMap::new();
        for (name, h) in &raw.hosts {
            if let Some(spec) = self.host(name, h) {
                hosts.insert(name.clone(), spec);
            }
        }
        let notify = self.notify(&raw.notify);
        let ctx = Context { raw, broker: broker.as_ref(), issuers: &issuers, hosts: &hosts, defaults: &defaults };
        let services = self.services(&ctx);
        if raw.services.is_empty() {
            self.err(&raw.broker, "services", "no services defined");
        }
        let delivery = self.delivery(&raw.delivery);
        Some(Inventory { source: self.file.clone(), broker: broker?, issuers, hosts, services, notify: notify?, delivery, local_files: Vec::new() })
    }

    /// A count between 1 and `max`; `None` (and a diagnostic) when out of range.
    fn count(&mut self, v: &Option<Spanned<u32>>, field: &str, max: u32) -> Option<usize> {
        let v = v.as_ref()?;
        if !(1..=max).contains(&v.value) {
            self.err(v, field, format!("{} is not between 1 and {max}", v.value));
            return None;
        }
        usize::try_from(v.value).ok()
    }

    fn delivery(&mut self, raw: &RawDelivery) -> DeliverySpec {
        DeliverySpec { hosts_at_once: self.count(&raw.hosts_at_once, "delivery.hosts_at_once", MAX_HOSTS_AT_ONCE).unwrap_or(DeliverySpec::DEFAULT_HOSTS_AT_ONCE) }
    }

    fn defaults(&mut self, d: &RawDefaults) -> Defaults {
        let schedule = d.schedule.as_ref().and_then(|s| self.schedule(s, "defaults.schedule"));
        Defaults {
            min_access_lifetime: self.duration(&d.min_access_lifetime, "defaults.min_access_lifetime", &rules::ACCESS_LIFETIME),
            min_vault_lifetime: self.duration(&d.min_vault_lifetime, "defaults.min_vault_lifetime", &rules::VAULT_LIFETIME),
            renew_before: self.duration(&d.renew_before, "defaults.renew_before", &rules::VAULT_LIFETIME),
            expiry_warning: self.duration(&d.expiry_warning, "defaults.expiry_warning", &rules::VAULT_LIFETIME),
            alert_after: self.alert_after(&d.alert_after, "defaults.alert_after"),
            request_scopes: d.request_scopes,
            owners: d.owners.as_ref().map(|o| self.mail_addresses(o, "defaults.owners")),
            schedule,
        }
    }

    /// A schedule that runs a service at most once a minute ([`rules::SCHEDULE_FLOOR`]).
    pub(super) fn schedule(&mut self, expr: &Spanned<String>, field: &str) -> Option<Schedule> {
        if let Some(known) = self.schedules.get(&expr.value) {
            return Some(known.clone());
        }
        match Schedule::parse(&expr.value) {
            Ok(s) => match rules::shortest_gap(&s) {
                Some(gap) if gap < self.schedule_floor => {
                    let floor = humantime::format_duration(self.schedule_floor);
                    self.err(expr, field, format!("`{}` runs the service {}s apart; runs must be at least {floor} apart", shown(&expr.value), gap.as_secs()));
                    None
                }
                _ => {
                    self.schedules.insert(expr.value.clone(), s.clone());
                    Some(s)
                }
            },
            Err(e) => {
                self.err(expr, field, shown(&e.to_string()).into_owned());
                None
            }
        }
    }

    fn broker(&mut self, b: &Spanned<RawBroker>) -> Option<BrokerSpec> {
        let raw = &b.value;
        let url = match rules::https_url(&raw.url.value, UrlUse::Broker) {
            Ok(u) => Some(u),
            Err(m) => {
                self.err(&raw.url, "broker.url", m);
                None
            }
        };
        let ca = self.ca(&raw.ca_file, &raw.ca_dir, "broker");
        let issuer = raw.issuer.value.clone();
        if issuer.contains('_') || !rules::is_credd_name(&issuer) {
            self.err(&raw.issuer, "broker.issuer", format!("`{}` is not a Vault issuer name (letters, digits, `-+=.`, no `_`)", shown(&issuer)));
        }
        let vault_url = match rules::vault_origin(&raw.vault_url.value) {
            Ok(origin) => Some(origin.to_string()),
            Err(m) => {
                self.err(&raw.vault_url, "broker.vault_url", m);
                None
            }
        };
        let timeout = self.duration(&raw.timeout, "broker.timeout", &rules::TIMEOUT).unwrap_or(DEFAULT_BROKER_TIMEOUT);
        let concurrency = self.count(&raw.concurrency, "broker.concurrency", MAX_BROKER_CONCURRENCY).unwrap_or(Limits::DEFAULT_CONCURRENCY);
        let spacing = raw.rate.as_ref().and_then(|r| {
            if r.value.is_finite() && r.value > 0.0 && r.value <= MAX_BROKER_RATE {
                Some(Duration::from_secs_f64(1.0 / r.value))
            } else {
                self.err(r, "broker.rate", format!("{} is no rate: give requests per second above 0 and at most {MAX_BROKER_RATE}, or leave it out for no limit", r.value));
                None
            }
        });
        // The auth block is a template resolved per service; its shape is checked once here.
        self.auth_shape(&raw.auth, "broker.auth");
        Some(BrokerSpec { url: url?, ca, issuer, vault_url: vault_url?, timeout, limits: Limits { concurrency, spacing } })
    }

    fn issuer(&mut self, name: &str, i: &Spanned<RawIssuer>) -> Option<IssuerSpec> {
        let field = format!("issuers.{name}");
        let raw = &i.value;
        self.inventory_name(name, loc(i), &field);
        let url = match rules::https_url(&raw.url.value, UrlUse::Issuer) {
            Ok(_) => Some(raw.url.value.clone()),
            Err(m) => {
                self.err(&raw.url, format!("{field}.url"), m);
                None
            }
        };
        let ca = self.ca(&raw.ca_file, &raw.ca_dir, &field);
        for (k, a) in raw.audiences.iter().enumerate() {
            if let Some(problem) = rules::audience_problem(&a.value) {
                self.err(a, format!("{field}.audiences[{k}]"), format!("`{}`: {problem}", shown(&a.value)));
            }
        }
        let audiences = raw.audiences.iter().map(|a| a.value.clone()).collect();
        Some(IssuerSpec { name: name.into(), url: url?, ca, audiences })
    }

    fn host(&mut self, name: &str, h: &Spanned<RawHost>) -> Option<HostSpec> {
        let field = format!("hosts.{name}");
        let raw = &h.value;
        let before = self.diags.len();
        self.inventory_name(name, loc(h), &field);
        if let Some(problem) = rules::address_problem(&raw.address.value) {
            self.err(&raw.address, format!("{field}.address"), format!("`{}`: {problem}", shown(&raw.address.value)));
        }
        if let Some(problem) = rules::account_problem(&raw.user.value) {
            self.err(&raw.user, format!("{field}.user"), format!("`{}` is not a user name: {problem}", shown(&raw.user.value)));
        }
        let port = self.port(&raw.port, &format!("{field}.port")).unwrap_or(22);
        let key_file = self.file(loc(&raw.key_file), &format!("{field}.key_file"), &raw.key_file.value, FileKind::Secret);
        let key_passphrase_file =
            raw.key_passphrase_file.as_ref().map(|p| self.file(loc(p), &format!("{field}.key_passphrase_file"), &p.value, FileKind::Secret));
        let known_hosts = self.file(loc(&raw.known_hosts), &format!("{field}.known_hosts"), &raw.known_hosts.value, FileKind::Public);
        let spool = raw.spool.as_ref().and_then(|s| {
            let v = s.value.trim_end_matches('/');
            match rules::path_problem(v).or(v.is_empty().then_some("the spool cannot be `/`")) {
                Some(problem) => {
                    self.err(s, format!("{field}.spool"), format!("`{}`: {problem}", shown(&s.value)));
                    None
                }
                None => Some(v.to_string()),
            }
        });
        let spool_owner = match &raw.spool_owner {
            Some(o) => self.owner(o, &format!("{field}.spool_owner")),
            None => Some(Owner { user: "root".into(), group: Some("root".into()) }),
        };
        let timeout = self.duration(&raw.timeout, &format!("{field}.timeout"), &rules::TIMEOUT).unwrap_or(DEFAULT_SSH_TIMEOUT);
        let file_roots = match &raw.file_roots {
            None => rules::DEFAULT_FILE_ROOTS.iter().map(|r| r.to_string()).collect(),
            Some(list) => list.iter().enumerate().filter_map(|(k, r)| self.file_root(r, &format!("{field}.file_roots[{k}]"))).collect(),
        };
        match &raw.trusted_vault_hosts {
            Some(list) if list.value.is_empty() => {
                self.err(list, format!("{field}.trusted_vault_hosts"), "an empty list would trust no Vault host; leave the key out to trust any");
            }
            Some(list) => {
                for (k, t) in list.value.iter().enumerate() {
                    if let Some(problem) = rules::trusted_host_problem(&t.value) {
                        self.err(t, format!("{field}.trusted_vault_hosts[{k}]"), format!("`{}`: {problem}", shown(&t.value)));
                    }
                }
            }
            None => {}
        }
        (self.diags.len() == before).then(|| HostSpec {
            name: name.into(),
            address: raw.address.value.clone(),
            port,
            user: raw.user.value.clone(),
            key_file,
            key_passphrase_file,
            known_hosts,
            spool,
            spool_owner: spool_owner.unwrap_or(Owner { user: "root".into(), group: None }),
            signal_credmon: raw.signal_credmon.unwrap_or(true),
            timeout,
            file_roots,
        })
    }

    /// One directory token files may lie under: absolute, normalized, not `/` and no system
    /// directory.
    fn file_root(&mut self, r: &Spanned<String>, field: &str) -> Option<String> {
        let root = r.value.trim_end_matches('/');
        let problem = if root.is_empty() {
            Some("`/` would let a token file go anywhere; name the directories token files belong in".to_string())
        } else if let Some(p) = rules::path_problem(root) {
            Some(p.to_string())
        } else {
            rules::system_dir_of(root).map(|d| format!("{d} is a system directory; token files never go there"))
        };
        match problem {
            Some(p) => {
                self.err(r, field, format!("`{}`: {p}", shown(&r.value)));
                None
            }
            None => Some(root.to_string()),
        }
    }

    fn notify(&mut self, n: &Option<Spanned<RawNotify>>) -> Option<NotifySpec> {
        let Some(n) = n else {
            return Some(NotifySpec { smtp: None, admins: Vec::new(), templates_dir: None, remind_every: DEFAULT_REMIND_EVERY, webhook: None });
        };
        let raw = &n.value;
        let admins = self.mail_addresses(&raw.admins, "notify.admins");
        let smtp = raw.smtp.as_ref().map(|s| self.smtp(s));
        let templates_dir = raw.templates_dir.as_ref().map(|d| self.file(loc(d), "notify.templates_dir", &d.value, FileKind::Directory));
        let remind_every = self.duration(&raw.remind_every, "notify.remind_every", &rules::REMIND_EVERY).unwrap_or(DEFAULT_REMIND_EVERY);
        let webhook = raw.webhook.as_ref().map(|w| WebhookSpec {
            url_file: self.file(loc(&w.value.url_file), "notify.webhook.url_file", &w.value.url_file.value, FileKind::Secret),
            ca: self.ca(&w.value.ca_file, &w.value.ca_dir, "notify.webhook"),
            timeout: self.duration(&w.value.timeout, "notify.webhook.timeout", &rules::TIMEOUT).unwrap_or(DEFAULT_WEBHOOK_TIMEOUT),
        });
        Some(NotifySpec { smtp, admins, templates_dir, remind_every, webhook })
    }

    /// A failure threshold: at least 1 (tell at the first failure), at most [`MAX_ALERT_AFTER`].
    pub(super) fn alert_after(&mut self, v: &Option<Spanned<u32>>, field: &str) -> Option<u32> {
        let v = v.as_ref()?;
        if !(1..=MAX_ALERT_AFTER).contains(&v.value) {
            self.err(v, field, format!("{} is not between 1 and {MAX_ALERT_AFTER} failures in a row", v.value));
            return None;
        }
        Some(v.value)
    }

    fn smtp(&mut self, s: &Spanned<RawSmtp>) -> SmtpSpec {
        let r = &s.value;
        let tls = match r.tls.as_ref() {
            None => SmtpTls::StartTls,
            Some(t) => match t.value.as_str() {
                "starttls" => SmtpTls::StartTls,
                "none" => SmtpTls::None,
                "tls" => SmtpTls::Tls,
                other => {
                    self.err(t, "notify.smtp.tls", format!("`{}` is not one of none, starttls, tls", shown(other)));
                    SmtpTls::StartTls
                }
            },
        };
        if let Some(problem) = rules::address_problem(&r.host.value) {
            self.err(&r.host, "notify.smtp.host", format!("`{}`: {problem}", shown(&r.host.value)));
        }
        self.mail_address(&r.from, "notify.smtp.from");
        let password_file = r.password_file.as_ref().map(|p| self.file(loc(p), "notify.smtp.password_file", &p.value, FileKind::Secret));
        // The mailer refuses one without the other at send time.
        match (&r.username, &r.password_file) {
            (Some(u), None) => self.err(u, "notify.smtp.username", "a username needs a password_file"),
            (None, Some(p)) => self.err(p, "notify.smtp.password_file", "a password_file needs a username"),
            _ => {}
        }
        if let Some(u) = &r.username
            && (u.value.is_empty() || u.value.chars().any(char::is_control))
        {
            self.err(u, "notify.smtp.username", "a username is non-empty and holds no control characters");
        }
        let port = self.port(&r.port, "notify.smtp.port").unwrap_or(match tls {
            SmtpTls::Tls => 465,
            SmtpTls::StartTls => 587,
            SmtpTls::None => 25,
        });
        SmtpSpec {
            host: r.host.value.clone(),
            port,
            tls,
            from: r.from.value.clone(),
            username: r.username.as_ref().map(|u| u.value.clone()),
            password_file,
            timeout: self.duration(&r.timeout, "notify.smtp.timeout", &rules::TIMEOUT).unwrap_or(DEFAULT_SMTP_TIMEOUT),
        }
    }
}
