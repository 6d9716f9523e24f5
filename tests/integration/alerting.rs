//! Alerting end to end against real SMTP (aiosmtpd), real sshd schedds and OpenBao, with a
//! webhook receiver stand-in: thresholds across runs, urgent conditions told at once, recovery
//! told once, the webhook retried after it was down and given each message once, `notify
//! --test`, broken templates refused; every message, log and the state database swept for
//! every secret (the webhook URL included).

use std::path::PathBuf;
use std::time::Duration;

use token_bastion::notify::{self, Channel, OutgoingMail};
use token_bastion::state::StateStore;

use crate::harness::Leaks;
use crate::harness::stack::{ServiceDef, Stack, shown};
use crate::harness::webhook::{Mode, Webhook};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One service `prod` (with `extra` YAML in its block) delivered to the credd of every host,
/// mail to on-call and its owner, and the webhook.
fn stack_with<'l>(leaks: &'l Leaks, hosts: usize, extra: &str) -> (Stack<'l>, Webhook) {
    let mut stack = Stack::new(leaks).with_hosts(hosts).with_smtp();
    let mut prod = ServiceDef::new("prod", &["compute.create"]);
    prod.extra = extra.into();
    stack.add_service(prod);
    let webhook = Webhook::start(stack.root(), leaks);
    stack.notify_extra.push_str(&webhook.inventory_yaml());
    stack.put_token("prod", &crate::harness::openbao::JwtSpec { scope: Some("compute.create".into()), ..Default::default() });
    stack.write_inventory();
    leaks.path(&stack.state_dir);
    (stack, webhook)
}

/// The `.top` of `prod` on `host`.
fn top(stack: &Stack, host: &str) -> PathBuf {
    let dir = stack.host(host).spool.join("acctprod");
    std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "top")).unwrap_or_else(|| panic!("no .top in {}", dir.display()))
}

