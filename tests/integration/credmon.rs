//! The schedd's credmon seen from the bastion, against real sshd schedds and OpenBao with the
//! credmon stand-in (`harness::credmon`): a `.use` is written only where there is none and is
//! the credmon's afterwards; a healthy credmon is seen refreshing; a stopped one is alarmed on
//! once and cleared when it resumes; a `.use` the credmon never rewrites is reported.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::daemon::{service_on, Daemon};
use crate::harness::credmon::CredmonStandin;
use crate::harness::openbao::JwtSpec;
use crate::harness::smtp::ReceivedMail;
use crate::harness::stack::{shown, ServiceDef, Stack};
use crate::harness::{wait_until, Leaks};

fn spec() -> JwtSpec {
    JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() }
}

fn stack(leaks: &Leaks) -> Stack<'_> {
    let mut stack = Stack::new(leaks).with_hosts(1).with_smtp();
    stack.add_service(ServiceDef::new("prod", &["compute.create"]));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    stack
}

fn files(stack: &Stack) -> (PathBuf, PathBuf) {
    let dir = stack.host("schedd1").spool.join("acctprod");
    (dir.join("cms_prod.top"), dir.join("cms_prod.use"))
}

fn run(stack: &Stack, label: &str) {
    let out = stack.run(label, &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let (top, _) = files(stack);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(top).unwrap()).unwrap();
    stack.leaks.secret(doc["vault_token"].as_str().unwrap());
}

/// The credd destination's row of `status --json`.
fn row(stack: &Stack) -> Value {
    let out = stack.run("status", &["status", "--json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", shown(&out)));
    rows.into_iter().find(|r| r["destination"] == "credd@schedd1").expect("a credd row")
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

fn mtime(path: &PathBuf) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().mtime()
}

/// Sets a file's mtime `secs` seconds into the past.
fn age(path: &PathBuf, secs: i64) {
    let at = chrono::Utc::now().timestamp() - secs;
    let st = Command::new("touch").args(["-m", "-d", &format!("@{at}")]).arg(path).status().unwrap();
    assert!(st.success());
}

/// Admin mails that tell of a credmon (its service's owners get their own copy).
fn credmon_mails(stack: &Stack) -> usize {
    let told = |m: &&ReceivedMail| m.to.iter().any(|t| t == "oncall@example.org") && (m.body.contains("credmon stuck") || m.body.contains("credmon not_refreshing"));
    stack.smtp.as_ref().unwrap().messages().iter().filter(told).count()
}

#[test]
fn a_healthy_credmon_owns_the_use_and_a_stopped_one_is_alarmed_once_then_cleared() {
    let leaks = Leaks::default();
    let stack = stack(&leaks);
    let spool = stack.host("schedd1").spool.clone();
    let mut credmon = CredmonStandin::start(&spool, &stack.bao, true);
    let (top, used) = files(&stack);

    run(&stack, "first");
    let written = mtime(&used);
    assert_eq!(row(&stack)["credmon"], "unknown", "nothing was there to judge before the first delivery");
    // The credmon refreshes a .use once its .top is newer: let a second pass so that its
    // rewrite is told apart from the bastion's write by mtime.
    assert!(wait_until(Duration::from_secs(5), || chrono::Utc::now().timestamp() > written + 1));
    let new_jwt = stack.put_token("prod", &spec());
    run(&stack, "second");
    assert!(
        wait_until(Duration::from_secs(20), || read(&used) == new_jwt),
        "after the new .top and the SIGHUP the credmon rewrote the .use:\n{}",
        credmon.log_text()
    );
    assert!(credmon.log_text().contains("got SIGHUP"), "{}", credmon.log_text());

    run(&stack, "third");
    let r = row(&stack);
    assert_eq!(r["credmon"], "refreshing", "{r:#}");
    assert!(r["credmon_refreshed_at"].is_string(), "the credmon's own rewrite was recorded: {r:#}");
    assert!(r["credmon_checked_at"].is_string(), "{r:#}");
    let table = String::from_utf8(stack.run("status", &["status"]).stdout).unwrap();
    assert!(table.contains("CREDMON") && table.contains("refreshing"), "{table}");
    assert_eq!(credmon_mails(&stack), 0, "no alarm while it refreshes");

    // Stopped: its pid file now names a process that is gone.
    credmon.kill();
    run(&stack, "stopped");
    let r = row(&stack);
    assert_eq!(r["credmon"], "stuck", "{r:#}");
    assert!(r["credmon_reason"].as_str().unwrap().contains("which is not running"), "{r:#}");
    let smtp = stack.smtp.as_ref().unwrap();
    smtp.wait_for_messages(1, Duration::from_secs(10));
    assert_eq!(credmon_mails(&stack), 1, "on-call is told: {:#?}", smtp.messages());
    run(&stack, "still stopped");
    assert_eq!(row(&stack)["credmon"], "stuck");
    assert_eq!(credmon_mails(&stack), 1, "told once, not every cycle: {:#?}", smtp.messages());

    // It resumes: the state clears.
    let _credmon = CredmonStandin::start(&spool, &stack.bao, true);
    run(&stack, "resumed");
    let r = row(&stack);
    assert_eq!(r["credmon"], "refreshing", "{r:#}");
    assert_eq!(credmon_mails(&stack), 1);
    assert!(top.exists());
    smtp.record_in(&leaks);
    leaks.assert_clean();
}

