//! Prometheus metrics, the `/metrics` and `/healthz` endpoint, and the Pushgateway push.
//!
//! Owns every metric name and label the product exposes (listed in the README), a [`Metrics`]
//! handle that the daemon, the broker client and the scheduler record into through small typed
//! methods (a whole cycle through [`Metrics::record_outcome`]), the expiry of what each
//! destination holds (a snapshot read from the state database through a [`HeldSource`] after
//! every cycle and at every scrape; time left is computed at scrape time, so it counts down and
//! goes negative once expired), the daemon's health as `/healthz` reports it (unhealthy while the
//! watchdog holds a service overdue), a minimal HTTP/1 server for both, and [`push`] for
//! one-shot runs that end before anything could scrape them.
//!
//! Never: carries a token, a secret or a fingerprint in a label (labels are inventory names,
//! stages and request kinds); lets a failing scrape or push fail a cycle (callers log the error);
//! listens anywhere but the configured address; reads the state database itself (the source is
//! handed in).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where `/metrics` and `/healthz` listen unless configured otherwise: loopback only, on the
/// port registered for this exporter family.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// What `/metrics` answers with: OpenMetrics text, which Prometheus negotiates and parses.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What is pushed: the classic text format, the one the Pushgateway parses.
const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that sends no request line within this is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint {addr}: cannot listen: {source}")]
    Bind { addr: SocketAddr, #[source] source: std::io::Error },
    #[error("pushgateway {url}: not a base URL")]
    PushUrl { url: String },
    #[error("pushgateway {url}: {source}")]
    Push { url: String, #[source] source: reqwest::Error },
    #[error("pushgateway {url}: refused the push: HTTP {status}: {body}")]
    PushRefused { url: String, status: u16, body: String },
}

/// The pipeline stage a duration or a failure belongs to.
pub use crate::outcome::Stage;
use crate::outcome::CycleOutcome;
/// The kind of broker request a duration belongs to: the broker's own.
pub use crate::broker::RequestKind as BrokerRequest;

impl EncodeLabelValue for Stage {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for BrokerRequest {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    service: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    service: String,
    destination: String,
    stage: Stage,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    service: String,
    stage: Stage,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    request: BrokerRequest,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    // 50 ms .. ~100 s: a broker round trip at the low end, a slow SSH host at the high end.
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

fn broker_histogram() -> Histogram {
    // 10 ms .. ~20 s; the broker timeout defaults to 30 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

/// What `/healthz` says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// `ok`, or `unhealthy` while any service is overdue.
    pub status: &'static str,
    /// The most recent completed cycle of any service (RFC 3339, UTC), `null` before the first.
    pub last_cycle: Option<String>,
    /// Services the watchdog reports as not having completed within twice their interval.
    pub overdue: Vec<String>,
}

#[derive(Default)]
struct HealthState {
    last_cycle: Option<DateTime<Utc>>,
    overdue: BTreeSet<String>,
}

/// What one destination holds, as the state database records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub service: String,
    pub destination: String,
    /// When the credential it depends on expires (the Vault token for credd and Vault-token
    /// files, the access token for access-token files).
    pub expiry: DateTime<Utc>,
}

/// Reads what every destination in the current inventory holds. Blocking (SQLite); the error
/// is a secret-free sentence to log.
pub type HeldSource = Arc<dyn Fn() -> Result<Vec<Held>, String> + Send + Sync>;

/// The expiry gauges, computed from the last snapshot at every scrape.
struct HeldCollector {
    snapshot: Mutex<BTreeMap<(String, String), DateTime<Utc>>>,
    now: fn() -> DateTime<Utc>,
}

impl std::fmt::Debug for HeldCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldCollector").finish_non_exhaustive()
    }
}

