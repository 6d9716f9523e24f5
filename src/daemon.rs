//! `token-bastion daemon`: cycles on each service's schedule, reload on SIGHUP, bounded stop.
//!
//! [`serve`] is the daemon's one loop, whatever drives it: production ([`run`]) wires the wall
//! clock, tokio-cron-scheduler's wake-ups and real cycles into it; tests wire a paused clock,
//! wake-ups sent by hand and a stand-in for the cycle. The loop hands wake-ups to the
//! [`Planner`] (one run per slot, splayed, batched), runs the batches one cycle at a time, and
//! folds every cycle's [`CycleOutcome`] into the run guards, the metrics and health: a cycle
//! that could not run is a failure of every service it was for (counted, logged once, never a
//! completion, so the watchdog turns `/healthz` unhealthy), never a success. One watchdog
//! watches the services for the daemon's whole life; a reload hands it the new list.
//!
//! Stopping: nothing new starts after SIGTERM (queued batches are dropped, no wake-up is taken),
//! the cycle in flight gets the grace period; then the grace-over token fires (no later stage,
//! host or file starts, writes not yet renamed are abandoned) and the cycle gets
//! [`HARD_MARGIN`] more, after which the daemon returns anyway, leaving a write that is still
//! running behind.
//!
//! Never: parses signals itself (they arrive as [`Control`]); lets an invalid inventory or a
//! broken templates dir replace a running inventory; counts a cycle that did not run as a
//! completion; waits without bound at shutdown.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cycle::{self, CycleOptions, RunReport};
use crate::inventory::{self, Inventory, InventoryError};
use crate::jwks::JwksCache;
use crate::metrics::{Held, HeldSource, Metrics, MetricsServer};
use crate::notify::{OutgoingMail, Templates};
use crate::outcome::{CycleOutcome, DestinationOutcome, ServiceOutcome, Stage};
use crate::schedule::{
    self, Batch, Clock, CronTicks, Missed, PlanOptions, Planner, RunGuard, RunTracker, TickSource, Wake, WallClock, WatchdogEvent,
};
use crate::state::StateStore;

/// How long past the grace period a write already started may run before the daemon returns
/// anyway (exit status 1). Below the 30 s the systemd unit adds to the grace period for its stop
/// timeout, so the daemon, not systemd, ends it.
pub const HARD_MARGIN: Duration = Duration::from_secs(10);
/// How long a scheduled cycle waits for the state-directory lock (a `run` by hand holding it).
const LOCK_WAIT: Duration = Duration::from_secs(600);
/// Wake-ups waiting for the loop; one more is lost (and reported missed by the planner).
const WAKE_QUEUE: usize = 64;

/// What the process is asked to do (SIGHUP → `Reload`, SIGTERM/SIGINT → `Terminate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Reload,
    Terminate,
}

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// `None`: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a cycle in flight may take to finish after SIGTERM.
    pub grace: Duration,
    pub plan: PlanOptions,
}

/// How the daemon ended; `main` maps it to the exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonExit {
    /// Stopped with nothing in flight, or what was in flight finished within the grace period.
    Clean,
    /// The grace period ended with a cycle in flight: writes not yet renamed were abandoned,
    /// or (past [`HARD_MARGIN`]) a write was still running when the daemon returned.
    Abandoned,
    /// Could not start (invalid inventory or templates, state directory, metrics address).
    Setup,
}

/// Runs one cycle for the daemon.
pub trait CycleRunner: Send + Sync + 'static {
    /// A cycle for `services` of `inv`. `grace_over` fires when the grace period after SIGTERM
    /// ends.
    fn run(&self, inv: Arc<Inventory>, services: Vec<String>, grace_over: CancellationToken) -> impl Future<Output = CycleOutcome> + Send + 'static;
}

/// Issuer keys kept across cycles, for the inventory that configures the issuers.
type KeptKeys = Arc<Mutex<Option<(Arc<Inventory>, Arc<JwksCache>)>>>;

/// The production runner: [`cycle::run_once`] on a blocking thread.
pub struct Cycles {
    pub state_dir: PathBuf,
    pub metrics: Metrics,
    /// Issuer keys live across cycles (rebuilt, from the keys persisted in the state
    /// directory, only when the inventory changes), so that an issuer outage is ridden out on
    /// the last good keys.
    pub keys: KeptKeys,
}

