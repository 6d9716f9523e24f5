//! When services run: schedules, splay, batching, skip-if-running and the watchdog.
//!
//! Owns the parsing of schedule expressions (cron, 5 or 6 fields, `@hourly`-style shorthands, all
//! in UTC), next-fire computation, a deterministic per-service splay that spreads load on the
//! broker, the grouping of services that are due together into one [`Batch`] (so a host gets one
//! SSH session per cycle), the [`RunTracker`] that refuses to stack a run on a run of the same
//! service still going, and the watchdog that reports a service that has not completed a run
//! within twice its interval.
//!
//! Every decision here reads time from an injected [`Clock`], so it runs the same under tokio's
//! paused time or a [`ManualClock`] as in production. tokio-cron-scheduler is used only as a
//! source of wall-clock ticks ([`CronTicker`]): it reads `chrono::Utc::now()` directly, which no
//! test clock can drive, so none of the logic that matters lives behind it.
//!
//! Never: runs a cycle, touches state, the broker or hosts; panics on a bad expression (it is an
//! error naming the expression); fires a service twice for one schedule tick.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What a service runs on when its inventory names no schedule.
pub const DEFAULT_SCHEDULE: &str = "@hourly";
/// Default upper bound of the per-service splay.
pub const DEFAULT_SPLAY_MAX: Duration = Duration::from_secs(5 * 60);
/// Default width of the window in which due services are gathered into one batch.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_secs(30);
/// A stalled clock (suspend, long pause) can put many ticks in the past; they are skipped, not
/// replayed, and this bounds the search for the next one in the future.
const MAX_SKIPPED_TICKS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule `{expr}`: {reason}")]
    Invalid { expr: String, reason: String },
    #[error("cron scheduler: {0}")]
    Scheduler(#[source] tokio_cron_scheduler::JobSchedulerError),
}

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// Where the scheduler reads the time and how it waits. All times are UTC.
pub trait Clock: Clone + Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Completes once `now() >= at` (at once if `at` is past).
    fn sleep_until(&self, at: DateTime<Utc>) -> impl Future<Output = ()> + Send;
}

/// The production clock: wall time read once at creation, advanced by tokio's monotonic clock.
///
/// Because time advances with tokio's clock, `tokio::time::pause()` and `advance()` drive it in
/// tests. In production a wall-clock step (NTP correction) does not make a schedule jump back
/// and fire a tick twice; the offset is picked up at the next start of the daemon.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    anchor: tokio::time::Instant,
    wall: DateTime<Utc>,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock::starting_at(Utc::now())
    }

    /// A clock that reads `wall` now (tests start from a fixed, readable date).
    pub fn starting_at(wall: DateTime<Utc>) -> TokioClock {
        TokioClock { anchor: tokio::time::Instant::now(), wall }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.wall + to_delta(self.anchor.elapsed())
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> impl Future<Output = ()> + Send {
        let after = (at - self.wall).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep_until(self.anchor + after)
    }
}

