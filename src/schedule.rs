//! When services run: schedules, wake-ups, splay, batching, skip-if-running and the watchdog.
//!
//! Owns the parsing of schedule expressions (cron, 5 or 6 fields, `@hourly`-style shorthands, all
//! in UTC), next-fire computation, a deterministic per-service splay that spreads load on the
//! broker, the [`Planner`] that turns wake-ups into runs (one per scheduled slot, de-duplicated,
//! splayed, gathered into one [`Batch`] per window so a host gets one SSH session per cycle, a
//! wake-up that never came reported as missed), the [`RunTracker`] that refuses to stack a run
//! on a run of the same service still going, the watchdog that reports a service that has not
//! completed a run within twice its interval, and [`CronTicks`], the wake source.
//!
//! tokio-cron-scheduler is the one source of wake-ups: one cron job (UTC) per distinct
//! schedule, whose every fire sends a [`Wake`] naming the slot it fired for. Everything else
//! (what a slot means for each service, splay, batching, skip-if-running, missed wake-ups, the
//! watchdog) reads time from an injected [`Clock`], so it runs the same under tokio's paused time
//! with wake-ups sent by hand as in production.
//!
//! Never: runs a cycle, touches state, the broker or hosts; panics on a bad expression (it is an
//! error naming the expression); runs a service twice for one slot; starts a run no wake-up
//! asked for.

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
/// How long a batch waits after its first run falls due, so that the wake-ups of one slot (one
/// per schedule, sent one after the other) all reach it.
pub const BATCH_SETTLE: Duration = Duration::from_secs(1);
/// How long after a slot its wake-up may take before the planner reports it missed.
pub const MISSED_AFTER: Duration = Duration::from_secs(60);
/// A stalled clock (suspend, long pause) can put many slots in the past; they are counted, not
/// replayed, and this bounds the counting.
const MAX_COUNTED_SLOTS: u64 = 100_000;
/// How long a [`WallClock`] sleeps at most before looking at the wall clock again.
const WALL_RECHECK: Duration = Duration::from_secs(60);

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

/// The production clock: the wall clock, as tokio-cron-scheduler reads it, so that the slots its
/// wake-ups name and the times the planner computes share one time base. A sleep looks at the
/// wall clock again at least every minute, so a step (NTP correction) shifts a wait by at most
/// that; a step never runs a slot twice (the planner de-duplicates by slot).
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, at: DateTime<Utc>) {
        while let Ok(left) = (at - Utc::now()).to_std() {
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(WALL_RECHECK)).await;
        }
    }
}

/// A clock for tests: wall time read once at creation, advanced by tokio's clock, so
/// `tokio::time::pause()` and `advance()` drive it.
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

/// A parsed schedule expression, evaluated in UTC. Clones share the parsed form (a few KiB):
/// every service of an inventory carries its schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    written: String,
    six_field: String,
    cron: Arc<Cron>,
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
        let schedule = Schedule { written: trimmed.to_string(), six_field, cron: Arc::new(cron) };
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

    /// The latest fire at or before `t`: the slot a wake-up at `t` stands for.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let whole = t.with_nanosecond(0).unwrap_or(t);
        self.cron.find_previous_occurrence(&whole, true).ok()
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
    /// [`Schedule::hourly`], parsed once: every service without a schedule shares it.
    fn default() -> Self {
        static HOURLY: std::sync::LazyLock<Schedule> = std::sync::LazyLock::new(Schedule::hourly);
        HOURLY.clone()
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

    /// The run ended having done its work (delivered or not: outcomes are reported elsewhere;
    /// this says the service is being looked after).
    pub fn complete(mut self, at: DateTime<Utc>) {
        self.finished = true;
        self.tracker.lock().running.remove(&self.service);
        self.tracker.record_completed(&self.service, at);
    }

    /// The run ended without doing its work (its cycle could not run): the service is free
    /// again and no completion is recorded, so the watchdog still counts it as overdue.
    pub fn fail(self) {
        drop(self);
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
// Planner: wake-ups, slots, splay and batching
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Upper bound of each service's splay after a slot.
    pub splay_max: Duration,
    /// Services due within this window of the earliest due one run in the same batch.
    pub window: Duration,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { splay_max: DEFAULT_SPLAY_MAX, window: DEFAULT_BATCH_WINDOW }
    }
}

/// A wake-up from the wake source: the schedule `schedule` (its six-field form) fired for
/// `slot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wake {
    pub schedule: String,
    pub slot: DateTime<Utc>,
}