#[test]
fn a_use_the_credmon_never_rewrites_is_kept_as_it_is_and_reported() {
    let leaks = Leaks::default();
    let stack = stack(&leaks);
    let spool = stack.host("schedd1").spool.clone();
    let credmon = CredmonStandin::start(&spool, &stack.bao, false);
    let (top, used) = files(&stack);

    run(&stack, "first");
    let first = read(&used);
    let second_jwt = stack.put_token("prod", &spec());
    run(&stack, "second");
    assert!(credmon.wait_for("scan complete", 3, Duration::from_secs(20)), "the SIGHUP made it scan: {}", credmon.log_text());
    assert_eq!(read(&used), first, "the bastion does not replace a .use that is there");
    assert_ne!(first, second_jwt);
    assert_eq!(row(&stack)["credmon"], "refreshing", "nothing is overdue yet");

    // As if the .top had been delivered five minutes ago and the .use ten: the credmon has had
    // its scans and did not use the new Vault token.
    age(&used, 600);
    age(&top, 300);
    run(&stack, "third");
    let r = row(&stack);
    assert_eq!(r["credmon"], "not_refreshing", "{r:#}");
    assert!(r["credmon_reason"].as_str().unwrap().contains("older than the .top"), "{r:#}");
    assert!(r["credmon_refreshed_at"].is_null(), "never seen refreshing: {r:#}");
    assert_eq!(read(&used), first, "still not replaced by the bastion");
    let smtp = stack.smtp.as_ref().unwrap();
    smtp.wait_for_messages(1, Duration::from_secs(10));
    assert_eq!(credmon_mails(&stack), 1, "{:#?}", smtp.messages());

    // A .use that was not rewritten for longer than the refresh interval.
    age(&used, 3600);
    age(&top, 3600);
    run(&stack, "fourth");
    let r = row(&stack);
    assert_eq!(r["credmon"], "not_refreshing", "{r:#}");
    assert!(r["credmon_reason"].as_str().unwrap().contains("older than the .top") || r["credmon_reason"].as_str().unwrap().contains("last rewritten"), "{r:#}");
    assert_eq!(credmon_mails(&stack), 1, "still the same condition: told once");
    smtp.record_in(&leaks);
    leaks.assert_clean();
}

fn inode(path: &PathBuf) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// With the login token reused, a cycle's `.top` is the one already there: it is left alone
/// (same file, not rewritten) and the credmon is not woken for it, while a new login token is
/// delivered and wakes it.
#[test]
fn a_top_that_already_holds_the_kept_login_token_is_left_alone_and_wakes_no_credmon() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1).with_smtp();
    let mut def = ServiceDef::new("prod", &["compute.create"]);
    def.extra = "    renew_before: 10m\n".into();
    stack.add_service(def);
    stack.put_token("prod", &spec());
    stack.write_inventory();
    let spool = stack.host("schedd1").spool.clone();
    let credmon = CredmonStandin::start(&spool, &stack.bao, true);
    let (top, _) = files(&stack);
    let hups = || credmon.log_text().matches("got SIGHUP").count();

    run(&stack, "first");
    assert!(wait_until(Duration::from_secs(10), || hups() == 1), "the first delivery wakes the credmon: {}", credmon.log_text());
    let (held, ino) = (std::fs::read(&top).unwrap(), inode(&top));
    stack.put_token("prod", &spec());
    run(&stack, "warm");
    assert!(std::fs::read(&top).unwrap() == held, "the same login token");
    assert_eq!(inode(&top), ino, "the .top there was not replaced");
    assert!(credmon.wait_for("scan complete", 2, Duration::from_secs(20)), "{}", credmon.log_text());
    assert_eq!(hups(), 1, "nothing new, no SIGHUP: {}", credmon.log_text());
    let r = row(&stack);
    assert!(r["consecutive_failures"] == 0 && r["last_success"].is_string(), "still delivered: {r:#}");

    // A new login token (the kept one revoked) is delivered and wakes the credmon.
    let doc: Value = serde_json::from_slice(&held).unwrap();
    stack.bao.revoke(doc["vault_token"].as_str().unwrap());
    run(&stack, "new login");
    assert_ne!(inode(&top), ino, "a new .top");
    assert!(wait_until(Duration::from_secs(10), || hups() == 2), "{}", credmon.log_text());
    leaks.assert_clean();
}

