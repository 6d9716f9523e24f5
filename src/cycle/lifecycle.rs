//! The Vault token lifecycle, as condor_vault_storer keeps it: one login token per service,
//! reused for weeks and delivered to the credd; a child of it, with its own shorter TTL, for each
//! Vault-token file; and the `revoke` drill that takes a service's credentials off its
//! destinations and kills its tokens, or settles the tokens only an absent host keeps alive.
//!
//! Vault tokens form trees: revoking a parent kills its children, and the credmon deletes a
//! `.top` whose token gets `permission denied`. Which token may be revoked when is the
//! ledger's rule ([`super::ledger`]); this module mints and asks.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::ledger::{holders_of, Ledger};
use super::obtain::{expiry_of, record_or_revoke, Job};
use super::plan::{file_root, host_target, owner};
use super::{error_chain, now_unix, CycleOptions, CycleSetupError, DestinationKind, FileContent, RunReport, ServiceTokens};
use crate::broker::Broker;
use crate::deliver::Removal;
use crate::inventory::{HostSpec, Inventory, ServiceSpec};
use crate::keep::TokenKeeper;
use crate::secret::Secret;
use crate::state::{DestinationStatus, HoldState, Holding, LedgerToken, NewToken, StateStore, TokenKind, TokenState};

/// How much earlier than its parent a child token expires.
const CHILD_MARGIN_SECS: i64 = 60;

/// A child token minted for one file destination this cycle.
pub(super) struct Child {
    pub token: Secret,
    /// Unix seconds.
    pub expiry: i64,
}

/// Children by (service, destination id); `Err` when one could not be minted.
pub(super) type Children = BTreeMap<(String, String), Result<Child, String>>;

/// The child (hash, expiry) a Vault-token file already holds, if it may simply be written
/// again: the ledger says the file holds that one token and nothing else may be there, the
/// token is a live child of `parent` (the login token in use) that a cycle minted (an imported
/// one's expiry is a guess), and it has more than `renew_before` left at `now`.
fn reusable_child<'t>(tokens: &'t [LedgerToken], holdings: &[Holding], key: &(String, String), parent: &str, renew_before: Duration, now: i64) -> Option<(&'t str, i64)> {
    let mut held = holdings.iter().filter(|h| h.service == key.0 && h.destination == key.1 && h.state.may_hold());
    let first = held.next()?;
    if first.state != HoldState::Holds || held.any(|h| h.token != first.token || h.state != HoldState::Holds) {
        return None;
    }
    let t = tokens.iter().find(|t| t.hash == first.token)?;
    let expiry = t.expiry?;
    let left = Duration::from_secs(u64::try_from(expiry.saturating_sub(now)).ok()?);
    let usable = t.kind == TokenKind::Child
        && t.state == TokenState::Live
        && t.run_id.is_some()
        && t.parent.as_deref() == Some(parent)
        && left > renew_before;
    usable.then_some((t.hash.as_str(), expiry))
}