/// Slots of one service whose wake-up did not come: `count` slots from `first` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missed {
    pub service: String,
    pub first: DateTime<Utc>,
    pub count: u64,
}

/// What a wake-up did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WakeReport {
    /// Services that will run for this slot (after their splay).
    pub woken: Vec<String>,
    /// Services that already ran for this slot or a later one: the wake-up is ignored for them.
    pub duplicate: Vec<String>,
    /// Earlier slots of the woken services that got no wake-up of their own.
    pub missed: Vec<Missed>,
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
    /// The latest slot a run was planned for: a wake-up for it or an earlier one is a duplicate.
    last_slot: Option<DateTime<Utc>>,
    /// The next slot a wake-up is expected for (the planner's own next-due computation); `None`
    /// once the schedule never fires again.
    expected: Option<DateTime<Utc>>,
    /// A run woken and waiting for its splay: when it is due.
    pending: Option<DateTime<Utc>>,
}

/// Turns wake-ups into runs. For every service it knows the slots already run (so a slot runs
/// once, whatever the wake source or a clock step does), the next slot a wake-up is expected
/// for, and the run waiting for its splay. Pure: every call takes the time.
///
/// The wake source decides *whether* a slot runs: the planner never starts a run on its own. A
/// slot whose wake-up has not come [`MISSED_AFTER`] after it, or that a wake-up for a later slot
/// jumped over, is reported [`Missed`] (the caller logs and counts it); its run is not made up,
/// and a late wake-up still runs it, once.
#[derive(Clone, Debug)]
pub struct Planner {
    opts: PlanOptions,
    entries: BTreeMap<String, Entry>,
}

fn entry(schedule: Schedule, now: DateTime<Utc>) -> Entry {
    let expected = schedule.next_after(now);
    Entry { schedule, last_slot: None, expected, pending: None }
}

impl Planner {
    /// Plans every service, expecting a wake-up for its first slot strictly after `now`.
    pub fn new(services: impl IntoIterator<Item = (String, Schedule)>, opts: PlanOptions, now: DateTime<Utc>) -> Planner {
        let entries = services.into_iter().map(|(name, schedule)| (name, entry(schedule, now))).collect();
        Planner { opts, entries }
    }

    /// Replaces the services planned (a reload). A service whose schedule is unchanged keeps
    /// its state; a new or rescheduled one expects its first slot after `now`; a removed one
    /// is gone. Every service keeps the slots it has run, so a reload never runs a slot twice,
    /// and a run already woken and waiting for its splay.
    pub fn replace(&mut self, services: impl IntoIterator<Item = (String, Schedule)>, now: DateTime<Utc>) {
        let mut old = std::mem::take(&mut self.entries);
        for (name, schedule) in services {
            let e = match old.remove(&name) {
                Some(e) if e.schedule.six_field() == schedule.six_field() => e,
                Some(e) => Entry { last_slot: e.last_slot, pending: e.pending, ..entry(schedule, now) },
                None => entry(schedule, now),
            };
            self.entries.insert(name, e);
        }
    }

    pub fn options(&self) -> PlanOptions {
        self.opts
    }

    /// The services planned, with their schedules (what the watchdog watches).
    pub fn services(&self) -> Vec<(String, Schedule)> {
        self.entries.iter().map(|(n, e)| (n.clone(), e.schedule.clone())).collect()
    }

    /// The distinct schedules: one wake-up job each.
    pub fn schedules(&self) -> Vec<Schedule> {
        let mut seen = BTreeSet::new();
        self.entries.values().filter(|e| seen.insert(e.schedule.six_field().to_string())).map(|e| e.schedule.clone()).collect()
    }

    fn splay_of(&self, name: &str, e: &Entry, slot: DateTime<Utc>) -> Duration {
        let interval = e.schedule.interval_after(slot).unwrap_or(Duration::ZERO);
        splay(name, self.opts.splay_max, interval)
    }

