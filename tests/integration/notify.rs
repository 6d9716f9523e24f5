//! Mail end to end against a real SMTP server (aiosmtpd): rendered admin and owner mail arrives
//! with the right envelope, subject and lines; the outbox marks what was sent and keeps what was
//! not; no fixture secret reaches a mail, the state database or an error.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use token_bastion::notify::{
    self, ExpiryLine, FailureLine, OutgoingMail, RunSummary, SmtpConfig, Templates, Tls,
};
use token_bastion::secret::{Fingerprint, Secret};
use token_bastion::state::StateStore;

use crate::harness::smtp::Smtp;
use crate::harness::{Leaks, free_port};

const SMTP_PASSWORD: &str = "smtp-fixture-password-7f3a9c";
const ACCESS_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.fixture-payload-5d1e.fixture-signature-0b2c";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn smtp_config(port: u16, password: Option<&str>) -> SmtpConfig {
    SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        from: "token-bastion <bastion@example.org>".into(),
        tls: Tls::None,
        username: password.map(|_| "bastion".to_string()),
        password: password.map(Secret::new),
        timeout: Duration::from_secs(10),
    }
}

/// Two failures of two services on two hosts, one expiry warning; one reason names the refused
/// token by its fingerprint, as the product does.
fn summary() -> RunSummary {
    let token = Secret::new(ACCESS_TOKEN);
    let fp = Fingerprint::of(&token, Some("jti-4711".into()), Some(1_800_000_000));
    RunSummary {
        run_id: 7,
        started: at("2026-11-20T03:00:00Z"),
        dry_run: false,
        delivered: 3,
        failed: vec![
            FailureLine {
                service: "crab".into(),
                destination: "crab-schedd".into(),
                host: "vocms0101.cern.ch".into(),
                reason: "ssh: host key mismatch for vocms0101.cern.ch".into(),
                since: at("2026-11-19T21:00:00Z"),
                consecutive: 3,
                ..FailureLine::default()
            },
            FailureLine {
                service: "wmagent".into(),
                destination: "wma-schedd".into(),
                host: "vocms0202.cern.ch".into(),
                reason: format!("token {fp} refused: lacks scope storage.create:/store/unmerged"),
                since: at("2026-11-20T03:00:00Z"),
                consecutive: 1,
                ..FailureLine::default()
            },
        ],
        expiring: vec![ExpiryLine {
            service: "crab".into(),
            destination: "crab-schedd-2".into(),
            host: "vocms0303.cern.ch".into(),
            time_left_secs: 36 * 3600,
            warning_secs: 72 * 3600,
        }],
        recovered: vec![],
    }
}

/// The outbox sent over mail only, as a cycle sends it.
fn send_outbox(store: &StateStore, cfg: &SmtpConfig) -> notify::OutboxReport {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let channels = notify::Channels { smtp: Some(cfg.clone()), webhook: None };
    token_bastion::cycle::send_outbox(store, &channels, runtime.handle()).unwrap()
}

/// A real SMTP server and a state directory under a temporary root, both watched for leaks.
fn outbox_fixture() -> (tempfile::TempDir, Leaks, Smtp, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = leaks_with_fixtures();
    let smtp = Smtp::start(tmp.path(), &leaks);
    let state_dir = tmp.path().join("state");
    leaks.path(&state_dir);
    (tmp, leaks, smtp, state_dir)
}

fn leaks_with_fixtures() -> Leaks {
    let leaks = Leaks::default();
    leaks.secret(SMTP_PASSWORD);
    leaks.secret(ACCESS_TOKEN);
    leaks.secret("fixture-payload-5d1e");
    leaks
}

