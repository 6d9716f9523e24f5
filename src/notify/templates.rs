//! Every message the bastion sends, rendered from a template: the run's admin and owner mail
//! (failures, urgent conditions, expiry warnings, recoveries) and the daemon's notices (reload
//! refused, service overdue, a cycle that could not run, the `notify --test` message).
//!
//! Must never: build a message body anywhere but here from a template; fall back to an empty
//! string for a variable that does not exist (strict undefined behaviour, and every template is
//! rendered with sample data when loaded, so an operator's typo fails `check`, `run` and a
//! reload, not the 3 a.m. alert).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value, context};

use super::{NotifyError, OutgoingMail};

/// Template for the admins' mail (and the webhook) about one run.
pub const ADMIN_TEMPLATE: &str = "admin_failure.txt.j2";
/// Template for one service's owners' mail about one run.
pub const OWNER_TEMPLATE: &str = "owner_failure.txt.j2";
/// Template for a reload the daemon refused.
pub const RELOAD_REFUSED_TEMPLATE: &str = "reload_refused.txt.j2";
/// Template for a service the watchdog found overdue.
pub const OVERDUE_TEMPLATE: &str = "overdue.txt.j2";
/// Template for a cycle that could not run at all.
pub const SETUP_FAILURE_TEMPLATE: &str = "setup_failure.txt.j2";
/// Template for `notify --test`.
pub const TEST_TEMPLATE: &str = "test_message.txt.j2";

const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (ADMIN_TEMPLATE, include_str!("../../templates/admin_failure.txt.j2")),
    (OWNER_TEMPLATE, include_str!("../../templates/owner_failure.txt.j2")),
    (RELOAD_REFUSED_TEMPLATE, include_str!("../../templates/reload_refused.txt.j2")),
    (OVERDUE_TEMPLATE, include_str!("../../templates/overdue.txt.j2")),
    (SETUP_FAILURE_TEMPLATE, include_str!("../../templates/setup_failure.txt.j2")),
    (TEST_TEMPLATE, include_str!("../../templates/test_message.txt.j2")),
];

/// What a failure line is about; templates receive it as `kind` (the strings below).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertKind {
    /// Not delivered this run (`failure`); told once `alert_after` failures are in a row.
    #[default]
    Failure,
    /// The credmon deleted a `.top` it was given while the account directory stayed and no
    /// `.mark` was there: it refused the token (`credmon_refused`). Urgent.
    CredmonRefused,
    /// The credmon does not refresh the access tokens (`credmon_stale`). Urgent.
    CredmonStale,
    /// A service removed from the inventory still has live tokens (`orphan`).
    Orphan,
    /// The state database could not record what the run did (`state`). Urgent.
    State,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Failure => "failure",
            AlertKind::CredmonRefused => "credmon_refused",
            AlertKind::CredmonStale => "credmon_stale",
            AlertKind::Orphan => "orphan",
            AlertKind::State => "state",
        }
    }
}

/// One service × destination on-call hears about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureLine {
    pub kind: AlertKind,
    pub service: String,
    pub destination: String,
    pub host: String,
    /// Product error text; secret-free.
    pub reason: String,
    /// First failure of the current streak.
    pub since: DateTime<Utc>,
    /// Failures in a row, this one included (0 for what is not a streak).
    pub consecutive: u32,
    /// Told at once, whatever the threshold.
    pub urgent: bool,
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

/// A destination on-call was told was failing, delivered again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryLine {
    pub service: String,
    pub destination: String,
    pub host: String,
    /// First failure of the streak that ended.
    pub down_since: DateTime<Utc>,
    pub down_secs: i64,
}

/// What one run has to tell people.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub run_id: i64,
    pub started: DateTime<Utc>,
    pub dry_run: bool,
    /// Service × destination pairs delivered.
    pub delivered: usize,
    pub failed: Vec<FailureLine>,
    pub expiring: Vec<ExpiryLine>,
    pub recovered: Vec<RecoveryLine>,
}

