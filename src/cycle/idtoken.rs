//! IDTokens in a cycle: for each service with an `idtoken:` block, mint a new token when none is
//! current, the request changed, less than `renew_before` is left or its bytes are gone (the
//! token checked, kept and recorded before anything uses it); then put the current token on
//! every destination that does not hold it already (read back first, so an unchanged token is
//! not rewritten every cycle).
//!
//! Must never deliver a token whose claims were refused (the destinations keep what they had),
//! nor use a token before it is kept and recorded.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::ledger::Ledger;
use super::plan::{file_root, host_target};
use super::{Ctx, error_chain};
use crate::deliver;
use crate::idtoken::{self, TokenFile};
use crate::inventory::{Destination, DestinationKind, HostSpec, ServiceSpec};
use crate::keep::TokenKeeper;
use crate::secret::{Fingerprint, Secret};
use crate::state::{Delivered, IdTokenRecord, IdTokenState, RunId};

/// Per destination: its outcome, and a warning (other files beside it in its `tokens.d`).
type Results = Vec<(String, Result<Delivered, String>, Option<String>)>;

/// What a destination's warning says about the files beside it.
fn neighbour_warning(others: &[String]) -> String {
    format!(
        "other token files in the same tokens.d: {} (HTCondor uses the first usable one in sort order)",
        others.join(", ")
    )
}

/// Every IDToken destination's outcome, by (service, destination id).
pub(super) async fn deliver_idtokens(ctx: &Ctx<'_>, services: &[&ServiceSpec]) -> BTreeMap<(String, String), (Result<Delivered, String>, Option<String>)> {
    let mut out = BTreeMap::new();
    let keeper = match TokenKeeper::open_idtokens(ctx.state_dir) {
        Ok(k) => Some(k),
        Err(e) => {
            warn!(error = %e, "cannot open the IDToken store");
            None
        }
    };
    for spec in services.iter().filter(|s| s.idtoken.is_some()) {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let job = Job {
            spec: (*spec).clone(),
            hosts: ctx.inv.hosts.clone(),
            ledger: ctx.ledger.clone(),
            keeper: keeper.clone(),
            run: ctx.run,
            dry_run: ctx.dry_run,
            skip_hosts: ctx.skip_hosts.to_vec(),
            now: super::now_unix(),
        };
        let name = spec.name.clone();
        let span = tracing::info_span!("idtoken", service = %name);
        let results = match tokio::task::spawn_blocking(move || span.in_scope(|| job.run())).await {
            Ok(r) => r,
            Err(e) => {
                warn!(service = %name, error = %e, "the IDToken task ended abnormally");
                continue;
            }
        };
        for (id, r, warning) in results {
            out.insert((name.clone(), id), (r, warning));
        }
    }
    out
}

struct Job {
    spec: ServiceSpec,
    hosts: BTreeMap<String, HostSpec>,
    ledger: Ledger,
    keeper: Option<TokenKeeper>,
    run: RunId,
    dry_run: bool,
    skip_hosts: Vec<String>,
    now: i64,
}

impl Job {
    fn destinations(&self) -> Vec<&Destination> {
        self.spec.destinations.iter().filter(|d| matches!(d.kind, DestinationKind::IdToken { .. }) && !self.skip_hosts.contains(&d.host)).collect()
    }

    fn fail_all(&self, reason: &str) -> Results {
        self.destinations().iter().map(|d| (d.id.clone(), Err(format!("idtoken: {reason}")), None)).collect()
    }

