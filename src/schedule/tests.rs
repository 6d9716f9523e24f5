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
fn next_fire_is_strictly_after_and_a_slot_is_the_latest_fire_at_or_before() {
    let s = Schedule::hourly();
    assert_eq!(s.next_after(utc("2026-11-24T11:00:00Z")), Some(utc("2026-11-24T12:00:00Z")));
    assert_eq!(s.next_after(utc("2026-11-24T10:59:59.900Z")), Some(utc("2026-11-24T11:00:00Z")));
    assert_eq!(s.latest_at_or_before(utc("2026-11-24T11:00:00Z")), Some(utc("2026-11-24T11:00:00Z")));
    assert_eq!(s.latest_at_or_before(utc("2026-11-24T11:00:00.480Z")), Some(utc("2026-11-24T11:00:00Z")));
    assert_eq!(s.latest_at_or_before(utc("2026-11-24T11:59:59Z")), Some(utc("2026-11-24T11:00:00Z")));
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

fn wake(expr: &str, slot: &str) -> Wake {
    Wake { schedule: Schedule::parse(expr).unwrap().six_field().to_string(), slot: utc(slot) }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// How long a batch waits for the other wake-ups of its slot.
fn settle() -> TimeDelta {
    to_delta(BATCH_SETTLE)
}

const NO_SPLAY: PlanOptions = PlanOptions { splay_max: Duration::ZERO, window: Duration::from_secs(30) };

#[test]
fn services_woken_for_one_slot_come_as_one_batch() {
    let tracker = RunTracker::new();
    let mut p = planner(&[("crab", "@hourly"), ("tier0", "0 * * * *"), ("wmagent", "*/30 * * * *")], NO_SPLAY, "2026-11-24T10:10:00Z");
    assert_eq!(p.schedules().len(), 2, "`@hourly` and `0 * * * *` are one schedule: one wake-up job");
    assert!(p.take_due(utc("2026-11-24T10:30:00Z") + settle(), &tracker).is_none(), "nothing runs without a wake-up");

    let r = p.wake(&wake("*/30 * * * *", "2026-11-24T10:30:00Z"));
    assert_eq!(r.woken, names(&["wmagent"]));
    let b = p.take_due(utc("2026-11-24T10:30:00Z") + settle(), &tracker).unwrap();
    assert_eq!(b.services(), ["wmagent"]);
    drop(b);

    assert_eq!(p.wake(&wake("@hourly", "2026-11-24T11:00:00Z")).woken, names(&["crab", "tier0"]));
    assert_eq!(p.wake(&wake("*/30 * * * *", "2026-11-24T11:00:00Z")).woken, names(&["wmagent"]));
    let b = p.take_due(utc("2026-11-24T11:00:00Z") + settle(), &tracker).unwrap();
    assert_eq!(b.services(), ["crab", "tier0", "wmagent"], "same slot: one batch");
    assert!(b.skipped.is_empty());
    assert!(p.take_due(utc("2026-11-24T11:00:01Z") + settle(), &tracker).is_none(), "taken once");
}

#[test]
fn splay_delays_each_service_after_its_slot_and_the_window_gathers_them() {
    let opts = PlanOptions { splay_max: Duration::from_secs(300), window: Duration::from_secs(0) };
    let names = ["a", "b", "c", "d", "e", "f"];
    let svc: Vec<(&str, &str)> = names.iter().map(|n| (*n, "@hourly")).collect();
    let mut p = planner(&svc, opts, "2026-11-24T10:10:00Z");
    let slot = utc("2026-11-24T11:00:00Z");
    p.wake(&Wake { schedule: Schedule::hourly().six_field().into(), slot });
    for n in names {
        let due = p.due_at(n).unwrap();
        assert_eq!(due, slot + to_delta(splay(n, opts.splay_max, Duration::from_secs(3600))));
        assert!(due >= slot && due < slot + TimeDelta::minutes(5));
    }
    let first = p.next_wake().unwrap();
    assert_eq!(Some(first), names.iter().map(|n| p.due_at(n).unwrap() + settle()).min());
    assert!(p.take_due(first - TimeDelta::seconds(1), &RunTracker::new()).is_none(), "not before its splay");
    // A window as wide as the splay gathers them all into the first batch.
    let wide = PlanOptions { window: Duration::from_secs(300), ..opts };
    let mut p = planner(&svc, wide, "2026-11-24T10:10:00Z");
    p.wake(&Wake { schedule: Schedule::hourly().six_field().into(), slot });
    let b = p.take_due(p.next_wake().unwrap(), &RunTracker::new()).unwrap();
    assert_eq!(b.runs.len(), names.len());
}

#[test]
fn a_slot_runs_once_whatever_the_wake_source_repeats() {
    let tracker = RunTracker::new();
    let mut p = planner(&[("crab", "*/5 * * * *")], NO_SPLAY, "2026-11-24T10:00:00Z");
    assert_eq!(p.wake(&wake("*/5 * * * *", "2026-11-24T10:05:00Z")).woken, names(&["crab"]));
    p.take_due(utc("2026-11-24T10:05:00Z") + settle(), &tracker).unwrap().runs.pop().unwrap().complete(utc("2026-11-24T10:05:10Z"));

    // The same slot again (the crate fired twice, or a clock step made it fire again), and an
    // older one: neither runs.
    let again = p.wake(&wake("*/5 * * * *", "2026-11-24T10:05:00Z"));
    assert_eq!((again.woken.len(), again.duplicate.clone()), (0, names(&["crab"])));
    assert!(p.wake(&wake("*/5 * * * *", "2026-11-24T10:00:00Z")).woken.is_empty());
    assert!(p.take_due(utc("2026-11-24T10:06:00Z") + settle(), &tracker).is_none());

    // A reload that changes the schedule keeps the slots already run, and a run woken but not
    // yet taken.
    p.wake(&wake("*/5 * * * *", "2026-11-24T10:10:00Z"));
    p.replace([("crab".to_string(), Schedule::parse("*/10 * * * *").unwrap())], utc("2026-11-24T10:10:00Z"));
    assert_eq!(p.due_at("crab"), Some(utc("2026-11-24T10:10:00Z")));
    assert_eq!(p.take_due(utc("2026-11-24T10:10:00Z") + settle(), &tracker).unwrap().services(), ["crab"]);
    assert!(p.wake(&wake("*/10 * * * *", "2026-11-24T10:10:00Z")).woken.is_empty(), "10:10 has run already");
    assert_eq!(p.wake(&wake("*/10 * * * *", "2026-11-24T10:20:00Z")).woken, names(&["crab"]));
}

#[test]
fn a_wakeup_that_never_came_is_reported_missed_once_and_not_made_up() {
    let tracker = RunTracker::new();
    let mut p = planner(&[("crab", "*/5 * * * *")], NO_SPLAY, "2026-11-24T10:00:00Z");
    assert_eq!(p.next_wake(), Some(utc("2026-11-24T10:05:00Z") + to_delta(MISSED_AFTER)));
    assert!(p.check_missed(utc("2026-11-24T10:05:59Z")).is_empty(), "a wake-up may be a little late");
    let missed = p.check_missed(utc("2026-11-24T10:06:00Z"));
    assert_eq!(missed, [Missed { service: "crab".into(), first: utc("2026-11-24T10:05:00Z"), count: 1 }]);
    assert!(p.check_missed(utc("2026-11-24T10:06:30Z")).is_empty(), "reported once");
    assert!(p.take_due(utc("2026-11-24T10:06:30Z") + settle(), &tracker).is_none(), "the planner never starts a run itself");

    // A stall: every slot without a wake-up is counted, none replayed.
    let missed = p.check_missed(utc("2026-11-24T11:00:30Z"));
    assert_eq!(missed, [Missed { service: "crab".into(), first: utc("2026-11-24T10:10:00Z"), count: 10 }]);
    assert_eq!(p.next_wake(), Some(utc("2026-11-24T11:00:00Z") + to_delta(MISSED_AFTER)));

    // A late wake-up for a slot reported missed still runs it, once.
    assert_eq!(p.wake(&wake("*/5 * * * *", "2026-11-24T10:55:00Z")).woken, names(&["crab"]));
    assert!(p.take_due(utc("2026-11-24T11:00:40Z") + settle(), &tracker).is_some());
    assert!(p.wake(&wake("*/5 * * * *", "2026-11-24T10:55:00Z")).woken.is_empty());
    assert!(p.check_missed(utc("2026-11-24T11:00:59Z")).is_empty(), "nothing reported twice");
}

#[test]
fn a_wakeup_that_jumps_slots_reports_the_ones_in_between() {
    let mut p = planner(&[("crab", "*/5 * * * *")], NO_SPLAY, "2026-11-24T10:00:00Z");
    let r = p.wake(&wake("*/5 * * * *", "2026-11-24T10:15:00Z"));
    assert_eq!(r.woken, names(&["crab"]));
    assert_eq!(r.missed, [Missed { service: "crab".into(), first: utc("2026-11-24T10:05:00Z"), count: 2 }]);
    assert_eq!(p.next_wake(), Some(utc("2026-11-24T10:15:00Z") + settle()), "the woken run is due");
}

#[test]
fn a_service_still_running_is_skipped_and_reported_not_stacked() {
    let tracker = RunTracker::new();
    let mut p = planner(&[("crab", "@hourly"), ("wmagent", "@hourly")], NO_SPLAY, "2026-11-24T10:10:00Z");
    p.wake(&wake("@hourly", "2026-11-24T11:00:00Z"));
    let mut first = p.take_due(utc("2026-11-24T11:00:00Z") + settle(), &tracker).unwrap();
    let wmagent = first.runs.pop().unwrap();
    assert_eq!(wmagent.service(), "wmagent");
    first.runs.pop().unwrap().complete(utc("2026-11-24T11:02:00Z"));

    p.wake(&wake("@hourly", "2026-11-24T12:00:00Z"));
    let second = p.take_due(utc("2026-11-24T12:00:00Z") + settle(), &tracker).unwrap();
    assert_eq!(second.services(), ["crab"]);
    assert_eq!(second.skipped, [Skipped { service: "wmagent".into(), running_since: utc("2026-11-24T11:00:00Z") + settle() }]);
    drop(second);

    wmagent.complete(utc("2026-11-24T12:10:00Z"));
    assert_eq!(tracker.running_since("wmagent"), None);
    assert_eq!(tracker.last_completed("wmagent"), Some(utc("2026-11-24T12:10:00Z")));
    p.wake(&wake("@hourly", "2026-11-24T13:00:00Z"));
    let third = p.take_due(utc("2026-11-24T13:00:00Z") + settle(), &tracker).unwrap();
    assert_eq!(third.services(), ["crab", "wmagent"]);
}

#[test]
fn a_failed_or_dropped_guard_frees_the_service_without_a_completion() {
    let tracker = RunTracker::new();
    let g = tracker.try_start("crab", utc("2026-11-24T11:00:00Z")).unwrap();
    assert!(tracker.try_start("crab", utc("2026-11-24T11:01:00Z")).is_err());
    drop(g);
    assert_eq!(tracker.last_completed("crab"), None);
    tracker.try_start("crab", utc("2026-11-24T11:02:00Z")).unwrap().fail();
    assert_eq!(tracker.last_completed("crab"), None);
    assert!(tracker.try_start("crab", utc("2026-11-24T11:03:00Z")).is_ok());
}

#[test]
fn a_reload_keeps_unchanged_services_and_starts_new_ones_afresh() {
    let mut p = planner(&[("crab", "@hourly"), ("gone", "@daily")], NO_SPLAY, "2026-11-24T10:10:00Z");
    p.wake(&wake("@hourly", "2026-11-24T11:00:00Z"));
    p.replace(
        [("crab".to_string(), Schedule::hourly()), ("new".to_string(), Schedule::parse("*/15 * * * *").unwrap())],
        utc("2026-11-24T11:00:01Z"),
    );
    assert_eq!(p.due_at("crab"), Some(utc("2026-11-24T11:00:00Z")), "the woken run survives the reload");
    assert_eq!(p.services().into_iter().map(|(n, _)| n).collect::<Vec<_>>(), ["crab", "new"]);
    let schedules: Vec<String> = p.schedules().iter().map(|s| s.six_field().to_string()).collect();
    assert_eq!(schedules, ["0 0 * * * *", "0 */15 * * * *"]);
    assert!(p.wake(&wake("@daily", "2026-11-25T00:00:00Z")).woken.is_empty(), "a removed service is not woken");
    assert_eq!(p.check_missed(utc("2026-11-24T11:16:00Z")), [Missed { service: "new".into(), first: utc("2026-11-24T11:15:00Z"), count: 1 }]);
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

#[tokio::test]
async fn wall_clock_sleeps_until_the_wall_clock_reaches_the_time() {
    let target = Utc::now() + TimeDelta::milliseconds(300);
    WallClock.sleep_until(target).await;
    assert!(WallClock.now() >= target);
    WallClock.sleep_until(Utc::now() - TimeDelta::hours(1)).await; // past: at once
}

#[tokio::test]
async fn manual_clock_sleeps_until_it_is_set_past_the_time() {
    let clock = ManualClock::new(utc("2026-11-24T10:10:00Z"));
    let sleeper = {
        let clock = clock.clone();
        tokio::spawn(async move { clock.sleep_until(utc("2026-11-24T11:00:00Z")).await })
    };
    clock.advance(Duration::from_secs(49 * 60));
    tokio::task::yield_now().await;
    assert!(!sleeper.is_finished());
    clock.set(utc("2026-11-24T11:00:00Z"));
    sleeper.await.unwrap();
}

/// The next watchdog event, or a failure if none comes within a (paused) day.
async fn next_event(rx: &mut mpsc::Receiver<WatchdogEvent>) -> WatchdogEvent {
    tokio::time::timeout(Duration::from_secs(86400), rx.recv()).await.expect("a watchdog event within a day").expect("watchdog alive")
}

fn watched(v: &[(&str, &str)]) -> Vec<(String, Schedule)> {
    v.iter().map(|(n, e)| (n.to_string(), Schedule::parse(e).unwrap())).collect()
}

#[tokio::test(start_paused = true)]
async fn watchdog_reports_a_service_that_has_not_completed_in_twice_its_interval() {
    let clock = TokioClock::starting_at(utc("2026-11-24T10:00:00Z"));
    let tracker = RunTracker::new();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(8);
    let (_services_tx, services) = watch::channel(watched(&[("crab", "@hourly"), ("wmagent", "*/30 * * * *")]));
    let task = spawn_watchdog(clock, tracker.clone(), services, tx, cancel.clone());

    // crab keeps completing; wmagent never does.
    clock.sleep_until(utc("2026-11-24T10:59:00Z")).await;
    tracker.record_completed("crab", clock.now());
    clock.sleep_until(utc("2026-11-24T10:59:59Z")).await;
    assert!(rx.try_recv().is_err(), "nothing is overdue before the deadline");

    let ev = next_event(&mut rx).await;
    assert_eq!(ev, WatchdogEvent::Overdue { service: "wmagent".into(), last_completed: None, deadline: utc("2026-11-24T11:00:00Z") });
    assert_eq!(clock.now(), utc("2026-11-24T11:00:00Z"), "reported at the deadline, driven by the clock");

    clock.sleep_until(utc("2026-11-24T11:20:00Z")).await;
    tracker.record_completed("wmagent", clock.now());
    let ev = next_event(&mut rx).await;
    assert_eq!(ev, WatchdogEvent::Recovered { service: "wmagent".into(), completed: utc("2026-11-24T11:20:00Z") });
    assert_eq!(clock.now(), utc("2026-11-24T11:20:00Z"), "recovery is seen at once");

    // Neither completes again: wmagent is overdue an hour after 11:20, crab two hours after
    // 10:59; each is reported once.
    let ev = next_event(&mut rx).await;
    assert_eq!(ev, WatchdogEvent::Overdue { service: "wmagent".into(), last_completed: Some(utc("2026-11-24T11:20:00Z")), deadline: utc("2026-11-24T12:20:00Z") });
    let ev = next_event(&mut rx).await;
    assert_eq!(ev, WatchdogEvent::Overdue { service: "crab".into(), last_completed: Some(utc("2026-11-24T10:59:00Z")), deadline: utc("2026-11-24T12:59:00Z") });
    clock.sleep_until(utc("2026-11-24T20:00:00Z")).await;
    assert!(rx.try_recv().is_err(), "each episode is reported once");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_watchdog_follows_reloads_without_reporting_again() {
    let clock = TokioClock::starting_at(utc("2026-11-24T10:00:00Z"));
    let tracker = RunTracker::new();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(8);
    let (services_tx, services) = watch::channel(watched(&[("crab", "@hourly"), ("gone", "@hourly")]));
    let task = spawn_watchdog(clock, tracker.clone(), services, tx, cancel.clone());
    for _ in 0..2 {
        assert!(matches!(next_event(&mut rx).await, WatchdogEvent::Overdue { .. }));
    }
    assert_eq!(clock.now(), utc("2026-11-24T12:00:00Z"));

    // A reload: `gone` leaves, `added` arrives (watched from now), crab is still overdue and is
    // not reported again.
    services_tx.send_replace(watched(&[("crab", "@hourly"), ("added", "@hourly")]));
    clock.sleep_until(utc("2026-11-24T13:59:00Z")).await;
    assert!(rx.try_recv().is_err(), "nothing new before `added`'s deadline: {:?}", rx.try_recv());
    let ev = next_event(&mut rx).await;
    assert_eq!(ev, WatchdogEvent::Overdue { service: "added".into(), last_completed: None, deadline: utc("2026-11-24T14:00:00Z") });

    // `gone` comes back: it starts afresh rather than inheriting its old episode.
    services_tx.send_replace(watched(&[("crab", "@hourly"), ("added", "@hourly"), ("gone", "@hourly")]));
    clock.sleep_until(utc("2026-11-24T15:59:00Z")).await;
    assert!(rx.try_recv().is_err());
    let ev = next_event(&mut rx).await;
    assert_eq!(ev, WatchdogEvent::Overdue { service: "gone".into(), last_completed: None, deadline: utc("2026-11-24T16:00:00Z") });
    cancel.cancel();
    task.await.unwrap();
}

/// The real-time test of the wake source: tokio-cron-scheduler reads the wall clock, so this
/// waits for real seconds (bounded) and then shuts the scheduler down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_send_one_wakeup_per_slot_and_follow_the_schedules_they_are_given() {
    let (tx, mut rx) = mpsc::channel(64);
    let mut ticks = CronTicks::start(tx).await.unwrap();
    let every_second = Schedule::parse("*/1 * * * * *").unwrap();
    let every_two = Schedule::parse("*/2 * * * * *").unwrap();
    ticks.set_schedules(&[every_second.clone(), every_two.clone()]).await.unwrap();
    let mut got: Vec<Wake> = Vec::new();
    while !(got.iter().filter(|w| w.schedule == every_two.six_field()).count() >= 2
        && got.iter().filter(|w| w.schedule == every_second.six_field()).count() >= 3)
    {
        let wake = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a wake-up within 10 s").expect("ticks alive");
        assert!(wake.slot <= Utc::now(), "a slot is never in the future: {wake:?}");
        assert_eq!(wake.slot.timestamp_subsec_nanos(), 0, "slots are whole seconds: {wake:?}");
        got.push(wake);
    }
    for schedule in [&every_second, &every_two] {
        let slots: Vec<DateTime<Utc>> = got.iter().filter(|w| w.schedule == schedule.six_field()).map(|w| w.slot).collect();
        assert!(slots.windows(2).all(|w| w[0] < w[1]), "one wake-up per slot, in order: {slots:?}");
        assert!(slots.iter().all(|s| schedule.latest_at_or_before(*s) == Some(*s)), "every slot is a fire of its schedule: {slots:?}");
    }

    // The two-second job is removed; only the one-second one fires.
    ticks.set_schedules(std::slice::from_ref(&every_second)).await.unwrap();
    while rx.try_recv().is_ok() {}
    let mut after: Vec<Wake> = Vec::new();
    while after.len() < 6 {
        after.push(tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a wake-up within 10 s").expect("ticks alive"));
    }
    // The first ones may have been on their way while the job was removed.
    assert!(after[2..].iter().all(|w| w.schedule == every_second.six_field()), "{after:?}");

    ticks.shutdown().await;
    // A job the scheduler started just before it stopped may still be sending: let it finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while rx.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(rx.try_recv().is_err(), "no wake-up after shutdown");
}
