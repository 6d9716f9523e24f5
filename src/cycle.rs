//! One cycle: inventory → broker → validate → deliver → notify, with state recorded.
//!
//! This module puts the stages in order and is the only one (with the scheduler) that touches
//! state. A service that fails a stage is dropped from the later ones and reported; a failure of
//! one service or host never stops the others. Setup problems that make the whole run
//! meaningless (no usable broker client, an unknown `--service`) are the only errors returned;
//! everything else is a line in the [`RunReport`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tracing::{info, warn, Instrument};

use crate::broker::{AccessRequest, Broker};
use crate::deliver::{self, HostPlan, HostTarget, RemoteFile, TopFile};
use crate::inventory::{DestinationKind, FileContent, Inventory, Owner as InvOwner, ServiceSpec, SmtpTls};
use crate::jwks::{IssuerSource, JwksCache};
use crate::notify::{ExpiryLine, FailureLine, NotifyError, OutboxReport, RunSummary, SmtpConfig, Templates, Tls};
use crate::secret::{Fingerprint, Secret};
use crate::state::{
    CycleLock, Delivered, DeliveryRecord, DestinationStatus, LockError, RunId, RunKind, RunOutcome, StateError, StateStore,
};
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

/// One service × destination after the cycle.
#[derive(Debug)]
pub struct DestinationReport {
    pub id: String,
    pub host: String,
    /// `Err`: secret-free reason, prefixed with the stage that failed.
    pub result: Result<Delivered, String>,
}

#[derive(Debug)]
pub struct ServiceReport {
    pub service: String,
    pub tokens: Result<ServiceTokens, StageFailure>,
    pub destinations: Vec<DestinationReport>,
}

#[derive(Debug)]
pub struct RunReport {
    pub run_id: Option<RunId>,
    pub started: DateTime<Utc>,
    pub dry_run: bool,
    pub services: Vec<ServiceReport>,
    /// Mail handed to the relay / left queued in the outbox by this run.
    pub mail: OutboxReport,
}