/// A clock that moves only when told to: for tests that step time explicitly.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock { now: Arc::new(watch::Sender::new(start)) }
    }

    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|t| *t += to_delta(by));
    }

    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> impl Future<Output = ()> + Send {
        let mut rx = self.now.subscribe();
        async move {
            loop {
                if *rx.borrow_and_update() >= at {
                    return;
                }
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Schedule
// ---------------------------------------------------------------------------------------------

/// A parsed schedule expression, evaluated in UTC.
#[derive(Clone, Debug)]
pub struct Schedule {
    written: String,
    six_field: String,
    cron: Cron,
}

impl Schedule {
    /// Parses a 5-field cron expression (`min hour dom month dow`), a 6-field one with seconds
    /// first, or one of `@yearly @annually @monthly @weekly @daily @midnight @hourly`. When both
    /// day-of-month and day-of-week are restricted, a day must match both, as in
    /// tokio-cron-scheduler, so that the two always agree on when a job fires.
    pub fn parse(expr: &str) -> Result<Schedule, ScheduleError> {
        let invalid = |reason: String| ScheduleError::Invalid { expr: expr.to_string(), reason };
        let trimmed = expr.trim();
        let six_field = if let Some(name) = trimmed.strip_prefix('@') {
            match name.to_ascii_lowercase().as_str() {
                "yearly" | "annually" => "0 0 0 1 1 *".to_string(),
                "monthly" => "0 0 0 1 * *".to_string(),
                "weekly" => "0 0 0 * * 0".to_string(),
                "daily" | "midnight" => "0 0 0 * * *".to_string(),
                "hourly" => "0 0 * * * *".to_string(),
                _ => return Err(invalid("unknown shorthand; known: @yearly, @monthly, @weekly, @daily, @hourly".into())),
            }
        } else {
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            match fields.len() {
                5 => format!("0 {}", fields.join(" ")),
                6 => fields.join(" "),
                n => return Err(invalid(format!("has {n} fields; write 5 (min hour dom month dow) or 6 (sec min hour dom month dow)"))),
            }
        };
        let cron = parser().parse(&six_field).map_err(|e| invalid(e.to_string()))?;
        let schedule = Schedule { written: trimmed.to_string(), six_field, cron };
        // An expression such as `0 0 30 2 *` parses but never fires.
        if schedule.next_after(DateTime::UNIX_EPOCH).is_none() {
            return Err(invalid("never fires".into()));
        }
        Ok(schedule)
    }

    /// Hourly, on the hour.
    pub fn hourly() -> Schedule {
        Schedule::parse(DEFAULT_SCHEDULE).expect("the default schedule parses")
    }

    /// The expression as the operator wrote it.
    pub fn expression(&self) -> &str {
        &self.written
    }

    /// The 6-field, seconds-first form tokio-cron-scheduler takes.
    pub fn six_field(&self) -> &str {
        &self.six_field
    }

    /// The first fire strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // croner carries the sub-second part of `t` into its answer; fires are on whole seconds.
        let whole = t.with_nanosecond(0).unwrap_or(t);
        self.cron.find_next_occurrence(&whole, false).ok()
    }

    /// The gap between the first two fires after `t`: the interval the watchdog and the splay
    /// measure against (a schedule such as `0 9,17 * * *` has different gaps over a day).
    pub fn interval_after(&self, t: DateTime<Utc>) -> Option<Duration> {
        let a = self.next_after(t)?;
        let b = self.next_after(a)?;
        (b - a).to_std().ok()
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::hourly()
    }
}

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Required).dom_and_dow(true).build()
}

/// The deterministic offset of `service`'s runs after each fire: a hash of the name, in whole
/// seconds, below `max` and below `interval` (so a run never slides past the next fire).
pub fn splay(service: &str, max: Duration, interval: Duration) -> Duration {
    let bound = max.min(interval).as_secs();
    if bound == 0 {
        return Duration::ZERO;
    }
    let digest = Sha256::digest(service.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Duration::from_secs(u64::from_be_bytes(first) % bound)
}

// ---------------------------------------------------------------------------------------------
// Run tracker: skip-if-running and completions
// ---------------------------------------------------------------------------------------------

/// A service's run that was not started because its previous run is still going.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub service: String,
    pub running_since: DateTime<Utc>,
}

#[derive(Default)]
struct TrackerState {
    running: BTreeMap<String, DateTime<Utc>>,
    completed: BTreeMap<String, DateTime<Utc>>,
}

/// Which services have a run going and when each last completed one. Cheap to clone; shared by
/// the planner (skip-if-running), the cycle (completions) and the watchdog.
#[derive(Clone)]
pub struct RunTracker {
    state: Arc<Mutex<TrackerState>>,
    /// Bumped on every completion so the watchdog re-evaluates at once.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for RunTracker {
    fn default() -> Self {
        RunTracker { state: Arc::default(), changed: Arc::new(watch::Sender::new(0)) }
    }
}

impl RunTracker {
    pub fn new() -> RunTracker {
        RunTracker::default()
    }

    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        // The state is a pair of maps updated in single statements: still consistent after a
        // panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `service` running, or says since when its previous run has been going.
    pub fn try_start(&self, service: &str, now: DateTime<Utc>) -> Result<RunGuard, Skipped> {
        let mut st = self.lock();
        if let Some(since) = st.running.get(service) {
            return Err(Skipped { service: service.to_string(), running_since: *since });
        }
        st.running.insert(service.to_string(), now);
        Ok(RunGuard { tracker: self.clone(), service: service.to_string(), started: now, finished: false })
    }

    /// Since when `service` has been running, if it is.
    pub fn running_since(&self, service: &str) -> Option<DateTime<Utc>> {
        self.lock().running.get(service).copied()
    }

    pub fn last_completed(&self, service: &str) -> Option<DateTime<Utc>> {
        self.lock().completed.get(service).copied()
    }

