//! Metrics over real HTTP: `/metrics` and `/healthz` scraped from the product's own endpoint on
//! 127.0.0.1:0 and parsed as exposition text, and a push to a real Pushgateway read back from
//! the Pushgateway's own `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use token_bastion::metrics::{self, BrokerRequest, Held, Metrics, MetricsError, MetricsServer, Stage};

use crate::harness::pushgateway::Pushgateway;

/// One sample line of the exposition format.
#[derive(Debug)]
pub(crate) struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses exposition text (OpenMetrics or classic): every non-comment line must be a valid
/// sample, and every sample must belong to a family announced by a `# TYPE` line.
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    let mut families: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value in `{line}`"),
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            loop {
                let (i, c) = chars.next().unwrap_or_else(|| panic!("unterminated labels in `{line}`"));
                match c {
                    '}' => {
                        rest = &body[i + 1..];
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "label value unquoted in `{line}`");
                        let mut value = String::new();
                        loop {
                            match chars.next().map(|(_, c)| c) {
                                Some('\\') => value.push(chars.next().unwrap().1),
                                Some('"') => break,
                                Some(c) => value.push(c),
                                None => panic!("unterminated label value in `{line}`"),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
        }
        let value_text = rest.trim().split(' ').next().unwrap();
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value `{v}` in `{line}`")),
        };
        let family_of = |f: &String| {
            name == f.as_str() || ["_total", "_bucket", "_sum", "_count", "_created"].iter().any(|s| name == format!("{f}{s}"))
        };
        assert!(families.iter().any(family_of), "sample `{name}` has no # TYPE line");
        out.push(Sample { name: name.to_string(), labels, value });
    }
    out
}

/// The value of the one sample named `name` whose labels include `labels`.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert!(matching.len() <= 1, "several samples match {name} {labels:?}: {matching:?}");
    matching.first().map(|s| s.value)
}

fn recorded() -> Metrics {
    let m = Metrics::new();
    m.record_delivery("wmagent", "credd@vocms0250");
    m.record_delivery("wmagent", "credd@vocms0250");
    m.record_delivery("wmagent", "file@vocms0250:/tmp/vt_u{uid}-cms_production");
    m.record_failure("crab", "credd@crab-sched-903", Stage::Login);
    m.observe_stage("wmagent", Stage::Fetch, Duration::from_millis(300));
    m.observe_broker_request(BrokerRequest::Login, Duration::from_millis(40));
    m.set_held([Held { service: "wmagent".into(), destination: "credd@vocms0250".into(), expiry: Utc::now() + TimeDelta::hours(36) }]);
    m.record_cycle_completed("wmagent", Utc::now());
    m
}