impl RunReport {
    /// True when every selected service got through every stage to every destination.
    pub fn all_ok(&self) -> bool {
        self.services.iter().all(|s| s.tokens.is_ok() && s.destinations.iter().all(|d| d.result.is_ok()))
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
    Utc::now().timestamp()
}

/// What the broker is asked for on behalf of `spec`.
pub fn access_request(spec: &ServiceSpec) -> AccessRequest {
    AccessRequest {
        credkey: spec.credkey.clone(),
        role: spec.role.clone(),
        scopes: spec.requested_scopes(),
        audiences: spec.audience.iter().cloned().collect(),
        minimum_seconds: spec.min_access_lifetime.as_secs() + MINIMUM_SECONDS_MARGIN,
    }
}

/// One whole cycle on `state_dir`: the cycle lock, the run record, obtain → validate → deliver,
/// every outcome recorded, mail queued and sent. Blocking; drives `runtime` for the network
/// stages. Errors are setup errors only: nothing was attempted.
pub fn run_once(
    inv: &Inventory,
    state_dir: &Path,
    opts: &CycleOptions,
    runtime: &tokio::runtime::Runtime,
    lock_wait: Duration,
) -> Result<RunReport, CycleSetupError> {
    let services = selected(inv, opts)?;
    let _lock = CycleLock::acquire(state_dir, Some(lock_wait)).map_err(|e| match e {
        LockError::Busy { .. } => CycleSetupError::Busy(e),
        other => CycleSetupError::Lock(other),
    })?;
    let store = StateStore::open(state_dir)?;
    let templates = Templates::load(inv.notify.templates_dir.as_deref()).map_err(CycleSetupError::Templates)?;
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let kind = if opts.dry_run { RunKind::DryRun } else { RunKind::Run };
    let started = Utc::now();
    let run_id = store.begin_run(kind, &names)?;
    let run_span = tracing::info_span!("run", run_id = run_id.0, dry_run = opts.dry_run);
    let _entered = run_span.enter();

    let executed = runtime.block_on(execute(inv, &services, opts.dry_run).instrument(run_span.clone()));
    let mut report = match executed {
        Ok(services) => RunReport { run_id: Some(run_id), started, dry_run: opts.dry_run, services, mail: OutboxReport::default() },
        Err(e) => {
            store.finish_run(run_id, RunOutcome::Error, 2)?;
            return Err(e.into());
        }
    };

    for (service, d) in report.destinations() {
        let record = DeliveryRecord {
            service: service.to_string(),
            destination: d.id.clone(),
            host: d.host.clone(),
            result: d.result.clone(),
            dry_run: opts.dry_run,
        };
        store.record_delivery(run_id, &record)?;
    }

    if !opts.dry_run {
        report.mail = notify_run(inv, &store, &templates, &report);
    }
    let ok = report.all_ok();
    store.finish_run(run_id, if ok { RunOutcome::Success } else { RunOutcome::Failures }, if ok { 0 } else { 1 })?;
    Ok(report)
}

/// Queues the mail a run calls for (failures, and destinations inside their expiry warning) and
/// sends whatever the outbox holds. Mail problems are logged, never fail the run: the outbox
/// keeps what could not be sent for the next run.
fn notify_run(inv: &Inventory, store: &StateStore, templates: &Templates, report: &RunReport) -> OutboxReport {
    let summary = match run_summary(inv, store, report) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read state for the run summary; no mail queued");
            return OutboxReport::default();
        }
    };
    let owners: BTreeMap<String, Vec<String>> = inv.services.values().map(|s| (s.name.clone(), s.owners.clone())).collect();
    let mut mails = Vec::new();
    match templates.admin_mail(&summary, &inv.notify.admins) {
        Ok(m) => mails.extend(m),
        Err(e) => warn!(error = %error_chain(&e), "cannot render the admin mail"),
    }
    match templates.owner_mails(&summary, &owners) {
        Ok(m) => mails.extend(m),
        Err(e) => warn!(error = %error_chain(&e), "cannot render owner mail"),
    }
    for m in &mails {
        if let Err(e) = store.enqueue_mail(m) {
            warn!(error = %e, subject = %m.subject, "cannot queue mail");
        }
    }
    let Some(smtp) = &inv.notify.smtp else {
        if !mails.is_empty() {
            warn!(queued = mails.len(), "no notify.smtp configured: mail stays queued in the state database");
        }
        return OutboxReport::default();
    };
    let cfg = match smtp_config(smtp) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot read the SMTP password file; mail stays queued");
            return OutboxReport::default();
        }
    };
    match crate::notify::deliver_outbox(store, &cfg) {
        Ok(r) => {
            if r.failed > 0 || r.deferred > 0 {
                warn!(sent = r.sent, failed = r.failed, deferred = r.deferred, "some mail could not be sent; it stays queued");
            } else if r.sent > 0 {
                info!(sent = r.sent, "mail sent");
            }
            r
        }
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot send mail; it stays queued");
            OutboxReport::default()
        }
    }
}

fn smtp_config(smtp: &crate::inventory::SmtpSpec) -> std::io::Result<SmtpConfig> {
    let password = match &smtp.password_file {
        Some(p) => Some(Secret::new(
            std::fs::read_to_string(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?.trim_end().to_string(),
        )),
        None => None,
    };
    Ok(SmtpConfig {
        host: smtp.host.clone(),
        port: smtp.port,
        from: smtp.from.clone(),
        tls: match smtp.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::StartTls,
            SmtpTls::Tls => Tls::Wrapper,
        },
        username: smtp.username.clone(),
        password,
        timeout: smtp.timeout,
    })
}

/// Failures of this run with their streaks from state, and every destination in the inventory
/// whose credential is inside its service's expiry warning.
fn run_summary(inv: &Inventory, store: &StateStore, report: &RunReport) -> Result<RunSummary, StateError> {
    let statuses = store.statuses()?;
    let by_key: BTreeMap<(&str, &str), &DestinationStatus> =
        statuses.iter().map(|s| ((s.service.as_str(), s.destination.as_str()), s)).collect();
    let now = Utc::now();
    let mut failed = Vec::new();
    let mut delivered = 0;
    for (service, d) in report.destinations() {
        match &d.result {
            Ok(_) => delivered += 1,
            Err(reason) => {
                let st = by_key.get(&(service, d.id.as_str()));
                failed.push(FailureLine {
                    service: service.to_string(),
                    destination: d.id.clone(),
                    host: d.host.clone(),
                    reason: reason.clone(),
                    since: st.and_then(|s| s.failing_since).unwrap_or(now),
                    consecutive: st.map(|s| s.consecutive_failures).unwrap_or(1),
                });
            }
        }
    }
    let expiring = expiring(inv, &statuses, now)
        .into_iter()
        .map(|(st, left, warn)| ExpiryLine {
            service: st.service.clone(),
            destination: st.destination.clone(),
            host: st.host.clone(),
            time_left_secs: left,
            warning_secs: warn,
        })
        .collect();
    Ok(RunSummary { run_id: report.run_id.unwrap_or(RunId(0)), started: report.started, dry_run: report.dry_run, delivered, failed, expiring })
}