#[test]
fn admin_and_owner_mails_arrive_with_recipients_subjects_and_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = leaks_with_fixtures();
    let smtp = Smtp::start(tmp.path(), &leaks);
    let cfg = smtp_config(smtp.port, None);
    let templates = Templates::load(None).unwrap();
    let summary = summary();

    let admin = templates
        .admin_mail(
            &summary,
            &["oncall@example.org".into(), "cms-bastion-admins@example.org".into()],
        )
        .unwrap()
        .expect("failures make an admin mail");
    let owners = BTreeMap::from([
        ("wmagent".to_string(), vec!["wma-ops@example.org".to_string()]),
        ("tier0".to_string(), vec!["t0-ops@example.org".to_string()]),
    ]);
    let owner = templates.owner_mails(&summary, &owners).unwrap();
    assert_eq!(owner.len(), 1, "crab has no owners, tier0 is not affected");
    notify::send(&cfg, &admin).unwrap();
    notify::send(&cfg, &owner[0]).unwrap();

    let got = smtp.wait_for_messages(2, Duration::from_secs(10));
    smtp.record_in(&leaks);
    let admin_rx =
        got.iter().find(|m| m.to.contains(&"oncall@example.org".to_string())).expect("admin mail");
    assert_eq!(admin_rx.to, vec!["oncall@example.org", "cms-bastion-admins@example.org"]);
    assert_eq!(admin_rx.from, "bastion@example.org");
    assert_eq!(
        admin_rx.subject,
        "[token-bastion] FAILED 2 services on vocms0101.cern.ch, vocms0202.cern.ch; 1 expiring"
    );
    for line in [
        "* crab -> crab-schedd on vocms0101.cern.ch",
        "  reason: ssh: host key mismatch for vocms0101.cern.ch",
        "  failing since 2026-11-19 21:00:00 UTC (3 attempts in a row)",
        "* wmagent -> wma-schedd on vocms0202.cern.ch",
        "lacks scope storage.create:/store/unmerged",
        "* crab -> crab-schedd-2 on vocms0303.cern.ch",
        "  time left: 1d 12h (warning threshold 3d 0h)",
    ] {
        assert!(admin_rx.body.contains(line), "admin body lacks {line:?}:\n{}", admin_rx.body);
    }

    let owner_rx = got.iter().find(|m| m.to == ["wma-ops@example.org"]).expect("owner mail");
    assert_eq!(
        owner_rx.subject,
        "[token-bastion] wmagent: tokens not delivered to vocms0202.cern.ch"
    );
    assert!(owner_rx.body.contains("* wma-schedd on vocms0202.cern.ch"), "{}", owner_rx.body);
    assert!(owner_rx.body.contains("reason: token jti=jti-4711"), "{}", owner_rx.body);
    assert!(
        !owner_rx.body.contains("vocms0101") && !owner_rx.body.contains("crab"),
        "{}",
        owner_rx.body
    );

    leaks.assert_clean();
}

#[test]
fn outbox_marks_sent_mail_and_keeps_failed_mail_with_attempts_counted() {
    let (_tmp, leaks, smtp, state_dir) = outbox_fixture();
    let store = StateStore::open(&state_dir).unwrap();
    let mail = |n: u32| OutgoingMail {
        to: vec![format!("owner{n}@example.org")],
        subject: format!("[token-bastion] test {n}"),
        body: format!("line {n}\n"),
    };

    // A relay that is not there: the first mail is attempted and fails, the rest wait.
    let closed = smtp_config(free_port(false), Some(SMTP_PASSWORD));
    leaks.text("smtp config debug", &format!("{closed:?}"));
    let ids: Vec<_> = (1..=3).map(|n| store.enqueue_mail(&mail(n)).unwrap()).collect();
    let report = send_outbox(&store, &closed);
    assert_eq!((report.sent, report.failed, report.deferred), (0, 1, 2));
    let pending = store.pending_mail().unwrap();
    assert_eq!(pending.iter().map(|q| q.id).collect::<Vec<_>>(), ids);
    assert_eq!(pending.iter().map(|q| q.attempts).collect::<Vec<_>>(), vec![1, 0, 0]);
    let err = pending[0].last_error.as_deref().unwrap();
    assert!(err.contains(&format!("127.0.0.1:{}", closed.port)), "{err}");
    leaks.text("outbox error", err);
    assert!(smtp.messages().is_empty());

    // The real relay: everything queued goes out and leaves the outbox.
    let report = send_outbox(&store, &smtp_config(smtp.port, None));
    assert_eq!((report.sent, report.failed, report.deferred), (3, 0, 0));
    assert!(store.pending_mail().unwrap().is_empty());
    let got = smtp.wait_for_messages(3, Duration::from_secs(10));
    let mut subjects: Vec<_> =
        got.iter().map(|m| (m.to.clone(), m.subject.clone(), m.body.clone())).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        (1..=3)
            .map(|n| (
                vec![format!("owner{n}@example.org")],
                format!("[token-bastion] test {n}"),
                format!("line {n}\n")
            ))
            .collect::<Vec<_>>()
    );

    // Nothing pending: nothing sent twice.
    let report = send_outbox(&store, &smtp_config(smtp.port, None));
    assert_eq!((report.sent, report.failed, report.deferred), (0, 0, 0));
    assert_eq!(smtp.messages().len(), 3);

    smtp.record_in(&leaks);
    drop(store);
    leaks.assert_clean();
}

