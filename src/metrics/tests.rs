use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("test time").with_timezone(&Utc)
}

/// `text` holds `line` as one whole line.
fn check(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "no line `{line}` in:\n{text}");
}

fn recorded() -> Metrics {
    let m = Metrics::new();
    m.record_delivery("wmagent", "credd@vocms0250");
    m.record_delivery("wmagent", "credd@vocms0250");
    m.record_failure("crab", "credd@crab-sched-903", Stage::Deliver);
    m.record_failure("crab", "credd@crab-sched-903", Stage::Deliver);
    m.record_failure("tier0", "credd@vocms0314", Stage::Validate);
    m.record_skipped("tier0");
    m.observe_stage("wmagent", Stage::Login, Duration::from_millis(120));
    m.observe_stage("wmagent", Stage::Deliver, Duration::from_secs(3));
    m.observe_broker_request(BrokerRequest::AccessToken, Duration::from_millis(30));
    m.set_time_left("wmagent", "credd@vocms0250", TimeDelta::days(6));
    m.set_time_left("crab", "credd@crab-sched-903", TimeDelta::seconds(-30));
    m.record_cycle_completed("wmagent", utc("2026-11-24T11:00:05Z"));
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
    check(&text, r#"token_bastion_time_left_seconds{service="wmagent",destination="credd@vocms0250"} 518400"#);
    check(&text, r#"token_bastion_time_left_seconds{service="crab",destination="credd@crab-sched-903"} -30"#);
    check(&text, r#"token_bastion_last_cycle_timestamp_seconds{service="wmagent"} 1795518005"#);
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn a_forgotten_destination_leaves_the_time_left_gauge() {
    let m = recorded();
    m.forget_destination("crab", "credd@crab-sched-903");
    let text = m.render();
    assert!(!text.contains(r#"token_bastion_time_left_seconds{service="crab""#), "{text}");
    check(&text, r#"token_bastion_time_left_seconds{service="wmagent",destination="credd@vocms0250"} 518400"#);
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