/// Destinations still in the inventory whose delivered credential has less time left than its
/// service's `expiry_warning`: (status, seconds left, warning seconds).
pub fn expiring<'a>(inv: &Inventory, statuses: &'a [DestinationStatus], now: DateTime<Utc>) -> Vec<(&'a DestinationStatus, i64, i64)> {
    statuses
        .iter()
        .filter_map(|st| {
            let spec = inv.services.get(&st.service)?;
            spec.destinations.iter().find(|d| d.id == st.destination)?;
            let left = st.vault_time_left_secs(now)?;
            let warn = spec.expiry_warning.as_secs() as i64;
            (left < warn).then_some((st, left, warn))
        })
        .collect()
}

/// The network part of a cycle: obtain and validate every service's tokens, then deliver to
/// every host, hosts in parallel.
async fn execute(inv: &Inventory, services: &[&ServiceSpec], dry_run: bool) -> Result<Vec<ServiceReport>, CycleError> {
    let broker = Broker::new(&inv.broker.client_config()).map_err(CycleError::Broker)?;
    let jwks = Arc::new(jwks_cache(inv)?);
    let gate = Arc::new(Semaphore::new(BROKER_FAN_OUT));

    let mut tasks = tokio::task::JoinSet::new();
    for (i, spec) in services.iter().enumerate() {
        let spec = (*spec).clone();
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
                (i, tokens)
            }
            .instrument(span),
        );
    }
    let mut obtained: BTreeMap<usize, Result<ServiceTokens, StageFailure>> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, t)) => {
                obtained.insert(i, t);
            }
            Err(e) => warn!(error = %e, "a service task ended abnormally"),
        }
    }
    let mut reports: Vec<ServiceReport> = services
        .iter()
        .enumerate()
        .map(|(i, spec)| ServiceReport {
            service: spec.name.clone(),
            tokens: obtained
                .remove(&i)
                .unwrap_or_else(|| Err(StageFailure { stage: Stage::Login, reason: "the service's task ended abnormally".into() })),
            destinations: Vec::new(),
        })
        .collect();

    let results = deliver_all(inv, services, &reports, dry_run).await;
    for (report, spec) in reports.iter_mut().zip(services) {
        report.destinations = spec
            .destinations
            .iter()
            .map(|d| {
                let result = match &report.tokens {
                    Err(f) => Err(format!("{}: {}", f.stage, f.reason)),
                    Ok(_) => results
                        .get(&(spec.name.clone(), d.id.clone()))
                        .cloned()
                        .unwrap_or_else(|| Err("deliver: no outcome for this destination".into())),
                };
                DestinationReport { id: d.id.clone(), host: d.host.clone(), result }
            })
            .collect();
    }
    Ok(reports)
}

/// How many hosts are written to at once.
const HOST_FAN_OUT: usize = 8;

/// A file's id in a host plan: the service, the destination and the file's role there.
fn file_id(service: &str, destination: &str, part: &str) -> String {
    format!("{service}\u{1f}{destination}\u{1f}{part}")
}

fn split_file_id(id: &str) -> Option<(&str, &str)> {
    let mut parts = id.split('\u{1f}');
    Some((parts.next()?, parts.next()?))
}

fn owner(o: &InvOwner) -> deliver::Owner {
    deliver::Owner { user: o.user.clone(), group: o.group.clone().unwrap_or_default() }
}

