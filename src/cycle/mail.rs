//! What a run and the daemon tell people, and when: the run summary (failures with their
//! streaks, urgent conditions, destinations inside their expiry warning, removed services with
//! live tokens left, recoveries), filtered by each service's `alert_after` and
//! `notify.remind_every`, queued in the outbox with the conditions it tells about, and sent from
//! there; the daemon's notices (reload refused, overdue, setup failure) the same way.
//!
//! Owns the alerting rules: a failure streak is told once it reaches the service's
//! `alert_after`, then at most every `remind_every`; urgent conditions are told at once (a
//! destination inside its expiry warning, a failure at such a destination, a `.top` the credmon
//! refused, a credmon that does not refresh, the state database failing, a cycle that could not
//! run); a destination told about is told once when it is delivered again. The outbox row and
//! the record of what on-call was told are written in one transaction.
//!
//! Must never: fail a run because a message failed; send anything but through `notify`.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::ledger::Ledger;
use super::lifecycle::Orphan;
use super::{RunReport, error_chain};
use crate::credmon::CredmonState;
use crate::inventory::{Inventory, SmtpTls};
use crate::notify::{AlertKind, Channel, Channels, ExpiryLine, FailureLine, Notice, OutboxReport, OutgoingMail, RecoveryLine, RunSummary, SendOutcome, SmtpConfig, Templates, Tls, WebhookConfig};
use crate::secret::Secret;
use crate::state::{DestinationStatus, StateError, StateStore};

/// What to queue, and which conditions it tells about (`told`) or closes (`over`).
#[derive(Debug, Default)]
struct Batch {
    messages: Vec<(Channel, OutgoingMail)>,
    told: Vec<String>,
    over: Vec<String>,
}

/// Queues what a run calls for and sends whatever the outbox holds. Message problems are
/// logged, never fail the run: the outbox keeps what could not be sent for the next run. When
/// the state database cannot take the messages, they go out directly (one attempt): what
/// happened is told even then.
pub(super) fn notify_run(inv: &Inventory, ledger: &Ledger, templates: &Templates, report: &RunReport, orphans: &[Orphan], runtime: &tokio::runtime::Handle) -> OutboxReport {
    let statuses = ledger.db(|s| s.statuses()).unwrap_or_else(|e| {
        warn!(error = %error_chain(&e), "cannot read state for the run summary; failure streaks are not known");
        Vec::new()
    });
    let mut summary = run_summary(inv, &statuses, report);
    // A service removed from the inventory that still has live tokens somewhere is a failure
    // on-call must act on (`revoke`), reminded until it is done.
    summary.failed.extend(orphans.iter().map(|o| FailureLine {
        kind: AlertKind::Orphan,
        service: o.service.clone(),
        destination: o.destination.clone(),
        host: o.host.clone(),
        reason: o.reason(),
        since: report.started,
        consecutive: 0,
        urgent: false,
    }));
    let (told, over) = decide(inv, report, &mut summary, |key| ledger.db(|s| s.last_alerted(key)).ok().flatten(), |prefix| {
        ledger.db(|s| s.alerted_with_prefix(prefix)).unwrap_or_else(|e| {
            warn!(error = %error_chain(&e), "cannot read which failures on-call was told about; recoveries are told later");
            Vec::new()
        })
    });
    let mut batch = Batch { told, over, ..Batch::default() };
    let owners: BTreeMap<String, Vec<String>> = inv.services.values().map(|s| (s.name.clone(), s.owners.clone())).collect();
    match templates.admin_message(&summary, &inv.notify.admins) {
        Ok(Some(m)) => batch.messages.extend(for_admins(inv, m)),
        Ok(None) => {}
        Err(e) => warn!(error = %error_chain(&e), "cannot render the admin message"),
    }
    match templates.owner_mails(&summary, &owners) {
        Ok(m) => batch.messages.extend(m.into_iter().map(|m| (Channel::Mail, m))),
        Err(e) => warn!(error = %error_chain(&e), "cannot render owner mail"),
    }
    if batch.messages.is_empty() {
        // Nobody to tell: nothing is recorded as told, so it is told once someone is configured.
        batch.told.clear();
        batch.over.clear();
    }
    let channels = channels(inv);
    let mut total = OutboxReport::default();
    if !batch.messages.is_empty()
        && let Err(e) = ledger.write(|s| s.enqueue_told(&batch.messages, &batch.told, &batch.over, report.started))
    {
        warn!(error = %error_chain(&e), "cannot queue messages; sending them directly");
        total.add(send_directly(&channels, runtime, &batch.messages));
    }
    match ledger.db(|store| send_outbox(store, &channels, runtime)) {
        Ok(r) => total.add(r),
        Err(e) => warn!(error = %error_chain(&e), "cannot read the outbox; messages stay queued"),
    }
    total
}