    fn run(&self) -> Results {
        let Some(want) = &self.spec.idtoken else { return Vec::new() };
        let Some(keeper) = &self.keeper else { return self.fail_all("the IDToken store in the state directory cannot be opened") };
        let service = &self.spec.name;
        let current = match self.ledger.db(|s| s.current_idtoken(service)) {
            Ok(c) => c,
            Err(e) => return self.fail_all(&format!("cannot read the current IDToken: {}", error_chain(&e))),
        };
        let bytes = current.as_ref().and_then(|c| keeper.get(&c.hash).ok().flatten());
        let reason = match (&current, &bytes) {
            (None, _) => Some("no IDToken minted yet"),
            (Some(c), _) if c.request != want.request() => Some("the request changed"),
            (Some(c), _) if idtoken::due(c.exp, want.renew_before, self.now) => Some("less than renew_before left"),
            (Some(_), None) => Some("the current token's bytes are not kept"),
            _ => None,
        };
        if self.dry_run {
            if let Some(reason) = reason {
                info!(reason, "dry run: an IDToken would be minted");
            }
            let held = Delivered { vault_expiry: current.map(|c| c.exp), access: None, vault_root: None, paths: Vec::new() };
            return self.destinations().iter().map(|d| (d.id.clone(), Ok(held.clone()), None)).collect();
        }
        let (token, record, minted) = match (reason, current, bytes) {
            (None, Some(record), Some(token)) => (token, record, false),
            (reason, ..) => match self.mint(keeper, reason.unwrap_or("rotation")) {
                Ok((token, record)) => (token, record, true),
                Err(reason) => return self.fail_all(&reason),
            },
        };
        let fingerprint = Fingerprint::of(&token, Some(record.jti.clone()), Some(record.exp));
        let mut by_host: BTreeMap<&str, Vec<&Destination>> = BTreeMap::new();
        for d in self.destinations() {
            by_host.entry(d.host.as_str()).or_default().push(d);
        }
        let mut out = Vec::new();
        for (host, dests) in by_host {
            let outcome = self.deliver_to_host(host, &dests, &token, minted);
            let neighbours = self.neighbours(host, &outcome);
            for (id, r) in outcome {
                let others = neighbours.get(&id).cloned();
                if let Some(others) = &others
                    && let Err(e) = self.ledger.write(|s| s.set_idtoken_neighbours(service, &id, others))
                {
                    warn!(destination = %id, error = %error_chain(&e), "cannot record the files beside the IDToken");
                }
                let warning = others.filter(|o| !o.is_empty()).map(|o| neighbour_warning(&o));
                if let Some(w) = &warning {
                    warn!(host, destination = %id, "{w}");
                }
                out.push((id, r.map(|path| Delivered { vault_expiry: Some(record.exp), access: Some(fingerprint.clone()), vault_root: None, paths: vec![path] }), warning));
            }
        }
        out
    }

