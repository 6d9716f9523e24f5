use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("test time").with_timezone(&Utc)
}

/// `text` holds `line` as one whole line.
fn check(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "no line `{line}` in:\n{text}");
}

const NOW: &str = "2026-11-24T11:00:05Z";

fn held(service: &str, destination: &str, expiry: DateTime<Utc>) -> Held {
    Held { service: service.into(), destination: destination.into(), expiry }
}

fn recorded() -> Metrics {
    let m = Metrics::with_clock(|| utc(NOW));
    m.record_delivery("wmagent", "credd@vocms0250");
    m.record_delivery("wmagent", "credd@vocms0250");
    m.record_failure("crab", "credd@crab-sched-903", Stage::Deliver);
    m.record_failure("crab", "credd@crab-sched-903", Stage::Deliver);
    m.record_failure("tier0", "credd@vocms0314", Stage::Validate);
    m.record_skipped("tier0");
    m.observe_stage("wmagent", Stage::Login, Duration::from_millis(120));
    m.observe_stage("wmagent", Stage::Deliver, Duration::from_secs(3));
    m.observe_broker_request(BrokerRequest::AccessToken, Duration::from_millis(30));
    m.set_held([
        held("wmagent", "credd@vocms0250", utc(NOW) + chrono::TimeDelta::days(6)),
        held("crab", "credd@crab-sched-903", utc(NOW) - chrono::TimeDelta::seconds(30)),
    ]);
    m.record_missed_wakeups("tier0", 2);
    m.record_cycle_completed("wmagent", utc(NOW));
    m
}

