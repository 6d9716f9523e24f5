//! One cycle: inventory → broker → validate → deliver → notify, with state recorded.
//!
//! This module puts the stages in order and is the only one (with the scheduler) that touches
//! state. A service that fails a stage is dropped from the later ones and reported; a failure of
//! one service or host never stops the others. Setup problems that make the whole run
//! meaningless (no usable broker client, an unknown `--service`) are the only errors returned;
//! everything else is a line in the [`RunReport`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{info, warn, Instrument};

use crate::broker::{AccessRequest, Broker};
use crate::inventory::{Inventory, ServiceSpec};
use crate::jwks::{IssuerSource, JwksCache};
use crate::secret::{Fingerprint, Secret};
use crate::validate::{Expectation, ValidatedToken};

/// How many services talk to the broker at once.
const BROKER_FAN_OUT: usize = 4;
/// Asked of the broker on top of the service's minimum so that a token that just meets the
/// minimum at the broker still meets it when validated a moment later.
const MINIMUM_SECONDS_MARGIN: u64 = 60;
/// Leeway for `nbf` and `iat` against clock skew between the issuer and this host.
const CLOCK_LEEWAY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct CycleOptions {
    /// Services to run; empty means all.
    pub services: Vec<String>,
    pub dry_run: bool,
    /// The state directory: services' Kerberos credential caches live under it unless the
    /// inventory places them elsewhere.
    pub state_dir: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("no service `{0}` in the inventory (known: {1})")]
    UnknownService(String, String),
    #[error("broker: {0}")]
    Broker(#[source] crate::broker::BrokerError),
    #[error("issuer {issuer}: {source}")]
    Issuer { issuer: String, #[source] source: crate::http::HttpError },
}

/// The stage at which a service stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Login,
    Lookup,
    Fetch,
    Validate,
    Deliver,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Login => "login",
            Stage::Lookup => "lookup",
            Stage::Fetch => "fetch",
            Stage::Validate => "validate",
            Stage::Deliver => "deliver",
        })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StageFailure {
    pub stage: Stage,
    /// Secret-free: built from product errors that name claims, paths and hosts, never tokens.
    pub reason: String,
}

/// What the bastion holds for a service after a successful fetch and validation.
pub struct ServiceTokens {
    pub vault_token: Secret,
    /// Unix seconds at which the Vault token expires.
    pub vault_expiry: i64,
    pub vault_fingerprint: Fingerprint,
    pub access_token: Secret,
    pub validated: ValidatedToken,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokens")
            .field("vault", &self.vault_fingerprint.to_string())
            .field("access", &self.validated.fingerprint.to_string())
            .finish()
    }
}

#[derive(Debug)]
pub struct ServiceReport {
    pub service: String,
    pub tokens: Result<ServiceTokens, StageFailure>,
}

#[derive(Debug)]
pub struct RunReport {
    pub dry_run: bool,
    pub services: Vec<ServiceReport>,
}

impl RunReport {
    /// True when every selected service got through every stage.
    pub fn all_ok(&self) -> bool {
        self.services.iter().all(|s| s.tokens.is_ok())
    }
}

fn selected<'a>(inv: &'a Inventory, opts: &CycleOptions) -> Result<Vec<&'a ServiceSpec>, CycleError> {
    if opts.services.is_empty() {
        return Ok(inv.services.values().collect());
    }
    opts.services
        .iter()
        .map(|name| {
            inv.services.get(name).ok_or_else(|| {
                CycleError::UnknownService(name.clone(), inv.services.keys().cloned().collect::<Vec<_>>().join(", "))
            })
        })
        .collect()
}

