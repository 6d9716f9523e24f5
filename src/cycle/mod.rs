//! One cycle: inventory → broker → validate → deliver → notify, with state recorded.
//!
//! This module puts the stages in order and is the only one (with the scheduler) that touches
//! state. A service that fails a stage is dropped from the later ones and reported; a failure of
//! one service or host never stops the others. Setup problems that make the whole run
//! meaningless (no usable broker client, an unknown `--service`) are the only errors returned;
//! everything else is a line in the [`RunReport`].

mod idtoken;
mod ledger;
mod lifecycle;
mod mail;
mod names;
mod obtain;
mod plan;

pub use ledger::{holders_of, LedgerError};
pub use lifecycle::{kept_alive_by, revoke, settle_host, KeptAlive, RevokeReport};
pub use idtoken::{IdTokenDrillReport, revoke_idtoken};
pub use names::{HostNames, check_remote};
pub use mail::{channels, credmon_not_refreshing, expiring, notify_setup_failure, send_outbox, smtp_config, tell_admins};

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::broker::{AccessRequest, Broker};
use crate::deliver::CreddContents;
use crate::inventory::{DestinationKind, FileContent, Inventory, ServiceSpec};
use crate::jwks::{IssuerSource, JwksCache};
use crate::keep::{KeepError, TokenKeeper};
use crate::notify::{NotifyError, OutboxReport, Templates};
use crate::secret::{Fingerprint, Secret};
use crate::state::{CycleLock, Delivered, DeliveryRecord, DestinationStatus, LockError, RunId, RunKind, RunOutcome, StateError, StateStore};
use ledger::Ledger;
use crate::validate::ValidatedToken;

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
    /// Hosts left out of this cycle (the `revoke --host` drill re-delivers to the others).
    pub skip_hosts: Vec<String>,
    /// Started by the daemon's scheduler rather than by hand.
    pub scheduled: bool,
    /// Cancelled when shutdown's grace period ends: the lock wait gives up, no later stage,
    /// host or file starts, and writes not yet renamed into place are abandoned.
    pub cancel: CancellationToken,
    /// Told of progress and broker request durations (a TTY progress bar, metrics).
    pub observer: Option<Observer>,
    /// Issuer keys that outlive the cycle (the daemon's); without one, the cycle loads the keys
    /// persisted in the state directory.
    pub jwks: Option<Arc<JwksCache>>,
}

/// What a cycle reports as it goes. Every method has a no-op default.
pub trait CycleObserver: Send + Sync {
    /// A broker request of `kind` took `took`.
    fn broker_request(&self, _kind: crate::broker::RequestKind, _took: Duration) {}
    /// A service got (or failed to get) valid tokens.
    fn service_done(&self, _service: &str, _ok: bool) {}
    /// A host's plan was carried out (`ok`: every file landed).
    fn host_done(&self, _host: &str, _ok: bool) {}
}

