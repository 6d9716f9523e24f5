//! One service's tokens: the current login token from the ledger, reused while it has more
//! than `renew_before` left (else a fresh login, recorded the moment the reply arrives), then
//! the access token, validated.
//!
//! One broker request per service in a warm cycle: the kept token's recorded expiry says
//! whether it is still good for long enough, and the access-token read proves it works. Only
//! a kept token whose expiry is not recorded is looked up first; when the read is refused, a
//! lookup tells a dead token (log in again) from a path its policy does not allow. A fresh
//! login's lease comes with its reply: no lookup either.
//!
//! A fresh login token that does not become current (validation failed, or a dry run) is
//! revoked at once: the bastion never leaves a live token behind that nothing holds. One that
//! cannot be recorded is revoked before anything uses it.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::ledger::Ledger;
use super::{access_request, error_chain, fail, fail_chain, handle_access_request, now_unix, HandleToken, ServiceTokens, Stage, StageFailure, CLOCK_LEEWAY};
use crate::broker::{Broker, BrokerError, TokenInfo};
use crate::inventory::{HandleSpec, ServiceSpec};
use crate::jwks::JwksCache;
use crate::scopes::Scope;
use crate::secret::{Fingerprint, Secret};
use crate::state::{NewToken, RunId, TokenKind, TokenState};
use crate::validate::Expectation;

/// What one service's task needs; owned, so it can move into a task.
pub(super) struct Job {
    pub broker: Broker,
    pub jwks: std::sync::Arc<JwksCache>,
    pub ledger: Ledger,
    pub run: Option<RunId>,
    pub dry_run: bool,
}

/// Time left of a token; a token that never expires (`ttl` 0, no expiry) has all the time.
fn time_left(info: &TokenInfo) -> Duration {
    if info.ttl.is_zero() && info.expire_time.is_none() { Duration::MAX } else { info.ttl }
}

/// Whether a token with `info` may be used (and kept) for `spec` rather than replaced.
fn good_for(spec: &ServiceSpec, info: &TokenInfo) -> bool {
    time_left(info) > spec.renew_before && time_left(info) >= spec.min_vault_lifetime
}

/// What the ledger's recorded expiry (Unix seconds) says of a token at `now`. Its policies are
/// not recorded: nothing downstream reads them.
fn recorded_info(expiry: i64, now: i64) -> TokenInfo {
    TokenInfo {
        ttl: Duration::from_secs(u64::try_from(expiry.saturating_sub(now)).unwrap_or(0)),
        expire_time: chrono::DateTime::from_timestamp(expiry, 0),
        policies: Vec::new(),
        renewable: false,
    }
}

/// How the Vault token in hand was come by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Logged in this cycle.
    Fresh,
    /// Kept, and looked up this cycle.
    KeptLookedUp,
    /// Kept, judged by its recorded expiry alone: the access-token read is its first use.
    KeptUnchecked,
}

/// Why the access-token stage failed; `refused`: the broker refused the Vault token (403).
struct AccessFailure {
    failure: StageFailure,
    refused: bool,
}

impl From<StageFailure> for AccessFailure {
    fn from(failure: StageFailure) -> AccessFailure {
        AccessFailure { failure, refused: false }
    }
}

/// What an access token read for `spec` must be: from `issuer_url`, for `audience`, granting
/// `required` and nothing beyond `allowed`, with the service's minimum lifetime left.
fn expectation<'a>(spec: &ServiceSpec, issuer_url: &'a str, audience: Option<&'a str>, required: &'a [Scope], allowed: &'a [Scope]) -> Expectation<'a> {
    Expectation { issuer: issuer_url, audience, min_lifetime: spec.min_access_lifetime, required, allowed, leeway: CLOCK_LEEWAY }
}

/// Expiry (Unix seconds) of a token granted `lease` now; `None` for a token that never expires.
pub(super) fn expiry_of(lease: Duration) -> Option<i64> {
    (!lease.is_zero()).then(|| now_unix().saturating_add(i64::try_from(lease.as_secs()).unwrap_or(i64::MAX)))
}

/// Records a token the broker just handed out for `service`; when that fails it is revoked at
/// once (nothing may use a token the ledger does not know) and the failure is returned.
pub(super) async fn record_or_revoke(ledger: &Ledger, broker: &Broker, run: Option<RunId>, token: &Secret, row: NewToken) -> Result<(), String> {
    let recorded = ledger.record_obtained(run, token, row).await;
    crate::failpoint!("cycle::after_broker_reply");
    let Err(e) = recorded else { return Ok(()) };
    let reason = error_chain(&e);
    match broker.revoke_self(token).await {
        Ok(()) => warn!(vault = %token.short_hash(), error = %reason, "cannot record a new Vault token; it was revoked unused"),
        Err(r) => warn!(vault = %token.short_hash(), error = %reason, revoke_error = %error_chain(&r), "cannot record a new Vault token, nor revoke it; it expires on its own"),
    }
    Err(format!("cannot record the new Vault token in the state directory, so it was revoked unused: {reason}"))
}

