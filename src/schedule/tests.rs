use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("test time").with_timezone(&Utc)
}

/// `expr` parses to `six_field` and, from `from`, fires next at `next`.
fn check(expr: &str, six_field: &str, from: &str, next: &str) {
    let s = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    assert_eq!(s.six_field(), six_field, "{expr}");
    assert_eq!(s.expression(), expr.trim());
    assert_eq!(s.next_after(utc(from)), Some(utc(next)), "{expr} after {from}");
}

fn check_err(expr: &str, needle: &str) {
    let e = Schedule::parse(expr).err().unwrap_or_else(|| panic!("`{expr}` should be refused")).to_string();
    assert!(e.contains(&format!("`{expr}`")), "error names the expression: {e}");
    assert!(e.contains(needle), "`{e}` should mention `{needle}`");
}

#[test]
fn five_field_is_rewritten_seconds_first_and_six_field_is_kept() {
    check("*/15 * * * *", "0 */15 * * * *", "2026-11-24T10:07:00Z", "2026-11-24T10:15:00Z");
    check(" 5 4 * * * ", "0 5 4 * * *", "2026-11-24T10:07:00Z", "2026-11-25T04:05:00Z");
    check("30 */10 * * * *", "30 */10 * * * *", "2026-11-24T10:07:00Z", "2026-11-24T10:10:30Z");
    check("*/1 * * * * *", "*/1 * * * * *", "2026-11-24T10:07:00.400Z", "2026-11-24T10:07:01Z");
}

#[test]
fn shorthands_and_the_default_are_hourly_style() {
    check("@hourly", "0 0 * * * *", "2026-11-24T10:15:30Z", "2026-11-24T11:00:00Z");
    check("@daily", "0 0 0 * * *", "2026-11-24T10:15:30Z", "2026-11-25T00:00:00Z");
    check("@weekly", "0 0 0 * * 0", "2026-11-24T10:15:30Z", "2026-11-29T00:00:00Z");
    check("@MONTHLY", "0 0 0 1 * *", "2026-11-24T10:15:30Z", "2026-12-01T00:00:00Z");
    check("@annually", "0 0 0 1 1 *", "2026-11-24T10:15:30Z", "2027-01-01T00:00:00Z");
    assert_eq!(Schedule::default().six_field(), "0 0 * * * *");
    assert_eq!(DEFAULT_SCHEDULE, "@hourly");
}

#[test]
fn next_fire_is_strictly_after() {
    let s = Schedule::hourly();
    assert_eq!(s.next_after(utc("2026-11-24T11:00:00Z")), Some(utc("2026-11-24T12:00:00Z")));
    assert_eq!(s.next_after(utc("2026-11-24T10:59:59.900Z")), Some(utc("2026-11-24T11:00:00Z")));
    assert_eq!(s.interval_after(utc("2026-11-24T10:30:00Z")), Some(Duration::from_secs(3600)));
    let twice = Schedule::parse("0 9,17 * * *").unwrap();
    assert_eq!(twice.interval_after(utc("2026-11-24T10:00:00Z")), Some(Duration::from_secs(16 * 3600)));
}

#[test]
fn utc_has_no_daylight_saving_gap() {
    // 02:30 does not exist in Europe on the last Sunday of March; in UTC it fires as usual.
    check("30 2 * * *", "0 30 2 * * *", "2026-03-29T00:00:00Z", "2026-03-29T02:30:00Z");
}

#[test]
fn bad_expressions_are_refused_naming_the_expression() {
    check_err("* * *", "3 fields");
    check_err("0 0 * * * * * *", "8 fields");
    check_err("", "0 fields");
    check_err("@reboot", "unknown shorthand");
    check_err("61 * * * *", "");
    check_err("0 0 30 2 *", "never fires");
}

#[test]
fn the_scheduler_crate_accepts_what_we_produce() {
    for expr in ["*/15 * * * *", "@hourly", "0 9,17 * * 1-5", "30 */10 * * * *"] {
        let s = Schedule::parse(expr).unwrap();
        assert!(
            tokio_cron_scheduler::Job::new(s.six_field(), |_, _| {}).is_ok(),
            "tokio-cron-scheduler refuses {}",
            s.six_field()
        );
    }
}