/// A shared [`CycleObserver`].
#[derive(Clone)]
pub struct Observer(pub Arc<dyn CycleObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl CycleOptions {
    /// All services (or those named), delivering for real.
    pub fn services(services: Vec<String>) -> CycleOptions {
        CycleOptions {
            services,
            dry_run: false,
            skip_hosts: Vec::new(),
            scheduled: false,
            cancel: CancellationToken::new(),
            observer: None,
            jwks: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("no service `{0}` in the inventory (known: {1})")]
    UnknownService(String, String),
    #[error("service `{0}` has no idtoken block in the inventory")]
    NoIdToken(String),
    #[error("broker: {0}")]
    Broker(#[source] crate::broker::BrokerError),
    #[error("issuer {issuer}: {source}")]
    Issuer { issuer: String, #[source] source: crate::http::HttpError },
}

/// The stage at which a service stopped: shared with the daemon and metrics.
pub use crate::outcome::Stage;

#[derive(Clone, Debug, serde::Serialize)]
pub struct StageFailure {
    pub stage: Stage,
    /// Secret-free: built from product errors that name claims, paths and hosts, never tokens.
    pub reason: String,
}

/// What the bastion holds for a service after a successful fetch and validation.
pub struct ServiceTokens {
    /// The login token: kept and reused across cycles, delivered to credd destinations.
    pub vault_token: Secret,
    /// Unix seconds at which the Vault token expires.
    pub vault_expiry: i64,
    /// Its remaining lifetime when obtained (`Duration::MAX` for a token that never expires).
    pub vault_ttl: Duration,
    /// Logged in during this cycle rather than reused.
    pub fresh: bool,
    pub vault_fingerprint: Fingerprint,
    pub access_token: Secret,
    pub validated: ValidatedToken,
    /// Each handle's access token by handle name, read with the same Vault token and validated
    /// against the handle's own scopes; a refused one fails that handle's destinations only.
    pub handles: BTreeMap<String, Result<HandleToken, StageFailure>>,
    /// Its credd `.top` and `.use` contents, made by the first host plan that needs them and
    /// shared by the others.
    pub credd_contents: std::sync::OnceLock<CreddContents>,
}

/// A handle's access token, validated against its narrower scopes.
pub struct HandleToken {
    pub access_token: Secret,
    pub validated: ValidatedToken,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let handles: Vec<String> = self
            .handles
            .iter()
            .map(|(name, t)| match t {
                Ok(t) => format!("{name}={}", t.validated.fingerprint),
                Err(e) => format!("{name}: {}", e.stage),
            })
            .collect();
        f.debug_struct("ServiceTokens")
            .field("vault", &self.vault_fingerprint.to_string())
            .field("access", &self.validated.fingerprint.to_string())
            .field("handles", &handles)
            .finish()
    }
}

/// One service × destination after the cycle.
#[derive(Debug)]
pub struct DestinationReport {
    pub id: String,
    pub host: String,
    /// `Err`: secret-free reason, prefixed with the stage that failed.
    pub result: Result<Delivered, String>,
    /// Something found wrong at the destination even though this cycle delivered (the credmon
    /// deleted what the last cycle put there).
    pub warning: Option<String>,
    /// The credmon as seen before this cycle wrote anything (credd destinations).
    pub credmon: Option<CredmonReport>,
}

/// A credd destination's credmon, as this cycle saw it.
#[derive(Clone, Debug)]
pub struct CredmonReport {
    pub check: crate::credmon::CredmonCheck,
    /// It turned stuck or not refreshing with this cycle: on-call is told once.
    pub alarm: bool,
    /// The host's mtime of the `.use` this cycle wrote (there was none).
    pub wrote_use: Option<i64>,
}

#[derive(Debug)]
pub struct ServiceReport {
    pub service: String,
    pub tokens: Result<ServiceTokens, StageFailure>,
    pub destinations: Vec<DestinationReport>,
    /// How long each stage the service went through took.
    pub timings: Vec<(Stage, Duration)>,
}

#[derive(Debug)]
pub struct RunReport {
    pub run_id: Option<RunId>,
    pub started: DateTime<Utc>,
    pub dry_run: bool,
    pub services: Vec<ServiceReport>,
    /// Mail handed to the relay / left queued in the outbox by this run.
    pub mail: OutboxReport,
    /// What the state database could not record (secret-free): the run is not a success, and
    /// the next run recovers what it can from the intents it did record.
    pub state_errors: Vec<String>,
    /// Conditions the cycle found that on-call must hear about at once (e.g.
    /// [`mail::credmon_not_refreshing`]).
    pub alerts: Vec<crate::notify::FailureLine>,
    /// Broker requests made more than once (declined with 429/503, never sent, or reads left
    /// unanswered): the attempts beyond the first, by kind.
    pub broker_repeats: BTreeMap<crate::broker::RequestKind, u64>,
}

impl RunReport {
    /// True when every selected service got through every stage to every destination and
    /// everything was recorded.
    pub fn all_ok(&self) -> bool {
        self.state_errors.is_empty() && self.services.iter().all(|s| s.tokens.is_ok() && s.destinations.iter().all(|d| d.result.is_ok()))
    }

    pub fn destinations(&self) -> impl Iterator<Item = (&str, &DestinationReport)> {
        self.services.iter().flat_map(|s| s.destinations.iter().map(move |d| (s.service.as_str(), d)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CycleSetupError {
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error("{0}")]
    Busy(#[source] LockError),
    #[error("{0}")]
    Lock(#[source] LockError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("mail templates: {0}")]
    Templates(#[source] NotifyError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Keep(#[from] KeepError),
    #[error("token ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("shutting down: the cycle did not start")]
    Cancelled,
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

/// The JWKS cache for every configured issuer, each reached with its own CA, holding the keys
/// persisted in `state_dir` (and persisting what it fetches there).
pub fn jwks_cache(inv: &Inventory, state_dir: &Path) -> Result<JwksCache, CycleError> {
    let sources = inv
        .issuers
        .values()
        .map(|i| {
            let client = crate::http::client(&i.ca, inv.broker.timeout)
                .map_err(|source| CycleError::Issuer { issuer: i.url.clone(), source })?;
            Ok(IssuerSource { issuer: i.url.clone(), client })
        })
        .collect::<Result<Vec<_>, CycleError>>()?;
    Ok(JwksCache::new(sources).persisted_at(&state_dir.join(crate::jwks::CACHE_FILE)))
}

fn now_unix() -> i64 {
    Utc::now().timestamp()
}

/// What the broker is asked for on behalf of `spec`.
pub fn access_request(spec: &ServiceSpec) -> AccessRequest {
    spec.access_request(spec.min_access_lifetime.as_secs() + MINIMUM_SECONDS_MARGIN)
}

/// The broker request for one of `spec`'s handles, asking for as much time left as the service.
pub fn handle_access_request(spec: &ServiceSpec, handle: &crate::inventory::HandleSpec) -> AccessRequest {
    spec.handle_request(handle, spec.min_access_lifetime.as_secs() + MINIMUM_SECONDS_MARGIN)
}

/// How often a lock wait looks at its cancellation token.
const LOCK_WAIT_SLICE: Duration = Duration::from_secs(1);

/// The state directory's cycle lock, waiting up to `wait` for another holder.
fn take_lock(state_dir: &Path, wait: Duration) -> Result<CycleLock, CycleSetupError> {
    take_lock_unless(state_dir, wait, &CancellationToken::new())
}

/// [`take_lock`] that gives up as soon as `cancel` fires.
fn take_lock_unless(state_dir: &Path, wait: Duration, cancel: &CancellationToken) -> Result<CycleLock, CycleSetupError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if cancel.is_cancelled() {
            return Err(CycleSetupError::Cancelled);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match CycleLock::acquire(state_dir, Some(left.min(LOCK_WAIT_SLICE))) {
            Ok(lock) => return Ok(lock),
            Err(e @ LockError::Busy { .. }) if left <= LOCK_WAIT_SLICE => return Err(CycleSetupError::Busy(e)),
            Err(LockError::Busy { .. }) => {}
            Err(other) => return Err(CycleSetupError::Lock(other)),
        }
    }
}

/// What every stage of one cycle shares: cheap to clone into tasks.
#[derive(Clone)]
pub(crate) struct Ctx<'a> {
    pub inv: &'a Inventory,
    pub broker: Broker,
    pub jwks: Arc<JwksCache>,
    pub ledger: Ledger,
    pub run: RunId,
    pub dry_run: bool,
    pub skip_hosts: &'a [String],
    /// Grace over: no later stage or host starts.
    pub cancel: CancellationToken,
    /// The same, as the flag `deliver` reads between files.
    pub abandon: Arc<AtomicBool>,
    pub observer: Option<Observer>,
    /// Each service × destination as recorded before this cycle.
    pub prior: BTreeMap<(String, String), crate::state::DestinationStatus>,
    /// Services' Kerberos credential caches live under it unless the inventory places them.
    pub state_dir: &'a Path,
}

impl<'a> Ctx<'a> {
    fn new(
        inv: &'a Inventory,
        ledger: Ledger,
        run: RunId,
        opts: &'a CycleOptions,
        state_dir: &'a Path,
        prior: Vec<DestinationStatus>,
        abandon: Arc<AtomicBool>,
    ) -> Result<Self, CycleError> {
        let mut broker = Broker::new(&inv.broker.client_config()).map_err(CycleError::Broker)?.with_cancel(opts.cancel.clone());
        if let Some(Observer(o)) = &opts.observer {
            let o = o.clone();
            broker = broker.with_timing(Arc::new(move |kind, took| o.broker_request(kind, took)));
        }
        Ok(Ctx {
            inv,
            state_dir,
            observer: opts.observer.clone(),
            prior: prior.into_iter().map(|st| ((st.service.clone(), st.destination.clone()), st)).collect(),
            broker,
            jwks: match &opts.jwks {
                Some(cache) => cache.clone(),
                None => Arc::new(jwks_cache(inv, state_dir)?),
            },
            ledger,
            run,
            dry_run: opts.dry_run,
            skip_hosts: &opts.skip_hosts,
            cancel: opts.cancel.clone(),
            abandon,
        })
    }
}

/// One whole cycle on `state_dir`: the cycle lock, the run record, obtain → validate → deliver,
/// every outcome recorded, mail queued and sent. Blocking; drives `runtime` for the network
/// stages. Errors are setup errors only: nothing was attempted.
pub fn run_once(
    inv: &Inventory,
    state_dir: &Path,
    opts: &CycleOptions,
    runtime: &tokio::runtime::Handle,
    lock_wait: Duration,
) -> Result<RunReport, CycleSetupError> {
    let services = selected(inv, opts)?;
    let _lock = take_lock_unless(state_dir, lock_wait, &opts.cancel)?;
    // `deliver` reads a flag between files on its blocking threads: set it when the token fires.
    let abandon = Arc::new(AtomicBool::new(opts.cancel.is_cancelled()));
    let _bridge = tokio_util::task::AbortOnDropHandle::new(runtime.spawn({
        let (cancel, abandon) = (opts.cancel.clone(), abandon.clone());
        async move {
            cancel.cancelled().await;
            abandon.store(true, Ordering::SeqCst);
        }
    }));
    let store = StateStore::open(state_dir)?;
    let keeper = TokenKeeper::open(state_dir)?;
    let templates = Templates::load(inv.notify.templates_dir.as_deref()).map_err(CycleSetupError::Templates)?;
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let kind = match (opts.dry_run, opts.scheduled) {
        (true, _) => RunKind::DryRun,
        (false, true) => RunKind::Daemon,
        (false, false) => RunKind::Run,
    };
    let started = Utc::now();
    let run_id = store.begin_run(kind, &names)?;
    let run_span = tracing::info_span!("run", run_id = run_id.0, dry_run = opts.dry_run);
    let _entered = run_span.enter();

    let prior = match store.statuses() {
        Ok(p) => p,
        Err(e) => {
            let _ = store.finish_run(run_id, RunOutcome::Error, 2);
            return Err(e.into());
        }
    };
    let ledger = Ledger::new(store, keeper);
    let ctx = match ledger::adopt_legacy(&ledger, inv, &prior).map_err(CycleSetupError::from).and_then(|_| {
        Ctx::new(inv, ledger.clone(), run_id, opts, state_dir, prior, abandon).map_err(CycleSetupError::from)
    }) {
        Ok(c) => c,
        Err(e) => {
            let _ = ledger.db(|s| s.finish_run(run_id, RunOutcome::Error, 2));
            return Err(e);
        }
    };
    let (services_done, pushed, unrecorded) = runtime.block_on(execute(&ctx, &services).instrument(run_span.clone()));
    let mut report =
        RunReport {
            run_id: Some(run_id),
            started,
            dry_run: opts.dry_run,
            services: services_done,
            mail: OutboxReport::default(),
            state_errors: Vec::new(),
            broker_repeats: BTreeMap::new(),
            alerts: Vec::new(),
        };

    // From here on a failing state database loses nothing: what could not be written is tried
    // once more, then reported; the intents already recorded keep every file "may hold".
    let mut retry: Vec<DeliveryRecord> = Vec::new();
    for (service, d) in report.destinations() {
        let record = DeliveryRecord {
            service: service.to_string(),
            destination: d.id.clone(),
            host: d.host.clone(),
            result: d.result.clone(),
            dry_run: opts.dry_run,
        };
        if let Err(e) = ledger.write(|s| s.record_delivery(run_id, &record)) {
            warn!(service, destination = %d.id, error = %error_chain(&e), "cannot record the delivery; retried once more");
            retry.push(record);
        }
    }
    let mut credmon_errors = Vec::new();
    for (service, d) in report.destinations() {
        let Some(c) = d.credmon.as_ref().filter(|_| !opts.dry_run) else { continue };
        let at = |secs: i64| DateTime::from_timestamp(secs, 0);
        let record = crate::state::CredmonRecord {
            service: service.to_string(),
            destination: d.id.clone(),
            state: c.check.state,
            reason: c.check.reason.clone(),
            checked_at: started,
            refreshed_at: c.check.refreshed_at.and_then(at),
            use_written_at: c.wrote_use.and_then(at),
        };
        if let Err(e) = ledger.write(|s| s.record_credmon(&record)) {
            credmon_errors.push(format!("{service}/{}: the credmon's state could not be recorded: {}", d.id, error_chain(&e)));
        }
    }
    report.state_errors.extend(credmon_errors);
    for u in unrecorded {
        match ledger.write(|s| s.record_settled(Some(run_id), &u.settled)) {
            Ok(()) => info!(host = %u.host, "what the host's files hold is recorded after all"),
            Err(e) => report.state_errors.push(format!(
                "{}: what its files now hold could not be recorded ({}; first try: {}); the next run treats them as holding either token until it settles them",
                u.host,
                error_chain(&e),
                error_chain(&u.error)
            )),
        }
    }
    for record in retry {
        if let Err(e) = ledger.write(|s| s.record_delivery(run_id, &record)) {
            let what = if record.result.is_ok() { "delivered" } else { "not delivered" };
            report.state_errors.push(format!(
                "{}/{}: {what}, but the state database could not record it: {}",
                record.service,
                record.destination,
                error_chain(&e)
            ));
        }
    }
    for e in &report.state_errors {
        tracing::error!("{e}");
    }

    if !opts.dry_run {
        // Files left "may hold" on hosts this cycle did not push to are read back; then tokens
        // nothing may hold any more are revoked (those that fail are retried next time). Past the
        // grace period neither starts: a later cycle does both.
        if !opts.cancel.is_cancelled() {
            let skip: BTreeSet<String> = pushed.into_iter().chain(opts.skip_hosts.iter().cloned()).collect();
            runtime.block_on(ledger::read_back_elsewhere(&ledger, inv, run_id, &skip).instrument(run_span.clone()));
            report.state_errors.extend(runtime.block_on(ledger::reconcile(&ledger, &ctx.broker, inv, now_unix()).instrument(run_span.clone())));
        }
        let (statuses, tokens) = match ledger.db(|s| Ok((s.statuses()?, s.tokens()?))) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot read the state for orphaned services");
                (Vec::new(), Vec::new())
            }
        };
        let orphans = lifecycle::orphans(inv, &tokens, &statuses);
        report.mail = mail::notify_run(inv, &ledger, &templates, &report, &orphans, runtime);
    }
    report.broker_repeats = ctx.broker.repeats();
    let ok = report.all_ok();
    let outcome = if opts.cancel.is_cancelled() && !ok {
        RunOutcome::Interrupted
    } else if ok {
        RunOutcome::Success
    } else {
        RunOutcome::Failures
    };
    if let Err(e) = ledger.write(|s| s.finish_run(run_id, outcome, if ok { 0 } else { 1 })) {
        warn!(error = %error_chain(&e), "cannot record the end of the run");
    }
    Ok(report)
}

/// What a service's task ended with: its tokens (or the stage it failed at), the children its
/// Vault-token files get, how long each stage took, and when it was ready.
struct Obtained {
    tokens: Result<ServiceTokens, StageFailure>,
    children: lifecycle::Children,
    timings: Vec<(Stage, Duration)>,
    at: std::time::Instant,
}

/// The network part of a cycle: obtain and validate every service's tokens (each recorded in
/// the ledger as its reply arrives) and mint the child tokens that its Vault-token files
/// receive, while delivering to every host as soon as its services are ready (hosts in
/// parallel, each with its intent and outcome recorded).
/// Returns the reports and the outcomes the ledger could not take yet.
async fn execute(ctx: &Ctx<'_>, services: &[&ServiceSpec]) -> (Vec<ServiceReport>, BTreeSet<String>, Vec<plan::Unrecorded>) {
    // As many services at once as the broker takes requests at once (its client holds the bound).
    let gate = Arc::new(Semaphore::new(ctx.inv.broker.limits.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, spec) in services.iter().enumerate() {
        let mut spec = (*spec).clone();
        spec.login = spec.login.with_ccache_under(ctx.state_dir);
        let issuer_url = ctx.inv.issuers.get(&spec.issuer).map(|i| i.url.clone()).unwrap_or_default();
        let job = obtain::Job { broker: ctx.broker.clone(), jwks: ctx.jwks.clone(), ledger: ctx.ledger.clone(), run: Some(ctx.run), dry_run: ctx.dry_run };
        let gate = gate.clone();
        let observer = ctx.observer.clone();
        let cancel = ctx.cancel.clone();
        let skip_hosts = ctx.skip_hosts.to_vec();
        let span = tracing::info_span!("service", service = %spec.name);
        tasks.spawn(
            async move {
                let _permit = gate.acquire_owned().await.expect("semaphore never closed");
                let mut timings = Vec::new();
                if held_at_the_broker(&spec.name) {
                    cancel.cancelled().await;
                }
                if cancel.is_cancelled() {
                    let tokens = Err(StageFailure { stage: Stage::Login, reason: NOT_STARTED.into() });
                    return (i, Obtained { tokens, children: lifecycle::Children::new(), timings, at: std::time::Instant::now() });
                }
                let tokens = job.obtain(&spec, &issuer_url, &mut timings).await;
                match &tokens {
                    Ok(t) => info!(vault = %t.vault_fingerprint, reused = !t.fresh, access = %t.validated.fingerprint, "tokens valid"),
                    Err(f) => warn!(stage = %f.stage, reason = %f.reason, "service failed"),
                }
                if let Some(Observer(o)) = &observer {
                    o.service_done(&spec.name, tokens.is_ok());
                }
                // Past the grace period no child token is minted.
                let children = match &tokens {
                    Ok(t) if !cancel.is_cancelled() => lifecycle::mint_children(&job, &skip_hosts, &spec, t).await,
                    _ => lifecycle::Children::new(),
                };
                (i, Obtained { tokens, children, timings, at: std::time::Instant::now() })
            }
            .instrument(span),
        );
    }
    let (plan::Delivery { mut results, mut warnings, mut credmon, hosts, unrecorded, done_at }, mut obtained) =
        plan::deliver_all(ctx, services, tasks).await;
    let stopping = ctx.cancel.is_cancelled();
    let mut idtokens = if stopping { BTreeMap::new() } else { idtoken::deliver_idtokens(ctx, services).await };
    let mut reports: Vec<ServiceReport> = services
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let Some(Obtained { tokens, mut timings, at, .. }) = obtained.remove(&i) else {
                let tokens = Err(StageFailure { stage: Stage::Login, reason: "the service's task ended abnormally".into() });
                return ServiceReport { service: spec.name.clone(), tokens, destinations: Vec::new(), timings: Vec::new() };
            };
            // From the service being ready to the end of the last host it has files on.
            if let Some(last) = spec.destinations.iter().filter_map(|d| done_at.get(&d.host)).max().filter(|_| tokens.is_ok()) {
                timings.push((Stage::Deliver, last.saturating_duration_since(at)));
            }
            ServiceReport { service: spec.name.clone(), tokens, destinations: Vec::new(), timings }
        })
        .collect();

    for (report, spec) in reports.iter_mut().zip(services) {
        report.destinations = spec
            .destinations
            .iter()
            .filter(|d| !ctx.skip_hosts.contains(&d.host))
            .map(|d| {
                let (idtoken, idtoken_warning) = match idtokens.remove(&(spec.name.clone(), d.id.clone())) {
                    Some((r, w)) => (Some(r), w),
                    None => (None, None),
                };
                let result = match &report.tokens {
                    // An IDToken does not depend on the service's Vault tokens.
                    _ if idtoken.is_some() => idtoken.unwrap_or_else(|| Err("idtoken: no outcome".into())),
                    Err(f) => Err(format!("{}: {}", f.stage, f.reason)),
                    Ok(_) => results
                        .remove(&(spec.name.clone(), d.id.clone()))
                        .unwrap_or_else(|| Err(if stopping { format!("deliver: {NOT_STARTED}") } else { "deliver: no outcome for this destination".into() })),
                };
                let warning = warnings.remove(&(spec.name.clone(), d.id.clone())).or(idtoken_warning);
                let credmon = credmon.remove(&(spec.name.clone(), d.id.clone()));
                DestinationReport { id: d.id.clone(), host: d.host.clone(), result, warning, credmon }
            })
            .collect();
    }
    (reports, hosts, unrecorded)
}

/// Test builds only (`failpoints`): `cycle::hold_service=return(<service>)` keeps that service
/// from the broker until shutdown, as a broker that never answers it would.
fn held_at_the_broker(service: &str) -> bool {
    crate::failpoint!("cycle::hold_service", |name: Option<String>| name.as_deref() == Some(service));
    let _ = service;
    false
}

/// Why a stage, host or file was not started: the grace period after SIGTERM is over.
pub(crate) const NOT_STARTED: &str = "shutting down: not started (the grace period is over)";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{RemoteFile, TopFile};
    use crate::notify::{SmtpConfig, Tls};

    const VAULT: &str = "hvs.fixture-vault-token-0123456789";
    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJmaXh0dXJlIjoxfQ.fixture-signature-bytes";
    const PASSWORD: &str = "smtp-fixture-password-42";

    fn tokens() -> ServiceTokens {
        let vault = Secret::new(VAULT);
        let access = Secret::new(JWT);
        ServiceTokens {
            vault_fingerprint: Fingerprint::of(&vault, None, Some(1_800_000_000)),
            vault_token: vault,
            vault_expiry: 1_800_000_000,
            vault_ttl: Duration::from_secs(3600),
            fresh: true,
            validated: ValidatedToken {
                fingerprint: Fingerprint::of(&access, Some("jti-1".into()), Some(1_800_000_000)),
                iss: "https://iam.example/".into(),
                sub: "sub".into(),
                aud: vec!["aud".into()],
                exp: 1_800_000_000,
                iat: 1_799_990_000,
                jti: "jti-1".into(),
                scopes: vec!["compute.create".parse().unwrap()],
                wlcg_ver: "1.0".into(),
            },
            access_token: access,
            handles: BTreeMap::new(),
            credd_contents: std::sync::OnceLock::new(),
        }
    }

    /// Everything a cycle holds, printed with `{:?}` the way a careless log line or a panic
    /// would, shows fingerprints and never the fixture secrets.
    #[test]
    fn debug_output_of_a_populated_run_holds_no_secret() {
        let report = RunReport {
            run_id: Some(RunId(7)),
            started: Utc::now(),
            dry_run: false,
            services: vec![ServiceReport {
                service: "prod".into(),
                tokens: Ok(tokens()),
                timings: vec![],
                destinations: vec![DestinationReport {
                    id: "credd@s1".into(),
                    host: "s1".into(),
                    result: Ok(Delivered { vault_expiry: Some(1), access: None, vault_root: None, paths: vec![] }),
                    warning: None,
                    credmon: None,
                }],
            }],
            mail: OutboxReport::default(),
            state_errors: Vec::new(),
            alerts: Vec::new(),
            broker_repeats: BTreeMap::new(),
        };
        let t = tokens();
        let top = TopFile { vault_token: Some(t.vault_token.clone()), vault_url: "https://v:8200/v1/x".into(), scopes: None, audience: None };
        let smtp = SmtpConfig {
            host: "mx".into(),
            port: 25,
            from: "a@b.c".into(),
            tls: Tls::None,
            username: Some("u".into()),
            password: Some(Secret::new(PASSWORD)),
            timeout: Duration::from_secs(1),
        };
        let file = RemoteFile { id: "x".into(), path: "/p".into(), root: "/".into(), uid_of: None, content: top.to_json(), mode: 0o600, owner: None, only_if_absent: false, after: None, keep_if_same: false };
        let shown = format!("{report:?}\n{top:?}\n{smtp:?}\n{file:?}\n{:?}", t.access_token);
        for secret in [VAULT, JWT, PASSWORD, "fixturevaulttoken", "fixture-signature"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains(&t.validated.fingerprint.hash), "fingerprints are what is shown");
    }

    #[test]
    fn a_lock_wait_gives_up_when_the_grace_period_ends() {
        let dir = tempfile::tempdir().unwrap();
        let _held = CycleLock::acquire(dir.path(), None).unwrap();
        let cancel = CancellationToken::new();
        let waiter = {
            let (dir, cancel) = (dir.path().to_path_buf(), cancel.clone());
            std::thread::spawn(move || take_lock_unless(&dir, Duration::from_secs(20), &cancel).map(|_| ()))
        };
        cancel.cancel();
        assert!(matches!(waiter.join().unwrap(), Err(CycleSetupError::Cancelled)));
        assert!(matches!(take_lock_unless(dir.path(), Duration::ZERO, &CancellationToken::new()), Err(CycleSetupError::Busy(_))));
    }

    #[test]
    fn error_chain_keeps_causes_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner(#[source] std::io::Error);
        let e = Outer(Inner(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused")));
        assert_eq!(error_chain(&e), "outer: inner: refused");
    }
}
