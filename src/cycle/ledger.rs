//! The token ledger as a cycle keeps it: one truth about every Vault token the bastion holds or
//! minted and about which destination files may hold which of them.
//!
//! - **Durable on reply**: a login or child token is stored (bytes in their 0600 file, a row in
//!   the ledger) the moment the broker's reply arrives, before anything uses it.
//! - **Intent before acting, outcome after**: before a host's push, each destination file's
//!   new content is recorded as `intended` beside what the file held; after it, the outcome
//!   settles the rows ([`settle_file`]). An outcome that is not known (a lost reply, a killed
//!   process, an outcome that could not be written) leaves the file "may hold both" until a
//!   later delivery or read-back settles it.
//! - **Revoke only what nothing may hold** ([`revocable`]): a token that is not a service's
//!   current login token, that no destination file may hold, and (for a login token) none of
//!   whose live children any file may hold. Services removed from the inventory keep their
//!   tokens until `revoke` is asked for.
//!
//! Every revocation decision reads the ledger only. Must never revoke a token some file may
//! still hold, nor use a token before it is recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{info, warn};

use super::error_chain;
use crate::broker::Broker;
use crate::deliver::ReadBack;
use crate::inventory::Inventory;
use crate::keep::{self, KeepError, LegacyRole, TokenKeeper};
use crate::secret::Secret;
use crate::state::{
    DestinationStatus, HoldState, Holding, Intent, LedgerToken, NewToken, RunId, Settled, StateError, StateStore, TokenKind,
    TokenState,
};

/// How long revoked and dead tokens stay in the ledger once nothing refers to them.
const KEEP_RETIRED_SECS: i64 = 7 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Keep(#[from] KeepError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the state database task ended abnormally: {0}")]
    Task(String),
}

/// The state DB (behind a mutex: hosts record intents and outcomes from their own threads) and
/// the token bytes of one state directory. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Ledger {
    store: Arc<Mutex<StateStore>>,
    pub keeper: TokenKeeper,
}

impl Ledger {
    pub fn new(store: StateStore, keeper: TokenKeeper) -> Ledger {
        Ledger { store: Arc::new(Mutex::new(store)), keeper }
    }

    /// Runs `f` on the state DB (blocking).
    pub fn db<T>(&self, f: impl FnOnce(&StateStore) -> Result<T, StateError>) -> Result<T, StateError> {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        f(&store)
    }

    /// [`Self::db`] for a write made once deliveries have begun (outcomes, delivery records,
    /// mail): its failure must lose nothing, and the failpoint `cycle::before_db_write` stands
    /// here for a database that fails or a process killed just before the write.
    pub fn write<T>(&self, f: impl FnOnce(&StateStore) -> Result<T, StateError>) -> Result<T, StateError> {
        crate::failpoint!("cycle::before_db_write", |_| Err(injected_failure()));
        self.db(f)
    }