/// The JWKS cache for every configured issuer, each reached with its own CA.
pub fn jwks_cache(inv: &Inventory) -> Result<JwksCache, CycleError> {
    let sources = inv
        .issuers
        .values()
        .map(|i| {
            let client = crate::http::client(&i.ca, inv.broker.timeout)
                .map_err(|source| CycleError::Issuer { issuer: i.url.clone(), source })?;
            Ok(IssuerSource { issuer: i.url.clone(), client })
        })
        .collect::<Result<Vec<_>, CycleError>>()?;
    Ok(JwksCache::new(sources))
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Runs one cycle for the selected services.
pub async fn run_cycle(inv: &Inventory, opts: &CycleOptions) -> Result<RunReport, CycleError> {
    let services = selected(inv, opts)?;
    let broker = Broker::new(&inv.broker.client_config()).map_err(CycleError::Broker)?;
    let jwks = Arc::new(jwks_cache(inv)?);
    let gate = Arc::new(Semaphore::new(BROKER_FAN_OUT));

    let mut tasks = tokio::task::JoinSet::new();
    for (i, spec) in services.iter().enumerate() {
        let mut spec = (*spec).clone();
        spec.login = spec.login.with_ccache_under(&opts.state_dir);
        let issuer_url = inv.issuers.get(&spec.issuer).map(|i| i.url.clone()).unwrap_or_default();
        let (broker, jwks, gate) = (broker.clone(), jwks.clone(), gate.clone());
        let span = tracing::info_span!("service", service = %spec.name);
        tasks.spawn(
            async move {
                let _permit = gate.acquire_owned().await.expect("semaphore never closed");
                let tokens = obtain(&broker, &jwks, &spec, &issuer_url).await;
                match &tokens {
                    Ok(t) => info!(vault = %t.vault_fingerprint, access = %t.validated.fingerprint, "tokens valid"),
                    Err(f) => warn!(stage = %f.stage, reason = %f.reason, "service failed"),
                }
                (i, ServiceReport { service: spec.name.clone(), tokens })
            }
            .instrument(span),
        );
    }
    let mut reports: BTreeMap<usize, ServiceReport> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, r)) => {
                reports.insert(i, r);
            }
            Err(e) => warn!(error = %e, "a service task ended abnormally"),
        }
    }
    Ok(RunReport { dry_run: opts.dry_run, services: reports.into_values().collect() })
}

fn fail(stage: Stage, e: impl std::fmt::Display) -> StageFailure {
    StageFailure { stage, reason: e.to_string() }
}

/// An error with its whole `source` chain, `outer: inner: …`, skipping a cause whose text the
/// outer message already carries. Transport errors keep their real cause (refused, TLS, DNS)
/// deep in the chain, and on-call needs it.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn fail_chain(stage: Stage, e: &(dyn std::error::Error + 'static)) -> StageFailure {
    StageFailure { stage, reason: error_chain(e) }
}

/// Login → lookup → fetch → validate for one service.
async fn obtain(broker: &Broker, jwks: &JwksCache, spec: &ServiceSpec, issuer_url: &str) -> Result<ServiceTokens, StageFailure> {
    let login = broker.login(&spec.login).await.map_err(|e| fail_chain(Stage::Login, &e))?;
    let info = broker.lookup_self(&login.token).await.map_err(|e| fail_chain(Stage::Lookup, &e))?;
    let now = now_unix();
    let ttl = info.ttl;
    if ttl < spec.min_vault_lifetime {
        return Err(fail(
            Stage::Lookup,
            format!(
                "the Vault token has {} left, less than min_vault_lifetime {}",
                humantime::format_duration(ttl),
                humantime::format_duration(spec.min_vault_lifetime)
            ),
        ));
    }
    let vault_expiry = info.expire_time.map(|t| t.timestamp()).unwrap_or(now + ttl.as_secs() as i64);
    let vault_fingerprint = Fingerprint::of(&login.token, None, Some(vault_expiry));

    let request = AccessRequest {
        credkey: spec.credkey.clone(),
        role: spec.role.clone(),
        scopes: spec.requested_scopes(),
        audiences: spec.audience.iter().cloned().collect(),
        minimum_seconds: spec.min_access_lifetime.as_secs() + MINIMUM_SECONDS_MARGIN,
    };
    let reply = broker.access_token(&login.token, &request).await.map_err(|e| fail_chain(Stage::Fetch, &e))?;

    let expect = Expectation {
        issuer: issuer_url,
        audience: spec.audience.as_deref(),
        min_lifetime: spec.min_access_lifetime,
        required: &spec.required,
        allowed: &spec.allowed,
        leeway: CLOCK_LEEWAY,
    };
    let validated = crate::jwks::validate_token(jwks, &reply.token, &expect, now_unix())
        .await
        .map_err(|e| fail_chain(Stage::Validate, &e))?;
    Ok(ServiceTokens { vault_token: login.token, vault_expiry, vault_fingerprint, access_token: reply.token, validated })
}
