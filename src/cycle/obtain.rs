//! One service's tokens: the kept login token, reused while it has more than `renew_before`
//! left (else a fresh login, kept for the next cycles), then the access token, validated.
//!
//! A fresh login token that does not end up kept (validation failed, or a dry run) is revoked
//! at once: the bastion never leaves a live token behind that nothing holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{access_request, error_chain, fail, fail_chain, now_unix, ServiceTokens, Stage, StageFailure, CLOCK_LEEWAY};
use crate::broker::{Broker, TokenInfo};
use crate::inventory::ServiceSpec;
use crate::jwks::JwksCache;
use crate::keep::TokenKeeper;
use crate::secret::{Fingerprint, Secret};
use crate::validate::Expectation;

/// What one service's task needs; owned, so it can move into a task.
pub(super) struct Job {
    pub broker: Broker,
    pub jwks: Arc<JwksCache>,
    pub keeper: TokenKeeper,
    pub dry_run: bool,
}

/// Time left of a token; a token that never expires (`ttl` 0, no expiry) has all the time.
fn time_left(info: &TokenInfo) -> Duration {
    if info.ttl.is_zero() && info.expire_time.is_none() { Duration::MAX } else { info.ttl }
}

impl Job {
    /// `timings` gets how long each stage took.
    pub async fn obtain(&self, spec: &ServiceSpec, issuer_url: &str, timings: &mut Vec<(Stage, Duration)>) -> Result<ServiceTokens, StageFailure> {
        let (token, info, fresh) = self.vault_token(spec, timings).await?;
        let result = self.access(spec, issuer_url, &token, &info, fresh, timings).await;
        match (&result, fresh) {
            (Ok(_), true) if !self.dry_run => {
                if let Err(e) = self.keeper.set_current(&spec.name, &token) {
                    // Still usable this cycle; the next one logs in again.
                    warn!(error = %e, "cannot keep the new Vault token for later cycles");
                }
            }
            (_, true) => self.discard(&token, if self.dry_run { "dry run" } else { "its access token was refused" }).await,
            _ => {}
        }
        result
    }

    /// The kept token if it is still good for longer than `renew_before`, else a new login.
    async fn vault_token(&self, spec: &ServiceSpec, timings: &mut Vec<(Stage, Duration)>) -> Result<(Secret, TokenInfo, bool), StageFailure> {
        let started = Instant::now();
        match self.keeper.current(&spec.name) {
            Ok(Some(kept)) => match self.broker.lookup_self(&kept.token).await.inspect(|_| timings.push((Stage::Lookup, started.elapsed()))) {
                Ok(info) if time_left(&info) > spec.renew_before && time_left(&info) >= spec.min_vault_lifetime => {
                    return Ok((kept.token, info, false));
                }
                Ok(info) => info!(
                    left = %humantime::format_duration(Duration::from_secs(info.ttl.as_secs())),
                    renew_before = %humantime::format_duration(spec.renew_before),
                    "kept Vault token is due for renewal; logging in again"
                ),
                Err(e) => warn!(error = %error_chain(&e), "kept Vault token no longer works; logging in again"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read the kept Vault token; logging in again"),
        }
        let started = Instant::now();
        let login = self.broker.login(&spec.login).await.map_err(|e| fail_chain(Stage::Login, &e))?;
        timings.push((Stage::Login, started.elapsed()));
        let started = Instant::now();
        let looked_up = self.broker.lookup_self(&login.token).await;
        timings.push((Stage::Lookup, started.elapsed()));
        match looked_up {
            Ok(info) => Ok((login.token, info, true)),
            Err(e) => {
                let failure = fail_chain(Stage::Lookup, &e);
                self.discard(&login.token, "lookup failed").await;
                Err(failure)
            }
        }
    }

    async fn access(
        &self,
        spec: &ServiceSpec,
        issuer_url: &str,
        token: &Secret,
        info: &TokenInfo,
        fresh: bool,
        timings: &mut Vec<(Stage, Duration)>,
    ) -> Result<ServiceTokens, StageFailure> {
        let now = now_unix();
        let left = time_left(info);
        if left < spec.min_vault_lifetime {
            return Err(fail(
                Stage::Lookup,
                format!(
                    "the Vault token has {} left, less than min_vault_lifetime {}",
                    humantime::format_duration(left),
                    humantime::format_duration(spec.min_vault_lifetime)
                ),
            ));
        }
        let vault_expiry = info.expire_time.map(|t| t.timestamp()).unwrap_or_else(|| now.saturating_add(i64::try_from(left.as_secs()).unwrap_or(i64::MAX)));
        let vault_fingerprint = Fingerprint::of(token, None, Some(vault_expiry));
        let started = Instant::now();
        let reply = self.broker.access_token(token, &access_request(spec)).await.map_err(|e| fail_chain(Stage::Fetch, &e))?;
        timings.push((Stage::Fetch, started.elapsed()));
        let expect = Expectation {
            issuer: issuer_url,
            audience: spec.audience.as_deref(),
            min_lifetime: spec.min_access_lifetime,
            required: &spec.required,
            allowed: &spec.allowed,
            leeway: CLOCK_LEEWAY,
        };
        let started = Instant::now();
        let validated = crate::jwks::validate_token(&self.jwks, &reply.token, &expect, now_unix())
            .await
            .map_err(|e| fail_chain(Stage::Validate, &e))?;
        timings.push((Stage::Validate, started.elapsed()));
        Ok(ServiceTokens {
            vault_token: token.clone(),
            vault_expiry,
            vault_ttl: left,
            fresh,
            vault_fingerprint,
            access_token: reply.token,
            validated,
        })
    }

    async fn discard(&self, token: &Secret, why: &str) {
        match self.broker.revoke_self(token).await {
            Ok(()) => info!(vault = %token.short_hash(), why, "unused fresh Vault token revoked"),
            Err(e) => warn!(vault = %token.short_hash(), why, error = %error_chain(&e), "cannot revoke an unused fresh Vault token"),
        }
    }
}