impl Job {
    /// `timings` gets how long each stage took.
    pub async fn obtain(&self, spec: &ServiceSpec, issuer_url: &str, timings: &mut Vec<(Stage, Duration)>) -> Result<ServiceTokens, StageFailure> {
        let (mut token, info, mut origin) = self.vault_token(spec, timings).await?;
        let mut result = self.access(spec, issuer_url, &token, &info, origin == Origin::Fresh, timings).await;
        if origin == Origin::KeptUnchecked && result.as_ref().is_err_and(|f| f.refused) {
            // A dead token, or a path its policy does not allow? Only a lookup tells them apart.
            let started = Instant::now();
            let looked_up = self.broker.lookup_self(&token).await;
            timings.push((Stage::Lookup, started.elapsed()));
            if let Err(e) = &looked_up
                && e.is_permission_denied()
            {
                warn!(vault = %token.short_hash(), error = %error_chain(e), "Vault refuses the kept Vault token; logging in again");
                self.mark_dead(&token.short_hash()).await;
                let (fresh, info) = self.login(spec, timings).await?;
                (token, origin) = (fresh, Origin::Fresh);
                result = self.access(spec, issuer_url, &token, &info, true, timings).await;
            }
        }
        let result = result.map_err(|f| f.failure);
        let fresh = origin == Origin::Fresh;
        match (&result, fresh) {
            (Ok(_), true) if !self.dry_run => {
                let (service, hash) = (spec.name.clone(), token.short_hash());
                if let Err(e) = self.ledger.db_async(move |s| s.set_current(&service, &hash)).await {
                    // Still usable this cycle (the ledger has it); the next cycle logs in again.
                    warn!(error = %error_chain(&e), "cannot make the new Vault token the one later cycles reuse");
                }
            }
            (_, true) => self.discard(&spec.name, &token, if self.dry_run { "dry run" } else { "its access token was refused" }).await,
            _ => {}
        }
        result
    }

    /// The kept token if it is still good for longer than `renew_before` (by its recorded
    /// expiry, else by a lookup), else a new login.
    async fn vault_token(&self, spec: &ServiceSpec, timings: &mut Vec<(Stage, Duration)>) -> Result<(Secret, TokenInfo, Origin), StageFailure> {
        match self.ledger.current(&spec.name).await {
            Ok(Some((row, Some(kept)))) => {
                // Only an expiry recorded from the broker's own reply (not imported) is trusted.
                if let Some(info) = row.expiry.filter(|_| row.run_id.is_some()).map(|e| recorded_info(e, now_unix())).filter(|i| good_for(spec, i)) {
                    return Ok((kept, info, Origin::KeptUnchecked));
                }
                let started = Instant::now();
                match self.broker.lookup_self(&kept).await.inspect(|_| timings.push((Stage::Lookup, started.elapsed()))) {
                    Ok(info) if good_for(spec, &info) => return Ok((kept, info, Origin::KeptLookedUp)),
                    Ok(info) => info!(
                        left = %humantime::format_duration(Duration::from_secs(info.ttl.as_secs())),
                        renew_before = %humantime::format_duration(spec.renew_before),
                        "kept Vault token is due for renewal; logging in again"
                    ),
                    // Shutting down: no login starts.
                    Err(e) if e.is_cancelled() => return Err(fail_chain(Stage::Lookup, &e)),
                    Err(e) if e.is_permission_denied() => {
                        warn!(vault = %kept.short_hash(), error = %error_chain(&e), "Vault refuses the kept Vault token; logging in again");
                        self.mark_dead(&kept.short_hash()).await;
                    }
                    Err(e) => warn!(error = %error_chain(&e), "kept Vault token no longer works; logging in again"),
                }
            }
            Ok(Some((row, None))) => {
                warn!(vault = %row.hash, "the kept Vault token's file is gone; logging in again (the token expires on its own)");
                self.mark_dead(&row.hash).await;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %error_chain(&e), "cannot read the kept Vault token; logging in again"),
        }
        let (token, info) = self.login(spec, timings).await?;
        Ok((token, info, Origin::Fresh))
    }

    /// Records a token the broker refuses, or whose bytes are lost, as dead.
    async fn mark_dead(&self, hash: &str) {
        let hash = hash.to_string();
        if let Err(e) = self.ledger.db_async(move |s| s.set_token_state(&hash, TokenState::Dead)).await {
            warn!(error = %error_chain(&e), "cannot record the token as dead");
        }
    }