impl Collector for HeldCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let held = self.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if held.is_empty() {
            return Ok(());
        }
        let now = (self.now)();
        encode_held(
            &mut encoder,
            "expiry_timestamp",
            "Unix time at which the credential a destination holds expires (the Vault token for credd and Vault-token files, the access token for access-token files)",
            &held,
            |expiry| expiry.timestamp(),
        )?;
        encode_held(
            &mut encoder,
            "time_left",
            "Seconds until the credential a destination holds expires, at scrape time; negative once it has",
            &held,
            |expiry| (expiry - now).num_seconds(),
        )
    }
}

/// One gauge family in seconds over what destinations hold.
fn encode_held(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    held: &BTreeMap<(String, String), DateTime<Utc>>,
    value: impl Fn(DateTime<Utc>) -> i64,
) -> Result<(), std::fmt::Error> {
    let seconds = Unit::Seconds;
    let mut family = encoder.encode_descriptor(name, help, Some(&seconds), prometheus_client::metrics::MetricType::Gauge)?;
    for ((service, destination), expiry) in held {
        ConstGauge::new(value(*expiry)).encode(family.encode_family(&dest(service, destination))?)?;
    }
    Ok(())
}

/// Label values recorded so far, so that a reload can drop the series of whatever left the
/// inventory.
#[derive(Default)]
struct Seen {
    services: BTreeSet<String>,
    destinations: BTreeSet<(String, String)>,
}

struct Inner {
    registry: Registry,
    deliveries: Family<DestinationLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    skipped: Family<ServiceLabels, Counter>,
    missed_wakeups: Family<ServiceLabels, Counter>,
    stage_duration: HistogramFamily<StageLabels>,
    broker_duration: HistogramFamily<BrokerLabels>,
    held: Arc<HeldCollector>,
    held_source: Mutex<Option<HeldSource>>,
    /// The last error of the held source, so that a lasting one is logged once.
    held_error: Mutex<Option<String>>,
    last_cycle: Family<ServiceLabels, Gauge>,
    overdue: Family<ServiceLabels, Gauge>,
    health: Mutex<HealthState>,
    seen: Mutex<Seen>,
}

