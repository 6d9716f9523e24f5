//! A service's `idtoken:` block: what `condor_token_create` is asked for (identity, `-authz`
//! levels, lifetime, signing key), the `iss` the token must carry, the host that mints it, where
//! the token goes and which daemons the revocation drill configures. Every problem is reported
//! where it is written.
//!
//! Must never accept a destination HTCondor would skip without a word: the file belongs to the
//! service's account, so a path in another account's home is refused.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::model::*;
use super::raw::*;
use super::rules::{self, Bounds, shown};
use super::validate::*;

/// The authorization levels `condor_token_create -authz` takes.
pub(super) const AUTHZ_LEVELS: &[&str] =
    &["READ", "WRITE", "ADMINISTRATOR", "CONFIG", "DAEMON", "NEGOTIATOR", "OWNER", "ADVERTISE_MASTER", "ADVERTISE_STARTD", "ADVERTISE_SCHEDD"];

/// Where the daemons' configuration directory is on a standard installation.
pub(super) const DEFAULT_CONFIG_DIR: &str = "/etc/condor/config.d";

const DEFAULT_IDTOKEN_RENEW_BEFORE: Duration = Duration::from_secs(7 * 86400);

/// `idtoken.lifetime`: a token that expires every hour would be minted every cycle; one without
/// an end is what this block exists to retire.
const IDTOKEN_LIFETIME: Bounds = Bounds {
    min: Duration::from_secs(3600),
    max: Duration::from_secs(366 * 86400),
    below: "the token would have to be minted again at almost every cycle",
    above: "a token living more than a year is what rotation is meant to replace",
};

const IDTOKEN_RENEW_BEFORE: Bounds = Bounds {
    min: Duration::from_secs(60),
    max: Duration::from_secs(365 * 86400),
    below: "a token about to expire would pass as fresh",
    above: "longer than any token lives",
};

/// A name that is one shell word and no option: a key name, a tokens.d file name.
fn plain_word(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['-', '.'])
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

impl Validator {
    /// The block and its destinations (`idtoken@<host>:<path>`), or `None` after reporting.
    pub(super) fn idtoken(
        &mut self,
        service: &str,
        account: &str,
        field: &str,
        block: &Spanned<RawIdToken>,
        ctx: &Context<'_>,
    ) -> Option<(IdTokenSpec, Vec<Destination>)> {
        let before = self.diags.len();
        let b = &block.value;

        let identity = b.identity.value.clone();
        let well_formed = identity.split_once('@').is_some_and(|(u, d)| !u.is_empty() && !d.is_empty() && !d.contains('@'));
        if !well_formed || !plain_word(&identity) {
            self.err(&b.identity, format!("{field}.identity"), format!("`{}` is not of the form user@domain", shown(&identity)));
        }
        let mut authz: Vec<String> = Vec::new();
        for (i, a) in b.authz.iter().enumerate() {
            if !AUTHZ_LEVELS.contains(&a.value.as_str()) {
                self.err(a, format!("{field}.authz[{i}]"), format!("`{}` is not an authorization level (known: {})", shown(&a.value), AUTHZ_LEVELS.join(", ")));
            } else if authz.contains(&a.value) {
                self.err(a, format!("{field}.authz[{i}]"), format!("{} is listed twice", a.value));
            } else {
                authz.push(a.value.clone());
            }
        }
        let lifetime = self.duration(&Some(b.lifetime.clone()), &format!("{field}.lifetime"), &IDTOKEN_LIFETIME);
        let renew_before = self.duration(&b.renew_before, &format!("{field}.renew_before"), &IDTOKEN_RENEW_BEFORE).unwrap_or(DEFAULT_IDTOKEN_RENEW_BEFORE);
        if let Some(l) = lifetime
            && renew_before >= l
        {
            let at = b.renew_before.as_ref().map(loc).unwrap_or(loc(&b.lifetime));
            self.err_at(at, format!("{field}.renew_before"), format!("must be shorter than the lifetime ({}): every cycle would mint a new token", humantime::format_duration(l)));
        }
        if !plain_word(&b.key.value) || b.key.value.contains('@') {
            self.err(&b.key, format!("{field}.key"), format!("`{}` is not a signing key name (letters, digits, `-_.`)", shown(&b.key.value)));
        }
        let issuer = b.issuer.value.clone();
        if issuer.is_empty() || issuer.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"') {
            self.err(&b.issuer, format!("{field}.issuer"), format!("`{}` is not a trust domain", shown(&issuer)));
        }
        let known_host = |v: &mut Self, h: &Spanned<String>, f: String| -> bool {
            if ctx.raw.hosts.contains_key(&h.value) {
                return true;
            }
            let known: Vec<&str> = ctx.raw.hosts.keys().map(String::as_str).collect();
            v.err(h, f, format!("no host `{}` under hosts (known: {})", shown(&h.value), known.join(", ")));
            false
        };
        known_host(self, &b.mint_host, format!("{field}.mint_host"));
        let name = b.name.as_ref().map(|n| n.value.clone()).unwrap_or_else(|| service.to_string());
        if let Some(n) = &b.name
            && (!plain_word(&n.value) || n.value.contains('@'))
        {
            self.err(n, format!("{field}.name"), format!("`{}` is not a file name (letters, digits, `-_.`)", shown(&n.value)));
        }