/// Gives every Vault-token file of a service that obtained valid tokens (`spec`, as `tokens`;
/// destinations on `skip_hosts` left out) its child of the login token: the one it holds while
/// that may be reused ([`reusable_child`]), else a new one whose TTL is the destination's `ttl`
/// but never beyond what the parent has left, recorded in the ledger before anything uses it. A dry run mints nothing. A creation whose reply was lost
/// is not repeated: a child it may have made is unknown here and dies with its TTL or parent.
pub(super) async fn mint_children(job: &Job, skip_hosts: &[String], spec: &ServiceSpec, tokens: &ServiceTokens) -> Children {
    let mut children = Children::new();
    if job.dry_run {
        return children;
    }
    // Every Vault-token file to fill: (service, destination), the login token it descends from,
    // and how long before its expiry a child is replaced.
    let mut wanted = Vec::new();
    for dest in spec.destinations.iter().filter(|d| !skip_hosts.contains(&d.host)) {
        if matches!(dest.kind, DestinationKind::File { content: FileContent::VaultToken, .. }) {
            wanted.push(((spec.name.clone(), dest.id.clone()), tokens.vault_token.short_hash(), spec.renew_before));
        }
    }
    if wanted.is_empty() {
        return children;
    }
    let ledger = job.ledger.clone();
    let now = now_unix();
    let mut reusable: BTreeMap<(String, String), Child> = tokio::task::spawn_blocking(move || {
        let (known, holdings) = match ledger.db(|s| Ok((s.tokens()?, s.holdings()?))) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot read the token ledger; every token file gets a new child");
                return BTreeMap::new();
            }
        };
        wanted
            .into_iter()
            .filter_map(|(key, parent, renew_before)| {
                let (hash, expiry) = reusable_child(&known, &holdings, &key, &parent, renew_before, now)?;
                // Bytes that cannot be read mean a new child, as if none were kept.
                let token = ledger.keeper.get(hash).ok()??;
                Some((key, Child { token, expiry }))
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    for dest in spec.destinations.iter().filter(|d| !skip_hosts.contains(&d.host)) {
        let DestinationKind::File { content: FileContent::VaultToken, ttl, .. } = &dest.kind else { continue };
        let key = (spec.name.clone(), dest.id.clone());
        if let Some(child) = reusable.remove(&key) {
            info!(service = %spec.name, host = %dest.host, destination = %dest.id, vault = %child.token.short_hash(), "child token reused");
            children.insert(key, Ok(child));
            continue;
        }
        // What the parent has left now, less a minute, so that the child's expiry (counted
        // from its creation a moment later, in whole seconds) stays before the parent's.
        let parent_left = u64::try_from(tokens.vault_expiry - now_unix() - CHILD_MARGIN_SECS).unwrap_or(1).max(1);
        let ttl = (*ttl).min(tokens.vault_ttl).min(Duration::from_secs(parent_left));
        let child = match job.broker.create_child(&tokens.vault_token, ttl).await {
            Ok(login) => {
                let parent = tokens.vault_token.short_hash();
                info!(service = %spec.name, host = %dest.host, destination = %dest.id, vault = %login.token.short_hash(),
                      parent = %parent, ttl = %humantime::format_duration(ttl), "child token minted");
                let expiry = expiry_of(ttl.min(login.lease)).unwrap_or(tokens.vault_expiry);
                let row = NewToken { hash: login.token.short_hash(), service: spec.name.clone(), kind: TokenKind::Child, parent: Some(parent), expiry: Some(expiry) };
                match record_or_revoke(&job.ledger, &job.broker, job.run, &login.token, row).await {
                    Ok(()) => Ok(Child { expiry, token: login.token }),
                    Err(reason) => Err(format!("deliver: child token: {reason}")),
                }
            }
            Err(e) => {
                if e.outcome_unknown() {
                    warn!(service = %spec.name, destination = %dest.id, error = %error_chain(&e), "the child creation's reply was lost: a child it may have made is unknown here and dies with its TTL or its parent");
                }
                Err(format!("deliver: cannot mint a child token: {}", error_chain(&e)))
            }
        };
        children.insert(key, child);
    }
    children
}

/// A service no longer in the inventory that still has credentials out there or tokens kept.
#[derive(Clone, Debug)]
pub struct Orphan {
    pub service: String,
    pub destination: String,
    pub host: String,
}

impl Orphan {
    pub fn reason(&self) -> String {
        format!(
            "service `{}` was removed from the inventory but its credentials are still live here; run: token-bastion revoke --service {}",
            self.service, self.service
        )
    }
}

/// Removed services with recorded destinations or live tokens in the ledger: never left behind
/// silently.
pub(super) fn orphans(inv: &Inventory, tokens: &[LedgerToken], statuses: &[DestinationStatus]) -> Vec<Orphan> {
    let mut out: Vec<Orphan> = statuses
        .iter()
        .filter(|s| !inv.services.contains_key(&s.service) && s.last_success.is_some())
        .map(|s| Orphan { service: s.service.clone(), destination: s.destination.clone(), host: s.host.clone() })
        .collect();
    for t in tokens.iter().filter(|t| t.state.is_alive()) {
        if !inv.services.contains_key(&t.service) && !out.iter().any(|o| o.service == t.service) {
            out.push(Orphan { service: t.service.clone(), destination: "kept Vault tokens".into(), host: "bastion".into() });
        }
    }
    for o in &out {
        warn!(service = %o.service, host = %o.host, destination = %o.destination, "{}", o.reason());
    }
    out
}

/// What `revoke` did.
#[derive(Debug, Default)]
pub struct RevokeReport {
    /// (destination, host, outcome) for every destination credentials were removed from.
    pub removed: Vec<(String, String, Result<(), String>)>,
    /// (token short hash, outcome) for every token the bastion held.
    pub revoked: Vec<(String, Result<(), String>)>,
    /// The cycle that gave the service's other destinations fresh tokens (`--host`).
    pub redelivered: Option<RunReport>,
}

impl RevokeReport {
    pub fn all_ok(&self) -> bool {
        self.removed.iter().all(|(_, _, r)| r.is_ok())
            && self.revoked.iter().all(|(_, r)| r.is_ok())
            && self.redelivered.as_ref().is_none_or(RunReport::all_ok)
    }
}

/// Paths to remove for one recorded destination: those recorded at delivery, else (for a credd
/// destination of a service still in the inventory) the layout's two files.
fn paths_of(inv: &Inventory, st: &DestinationStatus) -> Vec<String> {
    if !st.paths.is_empty() {
        return st.paths.clone();
    }
    let Some(spec) = inv.services.get(&st.service) else { return Vec::new() };
    let Some(dest) = spec.destinations.iter().find(|d| d.id == st.destination) else { return Vec::new() };
    match (&dest.kind, inv.hosts.get(&dest.host).and_then(|h| h.spool.as_deref())) {
        (DestinationKind::Credd, Some(spool)) => ["top", "use"]
            .iter()
            .map(|ext| format!("{}/{}/{}.{ext}", spool.trim_end_matches('/'), spec.account, spec.oauth_service))
            .collect(),
        (DestinationKind::File { path, .. }, _) if !path.contains("{uid}") => vec![path.clone()],
        _ => Vec::new(),
    }
}

/// What to remove at `path` on `host`: a credd file is judged from the spool (its account
/// directory may belong to the spool owner), any other file from its file root.
fn removal(host: &HostSpec, path: String) -> Removal {
    match host.spool.as_deref().map(|s| s.trim_end_matches('/')) {
        Some(spool) if path.strip_prefix(spool).is_some_and(|rest| rest.starts_with('/')) => {
            Removal { root: spool.to_string(), dir_owner: Some(owner(&host.spool_owner)), path }
        }
        _ => Removal { root: file_root(host, &path), dir_owner: None, path },
    }
}

/// The incident drill: removes `service`'s credentials from its destinations (only on `host`,
/// if given) and revokes every Vault token the bastion holds for it, so that nothing delivered
/// keeps working. With `host`, the service's other destinations then get fresh tokens from a
/// new login at once (their old ones died with the revocation). Works for a service already
/// removed from the inventory, from what the state DB recorded.
pub fn revoke(
    inv: &Inventory,
    state_dir: &Path,
    service: &str,
    host: Option<&str>,
    runtime: &tokio::runtime::Handle,
    lock_wait: Duration,
) -> Result<RevokeReport, CycleSetupError> {
    let mut report = RevokeReport::default();
    {
        let _lock = super::take_lock(state_dir, lock_wait)?;
        let (ledger, broker, statuses) = open_ledger(inv, state_dir)?;
        let targets: Vec<&DestinationStatus> =
            // IDTokens have their own drill (`revoke --idtoken`): Vault revocation does not touch them.
            statuses.iter().filter(|s| s.service == service && host.is_none_or(|h| s.host == h) && !s.destination.starts_with("idtoken@")).collect();

        // Tokens first: once revoked, whatever is left on a host no longer works, even if it
        // cannot be reached to be removed. Children first: a parent takes them along.
        let mut tokens: Vec<LedgerToken> = ledger.db(|s| s.tokens())?.into_iter().filter(|t| t.service == service && t.state.is_alive()).collect();
        tokens.sort_by_key(|t| t.kind == TokenKind::Login);
        runtime.block_on(async {
            for t in &tokens {
                let outcome = ledger.retire(&broker, &t.hash, service, "kept Vault token").await;
                report.revoked.push((t.hash.clone(), outcome));
            }
        });

        let mut by_host: BTreeMap<&str, Vec<&DestinationStatus>> = BTreeMap::new();
        for st in &targets {
            by_host.entry(st.host.as_str()).or_default().push(st);
        }
        for (host_name, rows) in by_host {
            let Some(spec) = inv.hosts.get(host_name) else {
                for st in rows {
                    report.removed.push((st.destination.clone(), host_name.into(), Err(format!("host `{host_name}` is not in the inventory: cannot reach it"))));
                }
                continue;
            };
            let removals: Vec<Removal> = rows.iter().flat_map(|st| paths_of(inv, st)).map(|p| removal(spec, p)).collect();
            let outcome = match host_target(spec) {
                Err(e) => Err(e),
                Ok(target) => runtime
                    .block_on(runtime.spawn_blocking(move || crate::deliver::remove_from_host(&target, &removals)))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| error_chain(&e))),
            };
            for st in rows {
                let result = match &outcome {
                    Err(e) => Err(e.clone()),
                    Ok(per_path) => {
                        let mine = paths_of(inv, st);
                        match per_path.iter().find(|(p, r)| mine.contains(p) && r.is_err()) {
                            Some((_, Err(e))) => Err(error_chain(e)),
                            _ => Ok(()),
                        }
                    }
                };
                if result.is_ok() {
                    ledger.db(|s| {
                        s.forget_destination(&st.service, &st.destination)?;
                        s.forget_holdings(&st.service, &st.destination)
                    })?;
                    info!(service = %service, host = %host_name, destination = %st.destination, "credentials removed");
                } else {
                    warn!(service = %service, host = %host_name, destination = %st.destination, "credentials not removed");
                }
                report.removed.push((st.destination.clone(), host_name.to_string(), result));
            }
        }
    }

    // A compromised schedd: the others lost their tokens with the revocation; give them new
    // ones now rather than at the next scheduled cycle. (The cycle takes the lock itself.)
    if let (Some(h), true) = (host, inv.services.contains_key(service)) {
        let opts = CycleOptions { skip_hosts: vec![h.to_string()], ..CycleOptions::services(vec![service.to_string()]) };
        report.redelivered = Some(super::run_once(inv, state_dir, &opts, runtime, lock_wait)?);
    }
    Ok(report)
}