/// The admins' message on every admin channel: mail when there are admins, the webhook when
/// one is configured.
fn for_admins(inv: &Inventory, message: OutgoingMail) -> Vec<(Channel, OutgoingMail)> {
    let mut out = Vec::new();
    if inv.notify.webhook.is_some() {
        out.push((Channel::Webhook, OutgoingMail { to: Vec::new(), ..message.clone() }));
    }
    if !inv.notify.admins.is_empty() {
        out.push((Channel::Mail, message));
    }
    out
}

/// Messages the outbox could not take, handed to their channels at once (one attempt).
fn send_directly(channels: &Channels, runtime: &tokio::runtime::Handle, messages: &[(Channel, OutgoingMail)]) -> OutboxReport {
    let refs: Vec<(Channel, &OutgoingMail)> = messages.iter().map(|(c, m)| (*c, m)).collect();
    let mut report = OutboxReport::default();
    for ((channel, m), outcome) in refs.iter().zip(crate::notify::send_each(channels, runtime, &refs)) {
        if outcome != SendOutcome::Sent {
            warn!(channel = %channel, subject = %m.subject, "cannot send this message directly either: it is lost");
        }
        report.count(&outcome);
    }
    report
}

/// Sends what the outbox holds, oldest first, and marks each message sent or failed; one sender
/// at a time per state directory, so a mail goes out once however many want it sent.
pub fn send_outbox(store: &StateStore, channels: &Channels, runtime: &tokio::runtime::Handle) -> Result<OutboxReport, StateError> {
    let _sending = store.lock_outbox()?;
    let pending = store.pending_mail()?;
    let mut report = OutboxReport::default();
    if pending.is_empty() {
        return Ok(report);
    }
    let refs: Vec<(Channel, &OutgoingMail)> = pending.iter().map(|q| (q.channel, &q.mail)).collect();
    for (q, outcome) in pending.iter().zip(crate::notify::send_each(channels, runtime, &refs)) {
        match &outcome {
            SendOutcome::Sent => store.mark_sent(q.id)?,
            SendOutcome::Failed(error) => store.mark_failed(q.id, error)?,
            SendOutcome::Deferred => {}
        }
        report.count(&outcome);
    }
    if report.failed > 0 || report.deferred > 0 {
        warn!(sent = report.sent, failed = report.failed, deferred = report.deferred, "some messages could not be sent; they stay queued");
    } else if report.sent > 0 {
        info!(sent = report.sent, "messages sent");
    }
    Ok(report)
}

/// The channels of `inv` with their secrets read. A channel not configured, or whose secret
/// cannot be read (said so), is left out: its messages stay queued.
pub fn channels(inv: &Inventory) -> Channels {
    let smtp = inv.notify.smtp.as_ref().and_then(|s| {
        smtp_config(s).map_err(|e| warn!(error = %e, "cannot read the SMTP password file; mail stays queued")).ok()
    });
    let webhook = inv.notify.webhook.as_ref().and_then(|w| {
        WebhookConfig::from_file(&w.url_file, w.ca.clone(), w.timeout)
            .map_err(|e| warn!(error = %e, "cannot read the webhook URL; webhook messages stay queued"))
            .ok()
    });
    Channels { smtp, webhook }
}

