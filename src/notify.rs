//! Mail: what a run tells people, and the only module that knows SMTP.
//!
//! Owns the mail templates (built in from `templates/`, overridable from an operator directory),
//! rendering a [`RunSummary`] into one mail for the admins and one per affected service for its
//! owners, and sending mail with lettre's blocking SMTP transport — directly ([`send`]) or by
//! draining the outbox a cycle filled ([`deliver_outbox`]).
//!
//! Must never: put a token or the SMTP password in a mail, an error or a log line (a mail's
//! inputs carry fingerprints and secret-free error texts only; the password lives in a
//! [`Secret`] and is exposed only to lettre's credentials); fall back to an empty string for a
//! template variable that does not exist (templates render with strict undefined behaviour and
//! are test-rendered when loaded, so an operator's typo fails at start-up, not at 3 a.m.).
//!
//! Template contract: the first line a template renders is `Subject: <subject>` (not empty); the
//! rest is the plain-text body, from which one empty line right after the subject is dropped. See the comment at the top of each template for the
//! variables it receives.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls as LettreTls, TlsParameters};
use lettre::{SmtpTransport, Transport};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value, context};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::state::{QueuedMail, RunId, StateError, StateStore};

/// Template for the admins' mail.
pub const ADMIN_TEMPLATE: &str = "admin_failure.txt.j2";
/// Template for one service's owners' mail.
pub const OWNER_TEMPLATE: &str = "owner_failure.txt.j2";

const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (ADMIN_TEMPLATE, include_str!("../templates/admin_failure.txt.j2")),
    (OWNER_TEMPLATE, include_str!("../templates/owner_failure.txt.j2")),
];

/// How the connection to the SMTP relay is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Plain SMTP (a relay on localhost or a trusted network).
    None,
    /// Plain connect, then `STARTTLS`, which is required (typically port 587).
    StartTls,
    /// TLS from the first byte (SMTPS, typically port 465).
    Wrapper,
}

/// Where and how mail is sent. `Debug` shows the password as `[redacted]`.
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// Envelope and header sender, e.g. `token-bastion <noreply@cern.ch>`.
    pub from: String,
    pub tls: Tls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Bound on connecting and on each SMTP command.
    pub timeout: Duration,
}

/// A rendered mail; what the outbox stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMail {
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
}

/// One service × destination that was not delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureLine {
    pub service: String,
    pub destination: String,
    pub host: String,
    /// Product error text; secret-free.
    pub reason: String,
    /// First failure of the current streak.
    pub since: DateTime<Utc>,
    /// Failures in a row, this one included.
    pub consecutive: u32,
}

/// One service × destination whose Vault token expires within its warning threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryLine {
    pub service: String,
    pub destination: String,
    pub host: String,
    pub time_left_secs: i64,
    pub warning_secs: i64,
}

/// What one run has to tell people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSummary {
    pub run_id: RunId,
    pub started: DateTime<Utc>,
    pub dry_run: bool,
    /// Service × destination pairs delivered.
    pub delivered: usize,
    pub failed: Vec<FailureLine>,
    pub expiring: Vec<ExpiryLine>,
}

impl RunSummary {
    /// Whether anyone needs to be told anything.
    pub fn is_alert(&self) -> bool {
        !self.failed.is_empty() || !self.expiring.is_empty()
    }
}