    /// A fresh login, recorded before anything uses it; what it is good for comes with the
    /// reply. A login sent and never answered is not repeated: a token it may have issued is
    /// unknown here and expires with its TTL.
    async fn login(&self, spec: &ServiceSpec, timings: &mut Vec<(Stage, Duration)>) -> Result<(Secret, TokenInfo), StageFailure> {
        let started = Instant::now();
        let login = self.broker.login(&spec.login).await.map_err(|e| {
            if e.outcome_unknown() {
                warn!(error = %error_chain(&e), "the login's reply was lost: a token it may have issued is unknown here and expires with its TTL");
            }
            fail_chain(Stage::Login, &e)
        })?;
        let row = NewToken { hash: login.token.short_hash(), service: spec.name.clone(), kind: TokenKind::Login, parent: None, expiry: expiry_of(login.lease) };
        record_or_revoke(&self.ledger, &self.broker, self.run, &login.token, row.clone()).await.map_err(|reason| fail(Stage::Login, reason))?;
        timings.push((Stage::Login, started.elapsed()));
        let info = match row.expiry {
            Some(expiry) => recorded_info(expiry, now_unix()),
            None => TokenInfo { ttl: Duration::ZERO, expire_time: None, policies: login.policies, renewable: login.renewable },
        };
        Ok((login.token, info))
    }

    async fn access(
        &self,
        spec: &ServiceSpec,
        issuer_url: &str,
        token: &Secret,
        info: &TokenInfo,
        fresh: bool,
        timings: &mut Vec<(Stage, Duration)>,
    ) -> Result<ServiceTokens, AccessFailure> {
        let now = now_unix();
        let left = time_left(info);
        if left < spec.min_vault_lifetime {
            return Err(AccessFailure::from(fail(
                Stage::Lookup,
                format!(
                    "the Vault token has {} left, less than min_vault_lifetime {}",
                    humantime::format_duration(left),
                    humantime::format_duration(spec.min_vault_lifetime)
                ),
            )));
        }
        let vault_expiry = info.expire_time.map(|t| t.timestamp()).unwrap_or_else(|| now.saturating_add(i64::try_from(left.as_secs()).unwrap_or(i64::MAX)));
        let vault_fingerprint = Fingerprint::of(token, None, Some(vault_expiry));
        let started = Instant::now();
        let reply = self
            .broker
            .access_token(token, &access_request(spec))
            .await
            .map_err(|e: BrokerError| AccessFailure { failure: fail_chain(Stage::Fetch, &e), refused: e.is_permission_denied() })?;
        timings.push((Stage::Fetch, started.elapsed()));
        let expect = expectation(spec, issuer_url, spec.audience.as_deref(), &spec.required, &spec.allowed);
        let started = Instant::now();
        let validated = crate::jwks::validate_token(&self.jwks, &reply.token, &expect, now_unix())
            .await
            .map_err(|e| fail_chain(Stage::Validate, &e))?;
        timings.push((Stage::Validate, started.elapsed()));
        let mut handles = std::collections::BTreeMap::new();
        for handle in &spec.handles {
            let outcome = self.handle(spec, handle, issuer_url, token, timings).await;
            if let Err(f) = &outcome {
                warn!(handle = %handle.name, stage = %f.stage, reason = %f.reason, "the handle's access token is refused; its files are not written");
            }
            handles.insert(handle.name.clone(), outcome);
        }
        Ok(ServiceTokens {
            vault_token: token.clone(),
            vault_expiry,
            vault_ttl: left,
            fresh,
            vault_fingerprint,
            access_token: reply.token,
            validated,
            handles,
            credd_contents: std::sync::OnceLock::new(),
        })
    }

    /// One handle's access token, read with the service's Vault token on the sts path with the
    /// handle's scopes and audience, and validated as the service's own but against those: a
    /// token that grants more than the handle's scopes is refused.
    async fn handle(
        &self,
        spec: &ServiceSpec,
        handle: &HandleSpec,
        issuer_url: &str,
        token: &Secret,
        timings: &mut Vec<(Stage, Duration)>,
    ) -> Result<HandleToken, StageFailure> {
        let named = |mut f: StageFailure| {
            f.reason = format!("handle `{}`: {}", handle.name, f.reason);
            f
        };
        let started = Instant::now();
        let reply = self.broker.access_token(token, &handle_access_request(spec, handle)).await.map_err(|e| named(fail_chain(Stage::Fetch, &e)))?;
        timings.push((Stage::Fetch, started.elapsed()));
        let expect = expectation(spec, issuer_url, handle.audience.as_deref(), &handle.scopes, &handle.scopes);
        let started = Instant::now();
        let validated =
            crate::jwks::validate_token(&self.jwks, &reply.token, &expect, now_unix()).await.map_err(|e| named(fail_chain(Stage::Validate, &e)))?;
        timings.push((Stage::Validate, started.elapsed()));
        Ok(HandleToken { access_token: reply.token, validated })
    }

    /// Revokes a fresh login token nothing will hold (through the ledger, so that a failed
    /// revocation is retried by the next cycle).
    async fn discard(&self, service: &str, token: &Secret, why: &str) {
        info!(vault = %token.short_hash(), why, "the fresh Vault token will not be used");
        let _ = self.ledger.retire(&self.broker, &token.short_hash(), service, "unused fresh Vault token").await;
    }
}