#[test]
fn splay_is_deterministic_bounded_and_spreads() {
    let max = Duration::from_secs(300);
    let hour = Duration::from_secs(3600);
    let names: Vec<String> = (0..50).map(|i| format!("service{i}")).collect();
    let offsets: Vec<Duration> = names.iter().map(|n| splay(n, max, hour)).collect();
    assert!(offsets.iter().all(|o| *o < max));
    assert_eq!(offsets, names.iter().map(|n| splay(n, max, hour)).collect::<Vec<_>>());
    let distinct: BTreeSet<Duration> = offsets.iter().copied().collect();
    assert!(distinct.len() > 25, "50 services should not bunch up: {distinct:?}");
    // Never past the next fire: bounded by the interval when that is shorter.
    assert!(names.iter().all(|n| splay(n, max, Duration::from_secs(60)) < Duration::from_secs(60)));
    assert_eq!(splay("wmagent", max, Duration::from_secs(1)), Duration::ZERO);
    assert_eq!(splay("wmagent", Duration::ZERO, hour), Duration::ZERO);
}

fn planner(services: &[(&str, &str)], opts: PlanOptions, now: &str) -> Planner {
    Planner::new(services.iter().map(|(n, e)| (n.to_string(), Schedule::parse(e).unwrap())), opts, utc(now))
}

const NO_SPLAY: PlanOptions = PlanOptions { splay_max: Duration::ZERO, window: Duration::from_secs(30) };

#[test]
fn services_due_in_one_window_come_as_one_batch() {
    let tracker = RunTracker::new();
    let mut p = planner(&[("crab", "@hourly"), ("tier0", "0 * * * *"), ("wmagent", "*/30 * * * *")], NO_SPLAY, "2026-11-24T10:10:00Z");
    assert_eq!(p.next_due(), Some(utc("2026-11-24T10:30:00Z")));
    assert!(p.take_due(utc("2026-11-24T10:29:00Z"), &tracker).is_none(), "nothing is due a minute early");

    let b = p.take_due(utc("2026-11-24T10:30:00Z"), &tracker).unwrap();
    assert_eq!(b.services(), ["wmagent"]);
    drop(b);
    let b = p.take_due(utc("2026-11-24T11:00:00Z"), &tracker).unwrap();
    assert_eq!(b.services(), ["crab", "tier0", "wmagent"], "same tick: one batch");
    assert!(b.skipped.is_empty());
    assert_eq!(p.next_due(), Some(utc("2026-11-24T11:30:00Z")));
}

#[test]
fn splay_shifts_due_times_inside_the_interval_and_the_window_gathers_them() {
    let opts = PlanOptions { splay_max: Duration::from_secs(300), window: Duration::from_secs(0) };
    let names = ["a", "b", "c", "d", "e", "f"];
    let svc: Vec<(&str, &str)> = names.iter().map(|n| (*n, "@hourly")).collect();
    let p = planner(&svc, opts, "2026-11-24T10:10:00Z");
    let fire = utc("2026-11-24T11:00:00Z");
    for n in names {
        let due = p.due_at(n).unwrap();
        assert_eq!(due, fire + to_delta(splay(n, opts.splay_max, Duration::from_secs(3600))));
        assert!(due >= fire && due < fire + TimeDelta::minutes(5));
    }
    // A window as wide as the splay gathers them all into the first batch.
    let wide = PlanOptions { window: Duration::from_secs(300), ..opts };
    let mut p = planner(&svc, wide, "2026-11-24T10:10:00Z");
    let first = p.next_due().unwrap();
    let b = p.take_due(first, &RunTracker::new()).unwrap();
    assert_eq!(b.runs.len(), names.len());
}