/// What [`deliver_outbox`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxReport {
    pub sent: usize,
    /// Attempted and failed; still queued with the attempt counted.
    pub failed: usize,
    /// Not attempted because the relay was unreachable; still queued, attempt not counted.
    pub deferred: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("mail template directory {path}: {source}")]
    TemplateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mail template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("mail template {name}: the first line must be \"Subject: <subject>\"")]
    TemplateShape { name: String },
    #[error("mail address {address:?}: {source}")]
    Address {
        address: String,
        #[source]
        source: lettre::address::AddressError,
    },
    #[error("mail has no recipient")]
    NoRecipient,
    #[error("cannot build mail: {0}")]
    Build(#[source] lettre::error::Error),
    #[error("SMTP settings: a username needs a password and a password needs a username")]
    Credentials,
    #[error("SMTP TLS setup for {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("sending mail via {host}:{port}: {source}")]
    Send {
        host: String,
        port: u16,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

impl NotifyError {
    /// A refusal by the relay that is about this mail (a rejected recipient), as opposed to a
    /// relay that cannot be reached or is failing, which would fail every mail alike.
    fn is_about_this_mail(&self) -> bool {
        match self {
            NotifyError::Send { source, .. } => source.is_permanent(),
            NotifyError::Address { .. } | NotifyError::NoRecipient | NotifyError::Build(_) => true,
            _ => false,
        }
    }
}

/// The mail templates, ready to render.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    /// The built-in templates, each replaced by a file of the same name in `dir` if there is one.
    /// Every template is test-rendered here, so a syntax error or an unknown variable is
    /// reported now, naming the template.
    pub fn load(dir: Option<&Path>) -> Result<Templates, NotifyError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Plain-text mail: nothing to escape, whatever a template's name says.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(true)
                .build()
                .expect("default delimiters are valid"),
        );
        for (name, builtin) in BUILTIN_TEMPLATES {
            let source = match dir.map(|d| d.join(name)) {
                Some(path) if path.exists() => std::fs::read_to_string(&path)
                    .map_err(|source| NotifyError::TemplateDir { path, source })?,
                _ => builtin.to_string(),
            };
            env.add_template_owned(*name, source)
                .map_err(|source| NotifyError::Template { name: name.to_string(), source })?;
        }
        let templates = Templates { env };
        templates.self_test()?;
        Ok(templates)
    }

    fn self_test(&self) -> Result<(), NotifyError> {
        let at = DateTime::from_timestamp(1_800_000_000, 0).expect("valid timestamp");
        let failure = FailureLine {
            service: "svc".into(),
            destination: "dest".into(),
            host: "host.example".into(),
            reason: "reason".into(),
            since: at,
            consecutive: 2,
        };
        let expiry = ExpiryLine {
            service: "svc".into(),
            destination: "dest".into(),
            host: "host.example".into(),
            time_left_secs: 3600,
            warning_secs: 86400,
        };
        let full = RunSummary {
            run_id: RunId(1),
            started: at,
            dry_run: false,
            delivered: 1,
            failed: vec![failure.clone()],
            expiring: vec![expiry.clone()],
        };
        let expiring_only = RunSummary { dry_run: true, failed: vec![], ..full.clone() };
        let failing_only = RunSummary { expiring: vec![], ..full.clone() };
        let admins = ["admin@example.org".to_string()];
        let owners = BTreeMap::from([("svc".to_string(), vec!["owner@example.org".to_string()])]);
        for summary in [&full, &expiring_only, &failing_only] {
            self.admin_mail(summary, &admins)?;
            self.owner_mails(summary, &owners)?;
        }
        Ok(())
    }

    fn render(&self, name: &str, ctx: Value, to: &[String]) -> Result<OutgoingMail, NotifyError> {
        let template_err = |source| NotifyError::Template { name: name.to_string(), source };
        let text =
            self.env.get_template(name).map_err(template_err)?.render(ctx).map_err(template_err)?;
        let shape_err = || NotifyError::TemplateShape { name: name.to_string() };
        let (first, rest) = text.split_once('\n').ok_or_else(shape_err)?;
        let subject = first.strip_prefix("Subject:").ok_or_else(shape_err)?.trim();
        // One empty line after the subject reads naturally in a template, but trim_blocks eats
        // the newline after a subject line ending in a block tag: accept both.
        let body = rest.strip_prefix('\n').or_else(|| rest.strip_prefix("\r\n")).unwrap_or(rest);
        if subject.is_empty() {
            return Err(shape_err());
        }
        let mut body = body.to_string();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Ok(OutgoingMail { to: to.to_vec(), subject: subject.to_string(), body })
    }

    /// One mail to `admins` listing every failure and expiry warning of the run; `None` when
    /// there is nothing to report or nobody to tell.
    pub fn admin_mail(
        &self,
        summary: &RunSummary,
        admins: &[String],
    ) -> Result<Option<OutgoingMail>, NotifyError> {
        if !summary.is_alert() || admins.is_empty() {
            return Ok(None);
        }
        let failures: Vec<&FailureLine> = summary.failed.iter().collect();
        let expiring: Vec<&ExpiryLine> = summary.expiring.iter().collect();
        let failed_services: BTreeSet<&str> = failures.iter().map(|f| f.service.as_str()).collect();
        let ctx = context! {
            failed_services => failed_services.len(),
            ..common_context(summary, &failures, &expiring)
        };
        self.render(ADMIN_TEMPLATE, ctx, admins).map(Some)
    }

    /// One mail per service with a failure or an expiry warning and at least one owner, holding
    /// only that service's lines. Services without owners are left to the admin mail.
    pub fn owner_mails(
        &self,
        summary: &RunSummary,
        owners_by_service: &BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<OutgoingMail>, NotifyError> {
        let affected: BTreeSet<&str> = summary
            .failed
            .iter()
            .map(|f| f.service.as_str())
            .chain(summary.expiring.iter().map(|e| e.service.as_str()))
            .collect();
        let mut mails = Vec::new();
        for service in affected {
            let Some(owners) = owners_by_service.get(service).filter(|o| !o.is_empty()) else {
                continue;
            };
            let failures: Vec<&FailureLine> =
                summary.failed.iter().filter(|f| f.service == service).collect();
            let expiring: Vec<&ExpiryLine> =
                summary.expiring.iter().filter(|e| e.service == service).collect();
            let ctx =
                context! { service => service, ..common_context(summary, &failures, &expiring) };
            mails.push(self.render(OWNER_TEMPLATE, ctx, owners)?);
        }
        Ok(mails)
    }
}