impl RunSummary {
    /// Whether anyone needs to be told anything.
    pub fn is_alert(&self) -> bool {
        !self.failed.is_empty() || !self.expiring.is_empty() || !self.recovered.is_empty()
    }
}

/// Something the daemon (or `notify --test`) tells the admins outside a run's summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A reload was refused; the running inventory stays.
    ReloadRefused { config: String, errors: Vec<String> },
    /// A service has not completed a run within twice its interval.
    Overdue { service: String, last_completed: Option<DateTime<Utc>>, deadline: DateTime<Utc> },
    /// A cycle could not run at all (templates, CA file, state directory, lock).
    SetupFailure { services: Vec<String>, reason: String, at: DateTime<Utc> },
    /// `notify --test`.
    Test { at: DateTime<Utc>, config: String, channel: String },
}

impl Notice {
    fn template(&self) -> &'static str {
        match self {
            Notice::ReloadRefused { .. } => RELOAD_REFUSED_TEMPLATE,
            Notice::Overdue { .. } => OVERDUE_TEMPLATE,
            Notice::SetupFailure { .. } => SETUP_FAILURE_TEMPLATE,
            Notice::Test { .. } => TEST_TEMPLATE,
        }
    }

    fn context(&self) -> Value {
        match self {
            Notice::ReloadRefused { config, errors } => context! { config, errors },
            Notice::Overdue { service, last_completed, deadline } => context! {
                service, last_completed => last_completed.map(show_time), deadline => show_time(*deadline),
            },
            Notice::SetupFailure { services, reason, at } => context! { services, reason, at => show_time(*at) },
            Notice::Test { at, config, channel } => context! { at => show_time(*at), config, channel },
        }
    }
}

