//! What a run tells people: the run summary (failures with their streaks, destinations inside
//! their expiry warning, services removed with live tokens left), rendered into admin and owner
//! mail, queued in the outbox and sent from there.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::ledger::Ledger;
use super::lifecycle::Orphan;
use super::{error_chain, RunReport};
use crate::inventory::{Inventory, SmtpTls};
use crate::notify::{ExpiryLine, FailureLine, OutboxReport, OutgoingMail, RunSummary, SmtpConfig, Templates, Tls};
use crate::secret::Secret;
use crate::state::{DestinationStatus, RunId};

/// Queues the mail a run calls for (failures, and destinations inside their expiry warning) and
/// sends whatever the outbox holds. Mail problems are logged, never fail the run: the outbox
/// keeps what could not be sent for the next run. When the state database cannot take the mail,
/// it goes to the relay directly: what happened is told even then.
pub(super) fn notify_run(inv: &Inventory, ledger: &Ledger, templates: &Templates, report: &RunReport, orphans: &[Orphan]) -> OutboxReport {
    let statuses = ledger.db(|s| s.statuses()).unwrap_or_else(|e| {
        warn!(error = %error_chain(&e), "cannot read state for the run summary; failure streaks are not known");
        Vec::new()
    });
    let mut summary = run_summary(inv, &statuses, report);
    // A service removed from the inventory that still has live tokens somewhere is a failure
    // on-call must act on (`revoke`), reminded until it is done.
    let orphan_lines: Vec<FailureLine> = orphans
        .iter()
        .map(|o| FailureLine {
            service: o.service.clone(),
            destination: o.destination.clone(),
            host: o.host.clone(),
            reason: o.reason(),
            since: report.started,
            consecutive: 0,
        })
        .collect();
    summary.failed.extend(orphan_lines);
    let alerted = remind_due(inv, ledger, &mut summary);
    let owners: BTreeMap<String, Vec<String>> = inv.services.values().map(|s| (s.name.clone(), s.owners.clone())).collect();
    let mut mails = Vec::new();
    match templates.admin_mail(&summary, &inv.notify.admins) {
        Ok(m) => mails.extend(m),
        Err(e) => warn!(error = %error_chain(&e), "cannot render the admin mail"),
    }
    match templates.owner_mails(&summary, &owners) {
        Ok(m) => mails.extend(m),
        Err(e) => warn!(error = %error_chain(&e), "cannot render owner mail"),
    }
    let cfg = match inv.notify.smtp.as_ref().map(smtp_config) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            warn!(error = %e, "cannot read the SMTP password file; mail stays queued");
            None
        }
    };
    let mut direct = OutboxReport::default();
    for m in &mails {
        if let Err(e) = ledger.write(|s| s.enqueue_mail(m)) {
            warn!(error = %error_chain(&e), subject = %m.subject, "cannot queue mail; sending it directly");
            send_directly(cfg.as_ref(), m, &mut direct);
        }
    }
    if !mails.is_empty() {
        for key in &alerted {
            if let Err(e) = ledger.write(|s| s.mark_alerted(key, report.started)) {
                warn!(error = %error_chain(&e), "cannot record when on-call was told");
            }
        }
    }
    let Some(cfg) = cfg else {
        if !mails.is_empty() && inv.notify.smtp.is_none() {
            warn!(queued = mails.len(), "no notify.smtp configured: mail stays queued in the state database");
        }
        return direct;
    };
    let sent = ledger.db(|store| {
        Ok(match crate::notify::deliver_outbox(store, &cfg) {
            Ok(r) => {
                if r.failed > 0 || r.deferred > 0 {
                    warn!(sent = r.sent, failed = r.failed, deferred = r.deferred, "some mail could not be sent; it stays queued");
                } else if r.sent > 0 {
                    info!(sent = r.sent, "mail sent");
                }
                r
            }
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot send mail; it stays queued");
                OutboxReport::default()
            }
        })
    });
    let mut total = sent.unwrap_or_default();
    total.sent += direct.sent;
    total.failed += direct.failed;
    total
}

/// A mail the outbox could not take, handed to the relay at once (one attempt).
fn send_directly(cfg: Option<&SmtpConfig>, mail: &OutgoingMail, report: &mut OutboxReport) {
    let Some(cfg) = cfg else {
        warn!(subject = %mail.subject, "no way to send this mail: it is lost");
        report.failed += 1;
        return;
    };
    match crate::notify::send(cfg, mail) {
        Ok(()) => report.sent += 1,
        Err(e) => {
            warn!(subject = %mail.subject, error = %error_chain(&e), "cannot send mail directly either: it is lost");
            report.failed += 1;
        }
    }
}

/// Keeps in `summary` only what on-call should hear about now: a failure that just started
/// (first in its streak, or an event like a vanished `.top`), or a lasting condition (failure,
/// expiry warning, removed service) last mailed at least `notify.remind_every` ago. Returns the
/// keys of what stays, to be marked as told.
fn remind_due(inv: &Inventory, ledger: &Ledger, summary: &mut RunSummary) -> Vec<String> {
    let every = chrono::Duration::from_std(inv.notify.remind_every).unwrap_or(chrono::Duration::MAX);
    let now = summary.started;
    let mut keys = Vec::new();
    let mut due = |key: String, new: bool| {
        let last = ledger.db(|s| s.last_alerted(&key)).ok().flatten();
        let go = new || last.is_none_or(|t| now - t >= every);
        if go {
            keys.push(key);
        }
        go
    };
    summary.failed.retain(|f| {
        // A streak is known by when it started; a removed service (no streak) by its name.
        let key = match f.consecutive {
            0 => format!("orphan {} {}", f.service, f.destination),
            _ => format!("failure {} {} {}", f.service, f.destination, f.since.timestamp()),
        };
        due(key, f.consecutive == 1)
    });
    summary.expiring.retain(|e| due(format!("expiring {} {}", e.service, e.destination), false));
    keys
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
/// record, and every destination in the inventory whose credential is inside its service's
/// expiry warning.
fn run_summary(inv: &Inventory, statuses: &[DestinationStatus], report: &RunReport) -> RunSummary {
    let by_key: BTreeMap<(&str, &str), &DestinationStatus> =
        statuses.iter().map(|s| ((s.service.as_str(), s.destination.as_str()), s)).collect();
    let now = Utc::now();
    let mut failed = Vec::new();
    let mut delivered = 0;
    for (service, d) in report.destinations() {
        if let Some(warning) = &d.warning {
            failed.push(FailureLine {
                service: service.to_string(),
                destination: d.id.clone(),
                host: d.host.clone(),
                reason: warning.clone(),
                since: now,
                consecutive: 1,
            });
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
                });
            }
        }
    }
    for e in &report.state_errors {
        failed.push(FailureLine {
            service: "token-bastion".into(),
            destination: "state database".into(),
            host: "bastion".into(),
            reason: e.clone(),
            since: now,
            consecutive: 1,
        });
    }
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
    RunSummary { run_id: report.run_id.unwrap_or(RunId(0)), started: report.started, dry_run: report.dry_run, delivered, failed, expiring }
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

