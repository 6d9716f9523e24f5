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

type Results = Vec<(String, Result<Delivered, String>)>;

/// Every IDToken destination's outcome, by (service, destination id).
pub(super) async fn deliver_idtokens(ctx: &Ctx<'_>, services: &[&ServiceSpec]) -> BTreeMap<(String, String), Result<Delivered, String>> {
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
        for (id, r) in results {
            out.insert((name.clone(), id), r);
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
        self.destinations().iter().map(|d| (d.id.clone(), Err(format!("idtoken: {reason}")))).collect()
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
            return self.destinations().iter().map(|d| (d.id.clone(), Ok(held.clone()))).collect();
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
            for (id, r) in outcome {
                out.push((id, r.map(|path| Delivered { vault_expiry: Some(record.exp), access: Some(fingerprint.clone()), vault_root: None, paths: vec![path] })));
            }
        }
        out
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