/// Keeps in `summary` only what on-call should hear about now, and adds the recoveries.
/// Returns the keys of the conditions told now and of those that are over.
///
/// - a failure streak: once it has `alert_after` failures in a row, then every `remind_every`;
///   at once when the destination is also inside its expiry warning;
/// - an event (a `.top` the credmon refused, the state database failing): at once, every time;
/// - a lasting urgent condition (expiry warning, credmon not refreshing) or a removed service:
///   at once, then every `remind_every`;
/// - a destination delivered this run whose failure streak was told: one recovery line.
fn decide(
    inv: &Inventory,
    report: &RunReport,
    summary: &mut RunSummary,
    last_told: impl Fn(&str) -> Option<DateTime<Utc>>,
    told_with_prefix: impl Fn(&str) -> Vec<(String, DateTime<Utc>)>,
) -> (Vec<String>, Vec<String>) {
    let every = chrono::Duration::from_std(inv.notify.remind_every).unwrap_or(chrono::Duration::MAX);
    let now = summary.started;
    let mut told = Vec::new();
    let mut due = |key: String| {
        let go = last_told(&key).is_none_or(|t| now - t >= every);
        if go {
            told.push(key);
        }
        go
    };
    let expiring: std::collections::BTreeSet<(String, String)> = summary.expiring.iter().map(|e| (e.service.clone(), e.destination.clone())).collect();
    summary.failed.retain_mut(|f| match f.kind {
        AlertKind::Failure => {
            f.urgent = expiring.contains(&(f.service.clone(), f.destination.clone()));
            let threshold = inv.services.get(&f.service).map_or(1, |s| s.alert_after);
            (f.urgent || f.consecutive >= threshold) && due(streak_key(&f.service, &f.destination, f.since))
        }
        AlertKind::CredmonRefused | AlertKind::State => {
            f.urgent = true;
            true
        }
        AlertKind::CredmonStale => {
            f.urgent = true;
            due(credmon_key(&f.service, &f.destination))
        }
        AlertKind::Orphan => due(format!("orphan {} {}", f.service, f.destination)),
    });
    summary.expiring.retain(|e| due(format!("expiring {} {}", e.service, e.destination)));
    let mut over = Vec::new();
    if !report.dry_run {
        for (service, d) in report.destinations() {
            // A credmon seen refreshing again: a later relapse is told at once.
            if d.credmon.as_ref().is_some_and(|c| c.check.state == CredmonState::Refreshing) {
                over.extend(told_with_prefix(&credmon_key(service, &d.id)).into_iter().map(|(key, _)| key));
            }
            if d.result.is_err() {
                continue;
            }
            for (key, _) in told_with_prefix(&streak_prefix(service, &d.id)) {
                let Some(since) = key.rsplit(' ').next().and_then(|t| t.parse::<i64>().ok()).and_then(|t| DateTime::from_timestamp(t, 0)) else {
                    continue;
                };
                summary.recovered.push(RecoveryLine {
                    service: service.to_string(),
                    destination: d.id.clone(),
                    host: d.host.clone(),
                    down_since: since,
                    down_secs: (now - since).num_seconds().max(0),
                });
                over.push(key);
            }
        }
    }
    (told, over)
}

fn credmon_key(service: &str, destination: &str) -> String {
    format!("credmon {service} {destination}")
}

fn streak_prefix(service: &str, destination: &str) -> String {
    format!("failure {service} {destination} ")
}

/// A failure streak is known by when it started.
fn streak_key(service: &str, destination: &str, since: DateTime<Utc>) -> String {
    format!("{}{}", streak_prefix(service, destination), since.timestamp())
}

/// The urgent line for a destination whose credmon does not refresh its access tokens: what
/// the credmon-health check puts in [`RunReport::alerts`]. Told at once, then every
/// `notify.remind_every` while it lasts.
pub fn credmon_not_refreshing(service: &str, destination: &str, host: &str, reason: &str, since: DateTime<Utc>) -> FailureLine {
    FailureLine {
        kind: AlertKind::CredmonStale,
        service: service.into(),
        destination: destination.into(),
        host: host.into(),
        reason: reason.into(),
        since,
        consecutive: 0,
        urgent: true,
    }
}

