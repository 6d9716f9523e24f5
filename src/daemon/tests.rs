//! The daemon's own loop ([`serve`]) under tokio's paused time, with wake-ups sent by hand and a
//! stand-in for the cycle: what production runs, minus SSH and Vault.

use super::*;
use crate::schedule::{Schedule, TokioClock};
use crate::state::{Delivered, DeliveryRecord, RunKind, RunOutcome};
use chrono::{DateTime, TimeDelta};
use std::sync::atomic::{AtomicBool, Ordering};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("test time").with_timezone(&Utc)
}

const START: &str = "2026-11-24T10:10:00Z";
/// What a test waits at most for something that must happen (paused time: no real wait).
const DAY: Duration = Duration::from_secs(86400);

/// An inventory with the given `(service, schedule)` pairs, each delivering to `credd@s1`.
fn inventory(services: &[(&str, &str)], extra_notify: &str) -> String {
    let mut y = String::from(
        "broker:\n  url: https://vault.example:8200\n  issuer: cms\n  vault_url: https://vault.example:8200\n  auth: {method: token_file, path: /nonexistent/token}\n\
         issuers:\n  iam: {url: \"https://iam.example/\"}\n\
         hosts:\n  s1: {address: s1.example, user: root, key_file: /nonexistent/k, known_hosts: /nonexistent/kh, spool: /spool}\n",
    );
    y.push_str("notify:\n  admins: [oncall@example.org]\n");
    y.push_str(extra_notify);
    y.push_str("services:\n");
    for (name, schedule) in services {
        y.push_str(&format!(
            "  {name}:\n    account: {name}\n    required: [compute.create]\n    schedule: \"{schedule}\"\n    destinations:\n      - credd: {{hosts: [s1]}}\n"
        ));
    }
    y
}

/// What the stand-in cycle does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Delivers every destination (recorded in the state DB) after `took`.
    Deliver { took: Duration },
    /// Cannot run (setup error).
    NotRun,
    /// A write that never returns, whatever the grace-over token says.
    Hang,
}

#[derive(Clone)]
struct Fake {
    clock: TokioClock,
    state_dir: PathBuf,
    calls: mpsc::UnboundedSender<(DateTime<Utc>, Vec<String>)>,
    /// Services whose cycles cannot run; the rest follow `behaviour`.
    failing: Arc<Mutex<BTreeSet<String>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    saw_grace_over: Arc<AtomicBool>,
}

impl CycleRunner for Fake {
    fn run(&self, inv: Arc<Inventory>, services: Vec<String>, grace_over: CancellationToken) -> impl Future<Output = CycleOutcome> + Send + 'static {
        let me = self.clone();
        async move {
            me.calls.send((me.clock.now(), services.clone())).unwrap();
            let behaviour = *lock(&me.behaviour);
            if services.iter().any(|s| lock(&me.failing).contains(s)) {
                return CycleOutcome::not_run("mail templates: admin_failure.txt.j2: syntax error", destinations_of(&inv, &services));
            }
            match behaviour {
                Behaviour::NotRun => CycleOutcome::not_run("another cycle holds the lock", destinations_of(&inv, &services)),
                Behaviour::Hang => {
                    grace_over.cancelled().await;
                    me.saw_grace_over.store(true, Ordering::SeqCst);
                    std::future::pending().await
                }
                Behaviour::Deliver { took } => {
                    tokio::time::sleep(took).await;
                    let (dir, at, list) = (me.state_dir.clone(), me.clock.now(), destinations_of(&inv, &services));
                    tokio::task::spawn_blocking(move || record(&dir, at, &list)).await.unwrap();
                    CycleOutcome::Ran(
                        destinations_of(&inv, &services)
                            .into_iter()
                            .map(|(service, ds)| ServiceOutcome {
                                service,
                                timings: vec![(Stage::Login, Duration::from_millis(50))],
                                destinations: ds.into_iter().map(|destination| DestinationOutcome { destination, result: Ok(()) }).collect(),
                            })
                            .collect(),
                    )
                }
            }
        }
    }
}