/// The ledger of `state_dir` (with anything an older version kept imported), a broker client,
/// and the recorded destinations.
fn open_ledger(inv: &Inventory, state_dir: &Path) -> Result<(Ledger, Broker, Vec<DestinationStatus>), CycleSetupError> {
    let store = StateStore::open(state_dir)?;
    let keeper = TokenKeeper::open(state_dir)?;
    let broker = Broker::new(&inv.broker.client_config()).map_err(|e| CycleSetupError::Cycle(super::CycleError::Broker(e)))?;
    let statuses = store.statuses()?;
    let ledger = Ledger::new(store, keeper);
    super::ledger::adopt_legacy(&ledger, inv, &statuses)?;
    Ok((ledger, broker, statuses))
}

/// A live token that only destinations on absent hosts may still hold, with those holders.
#[derive(Clone, Debug)]
pub struct KeptAlive<'a> {
    pub token: &'a LedgerToken,
    pub holders: Vec<&'a Holding>,
}

/// Live tokens, other than a service's current one, that only destinations on `host` may
/// still hold (themselves or through a live child).
pub fn kept_alive_by<'a>(host: &str, tokens: &'a [LedgerToken], holdings: &'a [Holding]) -> Vec<KeptAlive<'a>> {
    tokens
        .iter()
        .filter(|t| t.state.is_alive() && !t.current)
        .filter_map(|t| {
            let holders = holders_of(t, tokens, holdings);
            (!holders.is_empty() && holders.iter().all(|h| h.host == host)).then_some(KeptAlive { token: t, holders })
        })
        .collect()
}