fn common_context(
    summary: &RunSummary,
    failures: &[&FailureLine],
    expiring: &[&ExpiryLine],
) -> Value {
    let failed_hosts: BTreeSet<String> = failures.iter().map(|f| f.host.clone()).collect();
    let expiring_hosts: BTreeSet<String> = expiring.iter().map(|e| e.host.clone()).collect();
    let failures: Vec<Value> = failures
        .iter()
        .map(|f| {
            context! {
                service => &f.service, destination => &f.destination, host => &f.host,
                reason => &f.reason, since => show_time(f.since), consecutive => f.consecutive,
            }
        })
        .collect();
    let expiring: Vec<Value> = expiring
        .iter()
        .map(|e| {
            context! {
                service => &e.service, destination => &e.destination, host => &e.host,
                time_left => show_duration(e.time_left_secs), time_left_secs => e.time_left_secs,
                warning => show_duration(e.warning_secs), warning_secs => e.warning_secs,
            }
        })
        .collect();
    context! {
        run_id => summary.run_id.0,
        started => show_time(summary.started),
        dry_run => summary.dry_run,
        delivered => summary.delivered,
        failures => failures,
        expiring => expiring,
        failed_hosts => failed_hosts.into_iter().collect::<Vec<_>>(),
        expiring_hosts => expiring_hosts.into_iter().collect::<Vec<_>>(),
    }
}

fn show_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// "2d 3h", "5h 12m", "40m", "expired 3h ago": readable on a phone, precise enough to triage.
fn show_duration(secs: i64) -> String {
    if secs < 0 {
        return format!("expired {} ago", show_duration(-secs));
    }
    let (d, h, m) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60);
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A mail address as mail is sent to it (and `check` validates it).
pub fn mailbox(address: &str) -> Result<Mailbox, NotifyError> {
    address.parse().map_err(|source| NotifyError::Address { address: address.to_string(), source })
}