/// A lock whose data is plain values set in single statements: consistent even after a panic
/// elsewhere.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The product's metrics and health. Cheap to clone; every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn dest(service: &str, destination: &str) -> DestinationLabels {
    DestinationLabels { service: service.into(), destination: destination.into() }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_clock(Utc::now)
    }

    /// Metrics whose time-left gauge reads the time from `now`.
    fn with_clock(now: fn() -> DateTime<Utc>) -> Metrics {
        let mut registry = Registry::with_prefix("token_bastion");
        let deliveries = Family::<DestinationLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let skipped = Family::<ServiceLabels, Counter>::default();
        let missed_wakeups = Family::<ServiceLabels, Counter>::default();
        let stage_duration: HistogramFamily<StageLabels> = Family::new_with_constructor(stage_histogram);
        let broker_duration: HistogramFamily<BrokerLabels> = Family::new_with_constructor(broker_histogram);
        let held = Arc::new(HeldCollector { snapshot: Mutex::default(), now });
        let last_cycle = Family::<ServiceLabels, Gauge>::default();
        let overdue = Family::<ServiceLabels, Gauge>::default();
        registry.register("deliveries", "Tokens delivered, per service and destination", deliveries.clone());
        registry.register(
            "failures",
            "Destinations not delivered, per service, destination and the stage that failed",
            failures.clone(),
        );
        registry.register("skipped_runs", "Scheduled runs skipped because the previous run was still going", skipped.clone());
        registry.register(
            "missed_wakeups",
            "Scheduled slots whose wake-up from the cron scheduler never came (the slot did not run)",
            missed_wakeups.clone(),
        );
        registry.register_with_unit(
            "stage_duration",
            "Time spent per service in each stage of a cycle",
            Unit::Seconds,
            stage_duration.clone(),
        );
        registry.register_with_unit(
            "broker_request_duration",
            "Duration of requests to the Vault broker, per kind of request",
            Unit::Seconds,
            broker_duration.clone(),
        );
        registry.register_collector(Box::new(held.clone()));
        registry.register_with_unit(
            "last_cycle_timestamp",
            "Unix time at which the service's last cycle completed",
            Unit::Seconds,
            last_cycle.clone(),
        );
        registry.register("overdue", "1 while the watchdog reports the service has not completed within twice its interval", overdue.clone());
        Metrics {
            inner: Arc::new(Inner {
                registry,
                deliveries,
                failures,
                skipped,
                missed_wakeups,
                stage_duration,
                broker_duration,
                held,
                held_source: Mutex::default(),
                held_error: Mutex::default(),
                last_cycle,
                overdue,
                health: Mutex::new(HealthState::default()),
                seen: Mutex::default(),
            }),
        }
    }

    fn health_state(&self) -> MutexGuard<'_, HealthState> {
        lock(&self.inner.health)
    }

    fn saw_service(&self, service: &str) {
        lock(&self.inner.seen).services.insert(service.to_string());
    }

    fn saw_destination(&self, service: &str, destination: &str) {
        let mut seen = lock(&self.inner.seen);
        seen.services.insert(service.to_string());
        seen.destinations.insert((service.to_string(), destination.to_string()));
    }

    /// Folds one cycle in: deliveries and failures by stage per destination (a cycle that
    /// could not run fails every destination at `setup`), stage durations per service.
    pub fn record_outcome(&self, outcome: &CycleOutcome) {
        for s in outcome.services() {
            for (stage, took) in &s.timings {
                self.observe_stage(&s.service, *stage, *took);
            }
            for d in &s.destinations {
                match d.result {
                    Ok(()) => self.record_delivery(&s.service, &d.destination),
                    Err(stage) => self.record_failure(&s.service, &d.destination, stage),
                }
            }
        }
    }

    /// A service's tokens reached a destination.
    pub fn record_delivery(&self, service: &str, destination: &str) {
        self.saw_destination(service, destination);
        self.inner.deliveries.get_or_create(&dest(service, destination)).inc();
    }

    /// A destination was not delivered; `stage` is where the service or host stopped.
    pub fn record_failure(&self, service: &str, destination: &str, stage: Stage) {
        self.saw_destination(service, destination);
        let labels = FailureLabels { service: service.into(), destination: destination.into(), stage };
        self.inner.failures.get_or_create(&labels).inc();
    }

    /// A scheduled run was skipped because the service's previous run was still going.
    pub fn record_skipped(&self, service: &str) {
        self.saw_service(service);
        self.inner.skipped.get_or_create(&ServiceLabels { service: service.into() }).inc();
    }

    /// `count` scheduled slots of `service` got no wake-up.
    pub fn record_missed_wakeups(&self, service: &str, count: u64) {
        self.saw_service(service);
        self.inner.missed_wakeups.get_or_create(&ServiceLabels { service: service.into() }).inc_by(count);
    }

    pub fn observe_stage(&self, service: &str, stage: Stage, took: Duration) {
        self.saw_service(service);
        let labels = StageLabels { service: service.into(), stage };
        self.inner.stage_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn observe_broker_request(&self, request: BrokerRequest, took: Duration) {
        self.inner.broker_duration.get_or_create(&BrokerLabels { request }).observe(took.as_secs_f64());
    }

    /// What every destination holds now: replaces the whole snapshot, so a destination not
    /// listed has no expiry series any more.
    pub fn set_held(&self, held: impl IntoIterator<Item = Held>) {
        let snapshot = held.into_iter().map(|h| ((h.service, h.destination), h.expiry)).collect();
        *lock(&self.inner.held.snapshot) = snapshot;
    }

    /// Where [`Metrics::refresh_held`] reads what destinations hold.
    pub fn set_held_source(&self, source: HeldSource) {
        *lock(&self.inner.held_source) = Some(source);
    }

    /// Reads what destinations hold from the source, if one is set. Blocking. A failing source
    /// keeps the last snapshot and is logged (once while its error stays the same).
    pub fn refresh_held(&self) {
        let Some(source) = lock(&self.inner.held_source).clone() else { return };
        let result = source();
        let mut last_error = lock(&self.inner.held_error);
        match result {
            Ok(held) => {
                self.set_held(held);
                *last_error = None;
            }
            Err(e) => {
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "metrics: cannot read what destinations hold; the last values stay");
                }
                *last_error = Some(e);
            }
        }
    }

    /// Drops every series of a service or destination that is no longer in `inventory`
    /// (service → its destinations), and its place in `/healthz`.
    pub fn retain(&self, inventory: &BTreeMap<String, Vec<String>>) {
        let inner = &self.inner;
        let mut seen = lock(&inner.seen);
        let gone_destinations: Vec<(String, String)> = seen
            .destinations
            .iter()
            .filter(|(s, d)| !inventory.get(s).is_some_and(|ds| ds.contains(d)))
            .cloned()
            .collect();
        for (service, destination) in gone_destinations {
            inner.deliveries.remove(&dest(&service, &destination));
            for stage in Stage::ALL {
                inner.failures.remove(&FailureLabels { service: service.clone(), destination: destination.clone(), stage });
            }
            seen.destinations.remove(&(service, destination));
        }
        let gone_services: Vec<String> = seen.services.iter().filter(|s| !inventory.contains_key(*s)).cloned().collect();
        for service in gone_services {
            let labels = ServiceLabels { service: service.clone() };
            for family in [&inner.skipped, &inner.missed_wakeups] {
                family.remove(&labels);
            }
            for family in [&inner.last_cycle, &inner.overdue] {
                family.remove(&labels);
            }
            for stage in Stage::ALL {
                inner.stage_duration.remove(&StageLabels { service: service.clone(), stage });
            }
            self.health_state().overdue.remove(&service);
            seen.services.remove(&service);
        }
        drop(seen);
        lock(&inner.held.snapshot).retain(|(s, d), _| inventory.get(s).is_some_and(|ds| ds.contains(d)));
    }

    /// A service's cycle completed at `at`.
    pub fn record_cycle_completed(&self, service: &str, at: DateTime<Utc>) {
        self.saw_service(service);
        self.inner.last_cycle.get_or_create(&ServiceLabels { service: service.into() }).set(at.timestamp());
        let mut h = self.health_state();
        h.last_cycle = Some(h.last_cycle.map_or(at, |t| t.max(at)));
    }

    /// The watchdog reports `service` overdue: `/healthz` turns unhealthy until it recovers.
    pub fn mark_overdue(&self, service: &str) {
        self.saw_service(service);
        self.inner.overdue.get_or_create(&ServiceLabels { service: service.into() }).set(1);
        self.health_state().overdue.insert(service.to_string());
    }

    /// The watchdog saw `service` complete again.
    pub fn mark_recovered(&self, service: &str) {
        self.inner.overdue.get_or_create(&ServiceLabels { service: service.into() }).set(0);
        self.health_state().overdue.remove(service);
    }

    pub fn health(&self) -> Health {
        let h = self.health_state();
        Health {
            status: if h.overdue.is_empty() { "ok" } else { "unhealthy" },
            last_cycle: h.last_cycle.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            overdue: h.overdue.iter().cloned().collect(),
        }
    }

    /// Every metric in the OpenMetrics text format (what `/metrics` serves).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// OpenMetrics text → the classic Prometheus text format (0.0.4), which is all the Pushgateway