    /// [`Self::db`] on a blocking thread, for async callers.
    pub async fn db_async<T: Send + 'static>(&self, f: impl FnOnce(&StateStore) -> Result<T, StateError> + Send + 'static) -> Result<T, LedgerError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.db(f)).await.map_err(|e| LedgerError::Task(e.to_string()))?.map_err(LedgerError::State)
    }

    /// Records a token the broker just handed out: its bytes first (a crash after that leaves a
    /// file the next cycle revokes), then its ledger row. Until this returns, nothing may use it.
    pub async fn record_obtained(&self, run: Option<RunId>, token: &Secret, row: NewToken) -> Result<(), LedgerError> {
        let me = self.clone();
        let token = token.clone();
        tokio::task::spawn_blocking(move || -> Result<(), LedgerError> {
            me.keeper.put(&token)?;
            me.db(|s| s.record_token(run, &row))?;
            Ok(())
        })
        .await
        .map_err(|e| LedgerError::Task(e.to_string()))?
    }

    /// The service's current login token and its bytes.
    pub async fn current(&self, service: &str) -> Result<Option<(LedgerToken, Option<Secret>)>, LedgerError> {
        let me = self.clone();
        let service = service.to_string();
        tokio::task::spawn_blocking(move || -> Result<_, LedgerError> {
            let Some(row) = me.db(|s| s.current_login(&service))? else { return Ok(None) };
            let bytes = me.keeper.get(&row.hash)?;
            Ok(Some((row, bytes)))
        })
        .await
        .map_err(|e| LedgerError::Task(e.to_string()))?
    }

    /// Moves a token to a final state (`Revoked` or `Dead`), its children with it, and deletes
    /// their bytes.
    async fn finish(&self, hash: &str, state: TokenState) -> Result<(), LedgerError> {
        let me = self.clone();
        let hash = hash.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), LedgerError> {
            let children: Vec<String> = me.db(|s| {
                s.set_token_state(&hash, state)?;
                let children: Vec<String> =
                    s.tokens()?.into_iter().filter(|t| t.parent.as_deref() == Some(hash.as_str()) && t.state.is_alive()).map(|t| t.hash).collect();
                for c in &children {
                    s.set_token_state(c, state)?;
                }
                Ok(children)
            })?;
            for h in children.iter().chain(std::iter::once(&hash)) {
                me.keeper.forget(h)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| LedgerError::Task(e.to_string()))?
    }

    /// Revokes a token the ledger decided nothing holds: marked `revoke-pending` first (so a
    /// crash leaves the decision to be retried), then `revoke-self`, then `revoked` (or `dead`
    /// when Vault already refused it) and its bytes deleted. `Err` says why it is still live.
    pub async fn retire(&self, broker: &Broker, hash: &str, service: &str, what: &str) -> Result<(), String> {
        let h = hash.to_string();
        if let Err(e) = self.db_async(move |s| s.set_token_state(&h, TokenState::RevokePending)).await {
            warn!(service, vault = %hash, error = %error_chain(&e), "cannot record the decision to revoke {what}");
        }
        let token = match self.keeper.get(hash) {
            Ok(Some(t)) => t,
            Ok(None) => {
                warn!(service, vault = %hash, "cannot revoke {what}: its bytes are lost; it expires on its own");
                if let Err(e) = self.finish(hash, TokenState::Dead).await {
                    warn!(service, vault = %hash, error = %error_chain(&e), "cannot record a lost token as dead");
                }
                return Err("its bytes are lost; it expires on its own".into());
            }
            Err(e) => return Err(error_chain(&e)),
        };
        let state = match broker.revoke_self(&token).await {
            Ok(()) => {
                info!(service, vault = %hash, "{what} revoked");
                TokenState::Revoked
            }
            Err(e) if e.is_permission_denied() => {
                info!(service, vault = %hash, "{what} was already dead");
                TokenState::Dead
            }
            Err(e) => {
                let reason = error_chain(&e);
                warn!(service, vault = %hash, error = %reason, "cannot revoke {what}; retried by the next cycle");
                return Err(reason);
            }
        };
        if let Err(e) = self.finish(hash, state).await {
            // Revoked all the same; the next cycle finds it refused and records it dead.
            warn!(service, vault = %hash, error = %error_chain(&e), "cannot record the revocation of {what}");
        }
        Ok(())
    }
}

/// What a failing state database looks like to the cycle, for the failpoint.
#[cfg(feature = "failpoints")]
fn injected_failure() -> StateError {
    StateError::Query {
        path: crate::state::DB_FILE.into(),
        what: "write (failpoint cycle::before_db_write)",
        source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), Some("database is locked".into())),
    }
}

/// How a destination file's push ended, as far as what it holds is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Landing {
    /// The new content is there.
    Delivered,
    /// Certainly not written: the file holds what it held.
    Failed,
    /// The rename may or may not have happened.
    Unknown,
}

/// What a read-back found at a destination file before anything was written there: the path
/// read, and the short hash of its bytes (`None`: no such file).
pub(crate) type Found<'a> = (&'a str, Option<&'a str>);

/// One file's rows by content: (token, state, recorded path).
type Rows = BTreeMap<String, (String, HoldState, Option<String>)>;