/// The issuer-key cache for `inv`: the one kept while the inventory is the same, else a new one.
fn issuer_keys(kept: &KeptKeys, inv: &Arc<Inventory>, state_dir: &Path) -> Option<Arc<JwksCache>> {
    let mut kept = lock(kept);
    if let Some((for_inv, cache)) = kept.as_ref()
        && Arc::ptr_eq(for_inv, inv)
    {
        return Some(cache.clone());
    }
    // A cache that cannot be built (an issuer's CA unreadable) is the cycle's own setup error.
    let cache = Arc::new(cycle::jwks_cache(inv, state_dir).ok()?);
    *kept = Some((inv.clone(), cache.clone()));
    Some(cache)
}

impl CycleRunner for Cycles {
    fn run(&self, inv: Arc<Inventory>, services: Vec<String>, grace_over: CancellationToken) -> impl Future<Output = CycleOutcome> + Send + 'static {
        let state_dir = self.state_dir.clone();
        let observer = cycle::Observer(Arc::new(MetricsObserver(self.metrics.clone())));
        let keys = self.keys.clone();
        async move {
            let runtime = tokio::runtime::Handle::current();
            let (for_cycle, selected) = (inv.clone(), services.clone());
            let result = tokio::task::spawn_blocking(move || {
                let jwks = issuer_keys(&keys, &for_cycle, &state_dir);
                let opts = CycleOptions { scheduled: true, cancel: grace_over, observer: Some(observer), jwks, ..CycleOptions::services(selected) };
                cycle::run_once(&for_cycle, &state_dir, &opts, &runtime, LOCK_WAIT)
            })
            .await;
            match result {
                Ok(Ok(report)) => outcome(&report),
                Ok(Err(e)) => CycleOutcome::not_run(cycle::error_chain(&e), destinations_of(&inv, &services)),
                Err(e) => CycleOutcome::not_run(format!("the cycle ended abnormally: {e}"), destinations_of(&inv, &services)),
            }
        }
    }
}

/// A cycle's report as the daemon and metrics fold it: per destination delivered, or the stage
/// at which its service or host stopped.
pub fn outcome(report: &RunReport) -> CycleOutcome {
    let services = report
        .services
        .iter()
        .map(|s| ServiceOutcome {
            service: s.service.clone(),
            timings: s.timings.clone(),
            destinations: s
                .destinations
                .iter()
                .map(|d| DestinationOutcome {
                    destination: d.id.clone(),
                    result: match (&s.tokens, &d.result) {
                        (_, Ok(_)) => Ok(()),
                        (Err(f), Err(_)) => Err(f.stage),
                        (Ok(_), Err(_)) => Err(Stage::Deliver),
                    },
                })
                .collect(),
        })
        .collect();
    CycleOutcome::Ran(services)
}

/// Broker request durations into the metrics, as they happen.
pub struct MetricsObserver(pub Metrics);

impl cycle::CycleObserver for MetricsObserver {
    fn broker_request(&self, kind: crate::broker::RequestKind, took: Duration) {
        self.0.observe_broker_request(kind, took);
    }
}

/// Each service's destinations, by service.
pub fn destinations(inv: &Inventory) -> BTreeMap<String, Vec<String>> {
    inv.services.values().map(|s| (s.name.clone(), s.destinations.iter().map(|d| d.id.clone()).collect())).collect()
}

fn destinations_of(inv: &Inventory, services: &[String]) -> Vec<(String, Vec<String>)> {
    let all = destinations(inv);
    services.iter().map(|s| (s.clone(), all.get(s).cloned().unwrap_or_default())).collect()
}

type Wanted = Arc<Mutex<BTreeSet<(String, String)>>>;