#[test]
fn a_service_still_running_is_skipped_and_reported_not_stacked() {
    let tracker = RunTracker::new();
    let mut p = planner(&[("crab", "@hourly"), ("wmagent", "@hourly")], NO_SPLAY, "2026-11-24T10:10:00Z");
    let mut first = p.take_due(utc("2026-11-24T11:00:00Z"), &tracker).unwrap();
    let wmagent = first.runs.pop().unwrap();
    assert_eq!(wmagent.service(), "wmagent");
    first.runs.pop().unwrap().complete(utc("2026-11-24T11:02:00Z"));

    let second = p.take_due(utc("2026-11-24T12:00:00Z"), &tracker).unwrap();
    assert_eq!(second.services(), ["crab"]);
    assert_eq!(second.skipped, [Skipped { service: "wmagent".into(), running_since: utc("2026-11-24T11:00:00Z") }]);
    drop(second);

    wmagent.complete(utc("2026-11-24T12:10:00Z"));
    assert_eq!(tracker.running_since("wmagent"), None);
    assert_eq!(tracker.last_completed("wmagent"), Some(utc("2026-11-24T12:10:00Z")));
    let third = p.take_due(utc("2026-11-24T13:00:00Z"), &tracker).unwrap();
    assert_eq!(third.services(), ["crab", "wmagent"]);
}

#[test]
fn a_dropped_guard_frees_the_service_without_a_completion() {
    let tracker = RunTracker::new();
    let g = tracker.try_start("crab", utc("2026-11-24T11:00:00Z")).unwrap();
    assert!(tracker.try_start("crab", utc("2026-11-24T11:01:00Z")).is_err());
    drop(g);
    assert_eq!(tracker.last_completed("crab"), None);
    assert!(tracker.try_start("crab", utc("2026-11-24T11:02:00Z")).is_ok());
}

#[test]
fn ticks_missed_during_a_stall_are_not_replayed() {
    let tracker = RunTracker::new();
    let mut p = planner(&[("wmagent", "*/5 * * * *")], NO_SPLAY, "2026-11-24T10:00:00Z");
    let b = p.take_due(utc("2026-11-24T13:02:00Z"), &tracker).unwrap();
    assert_eq!(b.services(), ["wmagent"]);
    drop(b);
    assert_eq!(p.next_due(), Some(utc("2026-11-24T13:05:00Z")));
    assert!(p.take_due(utc("2026-11-24T13:02:01Z"), &tracker).is_none());
}

#[tokio::test(start_paused = true)]
async fn tokio_clock_follows_paused_time() {
    let clock = TokioClock::starting_at(utc("2026-11-24T10:00:00Z"));
    tokio::time::advance(Duration::from_secs(90)).await;
    assert_eq!(clock.now(), utc("2026-11-24T10:01:30Z"));
    clock.sleep_until(utc("2026-11-24T11:00:00Z")).await;
    assert_eq!(clock.now(), utc("2026-11-24T11:00:00Z"));
    clock.sleep_until(utc("2026-11-24T09:00:00Z")).await; // past: at once
    assert_eq!(clock.now(), utc("2026-11-24T11:00:00Z"));
}

#[tokio::test(start_paused = true)]
async fn drive_hands_out_batches_on_the_clock() {
    let clock = TokioClock::starting_at(utc("2026-11-24T10:10:00Z"));
    let tracker = RunTracker::new();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = {
        let (clock, tracker, cancel) = (clock, tracker.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut p = planner(&[("crab", "@hourly"), ("wmagent", "*/30 * * * *")], NO_SPLAY, "2026-11-24T10:10:00Z");
            drive(&clock, &mut p, &tracker, &cancel, |batch| {
                let seen = (batch.at, batch.services(), batch.skipped.len());
                for run in batch.runs {
                    run.complete(batch.at);
                }
                tx.send(seen).unwrap();
            })
            .await;
        })
    };
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(rx.recv().await.unwrap());
    }
    cancel.cancel();
    task.await.unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        [
            (utc("2026-11-24T10:30:00Z"), s(&["wmagent"]), 0),
            (utc("2026-11-24T11:00:00Z"), s(&["crab", "wmagent"]), 0),
            (utc("2026-11-24T11:30:00Z"), s(&["wmagent"]), 0),
            (utc("2026-11-24T12:00:00Z"), s(&["crab", "wmagent"]), 0),
        ]
    );
    assert_eq!(tracker.last_completed("crab"), Some(utc("2026-11-24T12:00:00Z")));
}

