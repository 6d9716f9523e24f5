//! `token-bastion daemon`: cycles on each service's schedule, reload on SIGHUP, graceful stop.
//!
//! The scheduler ([`crate::schedule`]) decides *when*; this module runs the batches it hands
//! over, one cycle at a time (the cycle itself takes the state-directory lock), keeps the
//! metrics, reacts to the watchdog, and turns control messages (mapped from signals by `main`)
//! into reloads and shutdown. Shutdown stops scheduling, lets a cycle in flight finish within
//! the grace period, and past it makes the cycle abandon writes not yet renamed (old files stay,
//! recorded as failed).
//!
//! It never parses signals itself (they arrive as [`Control`], so tests drive it), and never
//! lets an invalid inventory replace a running one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cycle::{self, CycleOptions, RunReport};
use crate::inventory::{self, Inventory, InventoryError};
use crate::metrics::{Metrics, MetricsServer};
use crate::notify::OutgoingMail;
use crate::schedule::{self, Batch, Clock, PlanOptions, Planner, RunTracker, TokioClock, WatchdogEvent};
use crate::state::StateStore;

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
    /// Writes were abandoned when the grace period ended.
    Abandoned,
    /// Could not start (invalid inventory, state directory, metrics address).
    Setup,
}

/// A batch on its way to the worker, with the inventory it was planned under.
struct Job {
    inv: Arc<Inventory>,
    batch: Batch,
}

fn schedules(inv: &Inventory) -> Vec<(String, schedule::Schedule)> {
    inv.services.values().map(|s| (s.name.clone(), s.schedule.clone())).collect()
}

fn load(config: &Path) -> Result<Inventory, Vec<String>> {
    match inventory::load(config) {
        Ok(inv) => {
            let (errors, _) = inventory::check_local_files(&inv, false);
            if errors.is_empty() { Ok(inv) } else { Err(errors.iter().map(|d| d.to_string()).collect()) }
        }
        Err(InventoryError::Invalid(diags)) => Err(diags.iter().map(|d| d.to_string()).collect()),
        Err(e) => Err(vec![e.to_string()]),
    }
}