#[tokio::test]
async fn metrics_and_healthz_are_served_over_http_and_parse() {
    let m = recorded();
    let cancel = CancellationToken::new();
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), m.clone(), cancel.clone()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();

    let resp = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], metrics::OPENMETRICS_CONTENT_TYPE);
    let samples = parse(&resp.text().await.unwrap());
    let wm = [("service", "wmagent"), ("destination", "credd@vocms0250")];
    assert_eq!(value(&samples, "token_bastion_deliveries_total", &wm), Some(2.0));
    assert_eq!(
        value(&samples, "token_bastion_deliveries_total", &[("destination", "file@vocms0250:/tmp/vt_u{uid}-cms_production")]),
        Some(1.0)
    );
    assert_eq!(value(&samples, "token_bastion_failures_total", &[("service", "crab"), ("stage", "login")]), Some(1.0));
    let left = value(&samples, "token_bastion_time_left_seconds", &wm).unwrap();
    assert!((36.0 * 3600.0 - 60.0..=36.0 * 3600.0).contains(&left), "{left}");
    let expiry = value(&samples, "token_bastion_expiry_timestamp_seconds", &wm).unwrap();
    assert!((expiry - Utc::now().timestamp() as f64 - left).abs() <= 2.0, "time left is expiry minus now: {expiry} {left}");
    assert_eq!(value(&samples, "token_bastion_stage_duration_seconds_count", &[("stage", "fetch")]), Some(1.0));
    assert_eq!(value(&samples, "token_bastion_stage_duration_seconds_bucket", &[("stage", "fetch"), ("le", "+Inf")]), Some(1.0));
    assert_eq!(value(&samples, "token_bastion_broker_request_duration_seconds_count", &[("request", "login")]), Some(1.0));

    // Recorded after the first scrape: the next scrape sees it.
    m.record_delivery("wmagent", "credd@vocms0250");
    let samples = parse(&client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap());
    assert_eq!(value(&samples, "token_bastion_deliveries_total", &wm), Some(3.0));

    let resp = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let health: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert!(health["last_cycle"].is_string(), "{health}");

    m.mark_overdue("crab");
    let resp = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let health: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["overdue"], serde_json::json!(["crab"]));

    assert_eq!(client.get(format!("{base}/nope")).send().await.unwrap().status(), 404);
    assert_eq!(client.post(format!("{base}/metrics")).send().await.unwrap().status(), 405);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), server.stopped()).await.expect("server stops when cancelled");
    assert!(client.get(format!("{base}/healthz")).send().await.is_err(), "nothing listens after shutdown");
}

#[tokio::test]
async fn push_reaches_a_real_pushgateway_with_types_intact() {
    let dir = tempfile::tempdir().unwrap();
    let pgw = Pushgateway::start(dir.path());
    let client = reqwest::Client::new();
    let scrape = || async {
        let text = client.get(format!("{}/metrics", pgw.url())).send().await.unwrap().text().await.unwrap();
        (parse(&text), text)
    };

    metrics::push(&pgw.url(), "token-bastion", &recorded())
        .await
        .unwrap_or_else(|e| panic!("push: {e}\n{}", pgw.log_text()));
    let (samples, text) = scrape().await;
    let job = ("job", "token-bastion");
    let wm = [job, ("service", "wmagent"), ("destination", "credd@vocms0250")];
    assert_eq!(value(&samples, "token_bastion_deliveries_total", &wm), Some(2.0), "{text}");
    assert!(text.contains("# TYPE token_bastion_deliveries_total counter"), "counters stay counters:\n{text}");
    assert!(text.contains("# TYPE token_bastion_stage_duration_seconds histogram"), "{text}");
    assert_eq!(value(&samples, "token_bastion_stage_duration_seconds_count", &[job, ("stage", "fetch")]), Some(1.0));
    assert!(value(&samples, "token_bastion_time_left_seconds", &wm).is_some_and(|l| l > 35.0 * 3600.0), "{text}");

    // A push replaces what the job pushed before: the old failure series is gone.
    let later = Metrics::new();
    later.record_delivery("wmagent", "credd@vocms0250");
    metrics::push(&pgw.url(), "token-bastion", &later).await.unwrap();
    let (samples, text) = scrape().await;
    assert_eq!(value(&samples, "token_bastion_deliveries_total", &wm), Some(1.0), "{text}");
    assert_eq!(value(&samples, "token_bastion_failures_total", &[job, ("service", "crab")]), None, "{text}");

    // A job name with a slash travels base64-encoded and arrives intact.
    metrics::push(&pgw.url(), "bastion/cms", &later).await.unwrap();
    let (samples, _) = scrape().await;
    assert_eq!(value(&samples, "token_bastion_deliveries_total", &[("job", "bastion/cms"), ("service", "wmagent")]), Some(1.0));

    // A refusal names the URL and the status.
    let e = metrics::push(&format!("{}/no/such/prefix", pgw.url()), "token-bastion", &later).await.unwrap_err();
    assert!(matches!(e, MetricsError::PushRefused { status: 404, .. }), "{e}");
    assert!(e.to_string().contains("/no/such/prefix/metrics/job/token-bastion"), "{e}");
}