    /// The other names in the directory of each file that now holds the token, by destination
    /// (destinations whose directory could not be listed are left out).
    fn neighbours(&self, host: &str, outcome: &[(String, Result<String, String>)]) -> BTreeMap<String, Vec<String>> {
        let held: Vec<(&str, &str, &str)> = outcome
            .iter()
            .filter_map(|(id, r)| r.as_ref().ok().and_then(|p| p.rsplit_once('/')).map(|(dir, name)| (id.as_str(), dir, name)))
            .collect();
        let Some(target) = self.hosts.get(host).and_then(|h| host_target(h).ok()) else { return BTreeMap::new() };
        let dirs: Vec<String> = held.iter().map(|(_, d, _)| d.to_string()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        if dirs.is_empty() {
            return BTreeMap::new();
        }
        let listed = match deliver::list_dirs(&target, &dirs) {
            Ok(l) => l,
            Err(e) => {
                warn!(host, error = %error_chain(&e), "cannot list tokens.d");
                return BTreeMap::new();
            }
        };
        held.iter()
            .filter_map(|(id, dir, name)| {
                let (_, names) = listed.iter().find(|(d, _)| d == dir)?;
                let names = names.as_ref().ok()?;
                Some((id.to_string(), names.iter().filter(|n| n != name).cloned().collect()))
            })
            .collect()
    }

    /// Mints, checks, keeps and records a new token; `Err` is the reason every destination
    /// failed (nothing was written anywhere).
    fn mint(&self, keeper: &TokenKeeper, reason: &str) -> Result<(Secret, IdTokenRecord), String> {
        let want = self.spec.idtoken.as_ref().expect("checked by the caller");
        let host = self.hosts.get(&want.mint_host).ok_or_else(|| format!("mint host {} is not in the inventory", want.mint_host))?;
        let target = host_target(host)?;
        let (token, claims) = idtoken::mint(&self.spec.name, &target, want, self.now).map_err(|e| {
            warn!(host = %want.mint_host, error = %error_chain(&e), "IDToken not minted or refused; the destinations keep what they hold");
            error_chain(&e)
        })?;
        let hash = keeper.put(&token).map_err(|e| format!("cannot keep the new IDToken: {e}"))?;
        let record = IdTokenRecord {
            hash,
            service: self.spec.name.clone(),
            jti: claims.jti.clone(),
            sub: claims.sub.clone(),
            iat: claims.iat,
            exp: claims.exp,
            kid: claims.kid.clone(),
            request: want.request(),
            state: IdTokenState::Current,
            run_id: Some(self.run.0),
            created: self.now,
        };
        self.ledger.write(|s| s.record_idtoken(Some(self.run), &record)).map_err(|e| format!("cannot record the new IDToken: {}", error_chain(&e)))?;
        info!(host = %want.mint_host, idtoken = %claims.fingerprint, sub = %claims.sub, reason, "IDToken minted");
        Ok((token, record))
    }

    /// Puts `token` on one host's destinations; per destination the resolved path, or why not.
    /// Unless it was just minted, a file that already holds it is left alone.
    fn deliver_to_host(&self, host: &str, dests: &[&Destination], token: &Secret, minted: bool) -> Vec<(String, Result<String, String>)> {
        let fail = |reason: String| dests.iter().map(|d| (d.id.clone(), Err(format!("idtoken: {reason}")))).collect();
        let Some(spec) = self.hosts.get(host) else { return fail(format!("host {host} is not in the inventory")) };
        let target = match host_target(spec) {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        let account = &self.spec.account;
        let templates: Vec<&str> = dests
            .iter()
            .filter_map(|d| match &d.kind {
                DestinationKind::IdToken { path } => Some(path.as_str()),
                _ => None,
            })
            .collect();
        let home = if templates.iter().any(|t| t.starts_with('~')) {
            match deliver::homes(&target, std::slice::from_ref(account)) {
                Ok(mut homes) => match homes.remove(account) {
                    Some(Ok(h)) => Some(h),
                    Some(Err(e)) => return fail(format!("host {host}: home directory of {account}: {e}")),
                    None => None,
                },
                Err(e) => return fail(error_chain(&e)),
            }
        } else {
            None
        };
        let mut files = Vec::new();
        let mut out = Vec::new();
        for (d, template) in dests.iter().zip(&templates) {
            match idtoken::resolve_path(template, account, home.as_deref()) {
                Ok(path) => {
                    let root_is_home = template.starts_with('~');
                    let root = if root_is_home { home.clone().unwrap_or_default() } else { file_root(spec, &path) };
                    files.push(TokenFile { id: d.id.clone(), path, root, root_is_home });
                }
                Err(e) => out.push((d.id.clone(), Err(format!("idtoken: host {host}: {e}")))),
            }
        }
        if !minted {
            let content = Secret::new(format!("{}\n", token.expose())).short_hash();
            let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
            match deliver::read_back(&target, &paths) {
                Ok(found) => files.retain(|f| {
                    let holds = found.iter().any(|(p, r)| *p == f.path && matches!(r, Ok(Some(h)) if *h == content));
                    if holds {
                        out.push((f.id.clone(), Ok(f.path.clone())));
                    }
                    !holds
                }),
                Err(e) => return fail(error_chain(&e)),
            }
        }
        if files.is_empty() {
            return out;
        }
        let plan = idtoken::host_plan(target, account, &files, token);
        let outcome = deliver::push_to_host(&plan, false);
        for f in outcome.files {
            out.push((f.id, f.result.map(|()| f.path).map_err(|e| format!("idtoken: {}", error_chain(&e)))));
        }
        out
    }
}

/// What the IDToken drill did.
#[derive(Debug, Default)]
pub struct IdTokenDrillReport {
    /// (destination, host, outcome) for every recorded IDToken file.
    pub removed: Vec<(String, String, Result<(), String>)>,
    /// The `jti`s now denied.
    pub denied: Vec<String>,
    /// (host, outcome) of the revocation file and `condor_reconfig` on each accepting host.
    pub configured: Vec<(String, Result<(), String>)>,
    /// The cycle that minted and delivered a new token.
    pub redelivered: Option<super::RunReport>,
}

impl IdTokenDrillReport {
    pub fn all_ok(&self) -> bool {
        self.removed.iter().all(|(_, _, r)| r.is_ok())
            && self.configured.iter().all(|(_, r)| r.is_ok())
            && self.redelivered.as_ref().is_none_or(super::RunReport::all_ok)
    }
}

/// The IDToken drill for `service`: removes the token files recorded as delivered; on every
/// host whose daemons accept the token, writes (atomically, merged with what was there) a
/// `config.d` file whose `SEC_TOKEN_REVOCATION_EXPR` denies every recorded `jti` and any token
/// for the identity issued before now, and runs `condor_reconfig`; records the tokens denied;
/// then runs a cycle for the service, which mints and distributes a new token.
pub fn revoke_idtoken(
    inv: &crate::inventory::Inventory,
    state_dir: &std::path::Path,
    service: &str,
    runtime: &tokio::runtime::Handle,
    lock_wait: std::time::Duration,
) -> Result<IdTokenDrillReport, super::CycleSetupError> {
    let spec = inv.services.get(service).ok_or_else(|| super::CycleError::UnknownService(service.into(), inv.services.keys().cloned().collect::<Vec<_>>().join(", ")))?;
    let want = spec.idtoken.as_ref().ok_or_else(|| super::CycleError::NoIdToken(service.into()))?;
    let mut report = IdTokenDrillReport::default();
    {
        let _lock = super::take_lock(state_dir, lock_wait)?;
        let store = crate::state::StateStore::open(state_dir)?;
        let keeper = TokenKeeper::open_idtokens(state_dir)?;
        let before = super::now_unix();
        let records = store.idtokens(Some(service))?;
        let statuses: Vec<_> = store.statuses()?.into_iter().filter(|s| s.service == service && s.destination.starts_with("idtoken@")).collect();

        let owner = deliver::Owner { user: spec.account.clone(), group: String::new() };
        let mut by_host: BTreeMap<&str, Vec<&crate::state::DestinationStatus>> = BTreeMap::new();
        for st in &statuses {
            by_host.entry(st.host.as_str()).or_default().push(st);
        }
        for (host, rows) in by_host {
            let removals: Vec<deliver::Removal> = rows
                .iter()
                .flat_map(|st| {
                    let template = spec.destinations.iter().find(|d| d.id == st.destination).and_then(|d| match &d.kind {
                        DestinationKind::IdToken { path } => Some(path.clone()),
                        _ => None,
                    });
                    st.paths.iter().map(move |p| (p.clone(), template.clone()))
                })
                .map(|(path, template)| {
                    let root = removal_root(inv.hosts.get(host), &spec.account, &path, template.as_deref());
                    deliver::Removal { path, root, dir_owner: Some(owner.clone()) }
                })
                .collect();
            let outcome = match inv.hosts.get(host).ok_or_else(|| format!("host `{host}` is not in the inventory: cannot reach it")).and_then(host_target) {
                Err(e) => Err(e),
                Ok(target) => runtime
                    .block_on(runtime.spawn_blocking(move || deliver::remove_from_host(&target, &removals)))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| error_chain(&e))),
            };
            for st in rows {
                let result = match &outcome {
                    Err(e) => Err(e.clone()),
                    Ok(per_path) => match per_path.iter().find(|(p, r)| st.paths.contains(p) && r.is_err()) {
                        Some((_, Err(e))) => Err(error_chain(e)),
                        _ => Ok(()),
                    },
                };
                if result.is_ok() {
                    store.forget_destination(&st.service, &st.destination)?;
                }
                report.removed.push((st.destination.clone(), host.to_string(), result));
            }
        }

        let denial = idtoken::revocation::Denial { jtis: records.iter().map(|r| r.jti.clone()).collect(), sub: want.identity.clone(), before };
        report.denied = denial.jtis.clone();
        let config_path = format!("{}/{}", want.config_dir, idtoken::revocation::file_name(service));
        for host in &want.revocation_hosts {
            let result = inv.hosts.get(host).ok_or_else(|| format!("host `{host}` is not in the inventory")).and_then(host_target).and_then(|target| {
                let (denial, path, root) = (denial.clone(), config_path.clone(), want.config_dir.clone());
                runtime
                    .block_on(runtime.spawn_blocking(move || configure_host(target, &path, &root, &denial)))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
            });
            match &result {
                Ok(()) => info!(service, host = %host, path = %config_path, "IDTokens denied; daemons reconfigured"),
                Err(e) => warn!(service, host = %host, error = %e, "IDTokens NOT denied on this host"),
            }
            report.configured.push((host.clone(), result));
        }
        store.deny_idtokens(service)?;
        for r in &records {
            if let Err(e) = keeper.forget(&r.hash) {
                warn!(service, error = %e, "cannot delete a denied IDToken's bytes");
            }
        }
    }
    let opts = super::CycleOptions::services(vec![service.to_string()]);
    report.redelivered = Some(super::run_once(inv, state_dir, &opts, runtime, lock_wait)?);
    Ok(report)
}