        let mut destinations: Vec<Destination> = Vec::new();
        if b.destinations.value.is_empty() {
            self.err(&b.destinations, format!("{field}.destinations"), "no destinations: the token would go nowhere");
        }
        for (di, d) in b.destinations.value.iter().enumerate() {
            let dfield = format!("{field}.destinations[{di}]");
            let path = match &d.value.path {
                None => format!("~{account}/.condor/tokens.d/{name}"),
                Some(p) => {
                    self.idtoken_path(account, p, &format!("{dfield}.path"));
                    p.value.clone()
                }
            };
            if d.value.hosts.is_empty() {
                self.err(d, format!("{dfield}.hosts"), "list at least one host");
            }
            for (hi, h) in d.value.hosts.iter().enumerate() {
                let hfield = format!("{dfield}.hosts[{hi}]");
                if !known_host(self, h, hfield.clone()) {
                    continue;
                }
                let id = format!("idtoken@{}:{path}", h.value);
                if destinations.iter().any(|x| x.id == id) {
                    self.err(h, hfield, format!("destination {id} is listed twice"));
                    continue;
                }
                if let (Some(p), Some(host)) = (&d.value.path, ctx.hosts.get(&h.value)) {
                    self.file_place(service, account, host, &p.value, loc(p), &format!("{dfield}.path"));
                }
                destinations.push(Destination { id, host: h.value.clone(), kind: DestinationKind::IdToken { path: path.clone() } });
            }
        }

        let (revocation_hosts, config_dir) = match &b.revocation {
            None => (Vec::new(), DEFAULT_CONFIG_DIR.to_string()),
            Some(r) => {
                let mut hosts = Vec::new();
                for (hi, h) in r.value.hosts.iter().enumerate() {
                    if known_host(self, h, format!("{field}.revocation.hosts[{hi}]")) && !hosts.contains(&h.value) {
                        hosts.push(h.value.clone());
                    }
                }
                if r.value.hosts.is_empty() {
                    self.err(r, format!("{field}.revocation.hosts"), "list the hosts whose daemons accept the token");
                }
                let dir = r.value.config_dir.as_ref().map(|c| c.value.clone()).unwrap_or_else(|| DEFAULT_CONFIG_DIR.into());
                if let Some(c) = &r.value.config_dir
                    && let Some(problem) = rules::path_problem(&c.value)
                {
                    self.err(c, format!("{field}.revocation.config_dir"), format!("`{}`: {problem}", shown(&c.value)));
                }
                (hosts, dir.trim_end_matches('/').to_string())
            }
        };

        let spec = IdTokenSpec {
            identity,
            authz,
            lifetime: lifetime.unwrap_or(IDTOKEN_LIFETIME.min),
            renew_before,
            key: b.key.value.clone(),
            issuer,
            mint_host: b.mint_host.value.clone(),
            name,
            revocation_hosts,
            config_dir,
        };
        (self.diags.len() == before).then_some((spec, destinations))
    }

    /// An explicit IDToken path: absolute or `~<account>/…`, naming a file. A path in another
    /// account's home would be read (and skipped) as that account.
    fn idtoken_path(&mut self, account: &str, p: &Spanned<String>, field: &str) {
        let path = p.value.as_str();
        let problem = if let Some(rest) = path.strip_prefix('~') {
            match rest.split_once('/') {
                Some((user, tail)) if user == account && !tail.is_empty() && !tail.ends_with('/') => {
                    rules::path_problem(&format!("/{tail}")).map(str::to_string)
                }
                Some((user, _)) if user != account => Some(format!(
                    "lies in ~{user}, but the token belongs to the service account {account}: HTCondor skips a token file its reader does not own"
                )),
                _ => Some("names no file below the home directory".into()),
            }
        } else {
            rules::path_problem(path).or(path.ends_with('/').then_some("names a directory, not a file")).map(str::to_string)
        };
        if let Some(problem) = problem {
            self.err(p, field, format!("`{}`: {problem}", shown(path)));
        }
    }
}