/// Records a delivery of each destination, holding a token valid for a week from `at`.
fn record(state_dir: &Path, at: DateTime<Utc>, list: &[(String, Vec<String>)]) {
    let store = StateStore::open(state_dir).unwrap();
    let run = store.begin_run_at(RunKind::Daemon, &[], at).unwrap();
    for (service, ds) in list {
        for d in ds {
            let held = Delivered { vault_expiry: Some((at + TimeDelta::days(7)).timestamp()), access: None, vault_root: None, paths: vec![] };
            let rec = DeliveryRecord { service: service.clone(), destination: d.clone(), host: "s1".into(), result: Ok(held), dry_run: false };
            store.record_delivery_at(run, &rec, at).unwrap();
        }
    }
    store.finish_run(run, RunOutcome::Success, 0).unwrap();
}

/// Records the schedules it is given; the test sends the wake-ups.
struct ManualTicks {
    given: Arc<Mutex<Vec<Vec<String>>>>,
    stopped: Arc<AtomicBool>,
}

impl TickSource for ManualTicks {
    async fn set_schedules(&mut self, schedules: &[Schedule]) -> Result<(), schedule::ScheduleError> {
        lock(&self.given).push(schedules.iter().map(|s| s.six_field().to_string()).collect());
        Ok(())
    }