/// parses. The two differ, for what this module emits, in the counter family name (OpenMetrics
/// names the family without `_total`; the classic format names it as its samples), the
/// `# UNIT` and `# EOF` lines, and `unknown` vs `untyped`.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = help.replace(line) {
                let _ = writeln!(out, "{h}");
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            if let Some(h) = help.take() {
                let text = h.strip_prefix("# HELP ").and_then(|r| r.split_once(' ')).map_or("", |(_, t)| t);
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        if let Some(h) = help.take() {
            let _ = writeln!(out, "{h}");
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// `<base>/metrics/job/<job>`; a job name the path cannot carry (empty, or with `/`) is sent
/// base64url-encoded as the Pushgateway documents (`job@base64`).
fn push_url(base: &str, job: &str) -> Result<url::Url, MetricsError> {
    use base64::Engine as _;
    let bad = || MetricsError::PushUrl { url: base.to_string() };
    let mut url = url::Url::parse(base).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad());
    }
    {
        let mut path = url.path_segments_mut().map_err(|_| bad())?;
        path.pop_if_empty();
        if job.is_empty() || job.contains('/') {
            let encoded = base64::engine::general_purpose::URL_SAFE.encode(job);
            path.extend(["metrics", "job@base64", if encoded.is_empty() { "=" } else { &encoded }]);
        } else {
            path.extend(["metrics", "job", job]);
        }
    }
    Ok(url)
}