/// Runs until told to terminate.
pub async fn run(opts: DaemonOptions, mut control: mpsc::Receiver<Control>) -> DaemonExit {
    let inv = match load(&opts.config) {
        Ok(inv) => Arc::new(inv),
        Err(errors) => {
            for e in errors {
                error!("{e}");
            }
            return DaemonExit::Setup;
        }
    };
    let cancel = CancellationToken::new();
    let metrics = Metrics::new();
    let _server = match opts.metrics_listen {
        None => None,
        Some(addr) => match MetricsServer::start(addr, metrics.clone(), cancel.clone()).await {
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

    let clock = TokioClock::new();
    let tracker = RunTracker::new();
    seed_completions(&opts.state_dir, &tracker).await;
    let mut planner = Planner::new(schedules(&inv), opts.plan, clock.now());
    let (wd_tx, mut wd_rx) = mpsc::channel(16);
    let mut watchdog_cancel = cancel.child_token();
    schedule::spawn_watchdog(clock, tracker.clone(), planner.services(), wd_tx.clone(), watchdog_cancel.clone());

    // One worker runs cycles one after the other; the grace-over token reaches the cycle in flight.
    let grace_over = CancellationToken::new();
    let (job_tx, job_rx) = mpsc::channel::<Job>(4);
    let worker = tokio::spawn(worker(job_rx, opts.state_dir.clone(), metrics.clone(), grace_over.clone()));

    let mut current = inv;
    let mut broken_notified: BTreeSet<String> = BTreeSet::new();
    info!(services = current.services.len(), config = %opts.config.display(), "daemon started");
    loop {
        let next = planner.next_due();
        let sleep = async {
            match next {
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ctl = control.recv() => match ctl {
                Some(Control::Reload) => {
                    if let Some(new) = reload(&opts, &current, &mut broken_notified).await {
                        current = Arc::new(new);
                        planner = Planner::new(schedules(&current), opts.plan, clock.now());
                        watchdog_cancel.cancel();
                        watchdog_cancel = cancel.child_token();
                        schedule::spawn_watchdog(clock, tracker.clone(), planner.services(), wd_tx.clone(), watchdog_cancel.clone());
                    }
                }
                Some(Control::Terminate) | None => break,
            },
            event = wd_rx.recv() => {
                if let Some(event) = event {
                    watchdog_event(&opts, &current, &metrics, event).await;
                }
            }
            () = sleep => {
                if let Some(batch) = planner.take_due(clock.now(), &tracker) {
                    for s in &batch.skipped {
                        warn!(service = %s.service, running_since = %s.running_since, "previous run still going; this run is skipped");
                        metrics.record_skipped(&s.service);
                    }
                    if !batch.runs.is_empty() {
                        let services = batch.services();
                        if job_tx.try_send(Job { inv: current.clone(), batch }).is_err() {
                            warn!(services = ?services, "cycles are backed up; this batch is skipped");
                        }
                    }
                }
            }
        }
    }

    // Shutdown: nothing new starts; the cycle in flight gets the grace period.
    info!(grace = %humantime::format_duration(opts.grace), "stopping: no new cycles; waiting for the one in flight");
    drop(job_tx);
    let mut worker = worker;
    let exit = match tokio::time::timeout(opts.grace, &mut worker).await {
        Ok(_) => DaemonExit::Clean,
        Err(_) => {
            warn!("grace period over: abandoning writes not yet renamed into place");
            grace_over.cancel();
            let _ = worker.await;
            DaemonExit::Abandoned
        }
    };
    cancel.cancel();
    info!(?exit, "daemon stopped");
    exit
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

/// Runs queued batches one at a time on a blocking thread (the cycle is blocking around its
/// network stages), then completes their guards and updates the metrics.
async fn worker(mut jobs: mpsc::Receiver<Job>, state_dir: PathBuf, metrics: Metrics, grace_over: CancellationToken) {
    let handle = tokio::runtime::Handle::current();
    while let Some(Job { inv, batch }) = jobs.recv().await {
        let services = batch.services();
        let opts = CycleOptions {
            scheduled: true,
            cancel: grace_over.clone(),
            observer: Some(cycle::Observer(Arc::new(MetricsObserver(metrics.clone())))),
            ..CycleOptions::services(services.clone())
        };
        let (inv2, dir, handle2) = (inv.clone(), state_dir.clone(), handle.clone());
        // The lock wait covers a manual `run` holding the state directory.
        let result = tokio::task::spawn_blocking(move || cycle::run_once(&inv2, &dir, &opts, &handle2, Duration::from_secs(600))).await;
        let now = Utc::now();
        match result {
            Ok(Ok(report)) => record_metrics(&metrics, &report),
            Ok(Err(e)) => error!(services = ?services, error = %cycle::error_chain(&e), "cycle could not run"),
            Err(e) => error!(services = ?services, error = %e, "cycle ended abnormally"),
        }
        for run in batch.runs {
            metrics.record_cycle_completed(run.service(), now);
            run.complete(now);
        }
    }
}

/// Broker request durations into the metrics, as they happen.
pub struct MetricsObserver(pub Metrics);

impl cycle::CycleObserver for MetricsObserver {
    fn broker_request(&self, kind: crate::broker::RequestKind, took: Duration) {
        self.0.observe_broker_request(kind, took);
    }
}

/// Folds a cycle's report into the metrics: deliveries and failures by stage, time left per
/// destination, stage durations.
pub fn record_metrics(metrics: &Metrics, report: &RunReport) {
    let now = Utc::now().timestamp();
    for s in &report.services {
        for (stage, took) in &s.timings {
            metrics.observe_stage(&s.service, *stage, *took);
        }
        for d in &s.destinations {
            match (&s.tokens, &d.result) {
                (_, Ok(held)) => {
                    metrics.record_delivery(&s.service, &d.id);
                    if let Some(exp) = held.vault_expiry {
                        metrics.set_time_left(&s.service, &d.id, chrono::TimeDelta::seconds(exp - now));
                    }
                }
                (Err(f), Err(_)) => metrics.record_failure(&s.service, &d.id, f.stage),
                (Ok(_), Err(_)) => metrics.record_failure(&s.service, &d.id, cycle::Stage::Deliver),
            }
        }
    }
}

/// Reloads the inventory. A valid one is returned (new and changed schedules apply, removed
/// services stop being scheduled); an invalid one is refused, its errors logged, and the admins
/// mailed once per distinct broken file.
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
            let key = crate::secret::Secret::new(String::from_utf8_lossy(&content).into_owned()).short_hash();
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

/// Logs and mails a watchdog report, and reflects it in `/healthz`.
async fn watchdog_event(opts: &DaemonOptions, inv: &Inventory, metrics: &Metrics, event: WatchdogEvent) {
    match event {
        WatchdogEvent::Overdue { service, last_completed, deadline } => {
            error!(service = %service, last_completed = ?last_completed, deadline = %deadline, "service has not completed a run within twice its interval");
            metrics.mark_overdue(&service);
            let mail = OutgoingMail {
                to: inv.notify.admins.clone(),
                subject: format!("[token-bastion] OVERDUE: {service} has not completed a run"),
                body: format!(
                    "Service {service} has not completed a run since {} (deadline {deadline}: twice its schedule's interval).\nThe scheduler may be stuck or its cycles may hang. Current state: token-bastion status\n",
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