/// Tells the admins (mail and webhook) about a daemon event, through the outbox of
/// `state_dir`, and sends the outbox. `lasting`: the key of a condition that lasts, told at
/// once and then at most every `notify.remind_every`. The templates come from the inventory's
/// `templates_dir`, or the built-in ones when those do not load (the notice may be about them).
/// Blocking. Never fails: what cannot be queued is sent directly, what cannot be sent is logged.
pub fn tell_admins(state_dir: &Path, inv: &Inventory, notice: &Notice, lasting: Option<&str>, runtime: &tokio::runtime::Handle) -> OutboxReport {
    let templates = match Templates::load(inv.notify.templates_dir.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %error_chain(&e), "the message templates do not load; using the built-in ones");
            match Templates::load(None) {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %error_chain(&e), "cannot render a notice");
                    return OutboxReport::default();
                }
            }
        }
    };
    let message = match templates.notice(notice, &inv.notify.admins) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot render a notice");
            return OutboxReport::default();
        }
    };
    let messages = for_admins(inv, message);
    if messages.is_empty() {
        return OutboxReport::default();
    }
    let channels = channels(inv);
    let queued = StateStore::open(state_dir).and_then(|store| {
        let now = Utc::now();
        let every = chrono::Duration::from_std(inv.notify.remind_every).unwrap_or(chrono::Duration::MAX);
        let told: Vec<String> = lasting.map(str::to_string).into_iter().collect();
        if let Some(key) = lasting
            && store.last_alerted(key)?.is_some_and(|t| now - t < every)
        {
            return send_outbox(&store, &channels, runtime);
        }
        store.enqueue_told(&messages, &told, &[], now)?;
        send_outbox(&store, &channels, runtime)
    });
    match queued {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot queue a notice; sending it directly");
            send_directly(&channels, runtime, &messages)
        }
    }
}

/// Tells the admins that a cycle of the daemon could not run at all: urgent, told at once and
/// then at most every `notify.remind_every` while the same reason lasts. Blocking.
pub fn notify_setup_failure(state_dir: &Path, inv: &Inventory, services: &[String], reason: &str, runtime: &tokio::runtime::Handle) -> OutboxReport {
    let key = format!("setup {}", crate::secret::short_hash_bytes(reason.as_bytes()));
    let notice = Notice::SetupFailure { services: services.to_vec(), reason: reason.to_string(), at: Utc::now() };
    tell_admins(state_dir, inv, &notice, Some(&key), runtime)
}

/// The SMTP settings mail is sent with, the password read from its file.
pub fn smtp_config(smtp: &crate::inventory::SmtpSpec) -> std::io::Result<SmtpConfig> {
    let password = match &smtp.password_file {
        Some(p) => Some(Secret::new(
            std::fs::read_to_string(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?.trim_end().to_string(),
        )),
        None => None,
    };
    Ok(SmtpConfig {
        host: smtp.host.clone(),
        port: smtp.port,
        from: smtp.from.clone(),
        tls: match smtp.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::StartTls,
            SmtpTls::Tls => Tls::Wrapper,
        },
        username: smtp.username.clone(),
        password,
        timeout: smtp.timeout,
    })
}

/// Failures of this run with their streaks from state, what the state database could not
/// record, the conditions the cycle found ([`RunReport::alerts`]), and every destination in
/// the inventory whose credential is inside its service's expiry warning.
fn run_summary(inv: &Inventory, statuses: &[DestinationStatus], report: &RunReport) -> RunSummary {
    let by_key: BTreeMap<(&str, &str), &DestinationStatus> = statuses.iter().map(|s| ((s.service.as_str(), s.destination.as_str()), s)).collect();
    let now = Utc::now();
    let mut failed = Vec::new();
    let mut delivered = 0;
    for (service, d) in report.destinations() {
        if let Some(warning) = &d.warning {
            failed.push(FailureLine {
                kind: AlertKind::CredmonRefused,
                service: service.to_string(),
                destination: d.id.clone(),
                host: d.host.clone(),
                reason: warning.clone(),
                since: now,
                ..FailureLine::default()
            });
        }
        // Urgent while it lasts (told at once, then every `remind_every`): a credmon that is
        // stuck or does not refresh this destination's access token.
        if let Some(c) = d.credmon.as_ref().filter(|c| matches!(c.check.state, CredmonState::Stuck | CredmonState::NotRefreshing)) {
            failed.push(credmon_not_refreshing(service, &d.id, &d.host, &format!("credmon {}: {}", c.check.state, c.check.reason), now));
        }
        match &d.result {
            Ok(_) => delivered += 1,
            Err(reason) => {
                let st = by_key.get(&(service, d.id.as_str()));
                failed.push(FailureLine {
                    service: service.to_string(),
                    destination: d.id.clone(),
                    host: d.host.clone(),
                    reason: reason.clone(),
                    since: st.and_then(|s| s.failing_since).unwrap_or(now),
                    consecutive: st.map(|s| s.consecutive_failures).unwrap_or(1),
                    ..FailureLine::default()
                });
            }
        }
    }
    for e in &report.state_errors {
        failed.push(FailureLine {
            kind: AlertKind::State,
            service: "token-bastion".into(),
            destination: "state database".into(),
            host: "bastion".into(),
            reason: e.clone(),
            since: now,
            ..FailureLine::default()
        });
    }
    failed.extend(report.alerts.iter().cloned());
    let expiring = expiring(inv, statuses, now)
        .into_iter()
        .map(|(st, left, warn)| ExpiryLine {
            service: st.service.clone(),
            destination: st.destination.clone(),
            host: st.host.clone(),
            time_left_secs: left,
            warning_secs: warn,
        })
        .collect();
    RunSummary { run_id: report.run_id.map_or(0, |r| r.0), started: report.started, dry_run: report.dry_run, delivered, failed, expiring, recovered: Vec::new() }
}