    /// A wake-up: every service on `wake.schedule` that has not yet run this slot (or a later
    /// one) gets a run due at `slot + splay`. A run still waiting for its splay stands (it runs
    /// at its own time, for the newer slot too).
    pub fn wake(&mut self, wake: &Wake) -> WakeReport {
        let mut report = WakeReport::default();
        let names: Vec<String> =
            self.entries.iter().filter(|(_, e)| e.schedule.six_field() == wake.schedule).map(|(n, _)| n.clone()).collect();
        for name in names {
            let e = &self.entries[&name];
            if e.last_slot.is_some_and(|last| last >= wake.slot) {
                report.duplicate.push(name);
                continue;
            }
            let due = wake.slot + to_delta(self.splay_of(&name, e, wake.slot));
            let e = self.entries.get_mut(&name).expect("listed above");
            if let Some(first) = e.expected.filter(|x| *x < wake.slot) {
                let count = count_slots(&e.schedule, first, |s| s < wake.slot);
                report.missed.push(Missed { service: name.clone(), first, count });
            }
            e.last_slot = Some(wake.slot);
            let next = e.schedule.next_after(wake.slot);
            e.expected = e.expected.max(next);
            e.pending = Some(e.pending.map_or(due, |p| p.min(due)));
            report.woken.push(name);
        }
        report
    }

    /// Slots whose wake-up is overdue by [`MISSED_AFTER`] at `now`, each reported once.
    pub fn check_missed(&mut self, now: DateTime<Utc>) -> Vec<Missed> {
        let late = to_delta(MISSED_AFTER);
        let mut missed = Vec::new();
        for (name, e) in &mut self.entries {
            let Some(first) = e.expected.filter(|x| *x + late <= now) else { continue };
            let count = count_slots(&e.schedule, first, |s| s + late <= now);
            let mut next = Some(first);
            for _ in 0..count {
                next = next.and_then(|s| e.schedule.next_after(s));
            }
            e.expected = next;
            missed.push(Missed { service: name.clone(), first, count });
        }
        missed
    }

    /// When `service`'s woken run is due, if it has one.
    pub fn due_at(&self, service: &str) -> Option<DateTime<Utc>> {
        self.entries.get(service).and_then(|e| e.pending)
    }

    /// When the loop must look again: when the earliest woken run can be taken (its due time
    /// plus [`BATCH_SETTLE`]), or when the earliest expected wake-up would be reported missed.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        let (settle, late) = (to_delta(BATCH_SETTLE), to_delta(MISSED_AFTER));
        self.entries.values().flat_map(|e| [e.pending.map(|p| p + settle), e.expected.map(|x| x + late)]).flatten().min()
    }

    /// Once the earliest woken run has been due for [`BATCH_SETTLE`], takes every woken run due
    /// by `now + window` as one batch, starting a run for each in `tracker` or reporting it
    /// skipped when its previous run is still going.
    pub fn take_due(&mut self, now: DateTime<Utc>, tracker: &RunTracker) -> Option<Batch> {
        let first = self.entries.values().filter_map(|e| e.pending).min()?;
        if first + to_delta(BATCH_SETTLE) > now {
            return None;
        }
        let horizon = now + to_delta(self.opts.window);
        let mut batch = Batch { at: now, runs: Vec::new(), skipped: Vec::new() };
        for (name, e) in &mut self.entries {
            if e.pending.is_none_or(|d| d > horizon) {
                continue;
            }
            e.pending = None;
            match tracker.try_start(name, now) {
                Ok(run) => batch.runs.push(run),
                Err(skipped) => batch.skipped.push(skipped),
            }
        }
        (!batch.runs.is_empty() || !batch.skipped.is_empty()).then_some(batch)
    }
}

/// How many slots of `schedule` from `first` on satisfy `keep` (bounded).
fn count_slots(schedule: &Schedule, first: DateTime<Utc>, keep: impl Fn(DateTime<Utc>) -> bool) -> u64 {
    let mut count = 0;
    let mut slot = Some(first);
    while let Some(s) = slot.filter(|s| keep(*s)) {
        count += 1;
        if count >= MAX_COUNTED_SLOTS {
            break;
        }
        slot = schedule.next_after(s);
    }
    count
}

// ---------------------------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchdogEvent {
    /// `service` has not completed a run by `deadline` (twice its interval after its last
    /// completion, or after the watchdog first saw it if it never completed).
    Overdue { service: String, last_completed: Option<DateTime<Utc>>, deadline: DateTime<Utc> },
    /// An overdue service completed a run again.
    Recovered { service: String, completed: DateTime<Utc> },
}