#[test]
fn every_metric_is_rendered_with_its_labels() {
    let text = recorded().render();
    check(&text, "# TYPE token_bastion_deliveries counter");
    check(&text, r#"token_bastion_deliveries_total{service="wmagent",destination="credd@vocms0250"} 2"#);
    check(&text, r#"token_bastion_failures_total{service="crab",destination="credd@crab-sched-903",stage="deliver"} 2"#);
    check(&text, r#"token_bastion_failures_total{service="tier0",destination="credd@vocms0314",stage="validate"} 1"#);
    check(&text, r#"token_bastion_skipped_runs_total{service="tier0"} 1"#);
    check(&text, "# TYPE token_bastion_stage_duration_seconds histogram");
    check(&text, r#"token_bastion_stage_duration_seconds_count{service="wmagent",stage="login"} 1"#);
    check(&text, r#"token_bastion_stage_duration_seconds_bucket{le="0.2",service="wmagent",stage="login"} 1"#);
    check(&text, r#"token_bastion_stage_duration_seconds_bucket{le="0.1",service="wmagent",stage="login"} 0"#);
    check(&text, r#"token_bastion_stage_duration_seconds_sum{service="wmagent",stage="deliver"} 3.0"#);
    check(&text, r#"token_bastion_broker_request_duration_seconds_count{request="access_token"} 1"#);
    check(&text, "# TYPE token_bastion_expiry_timestamp_seconds gauge");
    check(&text, r#"token_bastion_expiry_timestamp_seconds{service="wmagent",destination="credd@vocms0250"} 1796036405"#);
    check(&text, r#"token_bastion_time_left_seconds{service="wmagent",destination="credd@vocms0250"} 518400"#);
    check(&text, r#"token_bastion_time_left_seconds{service="crab",destination="credd@crab-sched-903"} -30"#);
    check(&text, r#"token_bastion_missed_wakeups_total{service="tier0"} 2"#);
    check(&text, r#"token_bastion_last_cycle_timestamp_seconds{service="wmagent"} 1795518005"#);
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn time_left_is_computed_when_scraped_and_counts_down_below_zero() {
    static NOW_SECS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1_795_518_005);
    let m = Metrics::with_clock(|| DateTime::from_timestamp(NOW_SECS.load(std::sync::atomic::Ordering::SeqCst), 0).unwrap());
    m.set_held([held("crab", "credd@s1", utc(NOW) + chrono::TimeDelta::seconds(100))]);
    check(&m.render(), r#"token_bastion_time_left_seconds{service="crab",destination="credd@s1"} 100"#);
    NOW_SECS.fetch_add(250, std::sync::atomic::Ordering::SeqCst);
    let text = m.render();
    check(&text, r#"token_bastion_time_left_seconds{service="crab",destination="credd@s1"} -150"#);
    check(&text, r#"token_bastion_expiry_timestamp_seconds{service="crab",destination="credd@s1"} 1795518105"#);
}

#[test]
fn the_held_snapshot_comes_from_its_source_and_survives_a_failing_read() {
    let m = Metrics::with_clock(|| utc(NOW));
    m.refresh_held(); // no source: nothing happens
    let answer = Arc::new(Mutex::new(Ok(vec![held("crab", "credd@s1", utc(NOW))])));
    let source = answer.clone();
    m.set_held_source(Arc::new(move || source.lock().unwrap().clone()));
    m.refresh_held();
    check(&m.render(), r#"token_bastion_expiry_timestamp_seconds{service="crab",destination="credd@s1"} 1795518005"#);
    *answer.lock().unwrap() = Err("database is locked".into());
    m.refresh_held();
    check(&m.render(), r#"token_bastion_expiry_timestamp_seconds{service="crab",destination="credd@s1"} 1795518005"#);
    *answer.lock().unwrap() = Ok(vec![held("wmagent", "credd@s2", utc(NOW))]);
    m.refresh_held();
    let text = m.render();
    assert!(!text.contains(r#"service="crab""#), "a destination the source no longer lists is gone: {text}");
}

#[test]
fn a_cycle_outcome_counts_deliveries_failures_and_setup_failures() {
    use crate::outcome::{DestinationOutcome, ServiceOutcome};
    let m = Metrics::new();
    m.record_outcome(&CycleOutcome::Ran(vec![ServiceOutcome {
        service: "wmagent".into(),
        timings: vec![(Stage::Login, Duration::from_millis(100))],
        destinations: vec![
            DestinationOutcome { destination: "credd@s1".into(), result: Ok(()) },
            DestinationOutcome { destination: "credd@s2".into(), result: Err(Stage::Deliver) },
        ],
    }]));
    m.record_outcome(&CycleOutcome::not_run("lock busy", [("wmagent".to_string(), vec!["credd@s1".to_string(), "credd@s2".to_string()])]));
    let text = m.render();
    check(&text, r#"token_bastion_deliveries_total{service="wmagent",destination="credd@s1"} 1"#);
    check(&text, r#"token_bastion_failures_total{service="wmagent",destination="credd@s2",stage="deliver"} 1"#);
    check(&text, r#"token_bastion_failures_total{service="wmagent",destination="credd@s1",stage="setup"} 1"#);
    check(&text, r#"token_bastion_failures_total{service="wmagent",destination="credd@s2",stage="setup"} 1"#);
    check(&text, r#"token_bastion_stage_duration_seconds_count{service="wmagent",stage="login"} 1"#);
    assert!(!text.contains("last_cycle_timestamp"), "an outcome alone completes nothing: {text}");
}

#[test]
fn what_leaves_the_inventory_leaves_the_metrics_and_health() {
    let m = recorded();
    m.mark_overdue("tier0");
    let inventory = BTreeMap::from([("wmagent".to_string(), vec!["credd@vocms0250".to_string()]), ("crab".to_string(), vec![])]);
    m.retain(&inventory);
    let text = m.render();
    for gone in [r#"service="tier0""#, r#"destination="credd@crab-sched-903""#] {
        assert!(!text.contains(gone), "{gone} should be gone:\n{text}");
    }
    check(&text, r#"token_bastion_deliveries_total{service="wmagent",destination="credd@vocms0250"} 2"#);
    check(&text, r#"token_bastion_expiry_timestamp_seconds{service="wmagent",destination="credd@vocms0250"} 1796036405"#);
    check(&text, r#"token_bastion_stage_duration_seconds_count{service="wmagent",stage="login"} 1"#);
    assert_eq!(m.health().status, "ok", "a removed service is not overdue any more");
}

#[test]
fn health_turns_unhealthy_while_the_watchdog_holds_a_service_overdue() {
    let m = Metrics::new();
    assert_eq!(serde_json::to_string(&m.health()).unwrap(), r#"{"status":"ok","last_cycle":null,"overdue":[]}"#);
    m.record_cycle_completed("crab", utc("2026-11-24T11:00:05Z"));
    m.record_cycle_completed("wmagent", utc("2026-11-24T10:00:00Z"));
    m.mark_overdue("wmagent");
    assert_eq!(
        serde_json::to_string(&m.health()).unwrap(),
        r#"{"status":"unhealthy","last_cycle":"2026-11-24T11:00:05Z","overdue":["wmagent"]}"#
    );
    check(&m.render(), r#"token_bastion_overdue{service="wmagent"} 1"#);
    m.mark_recovered("wmagent");
    assert_eq!(m.health().status, "ok");
    check(&m.render(), r#"token_bastion_overdue{service="wmagent"} 0"#);
}

#[test]
fn pushed_text_is_the_classic_format_with_counter_families_named_as_their_samples() {
    let text = to_prometheus_text(&recorded().render());
    check(&text, "# HELP token_bastion_deliveries_total Tokens delivered, per service and destination.");
    check(&text, "# TYPE token_bastion_deliveries_total counter");
    check(&text, r#"token_bastion_deliveries_total{service="wmagent",destination="credd@vocms0250"} 2"#);
    check(&text, "# TYPE token_bastion_stage_duration_seconds histogram");
    check(&text, "# TYPE token_bastion_time_left_seconds gauge");
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    assert!(!text.contains("# TYPE token_bastion_deliveries counter"), "{text}");
}

#[test]
fn push_urls_carry_the_job_safely() {
    let u = |base: &str, job: &str| push_url(base, job).map(|u| u.to_string()).map_err(|e| e.to_string());
    assert_eq!(u("http://127.0.0.1:9091", "token-bastion").unwrap(), "http://127.0.0.1:9091/metrics/job/token-bastion");
    assert_eq!(u("http://pgw:9091/prefix/", "tb").unwrap(), "http://pgw:9091/prefix/metrics/job/tb");
    assert_eq!(u("http://pgw:9091", "a/b").unwrap(), "http://pgw:9091/metrics/job@base64/YS9i");
    assert!(u("pgw:9091", "tb").unwrap_err().contains("not a base URL"));
}