/// Every host's plan: the files of every service that obtained valid tokens, and what each
/// delivered destination will then hold.
#[allow(clippy::type_complexity)]
fn plan_hosts(
    inv: &Inventory,
    services: &[&ServiceSpec],
    reports: &[ServiceReport],
) -> (BTreeMap<String, HostPlan>, BTreeMap<(String, String), Delivered>, BTreeMap<String, String>) {
    let mut plans: BTreeMap<String, HostPlan> = BTreeMap::new();
    let mut will_hold = BTreeMap::new();
    let mut host_errors = BTreeMap::new();
    for (spec, report) in services.iter().zip(reports) {
        let Ok(tokens) = &report.tokens else { continue };
        for dest in &spec.destinations {
            let Some(host) = inv.hosts.get(&dest.host) else { continue };
            if !plans.contains_key(&host.name) {
                match host_target(host) {
                    Ok(target) => {
                        plans.insert(host.name.clone(), HostPlan { target, dirs: Vec::new(), files: Vec::new(), signal_credmon: Vec::new() });
                    }
                    Err(e) => {
                        host_errors.insert(host.name.clone(), e);
                        continue;
                    }
                }
            }
            let plan = plans.get_mut(&host.name).expect("inserted above");
            let access_fp = Some(tokens.validated.fingerprint.clone());
            match &dest.kind {
                DestinationKind::Credd => {
                    let spool = host.spool.as_deref().unwrap_or("/");
                    let request = access_request(spec);
                    let top = TopFile {
                        vault_token: tokens.vault_token.clone(),
                        vault_url: format!("{}{}", inv.broker.vault_url, crate::broker::access_path(&inv.broker.issuer, &request)),
                        scopes: (!request.scopes.is_empty()).then(|| request.scopes.join(",")),
                        audience: spec.audience.clone(),
                    };
                    let (dir, files) = deliver::credd_layout(spool, &spec.account, &spec.oauth_service, &top, &tokens.access_token, &owner(&host.spool_owner));
                    if !plan.dirs.iter().any(|d| d.path == dir.path) {
                        plan.dirs.push(dir);
                    }
                    for (mut f, part) in files.into_iter().zip(["top", "use"]) {
                        f.id = file_id(&spec.name, &dest.id, part);
                        plan.files.push(f);
                    }
                    if host.signal_credmon && !plan.signal_credmon.iter().any(|s| s == spool) {
                        plan.signal_credmon.push(spool.to_string());
                    }
                    will_hold.insert((spec.name.clone(), dest.id.clone()), Delivered { vault_expiry: Some(tokens.vault_expiry), access: access_fp });
                }
                DestinationKind::File { path, content, owner: o, mode } => {
                    let (body, expiry, access) = match content {
                        FileContent::VaultToken => (&tokens.vault_token, tokens.vault_expiry, None),
                        FileContent::AccessToken => (&tokens.access_token, tokens.validated.exp, access_fp),
                    };
                    plan.files.push(RemoteFile {
                        id: file_id(&spec.name, &dest.id, "file"),
                        path: path.clone(),
                        uid_of: path.contains("{uid}").then(|| spec.account.clone()),
                        content: Secret::new(format!("{}\n", body.expose())),
                        mode: *mode,
                        owner: Some(owner(o)),
                    });
                    will_hold.insert((spec.name.clone(), dest.id.clone()), Delivered { vault_expiry: Some(expiry), access });
                }
            }
        }
    }
    (plans, will_hold, host_errors)
}