/// Starts the watchdog for the daemon's life: its own task, not a wake-up job, so a stuck wake
/// source cannot silence it. It watches the services `services` holds now (a reload sends the
/// new list: a removed service leaves the overdue set, one still overdue is not reported
/// again), reports each overdue episode once, and its end, on `events`; it ends on `cancel` or
/// when the receiver is gone.
pub fn spawn_watchdog<C: Clock>(
    clock: C,
    tracker: RunTracker,
    mut services: watch::Receiver<Vec<(String, Schedule)>>,
    events: mpsc::Sender<WatchdogEvent>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = tracker.subscribe();
        let mut overdue: BTreeSet<String> = BTreeSet::new();
        // When the watchdog first saw each service: the base of one that never completed.
        let mut seen: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        loop {
            let now = clock.now();
            let watched = services.borrow_and_update().clone();
            seen.retain(|name, _| watched.iter().any(|(n, _)| n == name));
            overdue.retain(|name| seen.contains_key(name));
            let mut wake: Option<DateTime<Utc>> = None;
            for (name, schedule) in &watched {
                let last = tracker.last_completed(name);
                let base = last.unwrap_or(*seen.entry(name.clone()).or_insert(now));
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
                changed = services.changed() => if changed.is_err() { return },
                () = sleep => {}
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Wake sources
// ---------------------------------------------------------------------------------------------

/// Where wake-ups come from: told which schedules to tick, it sends a [`Wake`] for every fire
/// on the channel it was made with. Production: [`CronTicks`]; tests send wake-ups by hand.
pub trait TickSource: Send {
    /// Ticks exactly `schedules` from now on.
    fn set_schedules(&mut self, schedules: &[Schedule]) -> impl Future<Output = Result<(), ScheduleError>> + Send;
    /// Stops every tick.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// tokio-cron-scheduler as the wake source: one cron job per distinct schedule. The crate
/// computes each job's next tick in UTC (`Job::new` is `Job::new_tz(…, Utc)`) and polls the wall
/// clock every 500 ms; a fire sends the slot it stands for (the latest fire of the schedule at
/// or before the wall-clock time of the fire), so a late poll still names the right slot and
/// a repeated fire names the same one.
pub struct CronTicks {
    scheduler: tokio_cron_scheduler::JobScheduler,
    /// The job of each schedule, by its six-field form.
    jobs: BTreeMap<String, tokio_cron_scheduler::Job>,
    wakes: mpsc::Sender<Wake>,
}

impl CronTicks {
    /// Starts a scheduler with no jobs; wake-ups go to `wakes`.
    pub async fn start(wakes: mpsc::Sender<Wake>) -> Result<CronTicks, ScheduleError> {
        let scheduler = tokio_cron_scheduler::JobScheduler::new().await.map_err(ScheduleError::Scheduler)?;
        scheduler.start().await.map_err(ScheduleError::Scheduler)?;
        Ok(CronTicks { scheduler, jobs: BTreeMap::new(), wakes })
    }

    fn job(&self, schedule: &Schedule) -> Result<tokio_cron_scheduler::Job, ScheduleError> {
        let (wakes, schedule) = (self.wakes.clone(), schedule.clone());
        let key = schedule.six_field().to_string();
        tokio_cron_scheduler::Job::new(key.as_str(), move |_id, _scheduler| {
            let now = Utc::now();
            let Some(slot) = schedule.latest_at_or_before(now) else { return };
            // A full or closed channel loses this wake-up; the planner reports the slot missed.
            if wakes.try_send(Wake { schedule: schedule.six_field().to_string(), slot }).is_err() {
                tracing::warn!(schedule = %schedule.expression(), slot = %slot, "wake-up could not be handed over");
            }
        })
        .map_err(|_| ScheduleError::Invalid { expr: key, reason: "refused by tokio-cron-scheduler".into() })
    }
}

impl TickSource for CronTicks {
    async fn set_schedules(&mut self, schedules: &[Schedule]) -> Result<(), ScheduleError> {
        let wanted: BTreeMap<String, &Schedule> = schedules.iter().map(|s| (s.six_field().to_string(), s)).collect();
        let gone: Vec<String> = self.jobs.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for key in gone {
            if let Some(job) = self.jobs.remove(&key) {
                self.scheduler.remove(&job.guid()).await.map_err(ScheduleError::Scheduler)?;
            }
        }
        for (key, schedule) in wanted {
            if self.jobs.contains_key(&key) {
                continue;
            }
            let job = self.job(schedule)?;
            self.scheduler.add(job.clone()).await.map_err(ScheduleError::Scheduler)?;
            self.jobs.insert(key, job);
        }
        Ok(())
    }

    async fn shutdown(&mut self) {
        self.jobs.clear();
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "cannot stop the cron scheduler");
        }
    }
}

#[cfg(test)]
mod tests;