#[tokio::test]
async fn drive_on_a_manual_clock_waits_for_the_clock() {
    let clock = ManualClock::new(utc("2026-11-24T10:10:00Z"));
    let tracker = RunTracker::new();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = {
        let (clock, tracker, cancel) = (clock.clone(), tracker.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut p = planner(&[("crab", "@hourly")], NO_SPLAY, "2026-11-24T10:10:00Z");
            drive(&clock, &mut p, &tracker, &cancel, |b| tx.send(b.services()).unwrap()).await;
        })
    };
    clock.advance(Duration::from_secs(49 * 60));
    clock.set(utc("2026-11-24T11:00:00Z"));
    assert_eq!(rx.recv().await.unwrap(), ["crab"]);
    cancel.cancel();
    task.await.unwrap();
    assert!(rx.try_recv().is_err(), "one fire, one batch");
}

#[tokio::test(start_paused = true)]
async fn watchdog_reports_a_service_that_has_not_completed_in_twice_its_interval() {
    let clock = TokioClock::starting_at(utc("2026-11-24T10:00:00Z"));
    let tracker = RunTracker::new();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(8);
    let services = vec![("crab".to_string(), Schedule::hourly()), ("wmagent".to_string(), Schedule::parse("*/30 * * * *").unwrap())];
    let task = spawn_watchdog(clock, tracker.clone(), services, tx, cancel.clone());

    // crab keeps completing; wmagent never does.
    clock.sleep_until(utc("2026-11-24T10:59:00Z")).await;
    tracker.record_completed("crab", clock.now());
    clock.sleep_until(utc("2026-11-24T10:59:59Z")).await;
    assert!(rx.try_recv().is_err(), "nothing is overdue before the deadline");

    let ev = rx.recv().await.unwrap();
    assert_eq!(ev, WatchdogEvent::Overdue { service: "wmagent".into(), last_completed: None, deadline: utc("2026-11-24T11:00:00Z") });
    assert_eq!(clock.now(), utc("2026-11-24T11:00:00Z"), "reported at the deadline, driven by the clock");

    clock.sleep_until(utc("2026-11-24T11:20:00Z")).await;
    tracker.record_completed("wmagent", clock.now());
    let ev = rx.recv().await.unwrap();
    assert_eq!(ev, WatchdogEvent::Recovered { service: "wmagent".into(), completed: utc("2026-11-24T11:20:00Z") });
    assert_eq!(clock.now(), utc("2026-11-24T11:20:00Z"), "recovery is seen at once");

    // Neither completes again: wmagent is overdue an hour after 11:20, crab two hours after
    // 10:59; each is reported once.
    let ev = rx.recv().await.unwrap();
    assert_eq!(ev, WatchdogEvent::Overdue { service: "wmagent".into(), last_completed: Some(utc("2026-11-24T11:20:00Z")), deadline: utc("2026-11-24T12:20:00Z") });
    let ev = rx.recv().await.unwrap();
    assert_eq!(ev, WatchdogEvent::Overdue { service: "crab".into(), last_completed: Some(utc("2026-11-24T10:59:00Z")), deadline: utc("2026-11-24T12:59:00Z") });
    clock.sleep_until(utc("2026-11-24T20:00:00Z")).await;
    assert!(rx.try_recv().is_err(), "each episode is reported once");
    cancel.cancel();
    task.await.unwrap();
}

/// The one real-time test of the crate adapter: tokio-cron-scheduler reads the wall clock, so
/// this waits for real seconds (bounded) and then shuts the scheduler down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticker_fires_every_second_and_shuts_down() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ticker = CronTicker::start(&Schedule::parse("*/1 * * * * *").unwrap(), move |at| {
        let _ = tx.send(at);
    })
    .await
    .unwrap();
    let mut ticks = Vec::new();
    for _ in 0..3 {
        let tick = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        ticks.push(tick.expect("a tick within 10 s").expect("ticker alive"));
    }
    ticker.shutdown().await.unwrap();
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
}