fn transport(cfg: &SmtpConfig) -> Result<SmtpTransport, NotifyError> {
    let tls_params = || {
        TlsParameters::new(cfg.host.clone())
            .map_err(|source| NotifyError::Tls { host: cfg.host.clone(), source })
    };
    let tls = match cfg.tls {
        Tls::None => LettreTls::None,
        Tls::StartTls => LettreTls::Required(tls_params()?),
        Tls::Wrapper => LettreTls::Wrapper(tls_params()?),
    };
    let mut builder = SmtpTransport::builder_dangerous(cfg.host.as_str())
        .port(cfg.port)
        .tls(tls)
        .timeout(Some(cfg.timeout));
    match (&cfg.username, &cfg.password) {
        (Some(user), Some(password)) => {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_string()));
        }
        (None, None) => {}
        _ => return Err(NotifyError::Credentials),
    }
    Ok(builder.build())
}

/// Sends one mail now.
pub fn send(cfg: &SmtpConfig, mail: &OutgoingMail) -> Result<(), NotifyError> {
    let transport = transport(cfg)?;
    send_with(&transport, cfg, mail)
}

fn send_with(
    transport: &SmtpTransport,
    cfg: &SmtpConfig,
    mail: &OutgoingMail,
) -> Result<(), NotifyError> {
    if mail.to.is_empty() {
        return Err(NotifyError::NoRecipient);
    }
    let mut builder = lettre::Message::builder()
        .from(mailbox(&cfg.from)?)
        .subject(mail.subject.as_str())
        .header(ContentType::TEXT_PLAIN)
        // Lets a mail client thread or deduplicate a mail the outbox retried.
        .message_id(None);
    for to in &mail.to {
        builder = builder.to(mailbox(to)?);
    }
    // lettre ends the body with CRLF itself; without this the mail would grow a blank line.
    let body = mail.body.strip_suffix('\n').unwrap_or(&mail.body);
    let message = builder.body(body.to_string()).map_err(NotifyError::Build)?;
    transport.send(&message).map(|_| ()).map_err(|source| NotifyError::Send {
        host: cfg.host.clone(),
        port: cfg.port,
        source,
    })
}