    async fn shutdown(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

struct Daemon {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state_dir: PathBuf,
    clock: TokioClock,
    control: mpsc::Sender<Control>,
    wakes: mpsc::Sender<Wake>,
    calls: mpsc::UnboundedReceiver<(DateTime<Utc>, Vec<String>)>,
    metrics: Metrics,
    given: Arc<Mutex<Vec<Vec<String>>>>,
    stopped: Arc<AtomicBool>,
    failing: Arc<Mutex<BTreeSet<String>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    saw_grace_over: Arc<AtomicBool>,
    task: JoinHandle<DaemonExit>,
}

impl Daemon {
    async fn start(services: &[(&str, &str)], plan: PlanOptions, grace: Duration) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("services.yaml");
        std::fs::write(&config, inventory(services, "")).unwrap();
        let state_dir = dir.path().join("state");
        let clock = TokioClock::starting_at(utc(START));
        let (control, control_rx) = mpsc::channel(8);
        let (wakes, wakes_rx) = mpsc::channel(8);
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let metrics = Metrics::new();
        let given = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let fake = Fake {
            clock,
            state_dir: state_dir.clone(),
            calls: calls_tx,
            failing: Arc::default(),
            behaviour: Arc::new(Mutex::new(Behaviour::Deliver { took: Duration::from_secs(5) })),
            saw_grace_over: Arc::default(),
        };
        let (failing, behaviour, saw_grace_over) = (fake.failing.clone(), fake.behaviour.clone(), fake.saw_grace_over.clone());
        let opts = DaemonOptions { config: config.clone(), state_dir: state_dir.clone(), metrics_listen: None, grace, plan };
        let inv = load(&config).unwrap_or_else(|e| panic!("{e:?}"));
        let parts = Parts { clock, ticks: ManualTicks { given: given.clone(), stopped: stopped.clone() }, wakes: wakes_rx, runner: fake, metrics: metrics.clone() };
        let task = tokio::spawn(async move { serve(&opts, inv, parts, control_rx).await });
        let d = Daemon { _dir: dir, config, state_dir, clock, control, wakes, calls, metrics, given, stopped, failing, behaviour, saw_grace_over, task };
        // Settled: the schedules are registered.
        while lock(&d.given).is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        d
    }

    /// Sends the wake-up for `slot` of `expr` at `slot` on the daemon's clock.
    async fn wake_at(&self, expr: &str, slot: &str) {
        self.clock.sleep_until(utc(slot)).await;
        let schedule = Schedule::parse(expr).unwrap().six_field().to_string();
        self.wakes.send(Wake { schedule, slot: utc(slot) }).await.unwrap();
    }

    async fn next_call(&mut self) -> (DateTime<Utc>, Vec<String>) {
        tokio::time::timeout(DAY, self.calls.recv()).await.expect("a cycle within a (paused) day").expect("the daemon is running")
    }

    /// Lets the loop settle at `at` on its clock.
    async fn until(&self, at: &str) {
        self.clock.sleep_until(utc(at)).await;
    }

    async fn stop(self) -> (DaemonExit, Duration) {
        let started = tokio::time::Instant::now();
        self.control.send(Control::Terminate).await.unwrap();
        let exit = tokio::time::timeout(DAY, self.task).await.expect("stopped within a (paused) day").unwrap();
        (exit, started.elapsed())
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

/// Where a run woken for `slot` starts: its splay, then the batch's settle.
fn starts(slot: &str, splay: Duration) -> DateTime<Utc> {
    utc(slot) + TimeDelta::from_std(splay + schedule::BATCH_SETTLE).unwrap()
}

const NO_SPLAY: PlanOptions = PlanOptions { splay_max: Duration::ZERO, window: Duration::from_secs(30) };

#[tokio::test(start_paused = true)]
async fn a_wakeup_runs_its_services_after_their_splay_and_a_slot_runs_once() {
    let plan = PlanOptions { splay_max: Duration::from_secs(300), window: Duration::ZERO };
    let mut d = Daemon::start(&[("a", "*/30 * * * *")], plan, Duration::from_secs(30)).await;
    assert_eq!(*lock(&d.given), [vec!["0 */30 * * * *".to_string()]], "one wake-up job per schedule");
    let splay_a = schedule::splay("a", plan.splay_max, Duration::from_secs(1800));
    assert!(splay_a > Duration::ZERO, "the test needs a splay");

    d.wake_at("*/30 * * * *", "2026-11-24T10:30:00Z").await;
    let (at, services) = d.next_call().await;
    assert_eq!((at, services), (starts("2026-11-24T10:30:00Z", splay_a), vec!["a".to_string()]));

    // Once that run is over, the crate fires the same slot again (or a clock step replays it):
    // nothing more runs, not even as a skipped run.
    d.until("2026-11-24T10:45:00Z").await;
    d.wake_at("*/30 * * * *", "2026-11-24T10:30:00Z").await;
    d.until("2026-11-24T10:59:00Z").await;
    assert!(d.calls.try_recv().is_err(), "one slot, one run");
    let text = d.metrics.render();
    assert!(!text.contains("skipped_runs"), "{text}");
    assert_eq!(line(&text, "token_bastion_deliveries_total{").unwrap(), r#"token_bastion_deliveries_total{service="a",destination="credd@s1"} 1"#);
    let completed = (starts("2026-11-24T10:30:05Z", splay_a)).timestamp();
    assert_eq!(line(&text, "token_bastion_last_cycle_timestamp_seconds{"), Some(format!(r#"token_bastion_last_cycle_timestamp_seconds{{service="a"}} {completed}"#).as_str()));
    let expiry = line(&text, "token_bastion_expiry_timestamp_seconds{").unwrap_or_else(|| panic!("{text}"));
    assert!(expiry.ends_with(&format!(" {}", completed + 7 * 86400)), "read back from the state DB after the cycle: {expiry}");

    d.wake_at("*/30 * * * *", "2026-11-24T11:00:00Z").await;
    assert_eq!(d.next_call().await.1, ["a"]);
    let (exit, _) = d.stop().await;
    assert_eq!(exit, DaemonExit::Clean);
}

#[tokio::test(start_paused = true)]
async fn a_cycle_that_could_not_run_is_counted_as_a_failure_and_never_completes() {
    let mut d = Daemon::start(&[("a", "*/30 * * * *")], NO_SPLAY, Duration::from_secs(30)).await;
    *lock(&d.behaviour) = Behaviour::NotRun;
    for slot in ["2026-11-24T10:30:00Z", "2026-11-24T11:00:00Z"] {
        d.wake_at("*/30 * * * *", slot).await;
        assert_eq!(d.next_call().await.0, starts(slot, Duration::ZERO));
    }
    d.until("2026-11-24T11:09:59Z").await;
    let text = d.metrics.render();
    assert_eq!(
        line(&text, "token_bastion_failures_total{"),
        Some(r#"token_bastion_failures_total{service="a",destination="credd@s1",stage="setup"} 2"#),
        "{text}"
    );
    assert!(!text.contains("token_bastion_last_cycle_timestamp_seconds{"), "a cycle that did not run completes nothing: {text}");
    assert!(!text.contains("token_bastion_deliveries_total{"), "{text}");
    assert_eq!(d.metrics.health().status, "ok", "not overdue before twice the interval");

    // Twice the interval after the start with no completed run: unhealthy.
    d.until("2026-11-24T11:10:01Z").await;
    let health = d.metrics.health();
    assert_eq!((health.status, health.overdue), ("unhealthy", vec!["a".to_string()]));
    assert_eq!(health.last_cycle, None);

    // It runs again: healthy at once.
    *lock(&d.behaviour) = Behaviour::Deliver { took: Duration::from_secs(5) };
    d.wake_at("*/30 * * * *", "2026-11-24T11:30:00Z").await;
    d.next_call().await;
    d.until("2026-11-24T11:30:07Z").await;
    assert_eq!(d.metrics.health().status, "ok");
    let (exit, _) = d.stop().await;
    assert_eq!(exit, DaemonExit::Clean);
}

#[tokio::test(start_paused = true)]
async fn a_wakeup_that_never_comes_is_counted_and_nothing_runs_in_its_place() {
    let mut d = Daemon::start(&[("a", "*/30 * * * *")], NO_SPLAY, Duration::from_secs(30)).await;
    d.until("2026-11-24T10:31:01Z").await;
    assert!(d.calls.try_recv().is_err(), "the planner does not start a run itself");
    let text = d.metrics.render();
    assert_eq!(line(&text, "token_bastion_missed_wakeups_total{"), Some(r#"token_bastion_missed_wakeups_total{service="a"} 1"#), "{text}");
    d.wake_at("*/30 * * * *", "2026-11-24T11:00:00Z").await;
    assert_eq!(d.next_call().await, (starts("2026-11-24T11:00:00Z", Duration::ZERO), vec!["a".to_string()]));
    let text = d.metrics.render();
    assert_eq!(line(&text, "token_bastion_missed_wakeups_total{"), Some(r#"token_bastion_missed_wakeups_total{service="a"} 1"#));
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn services_due_together_run_as_one_cycle_and_one_still_running_is_skipped() {
    let mut d = Daemon::start(&[("a", "*/30 * * * *"), ("b", "0,30 * * * *"), ("c", "@hourly")], NO_SPLAY, Duration::from_secs(30)).await;
    assert_eq!(lock(&d.given)[0].len(), 3, "one wake-up job per distinct schedule");
    *lock(&d.behaviour) = Behaviour::Deliver { took: Duration::from_secs(45 * 60) };
    d.wake_at("*/30 * * * *", "2026-11-24T10:30:00Z").await;
    d.wake_at("0,30 * * * *", "2026-11-24T10:30:00Z").await;
    assert_eq!(d.next_call().await, (starts("2026-11-24T10:30:00Z", Duration::ZERO), vec!["a".to_string(), "b".to_string()]), "one slot, two wake-ups, one cycle");
    // At 11:00 a and b are still running (45 min cycle) and skipped; c runs after the cycle.
    d.wake_at("*/30 * * * *", "2026-11-24T11:00:00Z").await;
    d.wake_at("0,30 * * * *", "2026-11-24T11:00:00Z").await;
    d.wake_at("@hourly", "2026-11-24T11:00:00Z").await;
    assert_eq!(d.next_call().await, (utc("2026-11-24T11:15:01Z"), vec!["c".to_string()]), "one cycle at a time: c waits for the one in flight");
    let text = d.metrics.render();
    assert!(text.contains(r#"token_bastion_skipped_runs_total{service="a"} 1"#), "{text}");
    assert!(text.contains(r#"token_bastion_skipped_runs_total{service="b"} 1"#), "{text}");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_reschedules_and_what_left_the_inventory_leaves_metrics_and_health() {
    let mut d = Daemon::start(&[("a", "*/30 * * * *"), ("b", "15 * * * *")], NO_SPLAY, Duration::from_secs(30)).await;
    d.wake_at("15 * * * *", "2026-11-24T10:15:00Z").await;
    assert_eq!(d.next_call().await.1, ["b"]);
    lock(&d.failing).insert("b".into());
    for (expr, slot) in [("*/30 * * * *", "2026-11-24T10:30:00Z"), ("*/30 * * * *", "2026-11-24T11:00:00Z"), ("15 * * * *", "2026-11-24T11:15:00Z"), ("*/30 * * * *", "2026-11-24T11:30:00Z"), ("*/30 * * * *", "2026-11-24T12:00:00Z"), ("15 * * * *", "2026-11-24T12:15:00Z")] {
        d.wake_at(expr, slot).await;
        d.next_call().await;
    }
    d.until("2026-11-24T12:16:00Z").await;
    let health = d.metrics.health();
    assert_eq!((health.status, health.overdue), ("unhealthy", vec!["b".to_string()]), "b has not completed since 10:15");
    let text = d.metrics.render();
    for series in [r#"token_bastion_expiry_timestamp_seconds{service="b""#, r#"token_bastion_deliveries_total{service="b""#, r#"stage="setup""#] {
        assert!(text.contains(series), "{series} before the reload:\n{text}");
    }

    // b leaves the inventory; a moves to every 20 minutes.
    std::fs::write(&d.config, inventory(&[("a", "*/20 * * * *")], "")).unwrap();
    d.control.send(Control::Reload).await.unwrap();
    d.until("2026-11-24T12:17:00Z").await;
    assert_eq!(lock(&d.given).last().unwrap(), &["0 */20 * * * *"], "the wake source follows the new schedules");
    let text = d.metrics.render();
    assert!(!text.contains(r#"service="b""#), "every series of b is gone:\n{text}");
    assert!(text.contains(r#"token_bastion_expiry_timestamp_seconds{service="a",destination="credd@s1"}"#), "{text}");
    assert_eq!(d.metrics.health().status, "ok", "b left the overdue set");

    d.wake_at("*/20 * * * *", "2026-11-24T12:20:00Z").await;
    assert_eq!(d.next_call().await, (starts("2026-11-24T12:20:00Z", Duration::ZERO), vec!["a".to_string()]));
    d.wake_at("*/30 * * * *", "2026-11-24T12:30:00Z").await;
    d.until("2026-11-24T12:39:00Z").await;
    assert!(d.calls.try_recv().is_err(), "the old schedule wakes nothing");
    // The one watchdog watches a on its new interval (20 minutes: overdue 40 minutes after its
    // 12:20:06 completion), and b no more.
    d.until("2026-11-24T12:59:00Z").await;
    assert_eq!(d.metrics.health().status, "ok");
    d.until("2026-11-24T13:01:00Z").await;
    assert_eq!(d.metrics.health().overdue, ["a"]);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_with_a_broken_templates_dir_is_refused_and_mailed_once() {
    let mut d = Daemon::start(&[("a", "*/30 * * * *")], NO_SPLAY, Duration::from_secs(30)).await;
    let templates = d.config.parent().unwrap().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join(crate::notify::ADMIN_TEMPLATE), "{% if %}broken\n").unwrap();
    let notify = format!("  templates_dir: {}\n", templates.display());
    std::fs::write(&d.config, inventory(&[("a", "*/20 * * * *")], &notify)).unwrap();
    for at in ["2026-11-24T10:12:00Z", "2026-11-24T10:13:00Z"] {
        d.control.send(Control::Reload).await.unwrap();
        d.until(at).await;
    }
    assert_eq!(lock(&d.given).len(), 1, "refused: the schedules stay as they were");
    let mail = StateStore::open(&d.state_dir).unwrap().pending_mail().unwrap();
    assert_eq!(mail.len(), 1, "one mail per distinct broken file: {mail:#?}");
    assert!(mail[0].mail.subject.contains("reload refused"), "{:?}", mail[0].mail.subject);
    assert!(mail[0].mail.body.contains(crate::notify::ADMIN_TEMPLATE), "{}", mail[0].mail.body);
    d.wake_at("*/30 * * * *", "2026-11-24T10:30:00Z").await;
    assert_eq!(d.next_call().await.1, ["a"], "the running inventory stays in use");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sigterm_drops_queued_cycles_and_returns_by_grace_plus_the_hard_margin() {
    let mut d = Daemon::start(&[("a", "*/30 * * * *"), ("b", "45 * * * *")], NO_SPLAY, Duration::from_secs(3)).await;
    *lock(&d.behaviour) = Behaviour::Hang;
    d.wake_at("*/30 * * * *", "2026-11-24T10:30:00Z").await;
    assert_eq!(d.next_call().await.1, ["a"]);
    d.wake_at("45 * * * *", "2026-11-24T10:45:00Z").await;
    d.until("2026-11-24T10:46:00Z").await;
    let saw_grace_over = d.saw_grace_over.clone();
    let stopped = d.stopped.clone();
    let mut calls = std::mem::replace(&mut d.calls, mpsc::unbounded_channel().1);
    let (exit, took) = d.stop().await;
    assert_eq!(exit, DaemonExit::Abandoned);
    assert_eq!(took, Duration::from_secs(3) + HARD_MARGIN, "the grace period, then the hard margin, then out");
    assert!(saw_grace_over.load(Ordering::SeqCst), "the cycle was told when the grace period ended");
    assert!(stopped.load(Ordering::SeqCst), "the wake source was stopped");
    assert!(calls.try_recv().is_err(), "b's queued cycle never started");
}

#[tokio::test(start_paused = true)]
async fn sigterm_lets_a_cycle_finish_within_the_grace_period_and_starts_nothing_after_it() {
    let mut d = Daemon::start(&[("a", "*/30 * * * *"), ("b", "45 * * * *")], NO_SPLAY, Duration::from_secs(30 * 60)).await;
    *lock(&d.behaviour) = Behaviour::Deliver { took: Duration::from_secs(20 * 60) };
    d.wake_at("*/30 * * * *", "2026-11-24T10:30:00Z").await;
    d.next_call().await;
    d.wake_at("45 * * * *", "2026-11-24T10:45:00Z").await;
    d.until("2026-11-24T10:46:00Z").await;
    let metrics = d.metrics.clone();
    let mut calls = std::mem::replace(&mut d.calls, mpsc::unbounded_channel().1);
    let (exit, took) = d.stop().await;
    assert_eq!((exit, took), (DaemonExit::Clean, Duration::from_secs(4 * 60 + 1)), "a ends at 10:50:01");
    assert!(metrics.render().contains(r#"token_bastion_deliveries_total{service="a",destination="credd@s1"} 1"#));
    assert!(calls.try_recv().is_err(), "b, queued behind a, never started");
}

#[test]
fn issuer_keys_live_across_cycles_until_the_inventory_changes() {
    let dir = tempfile::tempdir().unwrap();
    let parse = || Arc::new(crate::inventory::parse(Path::new("inv.yaml"), &inventory(&[("a", "@hourly")], "")).unwrap());
    let kept = KeptKeys::default();
    let first = parse();
    let cache = issuer_keys(&kept, &first, dir.path()).unwrap();
    assert!(Arc::ptr_eq(&cache, &issuer_keys(&kept, &first, dir.path()).unwrap()), "the same inventory keeps its cache");
    let reloaded = parse();
    assert!(!Arc::ptr_eq(&cache, &issuer_keys(&kept, &reloaded, dir.path()).unwrap()), "a reload builds a new one");
}