/// A file's rows as they were (an `intended` row of an earlier run counts as `unknown`: that run
/// never recorded its outcome).
fn rows_of(before: &[Holding]) -> Rows {
    before
        .iter()
        .map(|h| {
            let state = if h.state == HoldState::Intended { HoldState::Unknown } else { h.state };
            (h.content.clone(), (h.token.clone(), state, h.path.clone()))
        })
        .collect()
}

/// Settles the rows recorded for the path read: the content found there holds, everything else
/// is gone. Rows recorded for another path are left alone.
fn apply_read_back(rows: &mut Rows, (at, found): Found<'_>) {
    for (content, (_, state, path)) in rows.iter_mut() {
        if path.as_deref().is_some_and(|p| p != at) {
            continue;
        }
        *state = match found {
            None => HoldState::Replaced,
            // Bytes an older version wrote are not known: only a later delivery settles them.
            Some(_) if content.is_empty() => *state,
            Some(d) if d == content => HoldState::Holds,
            Some(_) => HoldState::Replaced,
        };
    }
}

/// What the read-back of `path` found, if it was read.
pub(crate) fn found_at<'r>(read_back: &'r ReadBack, path: &'r str) -> Option<Found<'r>> {
    read_back.iter().find(|(p, _)| p == path).and_then(|(_, r)| r.as_ref().ok()).map(|digest| (path, digest.as_deref()))
}

/// The path to read back before writing a file whose earlier outcome is not known, if any (a
/// path still holding `{uid}` was never resolved, so nothing can be read there).
pub(crate) fn needs_read_back(before: &[Holding]) -> Option<&str> {
    before
        .iter()
        .filter(|h| matches!(h.state, HoldState::Unknown | HoldState::Intended))
        .find_map(|h| h.path.as_deref().filter(|p| !p.contains("{uid}")))
}

/// The rows of one destination file once this run's push ended.
///
/// `before`: the file's rows as they were before this run's intent. `read_back`: what the file
/// held before this push wrote anything, when it was read. `resolved`: the remote path the push
/// wrote to, when known; rows recorded for another path are left alone.
pub(crate) fn settle_file(before: &[Holding], read_back: Option<Found<'_>>, intent: &Intent, resolved: Option<&str>, landing: Landing) -> Settled {
    let mut rows = rows_of(before);
    if let Some(found) = read_back {
        apply_read_back(&mut rows, found);
    }
    let here = |path: &Option<String>| match (path.as_deref(), resolved) {
        (Some(p), Some(r)) => p == r,
        _ => true,
    };
    let prior = rows.get(&intent.content).map(|r| r.1);
    let new_state = match landing {
        Landing::Delivered => {
            for (_, state, path) in rows.values_mut() {
                if here(path) {
                    *state = HoldState::Replaced;
                }
            }
            HoldState::Holds
        }
        Landing::Failed => prior.unwrap_or(HoldState::Replaced),
        Landing::Unknown => {
            for (_, state, path) in rows.values_mut() {
                if here(path) && *state == HoldState::Holds {
                    *state = HoldState::Unknown;
                }
            }
            if prior == Some(HoldState::Holds) { HoldState::Holds } else { HoldState::Unknown }
        }
    };
    rows.insert(intent.content.clone(), (intent.token.clone(), new_state, resolved.map(str::to_string)));
    settled(&intent.service, &intent.destination, &intent.host, &intent.template, resolved, rows)
}

/// The rows of one destination file after a connection that only read it (`before` is never
/// empty: it is what made the file worth reading).
pub(crate) fn settle_read_back(before: &[Holding], found: Found<'_>) -> Option<Settled> {
    let first = before.first()?;
    let mut rows = rows_of(before);
    apply_read_back(&mut rows, found);
    Some(settled(&first.service, &first.destination, &first.host, &first.template, Some(found.0), rows))
}