/// Sends every queued mail, oldest first, marking each sent or failed in the outbox.
///
/// A mail the relay refuses for itself (a bad recipient) is marked failed and the next one is
/// tried; when the relay cannot be reached or fails transiently, the rest are left untouched
/// for the next cycle rather than each waiting out the timeout against a dead relay.
pub fn deliver_outbox(store: &StateStore, cfg: &SmtpConfig) -> Result<OutboxReport, NotifyError> {
    let pending = store.pending_mail()?;
    let mut report = OutboxReport::default();
    if pending.is_empty() {
        return Ok(report);
    }
    let transport = transport(cfg)?;
    let mut relay_down = false;
    for QueuedMail { id, mail, .. } in pending {
        if relay_down {
            report.deferred += 1;
            continue;
        }
        match send_with(&transport, cfg, &mail) {
            Ok(()) => {
                store.mark_sent(id)?;
                report.sent += 1;
            }
            Err(e) => {
                // The error names host, port and the relay's reply; never the password, which
                // lettre sends but never echoes.
                store.mark_failed(id, &e.to_string())?;
                tracing::warn!(mail_id = id.0, error = %e, "mail not sent; kept in the outbox");
                report.failed += 1;
                relay_down = !e.is_about_this_mail();
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn summary() -> RunSummary {
        RunSummary {
            run_id: RunId(42),
            started: at("2026-11-20T03:00:00Z"),
            dry_run: false,
            delivered: 7,
            failed: vec![
                FailureLine {
                    service: "crab".into(),
                    destination: "schedd-a".into(),
                    host: "vocms0101.cern.ch".into(),
                    reason: "ssh: connection refused".into(),
                    since: at("2026-11-19T21:00:00Z"),
                    consecutive: 3,
                },
                FailureLine {
                    service: "wmagent".into(),
                    destination: "schedd-b".into(),
                    host: "vocms0202.cern.ch".into(),
                    reason: "token refused: scope storage.modify:/ wider than allowed".into(),
                    since: at("2026-11-20T03:00:00Z"),
                    consecutive: 1,
                },
            ],
            expiring: vec![ExpiryLine {
                service: "crab".into(),
                destination: "schedd-c".into(),
                host: "vocms0303.cern.ch".into(),
                time_left_secs: 2 * 86400 + 3 * 3600 + 60,
                warning_secs: 3 * 86400,
            }],
        }
    }

    fn check(mail: &OutgoingMail, subject: &str, body_has: &[&str], body_lacks: &[&str]) {
        assert_eq!(mail.subject, subject, "body:\n{}", mail.body);
        for s in body_has {
            assert!(mail.body.contains(s), "missing {s:?} in:\n{}", mail.body);
        }
        for s in body_lacks {
            assert!(!mail.body.contains(s), "unexpected {s:?} in:\n{}", mail.body);
        }
    }

    #[test]
    fn admin_mail_lists_everything() {
        let t = Templates::load(None).unwrap();
        let mail = t.admin_mail(&summary(), &["oncall@example.org".into()]).unwrap().unwrap();
        assert_eq!(mail.to, vec!["oncall@example.org"]);
        check(
            &mail,
            "[token-bastion] FAILED 2 services on vocms0101.cern.ch, vocms0202.cern.ch; 1 expiring",
            &[
                "* crab -> schedd-a on vocms0101.cern.ch\n  reason: ssh: connection refused\n  failing since 2026-11-19 21:00:00 UTC (3 attempts in a row)",
                "* wmagent -> schedd-b on vocms0202.cern.ch",
                "(1 attempt in a row)",
                "* crab -> schedd-c on vocms0303.cern.ch\n  time left: 2d 3h (warning threshold 3d 0h)",
                "run 42 started 2026-11-20 03:00:00 UTC",
                "Delivered: 7. Failed: 2. Expiring soon: 1.",
            ],
            &["dry run", "\n\n\n"],
        );
    }

    #[test]
    fn admin_mail_for_expiry_only_and_dry_run() {
        let t = Templates::load(None).unwrap();
        let s = RunSummary { failed: vec![], dry_run: true, ..summary() };
        let mail = t.admin_mail(&s, &["oncall@example.org".into()]).unwrap().unwrap();
        check(
            &mail,
            "[token-bastion dry-run] 1 expiring on vocms0303.cern.ch",
            &["dry run: nothing was written", "EXPIRING SOON"],
            &["FAILED DELIVERIES"],
        );
    }

    #[test]
    fn nothing_to_say_means_no_mail() {
        let t = Templates::load(None).unwrap();
        let quiet = RunSummary { failed: vec![], expiring: vec![], ..summary() };
        assert_eq!(t.admin_mail(&quiet, &["a@example.org".into()]).unwrap(), None);
        assert_eq!(t.admin_mail(&summary(), &[]).unwrap(), None);
        let owners = BTreeMap::from([("crab".to_string(), vec!["c@example.org".to_string()])]);
        assert!(t.owner_mails(&quiet, &owners).unwrap().is_empty());
    }

    #[test]
    fn owner_mails_hold_only_their_service() {
        let t = Templates::load(None).unwrap();
        let owners = BTreeMap::from([
            ("crab".to_string(), vec!["crab-ops@example.org".to_string()]),
            (
                "wmagent".to_string(),
                vec!["wma@example.org".to_string(), "wma2@example.org".to_string()],
            ),
            ("tier0".to_string(), vec!["t0@example.org".to_string()]),
        ]);
        let mails = t.owner_mails(&summary(), &owners).unwrap();
        assert_eq!(mails.len(), 2, "tier0 is not affected");
        assert_eq!(mails[0].to, vec!["crab-ops@example.org"]);
        check(
            &mails[0],
            "[token-bastion] crab: tokens not delivered to vocms0101.cern.ch; 1 expiring",
            &[
                "\"crab\"",
                "* schedd-a on vocms0101.cern.ch\n  reason: ssh: connection refused",
                "* schedd-c on vocms0303.cern.ch: 2d 3h left",
            ],
            &["vocms0202", "wmagent"],
        );
        assert_eq!(mails[1].to, vec!["wma@example.org", "wma2@example.org"]);
        check(
            &mails[1],
            "[token-bastion] wmagent: tokens not delivered to vocms0202.cern.ch",
            &["vocms0202.cern.ch"],
            &["vocms0101", "crab"],
        );

        // A service without owners gets no owner mail.
        let only_crab =
            BTreeMap::from([("crab".to_string(), vec!["crab-ops@example.org".to_string()])]);
        assert_eq!(t.owner_mails(&summary(), &only_crab).unwrap().len(), 1);
    }

    #[test]
    fn operator_templates_override_and_typos_fail_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(OWNER_TEMPLATE),
            "Subject: {{ service }} broken\n\n{% for f in failures %}{{ f.host }}\n{% endfor %}",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let owners = BTreeMap::from([("crab".to_string(), vec!["c@example.org".to_string()])]);
        let mails = t.owner_mails(&summary(), &owners).unwrap();
        assert_eq!(
            (mails[0].subject.as_str(), mails[0].body.as_str()),
            ("crab broken", "vocms0101.cern.ch\n")
        );
        // The admin template was not overridden: the built-in one is used.
        assert!(
            t.admin_mail(&summary(), &["a@example.org".into()])
                .unwrap()
                .unwrap()
                .body
                .contains("FAILED DELIVERIES")
        );

        std::fs::write(dir.path().join(ADMIN_TEMPLATE), "Subject: x\n\n{{ failures[0].hots }}\n")
            .unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert!(
            matches!(&err, NotifyError::Template { name, .. } if name == ADMIN_TEMPLATE),
            "{err}"
        );

        std::fs::write(dir.path().join(ADMIN_TEMPLATE), "Subject: x\n\n{{ run_idd }}\n").unwrap();
        assert!(matches!(Templates::load(Some(dir.path())), Err(NotifyError::Template { .. })));

        std::fs::write(dir.path().join(ADMIN_TEMPLATE), "no subject line\n\nbody\n").unwrap();
        assert!(matches!(
            Templates::load(Some(dir.path())),
            Err(NotifyError::TemplateShape { .. })
        ));

        std::fs::write(dir.path().join(ADMIN_TEMPLATE), "Subject: x\n\n{% for %}\n").unwrap();
        assert!(matches!(Templates::load(Some(dir.path())), Err(NotifyError::Template { .. })));
    }

    #[test]
    fn subject_stays_short_with_many_hosts() {
        let t = Templates::load(None).unwrap();
        let mut s = RunSummary { expiring: vec![], ..summary() };
        s.failed = (1..=5)
            .map(|i| FailureLine { host: format!("h{i}.example"), ..summary().failed[0].clone() })
            .collect();
        let mail = t.admin_mail(&s, &["a@example.org".into()]).unwrap().unwrap();
        assert_eq!(
            mail.subject,
            "[token-bastion] FAILED 1 service on h1.example, h2.example, h3.example +2 more"
        );
        assert!(mail.body.contains("h5.example"));
    }

    #[test]
    fn durations_read_well() {
        for (secs, shown) in [
            (59, "0m"),
            (40 * 60, "40m"),
            (5 * 3600 + 12 * 60, "5h 12m"),
            (2 * 86400 + 3 * 3600 + 5, "2d 3h"),
            (-3 * 3600, "expired 3h 0m ago"),
        ] {
            assert_eq!(show_duration(secs), shown);
        }
    }

    #[test]
    fn config_debug_hides_the_password() {
        let cfg = SmtpConfig {
            host: "smtp.example.org".into(),
            port: 587,
            from: "bastion@example.org".into(),
            tls: Tls::StartTls,
            username: Some("bastion".into()),
            password: Some(Secret::new("smtp-pass-0123456789")),
            timeout: Duration::from_secs(30),
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("smtp-pass-0123456789"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn half_credentials_are_refused() {
        let cfg = SmtpConfig {
            host: "127.0.0.1".into(),
            port: 25,
            from: "bastion@example.org".into(),
            tls: Tls::None,
            username: Some("bastion".into()),
            password: None,
            timeout: Duration::from_secs(1),
        };
        let mail = OutgoingMail {
            to: vec!["a@example.org".into()],
            subject: "s".into(),
            body: "b".into(),
        };
        assert!(matches!(send(&cfg, &mail), Err(NotifyError::Credentials)));
    }
}