/// The message templates, ready to render.
pub struct Templates {
    env: Environment<'static>,
    /// Where each template came from, for errors: an operator file's path or the built-in name.
    origin: BTreeMap<&'static str, String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    /// The built-in templates, each replaced by a file of the same name in `dir` if there is one.
    /// Every template is rendered here with sample data, so a syntax error or an unknown
    /// variable is reported now, naming the template's file and line.
    pub fn load(dir: Option<&Path>) -> Result<Templates, NotifyError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Plain text: nothing to escape, whatever a template's name says.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(true)
                .build()
                .expect("default delimiters are valid"),
        );
        let mut origin = BTreeMap::new();
        for (name, builtin) in BUILTIN_TEMPLATES {
            let (source, from) = match dir.map(|d| d.join(name)) {
                Some(path) if path.exists() => {
                    let text = std::fs::read_to_string(&path).map_err(|source| NotifyError::TemplateDir { path: path.clone(), source })?;
                    (text, path.display().to_string())
                }
                _ => (builtin.to_string(), format!("built-in {name}")),
            };
            origin.insert(*name, from);
            env.add_template_owned(*name, source).map_err(|e| template_error(&origin, name, e))?;
        }
        let templates = Templates { env, origin };
        templates.self_test()?;
        Ok(templates)
    }

    fn self_test(&self) -> Result<(), NotifyError> {
        let at = DateTime::from_timestamp(1_800_000_000, 0).expect("valid timestamp");
        let line = |kind, urgent| FailureLine {
            kind,
            service: "svc".into(),
            destination: "dest".into(),
            host: "host.example".into(),
            reason: "reason".into(),
            since: at,
            consecutive: 2,
            urgent,
        };
        let expiry = ExpiryLine { service: "svc".into(), destination: "dest".into(), host: "host.example".into(), time_left_secs: 3600, warning_secs: 86400 };
        let recovery = RecoveryLine { service: "svc".into(), destination: "dest".into(), host: "host.example".into(), down_since: at, down_secs: 7200 };
        let failed = [AlertKind::Failure, AlertKind::CredmonRefused, AlertKind::CredmonStale, AlertKind::Orphan, AlertKind::State]
            .into_iter()
            .map(|k| line(k, k != AlertKind::Failure))
            .collect();
        let full = RunSummary { run_id: 1, started: at, dry_run: false, delivered: 1, failed, expiring: vec![expiry], recovered: vec![recovery] };
        let samples = [
            full.clone(),
            RunSummary { dry_run: true, failed: vec![], recovered: vec![], ..full.clone() },
            RunSummary { expiring: vec![], recovered: vec![], ..full.clone() },
            RunSummary { failed: vec![], expiring: vec![], ..full.clone() },
        ];
        let admins = ["admin@example.org".to_string()];
        let owners = BTreeMap::from([("svc".to_string(), vec!["owner@example.org".to_string()])]);
        for summary in &samples {
            self.admin_mail(summary, &admins)?;
            self.owner_mails(summary, &owners)?;
        }
        let notices = [
            Notice::ReloadRefused { config: "/etc/token-bastion/services.yaml".into(), errors: vec!["services.yaml:3:1: field: message".into()] },
            Notice::Overdue { service: "svc".into(), last_completed: Some(at), deadline: at },
            Notice::Overdue { service: "svc".into(), last_completed: None, deadline: at },
            Notice::SetupFailure { services: vec!["svc".into()], reason: "reason".into(), at },
            Notice::Test { at, config: "/etc/token-bastion/services.yaml".into(), channel: "mail".into() },
        ];
        for n in &notices {
            self.notice(n, &admins)?;
        }
        Ok(())
    }

    fn render(&self, name: &'static str, ctx: Value, to: &[String]) -> Result<OutgoingMail, NotifyError> {
        let err = |e| template_error(&self.origin, name, e);
        let text = self.env.get_template(name).map_err(err)?.render(ctx).map_err(err)?;
        let shape_err = || NotifyError::TemplateShape { template: self.origin.get(name).cloned().unwrap_or_else(|| name.to_string()) };
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

    /// The run's message for the admins (and the webhook), whoever receives it; `None` when
    /// there is nothing to report.
    pub fn admin_message(&self, summary: &RunSummary, to: &[String]) -> Result<Option<OutgoingMail>, NotifyError> {
        if !summary.is_alert() {
            return Ok(None);
        }
        let failures: Vec<&FailureLine> = summary.failed.iter().collect();
        let expiring: Vec<&ExpiryLine> = summary.expiring.iter().collect();
        let recovered: Vec<&RecoveryLine> = summary.recovered.iter().collect();
        let failed_services: BTreeSet<&str> = failures.iter().map(|f| f.service.as_str()).collect();
        let ctx = context! {
            failed_services => failed_services.len(),
            ..common_context(summary, &failures, &expiring, &recovered)
        };
        self.render(ADMIN_TEMPLATE, ctx, to).map(Some)
    }

    /// One mail to `admins` listing everything the run has to tell; `None` when there is
    /// nothing to report or nobody to tell.
    pub fn admin_mail(&self, summary: &RunSummary, admins: &[String]) -> Result<Option<OutgoingMail>, NotifyError> {
        if admins.is_empty() {
            return Ok(None);
        }
        self.admin_message(summary, admins)
    }

    /// One mail per service with something to tell and at least one owner, holding only that
    /// service's lines. Services without owners are left to the admin mail.
    pub fn owner_mails(&self, summary: &RunSummary, owners_by_service: &BTreeMap<String, Vec<String>>) -> Result<Vec<OutgoingMail>, NotifyError> {
        let affected: BTreeSet<&str> = summary
            .failed
            .iter()
            .map(|f| f.service.as_str())
            .chain(summary.expiring.iter().map(|e| e.service.as_str()))
            .chain(summary.recovered.iter().map(|r| r.service.as_str()))
            .collect();
        let mut mails = Vec::new();
        for service in affected {
            let Some(owners) = owners_by_service.get(service).filter(|o| !o.is_empty()) else {
                continue;
            };
            let failures: Vec<&FailureLine> = summary.failed.iter().filter(|f| f.service == service).collect();
            let expiring: Vec<&ExpiryLine> = summary.expiring.iter().filter(|e| e.service == service).collect();
            let recovered: Vec<&RecoveryLine> = summary.recovered.iter().filter(|r| r.service == service).collect();
            let ctx = context! { service => service, ..common_context(summary, &failures, &expiring, &recovered) };
            mails.push(self.render(OWNER_TEMPLATE, ctx, owners)?);
        }
        Ok(mails)
    }

    /// A daemon notice (or the test message) addressed to `to`.
    pub fn notice(&self, notice: &Notice, to: &[String]) -> Result<OutgoingMail, NotifyError> {
        self.render(notice.template(), notice.context(), to)
    }
}