/// Where a recorded IDToken file is judged from for removal: the directory holding the
/// account's home for a `~` path (the home and what is below it may be the account's), else
/// the host's file root.
fn removal_root(host: Option<&HostSpec>, account: &str, path: &str, template: Option<&str>) -> String {
    let home_suffix = template.and_then(|t| t.strip_prefix(&format!("~{account}")));
    match (home_suffix.and_then(|s| path.strip_suffix(s)), host) {
        (Some(home), _) => home.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/".to_string() } else { d.to_string() }).unwrap_or_else(|| "/".into()),
        (None, Some(h)) => file_root(h, path),
        (None, None) => "/".into(),
    }
}

/// Reads the bastion's revocation file on one host, writes the merged one in its place (temp,
/// fsync, rename; 0644 so the daemons can read it) and runs `condor_reconfig`. Blocking.
fn configure_host(target: deliver::HostTarget, path: &str, root: &str, denial: &idtoken::revocation::Denial) -> Result<(), String> {
    let existing = deliver::read_text(&target, path, 64 * 1024).map_err(|e| error_chain(&e))?;
    let text = idtoken::revocation::config_file(existing.as_deref(), denial);
    let plan = deliver::HostPlan {
        target: target.clone(),
        dirs: Vec::new(),
        files: vec![deliver::RemoteFile {
            id: path.to_string(),
            path: path.to_string(),
            root: root.to_string(),
            uid_of: None,
            content: Secret::new(text),
            mode: 0o644,
            owner: None,
            only_if_absent: false,
            after: None,
            keep_if_same: false,
        }],
        signal_credmon: Vec::new(),
        expect_present: Vec::new(),
        read_back: Vec::new(),
        probe_credmon: Vec::new(),
        credd_names: Vec::new(),
    };
    let outcome = deliver::push_to_host(&plan, false);
    outcome.connected.map_err(|e| error_chain(&e))?;
    for f in outcome.files {
        f.result.map_err(|e| error_chain(&e))?;
    }
    deliver::run_command(&target, "reconfigure the HTCondor daemons", "condor_reconfig").map_err(|e| error_chain(&e))
}