fn settled(service: &str, destination: &str, host: &str, template: &str, path: Option<&str>, rows: Rows) -> Settled {
    Settled {
        service: service.to_string(),
        destination: destination.to_string(),
        host: host.to_string(),
        template: template.to_string(),
        path: path.map(str::to_string),
        rows: rows.into_iter().map(|(content, (token, state, _))| (content, token, state)).collect(),
    }
}

/// Tokens that may be revoked now, children before parents: alive, not a service's current
/// login token, held by no file that may hold them, no live child held anywhere, and either
/// already `revoke-pending` or of a service `kept` does not protect (services removed from the
/// inventory keep theirs until `revoke` is asked for).
pub(crate) fn revocable<'t>(tokens: &'t [LedgerToken], holdings: &[Holding], kept: &dyn Fn(&str) -> bool) -> Vec<&'t LedgerToken> {
    let held: BTreeSet<&str> = holdings.iter().filter(|h| h.state.may_hold()).map(|h| h.token.as_str()).collect();
    let parents_of_held: BTreeSet<&str> = tokens
        .iter()
        .filter(|c| c.kind == TokenKind::Child && c.state.is_alive() && held.contains(c.hash.as_str()))
        .filter_map(|c| c.parent.as_deref())
        .collect();
    let mut out: Vec<&LedgerToken> = tokens
        .iter()
        .filter(|t| t.state.is_alive() && !t.current)
        .filter(|t| !held.contains(t.hash.as_str()) && !parents_of_held.contains(t.hash.as_str()))
        .filter(|t| t.state == TokenState::RevokePending || !kept(&t.service))
        .collect();
    out.sort_by_key(|t| t.kind == TokenKind::Login);
    out
}

/// The destinations (with their hosts) that may hold `token` or a live child of it.
pub fn holders_of<'h>(token: &LedgerToken, tokens: &[LedgerToken], holdings: &'h [Holding]) -> Vec<&'h Holding> {
    let mut hashes: BTreeSet<&str> = BTreeSet::from([token.hash.as_str()]);
    if token.kind == TokenKind::Login {
        hashes.extend(tokens.iter().filter(|c| c.parent.as_deref() == Some(token.hash.as_str()) && c.state.is_alive()).map(|c| c.hash.as_str()));
    }
    holdings.iter().filter(|h| h.state.may_hold() && hashes.contains(h.token.as_str())).collect()
}

/// Imports what an older version kept (per-service token files and each destination's
/// recorded `vault_root`) into the ledger, once: tokens get their rows and are stored by
/// fingerprint, destinations' recorded token trees become `holds`. Revokes nothing.
pub(crate) fn adopt_legacy(ledger: &Ledger, inv: &Inventory, statuses: &[DestinationStatus]) -> Result<usize, LedgerError> {
    let legacy = ledger.keeper.legacy()?;
    if legacy.is_empty() {
        return Ok(0);
    }
    let delivered: Vec<&DestinationStatus> = statuses.iter().filter(|s| s.last_success.is_some() && s.vault_root.is_some()).collect();
    let expiry_of_root = |root: &str| delivered.iter().filter(|s| s.vault_root.as_deref() == Some(root)).filter_map(|s| s.vault_expiry.map(|e| e.timestamp())).max();
    let mut tokens = Vec::new();
    let mut children: BTreeMap<(String, String), String> = BTreeMap::new();
    for l in &legacy {
        let hash = ledger.keeper.put(&l.token)?;
        let (kind, parent, expiry, current) = match &l.role {
            LegacyRole::Current => (TokenKind::Login, None, expiry_of_root(&hash), true),
            LegacyRole::Superseded => (TokenKind::Login, None, expiry_of_root(&hash), false),
            LegacyRole::Child { destination_key } => {
                let dest = delivered.iter().find(|s| s.service == l.service && keep::destination_key(&s.destination) == *destination_key);
                if let Some(d) = dest {
                    children.insert((d.service.clone(), d.destination.clone()), hash.clone());
                }
                (TokenKind::Child, dest.and_then(|d| d.vault_root.clone()), dest.and_then(|d| d.vault_expiry.map(|e| e.timestamp())), false)
            }
        };
        tokens.push((NewToken { hash, service: l.service.clone(), kind, parent, expiry }, current));
    }
    let mut holdings = Vec::new();
    for st in &delivered {
        let root = st.vault_root.clone().unwrap_or_default();
        let (template, path, token) = if let Some(file) = st.destination.strip_prefix("file@").and_then(|rest| rest.split_once(':')).map(|(_, p)| p) {
            // The child delivered there; without its file, its parent stands in so that the
            // child does not die with a revoked parent.
            let token = children.get(&(st.service.clone(), st.destination.clone())).cloned().unwrap_or(root);
            (file.to_string(), st.paths.first().cloned(), token)
        } else {
            let top = st.paths.iter().find(|p| p.ends_with(".top")).cloned().or_else(|| top_path(inv, st));
            (top.clone().unwrap_or_default(), top, root)
        };
        holdings.push(Holding {
            service: st.service.clone(),
            destination: st.destination.clone(),
            host: st.host.clone(),
            template,
            path,
            content: String::new(),
            token,
            state: HoldState::Holds,
            run_id: None,
            updated: 0,
        });
    }
    ledger.db(|s| s.import_legacy(&tokens, &holdings))?;
    for l in &legacy {
        ledger.keeper.remove_legacy(l)?;
    }
    info!(tokens = tokens.len(), destinations = holdings.len(), "kept Vault tokens imported into the ledger");
    Ok(tokens.len())
}