    /// Records a completion that happened elsewhere (the state DB at start-up, a `run`).
    pub fn record_completed(&self, service: &str, at: DateTime<Utc>) {
        let mut st = self.lock();
        let slot = st.completed.entry(service.to_string()).or_insert(at);
        *slot = (*slot).max(at);
        drop(st);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// One started run of one service. [`RunGuard::complete`] records the completion; dropping the
/// guard without it (cancelled, abandoned at shutdown) frees the service without counting as a
/// completion, so the watchdog still sees it as overdue.
#[must_use = "dropping the guard ends the run without recording a completion"]
pub struct RunGuard {
    tracker: RunTracker,
    service: String,
    started: DateTime<Utc>,
    finished: bool,
}

impl std::fmt::Debug for RunGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunGuard").field("service", &self.service).field("started", &self.started).finish()
    }
}

impl RunGuard {
    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn started(&self) -> DateTime<Utc> {
        self.started
    }

    /// The run ended (delivered or not: outcomes are reported elsewhere; this says the service
    /// is being looked after).
    pub fn complete(mut self, at: DateTime<Utc>) {
        self.finished = true;
        self.tracker.lock().running.remove(&self.service);
        self.tracker.record_completed(&self.service, at);
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.tracker.lock().running.remove(&self.service);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Planner: splay and batching
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Upper bound of each service's splay after a fire.
    pub splay_max: Duration,
    /// Services due within this window of the earliest due one run in the same batch.
    pub window: Duration,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { splay_max: DEFAULT_SPLAY_MAX, window: DEFAULT_BATCH_WINDOW }
    }
}

/// Services to run now, together: the cycle gets them in one call, so each host is reached
/// once. `skipped` are services that were due but still running from a previous batch.
#[derive(Debug)]
pub struct Batch {
    pub at: DateTime<Utc>,
    pub runs: Vec<RunGuard>,
    pub skipped: Vec<Skipped>,
}

impl Batch {
    /// Names of the services that run in this batch.
    pub fn services(&self) -> Vec<String> {
        self.runs.iter().map(|r| r.service.clone()).collect()
    }
}

#[derive(Clone, Debug)]
struct Entry {
    schedule: Schedule,
    /// The schedule's fire this entry waits for; `None` once the schedule never fires again.
    fire: Option<DateTime<Utc>>,
}

/// Knows, for every service, the next fire of its schedule and when (after splay) it is due.
/// Pure: every call takes the time.
#[derive(Clone, Debug)]
pub struct Planner {
    opts: PlanOptions,
    entries: BTreeMap<String, Entry>,
}

impl Planner {
    /// Plans every service from its first fire strictly after `now`.
    pub fn new(services: impl IntoIterator<Item = (String, Schedule)>, opts: PlanOptions, now: DateTime<Utc>) -> Planner {
        let entries = services
            .into_iter()
            .map(|(name, schedule)| {
                let fire = schedule.next_after(now);
                (name, Entry { schedule, fire })
            })
            .collect();
        Planner { opts, entries }
    }

    pub fn options(&self) -> PlanOptions {
        self.opts
    }

    /// The services planned, with their schedules (what the watchdog watches).
    pub fn services(&self) -> Vec<(String, Schedule)> {
        self.entries.iter().map(|(n, e)| (n.clone(), e.schedule.clone())).collect()
    }

    fn due_of(&self, name: &str, e: &Entry) -> Option<DateTime<Utc>> {
        let fire = e.fire?;
        let interval = e.schedule.interval_after(fire).unwrap_or(Duration::ZERO);
        Some(fire + to_delta(splay(name, self.opts.splay_max, interval)))
    }

    /// When `service` is next due (fire + splay).
    pub fn due_at(&self, service: &str) -> Option<DateTime<Utc>> {
        self.entries.get(service).and_then(|e| self.due_of(service, e))
    }

    /// The earliest time any service is due: when the driver should wake next.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.entries.iter().filter_map(|(n, e)| self.due_of(n, e)).min()
    }

    /// Takes every service due by `now + window` as one batch, starting a run for each in
    /// `tracker` or reporting it skipped when its previous run is still going. Each taken
    /// service moves on to its first fire that is due after the window: ticks missed while the
    /// process was stalled are skipped, never replayed one after another.
    pub fn take_due(&mut self, now: DateTime<Utc>, tracker: &RunTracker) -> Option<Batch> {
        let horizon = now + to_delta(self.opts.window);
        let due: Vec<String> = self
            .entries
            .iter()
            .filter(|(n, e)| self.due_of(n, e).is_some_and(|d| d <= horizon))
            .map(|(n, _)| n.clone())
            .collect();
        if due.is_empty() {
            return None;
        }
        let mut batch = Batch { at: now, runs: Vec::new(), skipped: Vec::new() };
        for name in due {
            match tracker.try_start(&name, now) {
                Ok(run) => batch.runs.push(run),
                Err(skipped) => batch.skipped.push(skipped),
            }
            self.advance(&name, horizon);
        }
        Some(batch)
    }

    fn advance(&mut self, name: &str, horizon: DateTime<Utc>) {
        let Some(mut entry) = self.entries.remove(name) else { return };
        for _ in 0..MAX_SKIPPED_TICKS {
            entry.fire = entry.fire.and_then(|f| entry.schedule.next_after(f));
            if self.due_of(name, &entry).is_none_or(|d| d > horizon) {
                break;
            }
        }
        self.entries.insert(name.to_string(), entry);
    }
}