#[test]
fn senders_at_the_same_moment_send_each_queued_mail_once() {
    let (_tmp, leaks, smtp, state_dir) = outbox_fixture();
    let store = StateStore::open(&state_dir).unwrap();
    let queued = 12;
    for n in 0..queued {
        store
            .enqueue_mail(&OutgoingMail { to: vec![format!("oncall{n}@example.org")], subject: format!("notice {n}"), body: "b\n".into() })
            .unwrap();
    }

    // As a daemon notice and a cycle's end do: each sender with its own connection.
    let senders = 4;
    let start = std::sync::Barrier::new(senders);
    let cfg = smtp_config(smtp.port, None);
    let sent: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..senders)
            .map(|_| {
                s.spawn(|| {
                    let store = StateStore::open(&state_dir).unwrap();
                    start.wait();
                    send_outbox(&store, &cfg).sent
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });

    assert_eq!(sent, queued, "each mail is sent by one sender");
    assert!(store.pending_mail().unwrap().is_empty());
    let got = smtp.wait_for_messages(queued, Duration::from_secs(10));
    let mut subjects: Vec<_> = got.iter().map(|m| m.subject.clone()).collect();
    subjects.sort();
    let mut want: Vec<_> = (0..queued).map(|n| format!("notice {n}")).collect();
    want.sort();
    assert_eq!(subjects, want, "no mail twice, none missing");
    smtp.record_in(&leaks);
    drop(store);
    leaks.assert_clean();
}

#[test]
fn a_rejected_recipient_fails_that_mail_only() {
    let (_tmp, leaks, smtp, state_dir) = outbox_fixture();
    let store = StateStore::open(&state_dir).unwrap();
    let bad = store
        .enqueue_mail(&OutgoingMail {
            to: vec!["not an address".into()],
            subject: "s".into(),
            body: "b\n".into(),
        })
        .unwrap();
    store
        .enqueue_mail(&OutgoingMail {
            to: vec!["ok@example.org".into()],
            subject: "fine".into(),
            body: "b\n".into(),
        })
        .unwrap();
    let report = send_outbox(&store, &smtp_config(smtp.port, None));
    assert_eq!((report.sent, report.failed, report.deferred), (1, 1, 0));
    let pending = store.pending_mail().unwrap();
    assert_eq!((pending.len(), pending[0].id, pending[0].attempts), (1, bad, 1));
    assert!(pending[0].last_error.as_deref().unwrap().contains("not an address"));
    assert_eq!(smtp.wait_for_messages(1, Duration::from_secs(10))[0].subject, "fine");
    smtp.record_in(&leaks);
    leaks.assert_clean();
}

#[test]
fn smtp_auth_uses_the_password_and_never_repeats_it() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = leaks_with_fixtures();
    let smtp = Smtp::start_with_auth(tmp.path(), &leaks, "bastion", SMTP_PASSWORD);
    let mail = OutgoingMail {
        to: vec!["oncall@example.org".into()],
        subject: "auth".into(),
        body: "b\n".into(),
    };

    let err = notify::send(&smtp_config(smtp.port, None), &mail).unwrap_err();
    assert!(matches!(err, notify::NotifyError::Send { .. }), "{err:?}");
    leaks.text("unauthenticated send error", &format!("{err} / {err:?}"));

    let wrong = smtp_config(smtp.port, Some("wrong-password-0000"));
    let err = notify::send(&wrong, &mail).unwrap_err();
    leaks.text("wrong password error", &format!("{err} / {err:?}"));
    assert!(!err.to_string().contains("wrong-password-0000"), "{err}");
    assert!(smtp.messages().is_empty());

    notify::send(&smtp_config(smtp.port, Some(SMTP_PASSWORD)), &mail).unwrap();
    let got = smtp.wait_for_messages(1, Duration::from_secs(10));
    assert_eq!(
        (got[0].to.clone(), got[0].subject.as_str()),
        (vec!["oncall@example.org".to_string()], "auth")
    );
    smtp.record_in(&leaks);
    leaks.assert_clean();
}