/// A credd destination's `.top` path from the inventory, for a status row that recorded none.
fn top_path(inv: &Inventory, st: &DestinationStatus) -> Option<String> {
    let spec = inv.services.get(&st.service)?;
    let spool = inv.hosts.get(&st.host)?.spool.as_deref()?;
    Some(format!("{}/{}/{}.top", spool.trim_end_matches('/'), spec.account, spec.oauth_service))
}

/// Reads back, over connections that only read, every file whose outcome is not known on a
/// host this cycle did not push to (`pushed`), and settles it from what is there. A host that
/// cannot be reached is left for a later cycle.
pub(crate) async fn read_back_elsewhere(ledger: &Ledger, inv: &Inventory, run: RunId, pushed: &BTreeSet<String>) {
    let holdings = match ledger.db_async(|s| s.holdings()).await {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot read the token ledger; files whose outcome is not known are read back later");
            return;
        }
    };
    let mut files: BTreeMap<(String, String, String), Vec<Holding>> = BTreeMap::new();
    for h in holdings {
        files.entry((h.service.clone(), h.destination.clone(), h.template.clone())).or_default().push(h);
    }
    let mut by_host: BTreeMap<String, Vec<(Vec<Holding>, String)>> = BTreeMap::new();
    for rows in files.into_values() {
        let Some(path) = needs_read_back(&rows).map(str::to_string) else { continue };
        let host = rows[0].host.clone();
        if !pushed.contains(&host) && inv.hosts.contains_key(&host) {
            by_host.entry(host).or_default().push((rows, path));
        }
    }
    for (host, files) in by_host {
        let Ok(target) = super::plan::host_target(&inv.hosts[&host]) else { continue };
        let paths: Vec<String> = files.iter().map(|(_, p)| p.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let read = match tokio::task::spawn_blocking(move || crate::deliver::read_back(&target, &paths)).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                info!(host = %host, error = %error_chain(&e), "cannot read back files whose outcome is not known; left for a later cycle");
                continue;
            }
            Err(e) => {
                warn!(host = %host, error = %e, "read-back thread ended abnormally");
                continue;
            }
        };
        let settled: Vec<Settled> = files.iter().filter_map(|(rows, p)| found_at(&read, p).and_then(|found| settle_read_back(rows, found))).collect();
        let count = settled.len();
        let me = ledger.clone();
        match tokio::task::spawn_blocking(move || me.write(|s| s.record_settled(Some(run), &settled))).await {
            Ok(Ok(())) => info!(host = %host, files = count, "files whose outcome was not known, settled by reading them back"),
            Ok(Err(e)) => warn!(host = %host, error = %error_chain(&e), "cannot record what was read back; read again later"),
            Err(e) => warn!(host = %host, error = %e, "state database task ended abnormally"),
        }
    }
}