/// `revoke --host HOST` without a service: revokes every token that only destinations on
/// `host` may still hold (an unreachable schedd, or one removed from the inventory), which
/// nothing else needs. Current login tokens stay: the other destinations hold them. What the
/// host's files hold stops working; the next delivery there replaces it.
pub fn settle_host(
    inv: &Inventory,
    state_dir: &Path,
    host: &str,
    runtime: &tokio::runtime::Handle,
    lock_wait: Duration,
) -> Result<RevokeReport, CycleSetupError> {
    let _lock = super::take_lock(state_dir, lock_wait)?;
    let (ledger, broker, _) = open_ledger(inv, state_dir)?;
    let (tokens, holdings) = ledger.db(|s| Ok((s.tokens()?, s.holdings()?)))?;
    let mut kept = kept_alive_by(host, &tokens, &holdings);
    kept.sort_by_key(|k| k.token.kind == TokenKind::Login);
    let mut report = RevokeReport::default();
    runtime.block_on(async {
        for k in &kept {
            let held_at: Vec<&str> = k.holders.iter().map(|h| h.destination.as_str()).collect();
            info!(service = %k.token.service, vault = %k.token.hash, host, held_at = ?held_at, "kept alive only by this host: revoking");
            let outcome = ledger.retire(&broker, &k.token.hash, &k.token.service, "Vault token only this host held").await;
            report.revoked.push((k.token.hash.clone(), outcome));
        }
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    fn child(hash: &str, parent: &str, expiry: i64, state: TokenState) -> LedgerToken {
        LedgerToken {
            hash: hash.into(),
            service: "svc".into(),
            kind: TokenKind::Child,
            parent: Some(parent.into()),
            expiry: Some(expiry),
            state,
            current: false,
            run_id: Some(1),
            created: NOW - DAY,
            updated: NOW - DAY,
        }
    }

    fn holds(token: &str, state: HoldState) -> Holding {
        Holding {
            service: "svc".into(),
            destination: "file@h".into(),
            host: "h".into(),
            template: "/tmp/vt".into(),
            path: Some("/tmp/vt".into()),
            content: format!("c-{token}"),
            token: token.into(),
            state,
            run_id: None,
            updated: NOW - DAY,
        }
    }

    fn key() -> (String, String) {
        ("svc".into(), "file@h".into())
    }

    fn reused(tokens: &[LedgerToken], holdings: &[Holding], parent: &str) -> Option<String> {
        reusable_child(tokens, holdings, &key(), parent, Duration::from_secs(DAY as u64), NOW).map(|(h, _)| h.to_string())
    }

    #[test]
    fn a_child_the_file_holds_is_reused_until_renew_before() {
        let fresh = [child("c1", "p1", NOW + 3 * DAY, TokenState::Live)];
        assert_eq!(reused(&fresh, &[holds("c1", HoldState::Holds)], "p1").as_deref(), Some("c1"));
        // What the file held before and was replaced does not count.
        assert_eq!(reused(&fresh, &[holds("c0", HoldState::Replaced), holds("c1", HoldState::Holds)], "p1").as_deref(), Some("c1"));
        let due = [child("c1", "p1", NOW + DAY, TokenState::Live)];
        assert_eq!(reused(&due, &[holds("c1", HoldState::Holds)], "p1"), None, "within renew_before: a new child");
    }

    #[test]
    fn no_reuse_unless_the_ledger_is_sure() {
        let tokens = [child("c1", "p1", NOW + 3 * DAY, TokenState::Live), child("c2", "p1", NOW + 3 * DAY, TokenState::Live)];
        assert_eq!(reused(&tokens, &[holds("c1", HoldState::Holds)], "p2"), None, "a child of another login token");
        assert_eq!(reused(&tokens, &[holds("c1", HoldState::Unknown)], "p1"), None, "an outcome not known");
        assert_eq!(reused(&tokens, &[holds("c1", HoldState::Intended)], "p1"), None, "an intent without outcome");
        assert_eq!(reused(&tokens, &[holds("c1", HoldState::Holds), holds("c2", HoldState::Unknown)], "p1"), None, "may hold another");
        assert_eq!(reused(&tokens, &[], "p1"), None, "holds nothing");
        let pending = [child("c1", "p1", NOW + 3 * DAY, TokenState::RevokePending)];
        assert_eq!(reused(&pending, &[holds("c1", HoldState::Holds)], "p1"), None, "a child being revoked");
        let mut imported = child("c1", "p1", NOW + 3 * DAY, TokenState::Live);
        imported.run_id = None;
        assert_eq!(reused(&[imported], &[holds("c1", HoldState::Holds)], "p1"), None, "imported from an older version: its expiry is a guess");
    }
}
