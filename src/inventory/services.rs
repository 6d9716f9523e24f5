//! The `services` section of the validation pass: each service with defaults applied and
//! templates resolved, its login, and its destinations, including where a token file may lie
//! (under a root of its host's `file_roots`, outside system directories and the credd spool,
//! never at another destination's path).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::model::*;
use super::raw::*;
use super::rules::{self, shown};
use super::validate::*;
use crate::broker::AuthMethod;
use crate::scopes::Scope;

/// The placeholders a service's templates may use.
struct Vars {
    service: String,
    account: String,
    oauth_service: String,
    credkey: String,
}

/// The keys each login method takes: required, then optional.
const METHODS: &[(&str, &[&str], &[&str])] = &[
    ("kerberos", &["principal", "keytab"], &["ccache", "mount", "spn_host"]),
    ("cert", &["cert_file", "key_file"], &["mount", "name"]),
    ("approle", &["role_id_file", "secret_id_file"], &["mount"]),
    ("token_file", &["path"], &[]),
];

fn auth_keys(a: &RawAuth) -> [(&'static str, &Option<Spanned<String>>); 11] {
    [
        ("mount", &a.mount),
        ("role_id_file", &a.role_id_file),
        ("secret_id_file", &a.secret_id_file),
        ("path", &a.path),
        ("principal", &a.principal),
        ("keytab", &a.keytab),
        ("ccache", &a.ccache),
        ("spn_host", &a.spn_host),
        ("cert_file", &a.cert_file),
        ("key_file", &a.key_file),
        ("name", &a.name),
    ]
}

impl Validator {
    pub(super) fn services(&mut self, ctx: &Context<'_>) -> BTreeMap<String, ServiceSpec> {
        let mut services = BTreeMap::new();
        let mut stems: BTreeMap<(String, String), String> = BTreeMap::new();
        for (name, s) in &ctx.raw.services {
            let Some(spec) = self.service(name, s, ctx) else { continue };
            // Two services writing the same `<account>/<oauth_service>.top` would overwrite each
            // other on every cycle.
            // A handle's `<oauth_service>_<handle>.top` is one more such name.
            let names = std::iter::once(spec.oauth_service.clone()).chain(spec.handles.iter().map(|h| spec.handle_stem(&h.name)));
            for stem in names {
                if let Some(other) = stems.insert((spec.account.clone(), stem.clone()), name.clone()) {
                    self.err(
                        s,
                        format!("services.{name}"),
                        format!(
                            "service `{other}` already delivers {}/{stem}.top; two services cannot share an account and oauth_service (or handle)",
                            spec.account
                        ),
                    );
                }
            }
            services.insert(name.clone(), spec);
        }
        services
    }

    #[allow(clippy::too_many_lines)]
    fn service(&mut self, name: &str, s: &Spanned<RawService>, ctx: &Context<'_>) -> Option<ServiceSpec> {
        let field = format!("services.{name}");
        let r = &s.value;
        let d = ctx.defaults;
        let before = self.diags.len();
        // The name becomes part of file names in the state directory and of path templates.
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.err(s, field.clone(), format!("service name `{}` may hold only letters, digits, `-` and `_`", shown(name)));
        }

        let account = r.account.value.clone();
        if let Some(problem) = rules::account_problem(&account) {
            self.err(&r.account, format!("{field}.account"), format!("`{}` is not a Unix account name: {problem}", shown(&account)));
        }
        let role = r.role.as_ref().map(|x| x.value.clone()).unwrap_or_else(|| DEFAULT_ROLE.into());
        if let Some(rr) = &r.role
            && (rr.value.contains('_') || !rules::is_credd_name(&rr.value))
        {
            self.err(rr, format!("{field}.role"), format!("`{}` is not a role name (letters, digits, `-+=.`, no `_`)", shown(&rr.value)));
        }
        let credkey = r.credkey.as_ref().map(|x| x.value.clone()).unwrap_or_else(|| account.clone());
        if let Some(c) = &r.credkey
            && (c.value.is_empty() || c.value.contains(['/', ':', '?', '#', ',']) || c.value.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
        {
            self.err(c, format!("{field}.credkey"), format!("`{}` cannot be used in a broker path", shown(&c.value)));
        }

        // HTCondor's service name: `<vault issuer>` for the default role, else
        // `<vault issuer>_<role>`; the credmon finds a handle's parent by stripping the last `_…`.
        let vault_issuer = ctx.broker.map(|b| b.issuer.clone()).unwrap_or_default();
        let derived = if role == DEFAULT_ROLE { vault_issuer.clone() } else { format!("{vault_issuer}_{role}") };
        let oauth_service = match &r.oauth_service {
            None => derived,
            Some(o) => {
                let v = o.value.clone();
                let parts: Vec<&str> = v.split('_').collect();
                let ofield = format!("{field}.oauth_service");
                if !rules::is_credd_name(&v) {
                    self.err(o, ofield, format!("`{}` has characters HTCondor refuses (allowed: letters, digits, `-+=_.`)", shown(&v)));
                } else if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
                    self.err(o, ofield, format!("`{v}` is not of the form issuer[_role]"));
                } else if ctx.broker.is_some() && parts[0] != vault_issuer {
                    self.err(o, ofield, format!("`{v}` must start with the broker's issuer `{vault_issuer}`"));
                }
                v
            }
        };

        let issuer = match &r.issuer {
            Some(i) => {
                if !ctx.raw.issuers.contains_key(&i.value) {
                    let known: Vec<&str> = ctx.raw.issuers.keys().map(String::as_str).collect();
                    self.err(i, format!("{field}.issuer"), format!("no issuer `{}` under issuers (known: {})", shown(&i.value), known.join(", ")));
                }
                i.value.clone()
            }
            None if ctx.raw.issuers.len() == 1 => ctx.raw.issuers.keys().next().cloned().unwrap_or_default(),
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
        if r.allowed.is_some() {
            for (req, i, at) in &required {
                if !allowed.iter().any(|(al, _, _)| al.covers(req)) {
                    self.err_at(*at, format!("{field}.required[{i}]"), format!("`{req}` is required but not inside any allowed scope"));
                }
            }
        }
        if r.required.is_empty() {
            self.err(s, format!("{field}.required"), "list the scopes this service needs (least privilege needs a declaration)");
        }

        let audience = r.audience.as_ref().map(|a| a.value.clone());
        if let Some(a) = &r.audience {
            self.audience(a, &format!("{field}.audience"), &issuer, ctx);
        }

        let handles = self.handles(&field, r, &allowed, &issuer, ctx);

        let min_access_lifetime = self
            .duration(&r.min_access_lifetime, &format!("{field}.min_access_lifetime"), &rules::ACCESS_LIFETIME)
            .or(d.min_access_lifetime)
            .unwrap_or(DEFAULT_MIN_ACCESS);
        let min_vault_lifetime = self
            .duration(&r.min_vault_lifetime, &format!("{field}.min_vault_lifetime"), &rules::VAULT_LIFETIME)
            .or(d.min_vault_lifetime)
            .unwrap_or(DEFAULT_MIN_VAULT);
        let renew_before =
            self.duration(&r.renew_before, &format!("{field}.renew_before"), &rules::VAULT_LIFETIME).or(d.renew_before).unwrap_or(DEFAULT_RENEW_BEFORE);
        let expiry_warning = self
            .duration(&r.expiry_warning, &format!("{field}.expiry_warning"), &rules::VAULT_LIFETIME)
            .or(d.expiry_warning)
            .unwrap_or(DEFAULT_EXPIRY_WARNING);
        let alert_after = self.alert_after(&r.alert_after, &format!("{field}.alert_after")).or(d.alert_after).unwrap_or(DEFAULT_ALERT_AFTER);

        let owners = match &r.owners {
            Some(list) => self.mail_addresses(list, &format!("{field}.owners")),
            None => d.owners.clone().unwrap_or_default(),
        };
        let schedule = match &r.schedule {
            Some(expr) => self.schedule(expr, &format!("{field}.schedule")),
            None => d.schedule.clone(),
        }
        .unwrap_or_default();

        let vars = Vars { service: name.into(), account: account.clone(), oauth_service: oauth_service.clone(), credkey: credkey.clone() };
        let kerberos_mount = AuthMethod::kerberos_mount(&vault_issuer, &role);
        let login = match &r.auth {
            Some(a) => {
                let afield = format!("{field}.auth");
                if self.auth_shape(a, &afield) { self.login(a, &afield, &vars, kerberos_mount) } else { None }
            }
            // The default login's shape was checked with the broker section.
            None if self.auth_fits(&ctx.raw.broker.value.auth) => self.login(&ctx.raw.broker.value.auth, "broker.auth", &vars, kerberos_mount),
            None => None,
        };

        let mut destinations = self.destinations(name, &field, r, ctx, &vars);
        let idtoken = r.idtoken.as_ref().and_then(|block| {
            let (spec, dests) = self.idtoken(name, &account, &format!("{field}.idtoken"), block, ctx)?;
            destinations.extend(dests);
            Some(spec)
        });

        let spec = ServiceSpec {
            name: name.into(),
            oauth_service,
            account,
            credkey,
            role,
            issuer,
            required: required.into_iter().map(|(s, _, _)| s).collect(),
            allowed: allowed.into_iter().map(|(s, _, _)| s).collect(),
            request_scopes: r.request_scopes.or(d.request_scopes).unwrap_or(true),
            audience,
            min_access_lifetime,
            min_vault_lifetime,
            renew_before,
            expiry_warning,
            alert_after,
            owners,
            schedule,
            login: login?,
            destinations,
            idtoken,
            handles,
        };
        // What the credmon will be given must be what it accepts.
        if let Some(broker) = ctx.broker {
            let requests = std::iter::once(spec.access_request(0)).chain(spec.handles.iter().map(|h| spec.handle_request(h, 0)));
            for request in requests {
                let url = format!("{}{}", broker.vault_url, crate::broker::access_path(&broker.issuer, &request));
                if let Some(problem) = rules::credmon_refuses(&url) {
                    self.err(s, field.clone(), format!("the credmon would refuse the vault_url {}: {problem}", shown(&url)));
                    break;
                }
            }
        }
        (self.diags.len() == before).then_some(spec)
    }

    /// The handles of a service's credd destinations: each name once in the service, letters,
    /// digits and hyphens (the credmon finds the parent by stripping the last `_…`), scopes
    /// each inside one of the service's `allowed` (least privilege: a handle narrows, never
    /// widens), an audience as for the service.
    fn handles(&mut self, field: &str, r: &RawService, allowed: &[(Scope, usize, At)], issuer: &str, ctx: &Context<'_>) -> Vec<HandleSpec> {
        let mut out: Vec<HandleSpec> = Vec::new();
        for (di, dest) in r.destinations.value.iter().enumerate() {
            let RawDestination::Credd { handles, .. } = &dest.value else { continue };
            for (hi, h) in handles.iter().enumerate() {
                let hfield = format!("{field}.destinations[{di}].credd.handles[{hi}]");
                let name = &h.value.name;
                if !rules::is_handle_name(&name.value) {
                    self.err(name, format!("{hfield}.name"), format!("`{}` is not a handle name (letters, digits and `-`; no `_`)", shown(&name.value)));
                } else if out.iter().any(|o| o.name == name.value) {
                    self.err(name, format!("{hfield}.name"), format!("handle `{}` is listed twice for this service", name.value));
                }
                if h.value.scopes.value.is_empty() {
                    self.err(&h.value.scopes, format!("{hfield}.scopes"), "list the handle's scopes (a handle exists to narrow them)");
                }
                let scopes = self.scopes(&h.value.scopes.value, &format!("{hfield}.scopes"));
                for (scope, i, at) in &scopes {
                    if !allowed.iter().any(|(al, _, _)| al.covers(scope)) {
                        let list: Vec<String> = allowed.iter().map(|(a, _, _)| a.to_string()).collect();
                        self.err_at(
                            *at,
                            format!("{hfield}.scopes[{i}]"),
                            format!("`{scope}` is wider than the service allows ({}): a handle may only narrow the service's scopes", list.join(", ")),
                        );
                    }
                }
                if let Some(a) = &h.value.audience {
                    self.audience(a, &format!("{hfield}.audience"), issuer, ctx);
                }
                out.push(HandleSpec {
                    name: name.value.clone(),
                    scopes: scopes.into_iter().map(|(s, _, _)| s).collect(),
                    audience: h.value.audience.as_ref().map(|a| a.value.clone()),
                });
            }
        }
        out
    }

    /// An audience a service or handle asks for: well-formed, and among its issuer's audiences
    /// when the issuer lists them.
    fn audience(&mut self, a: &Spanned<String>, field: &str, issuer: &str, ctx: &Context<'_>) {
        if let Some(problem) = rules::audience_problem(&a.value) {
            self.err(a, field, format!("`{}`: {problem}", shown(&a.value)));
        } else if let Some(spec) = ctx.issuers.get(issuer)
            && !spec.audiences.is_empty()
            && !spec.audiences.contains(&a.value)
        {
            self.err(a, field, format!("`{}` is not among issuer `{issuer}`'s audiences ({})", shown(&a.value), spec.audiences.join(", ")));
        }
    }

    /// Scopes as a service declares them, each with its index in the list and its place.
    fn scopes(&mut self, list: &[Spanned<String>], field: &str) -> Vec<(Scope, usize, At)> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match Scope::parse_declared(&s.value) {
                Ok(scope) => out.push((scope, i, loc(s))),
                Err(e) => self.err(s, format!("{field}[{i}]"), crate::redact::excerpt(&e.to_string(), 300).into_owned()),
            }
        }
        out
    }

    /// Checks a login block's keys against its method: each key the method does not take is
    /// reported on its own line, each missing one at the method. True when the block fits.
    pub(super) fn auth_shape(&mut self, auth: &Spanned<RawAuth>, field: &str) -> bool {
        let a = &auth.value;
        let Some((method, need, may)) = METHODS.iter().find(|(m, _, _)| *m == a.method.value) else {
            let known: Vec<&str> = METHODS.iter().map(|(m, _, _)| *m).collect();
            self.err(&a.method, format!("{field}.method"), format!("`{}` is not a login method (known: {})", shown(&a.method.value), known.join(", ")));
            return false;
        };
        let before = self.diags.len();
        for (key, value) in auth_keys(a) {
            if let Some(v) = value
                && !need.contains(&key)
                && !may.contains(&key)
            {
                let keys: Vec<&str> = need.iter().chain(may.iter()).copied().collect();
                self.err(v, format!("{field}.{key}"), format!("unknown field `{key}` for method {method} (its keys: method, {})", keys.join(", ")));
            }
        }
        for key in *need {
            if auth_keys(a).iter().any(|(k, v)| k == key && v.is_none()) {
                self.err(&a.method, field, format!("missing field `{key}`: method {method} needs {}", need.join(" and ")));
            }
        }
        self.diags.len() == before
    }

    /// Whether a login block fits its method, without reporting (it was reported once already).
    fn auth_fits(&self, auth: &Spanned<RawAuth>) -> bool {
        let a = &auth.value;
        METHODS.iter().find(|(m, _, _)| *m == a.method.value).is_some_and(|(_, need, may)| {
            auth_keys(a).iter().all(|(k, v)| if need.contains(k) { v.is_some() } else { v.is_none() || may.contains(k) })
        })
    }

    /// A service's login with its templates filled in, for a block that fits its method (`None`
    /// for one that lacks a required key). Each value is checked where it is written.
    /// `kerberos_mount` is the mount used when a Kerberos block names none
    /// (`kerberos-<broker.issuer>_<role>`).
    fn login(&mut self, auth: &Spanned<RawAuth>, field: &str, vars: &Vars, kerberos_mount: String) -> Option<AuthMethod> {
        let a = &auth.value;
        let text = |v: &mut Self, name: &str, value: &Spanned<String>| -> String {
            let resolved = v.template(loc(value), &format!("{field}.{name}"), &value.value, vars, false);
            if resolved.chars().any(char::is_control) {
                v.err(value, format!("{field}.{name}"), "holds a control character");
            }
            resolved
        };
        let path = |v: &mut Self, name: &str, value: &Spanned<String>, kind| -> PathBuf {
            let resolved = v.template(loc(value), &format!("{field}.{name}"), &value.value, vars, false);
            v.file(loc(value), &format!("{field}.{name}"), &resolved, kind)
        };
        let mount = |v: &mut Self, default: String| -> String {
            match &a.mount {
                Some(m) => {
                    let resolved = text(v, "mount", m);
                    let bad = resolved.is_empty()
                        || resolved.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..")
                        || resolved.contains(['?', '#', '%'])
                        || resolved.contains(char::is_whitespace);
                    if bad {
                        v.err(m, format!("{field}.mount"), format!("`{}` is not an auth mount path", shown(&resolved)));
                    }
                    resolved
                }
                None => default,
            }
        };
        Some(match a.method.value.as_str() {
            "approle" => AuthMethod::AppRole {
                mount: mount(self, AuthMethod::DEFAULT_APPROLE_MOUNT.into()),
                role_id_file: path(self, "role_id_file", a.role_id_file.as_ref()?, FileKind::Public),
                secret_id_file: path(self, "secret_id_file", a.secret_id_file.as_ref()?, FileKind::Secret),
            },
            "token_file" => AuthMethod::TokenFile { path: path(self, "path", a.path.as_ref()?, FileKind::Secret) },
            "cert" => AuthMethod::Cert {
                cert_file: path(self, "cert_file", a.cert_file.as_ref()?, FileKind::Certificates),
                key_file: path(self, "key_file", a.key_file.as_ref()?, FileKind::Secret),
                mount: mount(self, AuthMethod::DEFAULT_CERT_MOUNT.into()),
                name: a.name.as_ref().map(|n| text(self, "name", n)),
            },
            _ => {
                let p = a.principal.as_ref()?;
                let principal = text(self, "principal", p);
                let realm = principal.rsplit_once('@').map(|(_, r)| r);
                if principal.contains(char::is_whitespace) || principal.starts_with('@') || realm.is_none_or(str::is_empty) {
                    self.err(
                        p,
                        format!("{field}.principal"),
                        format!("`{}` is not a Kerberos principal with a realm (write e.g. \"{{account}}@CERN.CH\")", shown(&principal)),
                    );
                }
                let ccache = match &a.ccache {
                    Some(c) => {
                        let resolved = text(self, "ccache", c);
                        if let Some(problem) = rules::path_problem(&resolved) {
                            self.err(
                                c,
                                format!("{field}.ccache"),
                                format!("`{}`: {problem} (leave ccache out for one per service under the state directory)", shown(&resolved)),
                            );
                        }
                        PathBuf::from(resolved)
                    }
                    None => Path::new(DEFAULT_CCACHE_DIR).join(&vars.service),
                };
                let spn_host = a.spn_host.as_ref().map(|h| {
                    let resolved = text(self, "spn_host", h);
                    if resolved.is_empty() || resolved.contains(['/', '@', ':']) || resolved.contains(char::is_whitespace) {
                        self.err(h, format!("{field}.spn_host"), format!("`{}` is not a host name (the service principal is host/<spn_host>@REALM)", shown(&resolved)));
                    }
                    resolved
                });
                AuthMethod::Kerberos { principal, keytab: path(self, "keytab", a.keytab.as_ref()?, FileKind::Secret), ccache, mount: mount(self, kerberos_mount), spn_host }
            }
        })
    }

    /// Fills `{service}`, `{account}`, `{oauth_service}`, `{credkey}` (and keeps `{uid}` when
    /// `keep_uid`, for the host to resolve).
    fn template(&mut self, at: At, field: &str, template: &str, vars: &Vars, keep_uid: bool) -> String {
        let mut out = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                self.err_at(at, field, format!("unclosed `{{` in `{}`", shown(template)));
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
                    self.err_at(at, field, format!("unknown placeholder `{{{}}}` in `{}`; known: {known}", shown(name), shown(template)));
                    out.push_str(&rest[open..=open + close]);
                }
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out
    }

    fn destinations(&mut self, name: &str, field: &str, r: &RawService, ctx: &Context<'_>, vars: &Vars) -> Vec<Destination> {
        let mut out: Vec<Destination> = Vec::new();
        let mut seen = BTreeSet::new();
        if r.destinations.value.is_empty() {
            self.err(&r.destinations, format!("{field}.destinations"), "no destinations: the tokens would go nowhere");
        }
        for (di, dest) in r.destinations.value.iter().enumerate() {
            let dfield = format!("{field}.destinations[{di}]");
            let (hosts, kind, path_at) = match &dest.value {
                RawDestination::Credd { hosts, .. } => (hosts, DestinationKind::Credd, loc(dest)),
                RawDestination::File { hosts, path, content, owner, mode, ttl } => {
                    let at = path.as_ref().map(loc).unwrap_or(loc(dest));
                    let kind = self.file_destination(&dfield, vars, at, path, content, owner, mode, ttl);
                    (hosts, kind, at)
                }
            };
            if hosts.is_empty() {
                self.err(dest, format!("{dfield}.hosts"), "list at least one host");
            }
            for (hi, h) in hosts.iter().enumerate() {
                let hfield = format!("{dfield}.hosts[{hi}]");
                let Some(raw_host) = ctx.raw.hosts.get(&h.value) else {
                    let known: Vec<&str> = ctx.raw.hosts.keys().map(String::as_str).collect();
                    self.err(h, hfield, format!("no host `{}` under hosts (known: {})", shown(&h.value), known.join(", ")));
                    continue;
                };
                if kind == DestinationKind::Credd && raw_host.value.spool.is_none() {
                    self.err(h, hfield.clone(), format!("host `{}` has no spool: a credd destination needs hosts.{}.spool", h.value, h.value));
                }
                // The credd enforces TRUSTED_VAULT_HOSTS only in condor_store_cred, which the
                // bastion bypasses: the `.top` it writes must pass the same test here.
                if kind == DestinationKind::Credd
                    && let (Some(trusted), Some(broker)) = (&raw_host.value.trusted_vault_hosts, ctx.broker)
                {
                    let vault_host = rules::vault_host(&broker.vault_url);
                    // A list with a bad entry is reported with the host, once.
                    let well_formed = !trusted.value.is_empty() && trusted.value.iter().all(|t| rules::trusted_host_problem(&t.value).is_none());
                    if well_formed && !trusted.value.iter().any(|t| rules::trusted_host_matches(&t.value, vault_host)) {
                        let list: Vec<&str> = trusted.value.iter().map(|t| t.value.as_str()).collect();
                        self.err(
                            h,
                            hfield.clone(),
                            format!(
                                "host `{}` trusts only the Vault hosts {} (hosts.{}.trusted_vault_hosts), but service `{name}`'s .top would name vault host `{}` (broker.vault_url)",
                                h.value,
                                shown(&list.join(", ")),
                                h.value,
                                shown(vault_host)
                            ),
                        );
                    }
                }
                let id = match &kind {
                    DestinationKind::Credd => format!("credd@{}", h.value),
                    DestinationKind::Handle { name } => handle_id(&h.value, name),
                    DestinationKind::File { path, .. } => format!("file@{}:{}", h.value, path),
                    DestinationKind::IdToken { path } => format!("idtoken@{}:{}", h.value, path),
                };
                if !seen.insert(id.clone()) {
                    self.err(h, hfield, format!("destination {id} is listed twice for service `{name}`"));
                    continue;
                }
                if let (DestinationKind::File { path, .. }, Some(host)) = (&kind, ctx.hosts.get(&h.value)) {
                    self.file_place(name, &vars.account, host, path, path_at, &format!("{dfield}.path"));
                }
                out.push(Destination { id, host: h.value.clone(), kind: kind.clone() });
                // Each handle goes beside the service's own files on the same host, after them.
                if let RawDestination::Credd { handles, .. } = &dest.value {
                    for handle in handles {
                        let name = handle.value.name.value.clone();
                        out.push(Destination { id: handle_id(&h.value, &name), host: h.value.clone(), kind: DestinationKind::Handle { name } });
                    }
                }
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn file_destination(
        &mut self,
        dfield: &str,
        vars: &Vars,
        at: At,
        path: &Option<Spanned<String>>,
        content: &Option<Spanned<String>>,
        owner: &Option<Spanned<String>>,
        mode: &Option<Spanned<ModeValue>>,
        ttl: &Option<Spanned<DurationValue>>,
    ) -> DestinationKind {
        let ttl = self.duration(ttl, &format!("{dfield}.ttl"), &rules::VAULT_LIFETIME).unwrap_or(DEFAULT_CHILD_TTL);
        let template = path.as_ref().map(|p| p.value.as_str()).unwrap_or(DEFAULT_FILE_PATH);
        let resolved = self.template(at, &format!("{dfield}.path"), template, vars, true);
        if let Some(problem) = rules::path_problem(&resolved).or(resolved.ends_with('/').then_some("names a directory, not a file")) {
            self.err_at(at, format!("{dfield}.path"), format!("`{}`: {problem}", shown(template)));
        }
        let content = match content {
            None => FileContent::VaultToken,
            Some(c) => match c.value.as_str() {
                "vault_token" => FileContent::VaultToken,
                "access_token" => FileContent::AccessToken,
                other => {
                    self.err(c, format!("{dfield}.content"), format!("`{}` is not one of vault_token, access_token", shown(other)));
                    FileContent::VaultToken
                }
            },
        };
        let owner = match owner {
            Some(o) => self.owner(o, &format!("{dfield}.owner")),
            None => None,
        }
        .unwrap_or(Owner { user: vars.account.clone(), group: None });
        let mode = match mode {
            None => 0o600,
            Some(m) => {
                let problem = match m.value.to_mode() {
                    Ok(mode) if mode & 0o7000 != 0 => Err(format!("{mode:04o} sets the setuid, setgid or sticky bit: a token file is no program or directory; use 0600 or 0400")),
                    Ok(mode) if mode & 0o077 != 0 => Err(format!("{mode:04o} lets group or others read a token; use 0600 or 0400")),
                    Ok(mode) if mode & 0o400 == 0 => Err(format!("{mode:04o} does not let the owner read the token; use 0600 or 0400")),
                    other => other,
                };
                problem.unwrap_or_else(|e| {
                    self.err(m, format!("{dfield}.mode"), e);
                    0o600
                })
            }
        };
        DestinationKind::File { path: resolved, content, owner, mode, ttl }
    }

    /// Where a token file `path` of service `service` may lie on `host`: under one of the host's
    /// `file_roots`, in no system directory, outside the credd spool (its `.top`/`.use` files and
    /// the credmon's `pid` in particular), and at no other destination's path on the host.
    pub(super) fn file_place(&mut self, service: &str, account: &str, host: &HostSpec, path: &str, at: At, field: &str) {
        if rules::path_problem(path).is_some() {
            return; // reported with the path itself
        }
        let problem = if let Some(dir) = rules::system_dir_of(path) {
            Some(format!("{dir} is a system directory; token files never go there"))
        } else if let Some(spool) = host.spool.as_deref().filter(|spool| rules::is_under(path, spool)) {
            let rest = &path[spool.len()..];
            Some(if rest == "/pid" {
                format!("{path} is the credmon's pid file in host `{}`'s spool", host.name)
            } else if rest.ends_with(".top") || rest.ends_with(".use") {
                format!("{path} is a credd file in host `{}`'s spool {spool}; credd destinations write those", host.name)
            } else {
                format!("{path} lies inside host `{}`'s credd spool {spool}, which the credd and its credmon own", host.name)
            })
        } else if super::model::file_root_for(host, path).is_none() {
            Some(format!("{path} lies under none of host `{}`'s file_roots ({})", host.name, host.file_roots.join(", ")))
        } else {
            None
        };
        if let Some(p) = problem {
            self.err_at(at, field, p);
            return;
        }
        // `{uid}` stands for the account's uid on the host: the same template for two accounts
        // names two files; for one account, one.
        let key = (host.name.clone(), path.replace("{uid}", &format!("{{uid of {account}}}")));
        let here = format!("service `{service}`");
        match self.file_paths.get(&key) {
            Some(other) if *other != here => {
                let msg = format!("{path} on host `{}` is already the destination of {other}", host.name);
                self.err_at(at, field, msg);
            }
            _ => {
                self.file_paths.insert(key, here);
            }
        }
    }
}