/// A minijinja error as a reader can act on: the template's file (or built-in name), the line.
fn template_error(origin: &BTreeMap<&'static str, String>, name: &str, source: minijinja::Error) -> NotifyError {
    let file = origin.get(name).cloned().unwrap_or_else(|| name.to_string());
    let at = match source.line() {
        Some(line) if source.name() == Some(name) || source.name().is_none() => format!("{file}:{line}"),
        // An error raised in another template (an include) names that one.
        Some(line) => format!("{file} (in {}:{line})", source.name().unwrap_or("?")),
        None => file,
    };
    NotifyError::Template { at, detail: source.detail().map_or_else(|| source.kind().to_string(), str::to_string), source }
}

fn common_context(summary: &RunSummary, failures: &[&FailureLine], expiring: &[&ExpiryLine], recovered: &[&RecoveryLine]) -> Value {
    let failed_hosts: BTreeSet<String> = failures.iter().map(|f| f.host.clone()).collect();
    let expiring_hosts: BTreeSet<String> = expiring.iter().map(|e| e.host.clone()).collect();
    let recovered_hosts: BTreeSet<String> = recovered.iter().map(|r| r.host.clone()).collect();
    let urgent = failures.iter().filter(|f| f.urgent).count() + expiring.len();
    let failures: Vec<Value> = failures
        .iter()
        .map(|f| {
            context! {
                kind => f.kind.as_str(), urgent => f.urgent,
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
    let recovered: Vec<Value> = recovered
        .iter()
        .map(|r| {
            context! {
                service => &r.service, destination => &r.destination, host => &r.host,
                down_since => show_time(r.down_since), down_for => show_duration(r.down_secs), down_secs => r.down_secs,
            }
        })
        .collect();
    context! {
        run_id => summary.run_id,
        started => show_time(summary.started),
        dry_run => summary.dry_run,
        delivered => summary.delivered,
        urgent => urgent,
        failures => failures,
        expiring => expiring,
        recovered => recovered,
        failed_hosts => failed_hosts.into_iter().collect::<Vec<_>>(),
        expiring_hosts => expiring_hosts.into_iter().collect::<Vec<_>>(),
        recovered_hosts => recovered_hosts.into_iter().collect::<Vec<_>>(),
    }
}

fn show_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// "2d 3h", "5h 12m", "40m", "expired 3h ago": readable on a phone, precise enough to triage.
pub fn show_duration(secs: i64) -> String {
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

/// Where the templates come from, for `check`'s message.
pub fn template_names() -> impl Iterator<Item = &'static str> {
    BUILTIN_TEMPLATES.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn summary() -> RunSummary {
        RunSummary {
            run_id: 42,
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
                    ..FailureLine::default()
                },
                FailureLine {
                    service: "wmagent".into(),
                    destination: "schedd-b".into(),
                    host: "vocms0202.cern.ch".into(),
                    reason: "token refused: scope storage.modify:/ wider than allowed".into(),
                    since: at("2026-11-20T03:00:00Z"),
                    consecutive: 1,
                    ..FailureLine::default()
                },
            ],
            expiring: vec![ExpiryLine {
                service: "crab".into(),
                destination: "schedd-c".into(),
                host: "vocms0303.cern.ch".into(),
                time_left_secs: 2 * 86400 + 3 * 3600 + 60,
                warning_secs: 3 * 86400,
            }],
            recovered: vec![],
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
            matches!(&err, NotifyError::Template { at, .. } if at.contains(ADMIN_TEMPLATE)),
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
}