/// Destinations still in the inventory whose delivered credential has less time left than its
/// service's `expiry_warning`: (status, seconds left, warning seconds).
pub fn expiring<'a>(inv: &Inventory, statuses: &'a [DestinationStatus], now: DateTime<Utc>) -> Vec<(&'a DestinationStatus, i64, i64)> {
    statuses
        .iter()
        .filter_map(|st| {
            let spec = inv.services.get(&st.service)?;
            spec.destinations.iter().find(|d| d.id == st.destination)?;
            let left = st.vault_time_left_secs(now)?;
            let warn = spec.expiry_warning.as_secs() as i64;
            (left < warn).then_some((st, left, warn))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::Path;

    use super::*;
    use crate::cycle::{CredmonReport, DestinationReport, ServiceReport, StageFailure};
    use crate::outcome::Stage;
    use crate::state::Delivered;

    const INV: &str = r#"broker:
  url: https://vault.example:8200
  issuer: cms
  vault_url: https://vault.example:8200
  auth: {method: token_file, path: /etc/tb/token}
issuers:
  iam: {url: "https://iam.example/"}
hosts:
  s1: {address: s1.example, user: root, key_file: /k, known_hosts: /kh, spool: /spool}
defaults:
  alert_after: 3
notify:
  remind_every: 6h
services:
  a:
    account: a
    required: [compute.create]
    destinations:
      - credd: {hosts: [s1]}
  b:
    account: b
    required: [compute.create]
    alert_after: 1
    destinations:
      - credd: {hosts: [s1]}
"#;

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).unwrap()
    }

    fn failure(service: &str, consecutive: u32, since: DateTime<Utc>) -> FailureLine {
        FailureLine { service: service.into(), destination: "credd@s1".into(), host: "s1".into(), reason: "deliver: refused".into(), since, consecutive, ..FailureLine::default() }
    }

    fn report(at: DateTime<Utc>, delivered: &[&str]) -> RunReport {
        let services = delivered
            .iter()
            .map(|s| ServiceReport {
                service: s.to_string(),
                tokens: Err(StageFailure { stage: Stage::Login, reason: "unused".into() }),
                destinations: vec![DestinationReport {
                    id: "credd@s1".into(),
                    host: "s1".into(),
                    result: Ok(Delivered { vault_expiry: None, access: None, vault_root: None, paths: vec![] }),
                    warning: None,
                    credmon: None,
                }],
                timings: vec![],
            })
            .collect();
        RunReport { run_id: None, started: at, dry_run: false, services, mail: OutboxReport::default(), state_errors: vec![], alerts: vec![], broker_repeats: Default::default() }
    }

    /// The alerts table, in memory: `decide` at `at` with `failed` (and `expiring` for service
    /// a), recording what it told and forgetting what is over, as `enqueue_told` does.
    struct Told(RefCell<BTreeMap<String, DateTime<Utc>>>);

    impl Told {
        fn run(&self, at: DateTime<Utc>, failed: Vec<FailureLine>, expiring: bool, delivered: &[&str]) -> RunSummary {
            self.run_report(at, failed, expiring, report(at, delivered))
        }

        fn run_report(&self, at: DateTime<Utc>, failed: Vec<FailureLine>, expiring: bool, report: RunReport) -> RunSummary {
            let inv = crate::inventory::parse(Path::new("inv.yaml"), INV).unwrap();
            let expiring = if expiring {
                vec![ExpiryLine { service: "a".into(), destination: "credd@s1".into(), host: "s1".into(), time_left_secs: 60, warning_secs: 3600 }]
            } else {
                vec![]
            };
            let mut summary = RunSummary { started: at, failed, expiring, ..RunSummary::default() };
            let (told, over) = decide(&inv, &report, &mut summary, |k| self.0.borrow().get(k).copied(), |p| {
                self.0.borrow().iter().filter(|(k, _)| k.starts_with(p)).map(|(k, v)| (k.clone(), *v)).collect()
            });
            let mut map = self.0.borrow_mut();
            for k in told {
                map.insert(k, at);
            }
            for k in over {
                map.remove(&k);
            }
            summary
        }
    }

    fn told() -> Told {
        Told(RefCell::new(BTreeMap::new()))
    }

    #[test]
    fn a_streak_is_told_once_it_reaches_alert_after_then_reminded() {
        let state = told();
        let since = t(0);
        let told_at = |h: i64, n: u32| state.run(t(h), vec![failure("a", n, since)], false, &[]).failed.len();
        assert_eq!((told_at(0, 1), told_at(1, 2)), (0, 0), "below defaults.alert_after = 3");
        assert_eq!(told_at(2, 3), 1, "the third failure in a row is told");
        assert_eq!(told_at(3, 4), 0, "not again within remind_every");
        assert_eq!(told_at(8, 9), 1, "reminded once remind_every has passed");
        // A service's own threshold overrides the default.
        assert_eq!(state.run(t(0), vec![failure("b", 1, t(0))], false, &[]).failed.len(), 1);
    }

    #[test]
    fn urgent_conditions_are_told_at_once() {
        let state = told();
        // A failure at a destination inside its expiry warning: below the threshold, told.
        let s = state.run(t(0), vec![failure("a", 1, t(0))], true, &[]);
        assert_eq!((s.failed.len(), s.failed[0].urgent, s.expiring.len()), (1, true, 1));
        for kind in [AlertKind::CredmonRefused, AlertKind::CredmonStale, AlertKind::State] {
            let s = state.run(t(0), vec![FailureLine { kind, ..failure("a", 0, t(0)) }], false, &[]);
            assert_eq!((s.failed.len(), s.failed[0].urgent), (1, true), "{kind:?}");
        }
        // An event is told every time; a lasting condition at most every remind_every.
        assert_eq!(state.run(t(1), vec![FailureLine { kind: AlertKind::CredmonRefused, ..failure("a", 0, t(1)) }], false, &[]).failed.len(), 1);
        assert_eq!(state.run(t(1), vec![credmon_not_refreshing("a", "credd@s1", "s1", "stale", t(0))], false, &[]).failed.len(), 0);
    }

    #[test]
    fn a_credmon_seen_refreshing_again_is_told_at_once_when_it_relapses() {
        let state = told();
        let stale = |h: i64| vec![credmon_not_refreshing("a", "credd@s1", "s1", "stale", t(h))];
        let with_credmon = |at: DateTime<Utc>, credmon: CredmonState| {
            let mut r = report(at, &["a"]);
            r.services[0].destinations[0].credmon = Some(CredmonReport {
                check: crate::credmon::CredmonCheck { state: credmon, reason: String::new(), refreshed_at: None },
                alarm: false,
                wrote_use: None,
            });
            r
        };
        assert_eq!(state.run_report(t(0), stale(0), false, with_credmon(t(0), CredmonState::Stuck)).failed.len(), 1);
        assert_eq!(state.run_report(t(1), stale(1), false, with_credmon(t(1), CredmonState::Stuck)).failed.len(), 0, "not again within remind_every");
        state.run_report(t(2), vec![], false, with_credmon(t(2), CredmonState::Refreshing));
        assert_eq!(state.run_report(t(3), stale(3), false, with_credmon(t(3), CredmonState::Stuck)).failed.len(), 1, "a relapse is told at once");
    }

    #[test]
    fn a_destination_told_about_is_told_once_when_it_recovers() {
        let state = told();
        assert_eq!(state.run(t(2), vec![failure("a", 3, t(0))], false, &[]).failed.len(), 1);
        let s = state.run(t(5), vec![], false, &["a"]);
        assert_eq!(s.recovered.len(), 1);
        assert_eq!((s.recovered[0].down_since, s.recovered[0].down_secs), (t(0), 5 * 3600));
        assert!(state.run(t(6), vec![], false, &["a"]).recovered.is_empty(), "told once");
        // A streak never told about (below the threshold) recovers silently.
        state.run(t(7), vec![failure("a", 1, t(7))], false, &[]);
        assert!(state.run(t(8), vec![], false, &["a"]).recovered.is_empty());
    }
}