fn wanted_set(inventory: &BTreeMap<String, Vec<String>>) -> BTreeSet<(String, String)> {
    inventory.iter().flat_map(|(s, ds)| ds.iter().map(move |d| (s.clone(), d.clone()))).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the destinations of the current inventory hold, read from the state database with a
/// read-only connection. Destinations recorded but no longer in the inventory are left out.
pub fn held_source(state_dir: PathBuf, wanted: Wanted) -> HeldSource {
    Arc::new(move || {
        if !state_dir.join(crate::state::DB_FILE).exists() {
            return Ok(Vec::new());
        }
        let statuses = StateStore::open_read_only(&state_dir).and_then(|s| s.statuses()).map_err(|e| e.to_string())?;
        let wanted = lock(&wanted);
        Ok(statuses
            .into_iter()
            .filter(|st| wanted.contains(&(st.service.clone(), st.destination.clone())))
            .filter_map(|st| Some(Held { expiry: st.vault_expiry?, service: st.service, destination: st.destination }))
            .collect())
    })
}

/// The inventory, its local files and its mail templates, or every error found.
fn load(config: &Path) -> Result<Inventory, Vec<String>> {
    let inv = match inventory::load(config) {
        Ok(inv) => inv,
        Err(InventoryError::Invalid(diags)) => return Err(diags.iter().map(|d| d.to_string()).collect()),
        Err(e) => return Err(vec![e.to_string()]),
    };
    let (errors, _) = inventory::check_local_files(&inv, false);
    let mut errors: Vec<String> = errors.iter().map(|d| d.to_string()).collect();
    if let Err(e) = Templates::load(inv.notify.templates_dir.as_deref()) {
        errors.push(format!("{}: notify.templates_dir: {}", config.display(), cycle::error_chain(&e)));
    }
    if errors.is_empty() { Ok(inv) } else { Err(errors) }
}

fn schedules(inv: &Inventory) -> Vec<(String, schedule::Schedule)> {
    inv.services.values().map(|s| (s.name.clone(), s.schedule.clone())).collect()
}

/// Runs the daemon until told to terminate: the production wiring of [`serve`].
pub async fn run(opts: DaemonOptions, control: mpsc::Receiver<Control>) -> DaemonExit {
    let inv = match load(&opts.config) {
        Ok(inv) => inv,
        Err(errors) => {
            for e in errors {
                error!("{e}");
            }
            return DaemonExit::Setup;
        }
    };
    let metrics = Metrics::new();
    let server_stop = CancellationToken::new();
    let server = match opts.metrics_listen {
        None => None,
        Some(addr) => match MetricsServer::start(addr, metrics.clone(), server_stop.clone()).await {
            Ok(s) => {
                info!(listen = %s.local_addr(), "metrics at /metrics, health at /healthz");
                Some(s)
            }
            Err(e) => {
                error!(error = %e, "cannot serve metrics");
                return DaemonExit::Setup;
            }
        },
    };
    let (wake_tx, wakes) = mpsc::channel(WAKE_QUEUE);
    let ticks = match CronTicks::start(wake_tx).await {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "cannot start the cron scheduler");
            return DaemonExit::Setup;
        }
    };
    let runner = Cycles { state_dir: opts.state_dir.clone(), metrics: metrics.clone(), keys: KeptKeys::default() };
    let exit = serve(&opts, inv, Parts { clock: WallClock, ticks, wakes, runner, metrics }, control).await;
    server_stop.cancel();
    if let Some(server) = server {
        let _ = tokio::time::timeout(Duration::from_secs(2), server.stopped()).await;
    }
    exit
}

/// What [`serve`] runs on.
pub struct Parts<C, T, R> {
    pub clock: C,
    /// Told the schedules; sends wake-ups into `wakes`.
    pub ticks: T,
    pub wakes: mpsc::Receiver<Wake>,
    pub runner: R,
    pub metrics: Metrics,
}

/// A batch on its way to a cycle, with the inventory it was planned under.
struct Job {
    inv: Arc<Inventory>,
    batch: Batch,
}

/// The cycle in flight.
struct Running {
    handle: JoinHandle<CycleOutcome>,
    guards: Vec<RunGuard>,
    destinations: Vec<(String, Vec<String>)>,
}