/// A `.use` that is not there is written by the bastion (and only then).
#[test]
fn a_missing_use_is_written_again() {
    let leaks = Leaks::default();
    let stack = stack(&leaks);
    let (_, used) = files(&stack);
    run(&stack, "first");
    let first = read(&used);
    std::fs::remove_file(&used).unwrap();
    let second_jwt = stack.put_token("prod", &spec());
    run(&stack, "second");
    assert_eq!(read(&used), second_jwt, "a missing .use is written");
    assert_ne!(first, second_jwt);
    let third_jwt = stack.put_token("prod", &spec());
    run(&stack, "third");
    assert_eq!(read(&used), second_jwt, "one that is there is left to the credmon");
    assert_ne!(third_jwt, second_jwt);
    leaks.assert_clean();
}

/// `status --service prod --host schedd1`: its exit code and what it said.
fn ready_cli(stack: &Stack, host: &str) -> (Option<i32>, String) {
    let out = stack.run("ready", &["status", "--service", "prod", "--host", host]);
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `/ready` of the daemon for prod on `host`: status and the JSON body.
fn ready_http(daemon: &Daemon, service: &str, host: &str) -> (u16, Value) {
    let (code, body) = daemon.get(&format!("/ready?service={service}&host={host}"));
    (code, serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")))
}

#[test]
fn readiness_by_status_and_by_the_daemon_follows_the_token_and_the_credmon() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    // Scheduled once a year: the daemon only answers, the runs here are by hand.
    stack.add_service(service_on("prod", "0 0 1 1 *"));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    let spool = stack.host("schedd1").spool.clone();
    let mut credmon = CredmonStandin::start(&spool, &stack.bao, true);
    let mut daemon = Daemon::start(&stack, &leaks, "5s");
    assert!(wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", daemon.metrics_port())).is_ok()));

    let (code, said) = ready_cli(&stack, "schedd1");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("not ready") && said.contains("nothing delivered there yet"), "{said}");
    let (code, body) = ready_http(&daemon, "prod", "schedd1");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert!(body["reason"].as_str().unwrap().contains("nothing delivered"), "{body}");
    assert!(body["checked_at"].is_string(), "{body}");
    assert_eq!(ready_http(&daemon, "nope", "schedd1").0, 404);
    assert_eq!(daemon.get("/ready").0, 400);

    run(&stack, "first");
    let (code, said) = ready_cli(&stack, "schedd1");
    assert_eq!(code, Some(1), "the credmon was not seen refreshing yet: {said}");
    run(&stack, "second");
    let (code, said) = ready_cli(&stack, "schedd1");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("ready: credd@schedd1:") && said.contains("credmon refreshing"), "{said}");
    let (code, body) = ready_http(&daemon, "prod", "schedd1");
    assert_eq!((code, &body["ready"]), (200, &Value::Bool(true)), "{body}");

    credmon.kill();
    run(&stack, "credmon gone");
    let (code, said) = ready_cli(&stack, "schedd1");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("credmon stuck"), "{said}");
    let (code, body) = ready_http(&daemon, "prod", "schedd1");
    assert_eq!(code, 503, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("credmon stuck"), "{body}");

    let (code, said) = ready_cli(&stack, "schedd9");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("no destination on host `schedd9`"), "{said}");

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0));
    leaks.assert_clean();
}