/// Runs the planner on `clock` until `cancel`: sleeps until the next service is due and hands
/// each [`Batch`] to `on_batch`, which must return quickly (spawn the cycle; complete the runs'
/// guards when it ends).
pub async fn drive<C: Clock>(
    clock: &C,
    planner: &mut Planner,
    tracker: &RunTracker,
    cancel: &CancellationToken,
    mut on_batch: impl FnMut(Batch),
) {
    loop {
        let Some(next) = planner.next_due() else {
            cancel.cancelled().await;
            return;
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = clock.sleep_until(next) => {}
        }
        if let Some(batch) = planner.take_due(clock.now(), tracker) {
            on_batch(batch);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchdogEvent {
    /// `service` has not completed a run by `deadline` (twice its interval after its last
    /// completion, or after the watchdog started if it never completed).
    Overdue { service: String, last_completed: Option<DateTime<Utc>>, deadline: DateTime<Utc> },
    /// An overdue service completed a run again.
    Recovered { service: String, completed: DateTime<Utc> },
}

/// Starts the watchdog: its own task, not a scheduler job, so a stuck scheduler cannot silence
/// it. Reports each overdue episode once, and its end, on `events`; ends on `cancel` or when
/// the receiver is gone.
pub fn spawn_watchdog<C: Clock>(
    clock: C,
    tracker: RunTracker,
    services: Vec<(String, Schedule)>,
    events: mpsc::Sender<WatchdogEvent>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = clock.now();
        let mut changes = tracker.subscribe();
        let mut overdue: BTreeSet<String> = BTreeSet::new();
        loop {
            let now = clock.now();
            let mut wake: Option<DateTime<Utc>> = None;
            for (name, schedule) in &services {
                let last = tracker.last_completed(name);
                let base = last.unwrap_or(started);
                let interval = schedule.interval_after(base).unwrap_or(Duration::from_secs(3600));
                let deadline = base + to_delta(interval.saturating_mul(2));
                let event = if deadline <= now {
                    overdue.insert(name.clone())
                        .then(|| WatchdogEvent::Overdue { service: name.clone(), last_completed: last, deadline })
                } else {
                    wake = Some(wake.map_or(deadline, |w| w.min(deadline)));
                    match last {
                        Some(completed) if overdue.remove(name) => Some(WatchdogEvent::Recovered { service: name.clone(), completed }),
                        _ => None,
                    }
                };
                if let Some(event) = event
                    && events.send(event).await.is_err()
                {
                    return;
                }
            }
            let sleep = async {
                match wake {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                () = sleep => {}
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// tokio-cron-scheduler adapter
// ---------------------------------------------------------------------------------------------

/// Wall-clock ticks from tokio-cron-scheduler: calls `on_tick` with the time of each fire of
/// `schedule`. A tick source only; what runs is decided by [`Planner::take_due`].
pub struct CronTicker {
    scheduler: tokio_cron_scheduler::JobScheduler,
}

impl CronTicker {
    pub async fn start<F>(schedule: &Schedule, on_tick: F) -> Result<CronTicker, ScheduleError>
    where
        F: Fn(DateTime<Utc>) + Send + Sync + 'static,
    {
        use tokio_cron_scheduler::{Job, JobScheduler};
        let scheduler = JobScheduler::new().await.map_err(ScheduleError::Scheduler)?;
        let job = Job::new(schedule.six_field(), move |_id, _scheduler| on_tick(Utc::now())).map_err(|_| {
            ScheduleError::Invalid { expr: schedule.expression().into(), reason: "refused by tokio-cron-scheduler".into() }
        })?;
        scheduler.add(job).await.map_err(ScheduleError::Scheduler)?;
        scheduler.start().await.map_err(ScheduleError::Scheduler)?;
        Ok(CronTicker { scheduler })
    }

    /// Stops the ticks and the scheduler's tasks.
    pub async fn shutdown(mut self) -> Result<(), ScheduleError> {
        self.scheduler.shutdown().await.map_err(ScheduleError::Scheduler)
    }
}

#[cfg(test)]
mod tests;