/// After a cycle: tokens past their expiry (and children of dead parents) are recorded dead;
/// token files the ledger does not know (a crash between storing the bytes and recording the
/// row: nothing used them) are revoked; every token [`revocable`] names is revoked; what no
/// decision needs any more is pruned. A token whose revocation failed stays `revoke-pending`
/// and is retried by the next cycle. Returns what the state database could not do.
pub(crate) async fn reconcile(ledger: &Ledger, broker: &Broker, inv: &Inventory, now: i64) -> Vec<String> {
    let read = ledger.db_async(|s| Ok((s.tokens()?, s.holdings()?))).await;
    let (tokens, holdings) = match read {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot read the token ledger; nothing revoked this cycle");
            return vec![format!("state: cannot read the token ledger, nothing was revoked: {}", error_chain(&e))];
        }
    };
    let by_hash: BTreeMap<&str, &LedgerToken> = tokens.iter().map(|t| (t.hash.as_str(), t)).collect();
    for t in tokens.iter().filter(|t| t.state.is_alive()) {
        let expired = t.expiry.is_some_and(|e| e <= now);
        let parent_gone = t.parent.as_deref().and_then(|p| by_hash.get(p)).filter(|p| !p.state.is_alive()).map(|p| p.state);
        let Some(state) = (if expired { Some(TokenState::Dead) } else { parent_gone }) else { continue };
        if let Err(e) = ledger.finish(&t.hash, state).await {
            warn!(service = %t.service, vault = %t.hash, error = %error_chain(&e), "cannot record an expired token");
        }
    }
    match ledger.keeper.hashes() {
        Ok(files) => {
            for hash in files.iter().filter(|h| !by_hash.contains_key(h.as_str())) {
                info!(vault = %hash, "a stored token the ledger does not know (a crash before it was recorded): revoking it");
                let _ = ledger.retire(broker, hash, "-", "unrecorded Vault token").await;
            }
        }
        Err(e) => warn!(error = %e, "cannot list stored tokens"),
    }
    let tokens: Vec<LedgerToken> = tokens.into_iter().filter(|t| t.expiry.is_none_or(|e| e > now)).collect();
    let kept = |service: &str| !inv.services.contains_key(service);
    for t in revocable(&tokens, &holdings, &kept) {
        let what = match t.kind {
            TokenKind::Login => "Vault token no destination holds",
            TokenKind::Child => "child token no destination holds",
        };
        // A failure is logged by `retire` and retried by the next cycle.
        let _ = ledger.retire(broker, &t.hash, &t.service, what).await;
    }
    if let Err(e) = ledger.db_async(|s| s.prune_ledger(KEEP_RETIRED_SECS)).await {
        warn!(error = %error_chain(&e), "cannot prune the token ledger");
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(content: &str, token: &str, state: HoldState, path: Option<&str>) -> Holding {
        Holding {
            service: "prod".into(),
            destination: "file@s1:/tmp/vt_u{uid}".into(),
            host: "s1".into(),
            template: "/tmp/vt_u{uid}".into(),
            path: path.map(str::to_string),
            content: content.into(),
            token: token.into(),
            state,
            run_id: Some(1),
            updated: 0,
        }
    }

    fn intent(content: &str, token: &str) -> Intent {
        Intent {
            service: "prod".into(),
            destination: "file@s1:/tmp/vt_u{uid}".into(),
            host: "s1".into(),
            template: "/tmp/vt_u{uid}".into(),
            content: content.into(),
            token: token.into(),
        }
    }

    /// `before` as (content, state), what a read-back found, the push, and the expected
    /// (content, state) afterwards.
    fn check(before: &[(&str, HoldState)], read_back: Option<Option<&str>>, landing: Landing, expected: &[(&str, HoldState)]) {
        let before: Vec<Holding> = before.iter().map(|(c, s)| holding(c, &format!("t-{c}"), *s, Some("/tmp/vt_u0"))).collect();
        let got = settle_file(&before, read_back.map(|f| ("/tmp/vt_u0", f)), &intent("new", "t-new"), Some("/tmp/vt_u0"), landing);
        let got: Vec<(String, HoldState)> = got.rows.into_iter().map(|(c, t, s)| {
            assert_eq!(t, format!("t-{c}"));
            (c, s)
        }).collect();
        let want: Vec<(String, HoldState)> = expected.iter().map(|(c, s)| (c.to_string(), *s)).collect();
        assert_eq!(got, want, "before {before:?}, read back {read_back:?}, {landing:?}");
    }

    use HoldState::{Holds, Intended, Replaced, Unknown};

    #[test]
    fn a_landed_push_holds_the_new_content_only() {
        check(&[], None, Landing::Delivered, &[("new", Holds)]);
        check(&[("old", Holds)], None, Landing::Delivered, &[("new", Holds), ("old", Replaced)]);
        check(&[("old", Holds), ("older", Unknown)], None, Landing::Delivered, &[("new", Holds), ("old", Replaced), ("older", Replaced)]);
    }

    #[test]
    fn a_failed_push_leaves_what_was_there() {
        check(&[], None, Landing::Failed, &[("new", Replaced)]);
        check(&[("old", Holds)], None, Landing::Failed, &[("new", Replaced), ("old", Holds)]);
        // An earlier attempt with the same content whose outcome is unknown stays unknown.
        check(&[("old", Holds), ("new", Intended)], None, Landing::Failed, &[("new", Unknown), ("old", Holds)]);
        // The same content already there stays there.
        check(&[("new", Holds)], None, Landing::Failed, &[("new", Holds)]);
    }

    #[test]
    fn an_unknown_outcome_may_hold_both() {
        check(&[("old", Holds)], None, Landing::Unknown, &[("new", Unknown), ("old", Unknown)]);
        check(&[("new", Holds)], None, Landing::Unknown, &[("new", Holds)]);
        check(&[("old", Replaced)], None, Landing::Unknown, &[("new", Unknown), ("old", Replaced)]);
    }

    #[test]
    fn a_read_back_settles_what_was_unknown_before_the_push() {
        // The file held the old content: the earlier attempt did not land.
        check(&[("old", Unknown), ("mid", Unknown)], Some(Some("old")), Landing::Failed, &[("mid", Replaced), ("new", Replaced), ("old", Holds)]);
        // It held the earlier attempt's content: that landed, the old one is gone.
        check(&[("old", Unknown), ("mid", Intended)], Some(Some("mid")), Landing::Failed, &[("mid", Holds), ("new", Replaced), ("old", Replaced)]);
        // No file at all, or someone else's bytes: none of ours is there.
        check(&[("old", Unknown)], Some(None), Landing::Failed, &[("new", Replaced), ("old", Replaced)]);
        check(&[("old", Unknown)], Some(Some("foreign")), Landing::Unknown, &[("new", Unknown), ("old", Replaced)]);
        // Imported rows (content unknown) are settled by a delivery or a missing file only.
        check(&[("", Holds)], Some(Some("foreign")), Landing::Failed, &[("", Holds), ("new", Replaced)]);
        check(&[("", Holds)], Some(None), Landing::Failed, &[("", Replaced), ("new", Replaced)]);
    }

    #[test]
    fn a_connection_that_only_reads_settles_too() {
        let before = vec![holding("old", "t-old", Unknown, Some("/tmp/vt_u0")), holding("new", "t-new", Intended, Some("/tmp/vt_u0"))];
        assert_eq!(needs_read_back(&before), Some("/tmp/vt_u0"));
        let got = settle_read_back(&before, ("/tmp/vt_u0", Some("new"))).unwrap();
        let states: Vec<(String, HoldState)> = got.rows.into_iter().map(|(c, _, s)| (c, s)).collect();
        assert_eq!(states, [("new".into(), Holds), ("old".into(), Replaced)]);
        // Settled files, and files whose path was never resolved, are not read.
        assert_eq!(needs_read_back(&[holding("old", "t-old", Holds, Some("/tmp/vt_u0"))]), None);
        assert_eq!(needs_read_back(&[holding("old", "t-old", Unknown, Some("/tmp/vt_u{uid}"))]), None);
        assert_eq!(needs_read_back(&[holding("old", "t-old", Unknown, None)]), None);
    }

    #[test]
    fn rows_of_another_resolved_path_are_left_alone() {
        let before = vec![holding("old", "t-old", Holds, Some("/tmp/vt_u1")), holding("mid", "t-mid", Unknown, None)];
        let got = settle_file(&before, Some(("/tmp/vt_u2", None)), &intent("new", "t-new"), Some("/tmp/vt_u2"), Landing::Delivered);
        let states: Vec<(String, HoldState)> = got.rows.into_iter().map(|(c, _, s)| (c, s)).collect();
        assert_eq!(states, [("mid".into(), Replaced), ("new".into(), Holds), ("old".into(), Holds)]);
        assert_eq!(got.path.as_deref(), Some("/tmp/vt_u2"));
    }

    fn token(hash: &str, kind: TokenKind, parent: Option<&str>, state: TokenState, current: bool) -> LedgerToken {
        LedgerToken {
            hash: hash.into(),
            service: "prod".into(),
            kind,
            parent: parent.map(str::to_string),
            expiry: None,
            state,
            current,
            run_id: None,
            created: 0,
            updated: 0,
        }
    }

    fn check_revocable(tokens: &[LedgerToken], holdings: &[Holding], removed: bool, expected: &[&str]) {
        let kept = |_: &str| removed;
        let got: Vec<&str> = revocable(tokens, holdings, &kept).into_iter().map(|t| t.hash.as_str()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn only_what_nothing_may_hold_is_revoked() {
        use TokenKind::{Child, Login};
        use TokenState::{Dead, Live, RevokePending, Revoked};
        let tokens = vec![
            token("cur", Login, None, Live, true),
            token("old", Login, None, Live, false),
            token("unused", Login, None, Live, false),
            token("parent", Login, None, Live, false),
            token("child", Child, Some("parent"), Live, false),
            token("loose", Child, Some("cur"), Live, false),
            token("gone", Login, None, Revoked, false),
            token("dead", Child, Some("parent"), Dead, false),
            token("pending", Login, None, RevokePending, false),
        ];
        let holdings = vec![
            holding("a", "old", Unknown, None),
            holding("b", "child", Holds, None),
            holding("c", "cur", Holds, None),
            holding("d", "unused", Replaced, None),
            holding("e", "dead", Holds, None),
            holding("f", "gone", Intended, None),
        ];
        check_revocable(&tokens, &holdings, false, &["loose", "unused", "pending"]);
        // A removed service's tokens are kept until asked for, unless already decided.
        check_revocable(&tokens, &holdings, true, &["pending"]);
        // Once the child is replaced, the parent is free too: children first.
        let mut holdings = holdings;
        holdings[1].state = Replaced;
        check_revocable(&tokens, &holdings, false, &["child", "loose", "unused", "parent", "pending"]);
        // An intent whose run never recorded its outcome protects like a holding.
        holdings[1].state = Intended;
        check_revocable(&tokens, &holdings, false, &["loose", "unused", "pending"]);
    }

    #[test]
    fn holders_include_the_holders_of_live_children() {
        let tokens = vec![
            token("parent", TokenKind::Login, None, TokenState::Live, false),
            token("child", TokenKind::Child, Some("parent"), TokenState::Live, false),
            token("dead", TokenKind::Child, Some("parent"), TokenState::Dead, false),
        ];
        let holdings = vec![holding("a", "child", Holds, None), holding("b", "dead", Holds, None), holding("c", "parent", Replaced, None)];
        let got: Vec<&str> = holders_of(&tokens[0], &tokens, &holdings).into_iter().map(|h| h.content.as_str()).collect();
        assert_eq!(got, ["a"]);
    }
}