/// The daemon's loop, from a loaded inventory until [`Control::Terminate`].
pub async fn serve<C: Clock, T: TickSource, R: CycleRunner>(
    opts: &DaemonOptions,
    inv: Inventory,
    parts: Parts<C, T, R>,
    mut control: mpsc::Receiver<Control>,
) -> DaemonExit {
    let Parts { clock, mut ticks, mut wakes, runner, metrics } = parts;
    let mut current = Arc::new(inv);
    let wanted: Wanted = Arc::new(Mutex::new(wanted_set(&destinations(&current))));
    metrics.set_held_source(held_source(opts.state_dir.clone(), wanted.clone()));
    refresh_held(&metrics).await;

    let tracker = RunTracker::new();
    seed_completions(&opts.state_dir, &tracker).await;
    let mut planner = Planner::new(schedules(&current), opts.plan, clock.now());
    if let Err(e) = ticks.set_schedules(&planner.schedules()).await {
        error!(error = %e, "cannot register the schedules with the cron scheduler");
        return DaemonExit::Setup;
    }
    let stop = CancellationToken::new();
    let (services_tx, services_rx) = watch::channel(planner.services());
    let (wd_tx, mut wd_rx) = mpsc::channel(16);
    let watchdog = schedule::spawn_watchdog(clock.clone(), tracker.clone(), services_rx, wd_tx, stop.clone());

    let grace_over = CancellationToken::new();
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut running: Option<Running> = None;
    let mut broken_notified: BTreeSet<String> = BTreeSet::new();
    info!(services = current.services.len(), config = %opts.config.display(), "daemon started");
    loop {
        if running.is_none()
            && let Some(job) = queue.pop_front()
        {
            running = Some(start(&runner, job, &grace_over));
        }
        let next = planner.next_wake();
        let sleep = async {
            match next {
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let finished = async {
            match running.as_mut() {
                Some(r) => (&mut r.handle).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ctl = control.recv() => match ctl {
                Some(Control::Reload) => {
                    let Some(new) = reload(opts, &current, &mut broken_notified).await else { continue };
                    current = Arc::new(new);
                    planner.replace(schedules(&current), clock.now());
                    if let Err(e) = ticks.set_schedules(&planner.schedules()).await {
                        error!(error = %e, "cannot register the new schedules with the cron scheduler; their slots will be reported missed");
                    }
                    services_tx.send_replace(planner.services());
                    let inventory = destinations(&current);
                    *lock(&wanted) = wanted_set(&inventory);
                    metrics.retain(&inventory);
                    refresh_held(&metrics).await;
                }
                Some(Control::Terminate) | None => break,
            },
            Some(event) = wd_rx.recv() => watchdog_event(opts, &current, &metrics, event).await,
            Some(wake) = wakes.recv() => on_wake(&mut planner, &wake, &metrics),
            joined = finished => {
                if let Some(r) = running.take() {
                    fold(&clock, &metrics, r, joined);
                }
                refresh_held(&metrics).await;
            }
            () = sleep => {
                let now = clock.now();
                report_missed(&metrics, &planner.check_missed(now));
                if let Some(batch) = planner.take_due(now, &tracker) {
                    for s in &batch.skipped {
                        warn!(service = %s.service, running_since = %s.running_since, "previous run still going; this run is skipped");
                        metrics.record_skipped(&s.service);
                    }
                    if !batch.runs.is_empty() {
                        queue.push_back(Job { inv: current.clone(), batch });
                    }
                }
            }
        }
    }

    // Stopping: nothing new starts; the cycle in flight gets the grace period, then the margin.
    ticks.shutdown().await;
    let dropped: Vec<String> = queue.drain(..).flat_map(|job| job.batch.services()).collect();
    if !dropped.is_empty() {
        warn!(services = ?dropped, "stopping: queued cycles dropped; they did not start");
    }
    let exit = match running.take() {
        None => DaemonExit::Clean,
        Some(mut r) => {
            info!(grace = %humantime::format_duration(opts.grace), "stopping: no new cycles; waiting for the one in flight");
            match tokio::time::timeout(opts.grace, &mut r.handle).await {
                Ok(joined) => {
                    fold(&clock, &metrics, r, joined);
                    DaemonExit::Clean
                }
                Err(_) => {
                    warn!("grace period over: nothing more starts; writes not yet renamed into place are abandoned");
                    grace_over.cancel();
                    match tokio::time::timeout(HARD_MARGIN, &mut r.handle).await {
                        Ok(joined) => fold(&clock, &metrics, r, joined),
                        Err(_) => error!(
                            margin = %humantime::format_duration(HARD_MARGIN),
                            services = ?r.guards.iter().map(RunGuard::service).collect::<Vec<_>>(),
                            "hard deadline passed: exiting with a write still running; its files may hold the old or the new token"
                        ),
                    }
                    DaemonExit::Abandoned
                }
            }
        }
    };
    stop.cancel();
    let _ = watchdog.await;
    info!(?exit, "daemon stopped");
    exit
}

fn start<R: CycleRunner>(runner: &R, job: Job, grace_over: &CancellationToken) -> Running {
    let services = job.batch.services();
    let destinations = destinations_of(&job.inv, &services);
    let handle = tokio::spawn(runner.run(job.inv, services, grace_over.clone()));
    Running { handle, guards: job.batch.runs, destinations }
}

/// Folds a cycle's outcome into the run guards, the metrics and health. Only a cycle that ran
/// completes its services' runs; one that could not run frees them without a completion.
fn fold<C: Clock>(clock: &C, metrics: &Metrics, running: Running, joined: Result<CycleOutcome, JoinError>) {
    let Running { guards, destinations, .. } = running;
    let outcome = joined.unwrap_or_else(|e| CycleOutcome::not_run(format!("the cycle ended abnormally: {e}"), destinations));
    metrics.record_outcome(&outcome);
    let now = clock.now();
    match &outcome {
        CycleOutcome::Ran(_) => {
            for run in guards {
                metrics.record_cycle_completed(run.service(), now);
                run.complete(now);
            }
        }
        CycleOutcome::NotRun { reason, .. } => {
            let services: Vec<&str> = guards.iter().map(RunGuard::service).collect();
            error!(services = ?services, reason = %reason, "the cycle could not run: a failure of every destination of these services");
            for run in guards {
                run.fail();
            }
        }
    }
}

fn on_wake(planner: &mut Planner, wake: &Wake, metrics: &Metrics) {
    let report = planner.wake(wake);
    if !report.woken.is_empty() {
        info!(schedule = %wake.schedule, slot = %wake.slot, services = ?report.woken, "wake-up");
    }
    if !report.duplicate.is_empty() {
        info!(schedule = %wake.schedule, slot = %wake.slot, services = ?report.duplicate, "wake-up for a slot already run; ignored");
    }
    if report.woken.is_empty() && report.duplicate.is_empty() {
        info!(schedule = %wake.schedule, slot = %wake.slot, "wake-up for a schedule no service has; ignored");
    }
    report_missed(metrics, &report.missed);
}

fn report_missed(metrics: &Metrics, missed: &[Missed]) {
    for m in missed {
        error!(service = %m.service, slot = %m.first, slots = m.count, "no wake-up came from the cron scheduler for this slot: it did not run");
        metrics.record_missed_wakeups(&m.service, m.count);
    }
}

async fn refresh_held(metrics: &Metrics) {
    let m = metrics.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || m.refresh_held()).await {
        warn!(error = %e, "metrics: reading what destinations hold ended abnormally");
    }
}

/// The last success of each service, from state, so the watchdog does not start blind.
async fn seed_completions(state_dir: &Path, tracker: &RunTracker) {
    let dir = state_dir.to_path_buf();
    let statuses = tokio::task::spawn_blocking(move || StateStore::open(&dir).and_then(|s| s.statuses())).await;
    if let Ok(Ok(statuses)) = statuses {
        let mut last: BTreeMap<String, chrono::DateTime<Utc>> = BTreeMap::new();
        for st in statuses {
            if let Some(t) = st.last_success {
                let e = last.entry(st.service).or_insert(t);
                *e = (*e).max(t);
            }
        }
        for (service, at) in last {
            tracker.record_completed(&service, at);
        }
    }
}

/// Reloads the inventory. A valid one (its local files and templates included) is returned
/// (new and changed schedules apply, removed services stop being scheduled); an invalid one is
/// refused, its errors logged, and the admins mailed once per distinct broken file.
async fn reload(opts: &DaemonOptions, current: &Inventory, notified: &mut BTreeSet<String>) -> Option<Inventory> {
    info!(config = %opts.config.display(), "reloading the inventory");
    match load(&opts.config) {
        Ok(new) => {
            let removed: Vec<&String> = current.services.keys().filter(|s| !new.services.contains_key(*s)).collect();
            for s in &removed {
                warn!(service = %s, "removed from the inventory: no longer scheduled; its tokens stay live until `token-bastion revoke --service {s}`");
            }
            let added: Vec<&String> = new.services.keys().filter(|s| !current.services.contains_key(*s)).collect();
            info!(services = new.services.len(), added = ?added, removed = ?removed, "inventory reloaded");
            notified.clear();
            Some(new)
        }
        Err(errors) => {
            for e in &errors {
                error!("{e}");
            }
            error!(config = %opts.config.display(), errors = errors.len(), "the new inventory is invalid; the running one stays in use");
            let content = std::fs::read(&opts.config).unwrap_or_default();
            let seen = format!("{}\n{}", String::from_utf8_lossy(&content), errors.join("\n"));
            let key = crate::secret::Secret::new(seen).short_hash();
            if notified.insert(key) {
                let mail = OutgoingMail {
                    to: current.notify.admins.clone(),
                    subject: format!("[token-bastion] reload refused: {} is invalid", opts.config.display()),
                    body: format!(
                        "token-bastion was asked to reload its inventory, but the file is invalid. The daemon keeps\nrunning with the inventory it had.\n\n{}\n\nCheck a fix with: token-bastion --config {} check\n",
                        errors.join("\n"),
                        opts.config.display()
                    ),
                };
                queue_and_send(opts, current, mail).await;
            }
            None
        }
    }
}

/// Logs and mails a watchdog report, and reflects it in `/healthz`. A report about a service
/// that has left the inventory meanwhile is dropped.
async fn watchdog_event(opts: &DaemonOptions, inv: &Inventory, metrics: &Metrics, event: WatchdogEvent) {
    match event {
        WatchdogEvent::Overdue { service, .. } if !inv.services.contains_key(&service) => {
            debug!(service = %service, "overdue report for a service no longer in the inventory; dropped");
        }
        WatchdogEvent::Overdue { service, last_completed, deadline } => {
            error!(service = %service, last_completed = ?last_completed, deadline = %deadline, "service has not completed a run within twice its interval");
            metrics.mark_overdue(&service);
            let mail = OutgoingMail {
                to: inv.notify.admins.clone(),
                subject: format!("[token-bastion] OVERDUE: {service} has not completed a run"),
                body: format!(
                    "Service {service} has not completed a run since {} (deadline {deadline}: twice its schedule's interval).\nIts cycles may fail to start, or the scheduler may be stuck. Current state: token-bastion status\n",
                    last_completed.map_or_else(|| "the daemon started".to_string(), |t| t.to_string())
                ),
            };
            queue_and_send(opts, inv, mail).await;
        }
        WatchdogEvent::Recovered { service, completed } => {
            info!(service = %service, completed = %completed, "service completes runs again");
            metrics.mark_recovered(&service);
        }
    }
}

/// Puts a mail in the outbox and tries to send the outbox now.
async fn queue_and_send(opts: &DaemonOptions, inv: &Inventory, mail: OutgoingMail) {
    if mail.to.is_empty() {
        return;
    }
    let dir = opts.state_dir.clone();
    let smtp = inv.notify.smtp.clone();
    let done = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let store = StateStore::open(&dir).map_err(|e| e.to_string())?;
        store.enqueue_mail(&mail).map_err(|e| e.to_string())?;
        if let Some(smtp) = smtp {
            let cfg = cycle::smtp_config(&smtp).map_err(|e| e.to_string())?;
            crate::notify::deliver_outbox(&store, &cfg).map_err(|e| cycle::error_chain(&e))?;
        }
        Ok(())
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "cannot queue or send mail; it goes out with a later cycle"),
        Err(e) => warn!(error = %e, "mail task ended abnormally"),
    }
}

#[cfg(test)]
mod tests;