fn keep_tops_secret(stack: &Stack, leaks: &Leaks) {
    for host in stack.hosts.keys() {
        let text = std::fs::read_to_string(top(stack, host)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        leaks.secret(v["vault_token"].as_str().unwrap());
    }
}

/// Settles whatever in-flight SMTP delivery a run started: aiosmtpd writes a mail to its
/// Maildir before it answers, so after a run, what it holds is final.
fn mails(stack: &Stack) -> Vec<crate::harness::smtp::ReceivedMail> {
    stack.smtp.as_ref().unwrap().messages()
}

#[test]
fn a_failure_is_told_at_its_threshold_and_its_recovery_once() {
    let leaks = Leaks::default();
    let (mut stack, webhook) = stack_with(&leaks, 2, "    alert_after: 2\n");
    assert_eq!(stack.run("healthy", &["run"]).status.code(), Some(0));
    assert!(mails(&stack).is_empty() && webhook.requests() == 0, "nothing to tell");

    stack.host_mut("schedd2").stop();
    let out = stack.run("first failure", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(mails(&stack).is_empty(), "one failure is below alert_after: 2: {:#?}", mails(&stack));
    assert_eq!(webhook.requests(), 0);

    assert_eq!(stack.run("second failure", &["run"]).status.code(), Some(1));
    let told = mails(&stack);
    assert_eq!(told.len(), 2, "admin and owner mail at the second failure in a row: {told:#?}");
    assert!(told.iter().all(|m| m.body.contains("2 attempts in a row") && m.body.contains("schedd2")), "{told:#?}");
    let posts = webhook.accepted();
    assert_eq!(posts.len(), 1, "the admins' message on the webhook too");
    assert!(posts[0].starts_with("[token-bastion] FAILED 1 service on schedd2") && posts[0].contains("2 attempts in a row"), "{}", posts[0]);

    stack.host_mut("schedd2").restart();
    assert_eq!(stack.run("recovered", &["run"]).status.code(), Some(0));
    let told = mails(&stack);
    assert_eq!(told.len(), 4, "{told:#?}");
    let admin = told[2..].iter().find(|m| m.to.iter().any(|t| t == "oncall@example.org")).expect("admin recovery mail");
    assert!(admin.subject.starts_with("[token-bastion] RECOVERED prod on schedd2 (down "), "{}", admin.subject);
    assert!(admin.body.contains("RECOVERED (delivered again)") && admin.body.contains("down for"), "{}", admin.body);
    assert!(told[2..].iter().any(|m| m.to.iter().any(|t| t == "prod-owner@example.org") && m.body.contains("Delivered again")));
    assert_eq!(webhook.accepted().len(), 2);
    assert!(webhook.accepted()[1].contains("RECOVERED"));

    assert_eq!(stack.run("still healthy", &["run"]).status.code(), Some(0));
    assert_eq!((mails(&stack).len(), webhook.accepted().len()), (4, 2), "a recovery is told once");

    stack.smtp.as_ref().unwrap().record_in(&leaks);
    webhook.record_in(&leaks);
    keep_tops_secret(&stack, &leaks);
    leaks.assert_clean();
}

#[test]
fn urgent_conditions_are_told_at_once_whatever_the_threshold() {
    let leaks = Leaks::default();
    let (stack, webhook) = stack_with(&leaks, 1, "    alert_after: 10\n");
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    assert_eq!(stack.run("second", &["run"]).status.code(), Some(0));
    assert!(mails(&stack).is_empty());

    // The credmon deleted the .top: its account directory stays, no .mark beside it.
    std::fs::remove_file(top(&stack, "schedd1")).unwrap();
    let out = stack.run("refused", &["run"]);
    assert_eq!(out.status.code(), Some(0), "delivered again: {}", shown(&out));
    let told = mails(&stack);
    assert_eq!(told.len(), 2, "{told:#?}");
    let admin = told.iter().find(|m| m.to.iter().any(|t| t == "oncall@example.org")).unwrap();
    assert!(admin.subject.contains("URGENT FAILED"), "{}", admin.subject);
    assert!(admin.body.contains("[URGENT: the credmon refused the token]") && admin.body.contains("no .mark"), "{}", admin.body);
    assert_eq!(webhook.accepted().len(), 1);

    // The credd's own clean-up: a .mark, and the directory swept. Reported as such, not told.
    let dir = stack.host("schedd1").spool.join("acctprod");
    std::fs::write(stack.host("schedd1").spool.join("acctprod.mark"), "").unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let out = stack.run("swept", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(!stdout(&out).contains("WARNING"), "{}", shown(&out));
    assert!(stderr(&out).contains("normal clean-up"), "{}", shown(&out));
    assert_eq!((mails(&stack).len(), webhook.accepted().len()), (2, 1), "nothing told about a clean-up");

    // A cycle of the daemon that could not run: told at once, then not again within
    // remind_every while the reason is the same.
    let inv = token_bastion::inventory::load(&stack.config).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..2 {
        token_bastion::cycle::notify_setup_failure(&stack.state_dir, &inv, &["prod".to_string()], "state database: disk I/O error", runtime.handle());
    }
    let told = mails(&stack);
    assert_eq!(told.len(), 3, "{told:#?}");
    assert_eq!(told[2].subject, "[token-bastion] URGENT: a cycle could not run (1 service)");
    assert!(told[2].body.contains("reason: state database: disk I/O error"), "{}", told[2].body);
    assert_eq!(webhook.accepted().len(), 2);

    stack.smtp.as_ref().unwrap().record_in(&leaks);
    webhook.record_in(&leaks);
    keep_tops_secret(&stack, &leaks);
    leaks.assert_clean();
}

fn message(n: u32) -> OutgoingMail {
    OutgoingMail { to: vec![], subject: format!("[token-bastion] message {n}"), body: format!("line {n}\n") }
}

#[test]
fn the_webhook_gets_each_message_once_after_it_was_down() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let webhook = Webhook::start(tmp.path(), &leaks);
    let state_dir = tmp.path().join("state");
    leaks.path(&state_dir);
    let store = StateStore::open(&state_dir).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cfg = notify::WebhookConfig::from_file(&webhook.url_file, token_bastion::http::CaSource::File(webhook.ca().into()), Duration::from_secs(10)).unwrap();
    leaks.text("webhook config debug", &format!("{cfg:?}"));
    let channels = notify::Channels { smtp: None, webhook: Some(cfg) };
    let send = || token_bastion::cycle::send_outbox(&store, &channels, runtime.handle()).unwrap();
    for n in 1..=2 {
        store.enqueue(Channel::Webhook, &message(n)).unwrap();
    }

    // Down: the first post fails and counts, the second waits for the next attempt.
    webhook.set(Mode::Failing);
    let r = send();
    assert_eq!((r.sent, r.failed, r.deferred), (0, 1, 1));
    assert_eq!(webhook.requests(), 1);
    let pending = store.pending_mail().unwrap();
    assert_eq!(pending.iter().map(|q| q.attempts).collect::<Vec<_>>(), [1, 0]);
    let err = pending[0].last_error.clone().unwrap();
    assert!(err.contains("HTTP 503"), "{err}");
    leaks.text("outbox error", &err);

    // A revoked hook: refused, still kept.
    webhook.set(Mode::Refusing);
    let r = send();
    assert_eq!((r.sent, r.failed, r.deferred), (0, 1, 1));
    assert!(store.pending_mail().unwrap()[0].last_error.as_deref().unwrap().contains("HTTP 403"));

    // Back: each message once, in order, and never again.
    webhook.set(Mode::Up);
    let r = send();
    assert_eq!((r.sent, r.failed, r.deferred), (2, 0, 0));
    assert_eq!(webhook.accepted(), ["[token-bastion] message 1\n\nline 1", "[token-bastion] message 2\n\nline 2"]);
    assert_eq!(send(), notify::OutboxReport::default());
    assert_eq!(webhook.accepted().len(), 2, "exactly once");

    webhook.record_in(&leaks);
    drop(store);
    leaks.assert_clean();
}

#[test]
fn notify_test_says_which_channel_worked() {
    let leaks = Leaks::default();
    let (stack, webhook) = stack_with(&leaks, 1, "");
    let out = stack.run("notify test", &["notify", "--test"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(stdout(&out), "mail: sent to oncall@example.org\nwebhook: sent\n");
    let told = mails(&stack);
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].subject, "[token-bastion] test message (mail)");
    assert!(webhook.accepted()[0].starts_with("[token-bastion] test message (webhook)"));

    webhook.set(Mode::Refusing);
    let out = stack.run("notify test refused", &["notify", "--test"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(stdout(&out).contains("webhook: FAILED: webhook answered HTTP 403") && stdout(&out).contains("mail: sent"), "{}", shown(&out));

    // The URL file readable by others: a configuration error, nothing sent.
    std::fs::set_permissions(&webhook.url_file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = stack.run("notify test open url file", &["notify", "--test"]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(stderr(&out).contains("notify.webhook.url_file"), "{}", shown(&out));
    assert_eq!(mails(&stack).len(), 2);

    stack.smtp.as_ref().unwrap().record_in(&leaks);
    webhook.record_in(&leaks);
    leaks.assert_clean();
}

#[test]
fn a_broken_template_is_refused_by_check_and_run_naming_its_file_and_line() {
    let leaks = Leaks::default();
    let (stack, _webhook) = stack_with(&leaks, 1, "");
    let templates = stack.root().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let text = stack.inventory_text().replace("  admins: [oncall@example.org]\n", &format!("  admins: [oncall@example.org]\n  templates_dir: {}\n", templates.display()));
    std::fs::write(&stack.config, text).unwrap();
    assert_eq!(stack.run("check fine", &["check"]).status.code(), Some(0));

    // Only the daemon sends this one: check renders it all the same.
    let broken = templates.join("overdue.txt.j2");
    std::fs::write(&broken, "Subject: overdue {{ service }}\n\nlast: {{ last_completed }}\n{{ deadlin }}\n").unwrap();
    for (label, args) in [("check", &["check"][..]), ("run", &["run"][..]), ("notify test", &["notify", "--test"][..])] {
        let out = stack.run(label, args);
        assert_eq!(out.status.code(), Some(2), "{label}: {}", shown(&out));
        assert!(stderr(&out).contains(&format!("{}:4", broken.display())), "{label} names file and line: {}", shown(&out));
    }
    assert!(mails(&stack).is_empty());
    leaks.assert_clean();
}