/// Pushes every metric to a Pushgateway as job `job`, replacing what that job pushed before
/// (HTTP PUT): for `run`, which ends before any scrape could see it.
pub async fn push(url: &str, job: &str, metrics: &Metrics) -> Result<(), MetricsError> {
    let target = push_url(url, job)?;
    let shown = target.to_string();
    // Not `crate::http::client`: that one is HTTPS-only, and a Pushgateway is commonly plain
    // HTTP on a local or cluster network. Nothing secret is pushed.
    let client = reqwest::Client::builder()
        .connect_timeout(PUSH_TIMEOUT)
        .timeout(PUSH_TIMEOUT)
        .user_agent(concat!("token-bastion/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|source| MetricsError::Push { url: shown.clone(), source })?;
    let body = to_prometheus_text(&metrics.render());
    let resp = client
        .put(target)
        .header(reqwest::header::CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .map_err(|source| MetricsError::Push { url: shown.clone(), source })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // The Pushgateway explains a refusal in the body; enough of it to act on, not a whole page.
    let body = match crate::http::read_body(resp, crate::http::MAX_EXPLANATION_BYTES).await {
        Ok(bytes) => crate::redact::excerpt(String::from_utf8_lossy(&bytes).trim(), 512).into_owned(),
        Err(e) => format!("({e})"),
    };
    Err(MetricsError::PushRefused { url: shown, status: status.as_u16(), body })
}

// ---------------------------------------------------------------------------------------------
// HTTP endpoint
// ---------------------------------------------------------------------------------------------

async fn respond(metrics: &Metrics, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            // What destinations hold is read fresh for every scrape (SQLite: a blocking thread).
            let m = metrics.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || m.refresh_held()).await {
                tracing::warn!(error = %e, "metrics: reading what destinations hold ended abnormally");
            }
            reply(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, metrics.render())
        }
        "/healthz" => {
            let health = metrics.health();
            let status = if health.overdue.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let body = serde_json::to_string(&health).unwrap_or_default();
            reply(status, "application/json", body + "\n")
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /healthz\n".into()),
    }
}

/// The running `/metrics` + `/healthz` endpoint. Stops when the token given to
/// [`MetricsServer::start`] is cancelled; [`MetricsServer::stopped`] waits for that.
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: any free port, see [`MetricsServer::local_addr`]).
    pub async fn start(addr: SocketAddr, metrics: Metrics, cancel: CancellationToken) -> Result<MetricsServer, MetricsError> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| MetricsError::Bind { addr, source })?;
        let task = tokio::spawn(accept_loop(listener, metrics, cancel));
        Ok(MetricsServer { local_addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has stopped accepting and every open connection is closed.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, metrics: Metrics, cancel: CancellationToken) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, &req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "metrics endpoint: connection ended");
                    }
                }
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests;