fn host_target(host: &crate::inventory::HostSpec) -> Result<HostTarget, String> {
    let key_passphrase = match &host.key_passphrase_file {
        Some(p) => Some(Secret::new(
            std::fs::read_to_string(p)
                .map_err(|e| format!("deliver: cannot read key passphrase file {}: {e}", p.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        )),
        None => None,
    };
    Ok(HostTarget {
        name: host.name.clone(),
        address: host.address.clone(),
        port: host.port,
        user: host.user.clone(),
        key_file: host.key_file.clone(),
        key_passphrase,
        known_hosts: host.known_hosts.clone(),
        timeout: host.timeout,
    })
}

/// Pushes every host's plan, hosts in parallel on blocking threads, and returns each
/// service × destination's result.
async fn deliver_all(
    inv: &Inventory,
    services: &[&ServiceSpec],
    reports: &[ServiceReport],
    dry_run: bool,
) -> BTreeMap<(String, String), Result<Delivered, String>> {
    let (plans, will_hold, host_errors) = plan_hosts(inv, services, reports);
    let gate = Arc::new(Semaphore::new(HOST_FAN_OUT));
    let mut tasks = tokio::task::JoinSet::new();
    for (name, plan) in plans {
        let gate = gate.clone();
        let span = tracing::info_span!("host", host = %name);
        tasks.spawn(
            async move {
                let _permit = gate.acquire_owned().await.expect("semaphore never closed");
                let outcome = tokio::task::spawn_blocking(move || deliver::push_to_host(&plan, dry_run)).await;
                (name, outcome)
            }
            .instrument(span),
        );
    }
    let mut results: BTreeMap<(String, String), Result<Delivered, String>> = BTreeMap::new();
    let mut fail = |key: (String, String), reason: String| {
        results.insert(key, Err(reason));
    };
    for spec in services {
        for dest in &spec.destinations {
            if let Some(e) = host_errors.get(&dest.host) {
                fail((spec.name.clone(), dest.id.clone()), e.clone());
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((host, outcome)) = joined else { continue };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                warn!(host = %host, error = %e, "delivery thread ended abnormally");
                continue;
            }
        };
        for (spool, signalled) in &outcome.signalled {
            match signalled {
                Ok(_) => {}
                Err(e) => warn!(host = %host, spool = %spool, error = %error_chain(e), "cannot signal the credmon"),
            }
        }
        for f in &outcome.files {
            let Some((service, dest)) = split_file_id(&f.id) else { continue };
            let key = (service.to_string(), dest.to_string());
            let file_result = match (&outcome.connected, &f.result) {
                (Err(e), _) | (Ok(()), Err(e)) => Err(format!("deliver: {}", error_chain(e))),
                (Ok(()), Ok(())) => Ok(()),
            };
            match file_result {
                // The first failing file of a destination names the destination's failure.
                Err(reason) => {
                    if !matches!(results.get(&key), Some(Err(_))) {
                        warn!(service = %service, host = %host, destination = %dest, path = %f.path, reason = %reason, "not delivered");
                        results.insert(key, Err(reason));
                    }
                }
                Ok(()) => {
                    if !results.contains_key(&key) {
                        if let Some(held) = will_hold.get(&key) {
                            results.insert(key, Ok(held.clone()));
                        }
                    }
                }
            }
        }
    }
    for ((service, dest), r) in &results {
        if r.is_ok() {
            let host = services.iter().find(|s| &s.name == service).and_then(|s| s.destinations.iter().find(|d| &d.id == dest)).map(|d| d.host.as_str()).unwrap_or("");
            info!(service = %service, host = %host, destination = %dest, dry_run, "{}", if dry_run { "deliverable" } else { "delivered" });
        }
    }
    results
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

    let request = access_request(spec);
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

#[cfg(test)]
mod tests {
    use super::*;

    const VAULT: &str = "hvs.CAESIJfixturevaulttoken0123456789";
    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJmaXh0dXJlIjoxfQ.fixture-signature-bytes";
    const PASSWORD: &str = "smtp-fixture-password-42";

    fn tokens() -> ServiceTokens {
        let vault = Secret::new(VAULT);
        let access = Secret::new(JWT);
        ServiceTokens {
            vault_fingerprint: Fingerprint::of(&vault, None, Some(1_800_000_000)),
            vault_token: vault,
            vault_expiry: 1_800_000_000,
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
                destinations: vec![DestinationReport {
                    id: "credd@s1".into(),
                    host: "s1".into(),
                    result: Ok(Delivered { vault_expiry: Some(1), access: None }),
                }],
            }],
            mail: OutboxReport::default(),
        };
        let t = tokens();
        let top = TopFile { vault_token: t.vault_token.clone(), vault_url: "https://v:8200/v1/x".into(), scopes: None, audience: None };
        let smtp = SmtpConfig {
            host: "mx".into(),
            port: 25,
            from: "a@b.c".into(),
            tls: Tls::None,
            username: Some("u".into()),
            password: Some(Secret::new(PASSWORD)),
            timeout: Duration::from_secs(1),
        };
        let file = RemoteFile { id: "x".into(), path: "/p".into(), uid_of: None, content: top.to_json(), mode: 0o600, owner: None };
        let shown = format!("{report:?}\n{top:?}\n{smtp:?}\n{file:?}\n{:?}", t.access_token);
        for secret in [VAULT, JWT, PASSWORD, "fixturevaulttoken", "fixture-signature"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains(&t.validated.fingerprint.hash), "fingerprints are what is shown");
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
