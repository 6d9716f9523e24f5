//! Crashes and failures at the moments that decide what a destination holds, injected with
//! failpoints (cargo feature `failpoints`, set through `FAILPOINTS` in the product's process)
//! into the real binary against real OpenBao and sshd: after the broker's reply, after a
//! host's intent record, after a rename before its answer is read, before the outcome is
//! written. Each time: the crash, then a cycle with
//! the host that was being written blocked, then a normal cycle; after every step each
//! destination holds a token OpenBao accepts and no live token is missing from the ledger, and
//! after the last nothing that no destination may hold is left live.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::harness::openbao::JwtSpec;
use crate::harness::stack::{shown, ServiceDef, Stack};
use crate::harness::tokens::{self, alive};
use crate::harness::Leaks;

const SERVICE: &str = "prod";

fn scenario(leaks: &Leaks) -> (Stack<'_>, Vec<PathBuf>) {
    tokens::two_schedds(leaks, SERVICE, true)
}

fn scenario_with(leaks: &Leaks, with_files: bool) -> (Stack<'_>, Vec<PathBuf>) {
    tokens::two_schedds(leaks, SERVICE, with_files)
}

fn run_with(stack: &mut Stack, label: &str, failpoints: &str) -> Output {
    run_args_with(stack, label, failpoints, &["run"])
}

fn run_args_with(stack: &mut Stack, label: &str, failpoints: &str, args: &[&str]) -> Output {
    stack.env.push(("FAILPOINTS".into(), failpoints.into()));
    let out = stack.run(label, args);
    stack.env.pop();
    out
}

fn check(stack: &Stack, files: &[PathBuf], when: &str, settled: bool) {
    let none = BTreeSet::new();
    tokens::assert_destinations_work(stack, files, when);
    tokens::assert_none_missing(stack, SERVICE, &none, when);
    if settled {
        tokens::assert_nothing_unheld(stack, SERVICE, files, &none, when);
    }
}

/// Kill at the failpoint; a cycle with the host the crash was writing to (else schedd1)
/// blocked; a normal cycle.
fn crash_block_recover(failpoints: &str) {
    let leaks = Leaks::default();
    let (mut stack, files) = scenario(&leaks);
    let out = stack.run("first", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    check(&stack, &files, "after the first cycle", true);

    let before = tokens::held(&stack, &files);
    let out = run_with(&mut stack, "crash", failpoints);
    assert_eq!(out.status.code(), None, "killed at {failpoints}: {}", shown(&out));
    check(&stack, &files, "after the crash", false);
    let after = tokens::held(&stack, &files);
    let host = stack
        .hosts
        .iter()
        .find(|(_, h)| after.iter().any(|(p, t)| p.starts_with(&h.dir) && before.get(p) != Some(t)))
        .map_or_else(|| "schedd1".to_string(), |(name, _)| name.clone());

    stack.host_mut(&host).stop();
    let out = stack.run("blocked", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{host} blocked: {}", shown(&out));
    check(&stack, &files, &format!("with {host} blocked"), false);

    stack.host_mut(&host).restart();
    let out = stack.run("recovered", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    check(&stack, &files, "after a normal cycle", true);
    stack.smtp.as_ref().unwrap().record_in(&leaks);
    leaks.assert_clean();
}

#[test]
fn killed_after_the_brokers_reply_to_the_login() {
    crash_block_recover("cycle::after_broker_reply=panic(kill)");
}

#[test]
fn killed_after_the_brokers_reply_to_a_child_token() {
    crash_block_recover("cycle::after_broker_reply=1*off->panic(kill)");
}

#[test]
fn killed_after_a_hosts_intent_record() {
    crash_block_recover("cycle::after_intent=panic(kill)");
}

#[test]
fn killed_before_a_hosts_outcome_is_written() {
    crash_block_recover("cycle::before_db_write=panic(kill)");
}

#[test]
fn killed_after_a_rename_before_its_answer_is_read() {
    crash_block_recover("deliver::after_rename_before_reply=panic(kill)");
}

/// One schedd with one Vault-token file for `prod` (whose login is reused, and whose child, with
/// less than `renew_before` left, is replaced: each cycle mints one child), and, with `other`, a second schedd with a credd destination for service
/// `other`.
fn one_file(leaks: &Leaks, other: bool) -> (Stack<'_>, PathBuf) {
    let mut stack = Stack::new(leaks).with_hosts(if other { 2 } else { 1 });
    for name in if other { vec![SERVICE, "other"] } else { vec![SERVICE] } {
        let mut def = ServiceDef::new(name, &["compute.create"]);
        def.extra = "    renew_before: 40m\n".into();
        stack.add_service(def);
        stack.put_token(name, &JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() });
    }
    let file = stack.host("schedd1").dir.join("vt_prod");
    stack.destinations.insert(
        SERVICE.into(),
        format!("    destinations:\n      - file:\n          hosts: [schedd1]\n          path: {}\n          owner: root\n          ttl: 30m\n", file.display()),
    );
    stack.destinations.insert("other".into(), "    destinations:\n      - credd:\n          hosts: [schedd2]\n".into());
    stack.write_inventory();
    (stack, file)
}

fn token_in(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

/// A first cycle, then one in which the answer to the child's rename is lost: returns the child
/// before and the one that landed, both still live.
fn lose_a_rename_answer(stack: &mut Stack, file: &Path) -> (String, String) {
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let first = token_in(file);
    // Only this service: hosts are pushed at once, and the one failpoint must hit its file.
    let out = run_args_with(stack, "answer lost", "deliver::after_rename_before_reply=1*return", &["run", "--service", SERVICE]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let landed = token_in(file);
    stack.leaks.secret(&landed);
    assert_ne!(landed, first, "the rename happened");
    assert!(alive(stack, &landed), "a child that may have landed is not revoked\n{}", shown(&out));
    assert!(alive(stack, &first), "nor the one it may not have replaced\n{}", shown(&out));
    (first, landed)
}

/// The answer to a child's rename is lost: the child did land, so it stays live though the
/// destination counts as failed; the next connection to the host reads the file back before
/// writing anything and settles it, even when that delivery fails.
#[test]
fn a_child_whose_rename_answer_was_lost_lives_until_the_file_is_read_back() {
    let leaks = Leaks::default();
    let (mut stack, file) = one_file(&leaks, false);
    let (first, landed) = lose_a_rename_answer(&mut stack, &file);

    // The next delivery fails (the file's directory breaks the remote-write rule), but the file
    // was read back first: what it holds is known now.
    let dir = file.parent().unwrap().to_path_buf();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = stack.run("read back, delivery refused", &["run"]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert_eq!(token_in(&file), landed);
    assert!(alive(&stack, &landed), "read back: the file holds it");
    assert!(!alive(&stack, &first), "read back: the file no longer holds it");

    assert_eq!(stack.run("normal", &["run"]).status.code(), Some(0));
    check(&stack, std::slice::from_ref(&file), "after a normal cycle", true);
    assert!(!alive(&stack, &landed), "replaced, then revoked");
    leaks.assert_clean();
}

/// A file left "may hold" on a host the next cycle does not push to is read back over a
/// connection that only reads.
#[test]
fn a_host_not_pushed_to_is_read_back_on_its_own() {
    let leaks = Leaks::default();
    let (mut stack, file) = one_file(&leaks, true);
    let (first, landed) = lose_a_rename_answer(&mut stack, &file);

    let out = stack.run("the other service only", &["run", "--service", "other"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(alive(&stack, &landed), "read back: the file holds it");
    assert!(!alive(&stack, &first), "read back: the file no longer holds it");
    let ledger = tokens::ledger(&stack);
    let states: Vec<&str> = ledger["holdings"].as_array().unwrap().iter().filter(|h| h["service"] == SERVICE).map(|h| h["state"].as_str().unwrap()).collect();
    assert!(states.iter().all(|s| *s == "holds" || *s == "replaced"), "{states:?}");
    leaks.assert_clean();
}

/// A crash leaves a host "may hold" the new login token; that host then stays unreachable
/// while the token is first reused (the same bytes are intended again and fail) and then
/// superseded: the token lives as long as the host may hold it. (credd destinations only: a
/// child in a token file would keep its parent alive on its own.)
#[test]
fn a_token_that_may_have_landed_lives_while_its_host_stays_away() {
    let leaks = Leaks::default();
    let (mut stack, files) = scenario_with(&leaks, false);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let before = tokens::held(&stack, &files);
    let out = run_with(&mut stack, "crash", "cycle::before_db_write=panic(kill)");
    assert_eq!(out.status.code(), None, "{}", shown(&out));
    let landed = tokens::held(&stack, &files);
    let (path, token) = landed.iter().find(|(p, t)| before.get(*p) != Some(*t)).map(|(p, t)| (p.clone(), t.clone())).expect("a host replaced its .top");
    let host = stack.hosts.iter().find(|(_, h)| path.starts_with(&h.dir)).map(|(n, _)| n.clone()).unwrap();
    stack.host_mut(&host).stop();

    let set_renew_before = |stack: &mut Stack, v: &str| {
        stack.defs.get_mut(SERVICE).unwrap().extra = format!("    renew_before: {v}\n");
        stack.write_inventory();
    };
    set_renew_before(&mut stack, "10m");
    assert_eq!(stack.run("reused, host away", &["run"]).status.code(), Some(1));
    set_renew_before(&mut stack, "2h");
    assert_eq!(stack.run("superseded, host away", &["run"]).status.code(), Some(1));
    check(&stack, &files, &format!("{host} away two cycles"), false);
    assert!(alive(&stack, &token), "{} may hold it", path.display());

    stack.host_mut(&host).restart();
    assert_eq!(stack.run("back", &["run"]).status.code(), Some(0));
    check(&stack, &files, "after the host is back", true);
    assert!(!alive(&stack, &token), "settled: replaced, then revoked");
    stack.smtp.as_ref().unwrap().record_in(&leaks);
    leaks.assert_clean();
}

/// States of the ledger's holdings, `(destination, state)`.
fn holding_states(stack: &Stack) -> Vec<(String, String)> {
    let ledger = tokens::ledger(stack);
    ledger["holdings"].as_array().unwrap().iter().map(|h| (h["destination"].as_str().unwrap().into(), h["state"].as_str().unwrap().into())).collect()
}

#[test]
fn a_state_database_that_fails_after_delivery_loses_nothing() {
    let leaks = Leaks::default();
    let (mut stack, files) = scenario(&leaks);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let first: BTreeSet<String> = tokens::held(&stack, &files).into_values().collect();

    // One write fails and its retry at the end of the run succeeds: nothing to report.
    let out = run_with(&mut stack, "one failed write", "cycle::before_db_write=1*return");
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(holding_states(&stack).iter().all(|(_, s)| s == "holds" || s == "replaced"), "{:?}", holding_states(&stack));
    check(&stack, &files, "after a write retried", true);

    // Every write after the deliveries fails: the files are replaced, the run says so (exit 1,
    // mail sent straight to the relay), and what was delivered before stays live.
    let second: BTreeSet<String> = tokens::held(&stack, &files).into_values().collect();
    let out = run_with(&mut stack, "database failing", "cycle::before_db_write=return");
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("STATE NOT RECORDED") && stdout.contains("could not be recorded"), "{}", shown(&out));
    let third: BTreeSet<String> = tokens::held(&stack, &files).into_values().collect();
    assert!(third.is_disjoint(&second), "every file was replaced");
    check(&stack, &files, "with the database failing", false);
    assert!(second.iter().all(|t| alive(&stack, t)), "the tokens the files held before stay live: their replacement is not recorded");
    let smtp = stack.smtp.as_ref().unwrap();
    let mails = smtp.wait_for_messages(1, Duration::from_secs(10));
    assert!(mails.iter().any(|m| m.body.contains("state database") && m.body.contains("could not be recorded")), "{mails:#?}");
    assert!(holding_states(&stack).iter().any(|(_, s)| s == "intended"), "the intents are all the ledger knows");

    // The next run settles everything from the intents.
    let out = stack.run("recovered", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(holding_states(&stack).iter().all(|(_, s)| s == "holds" || s == "replaced"), "{:?}", holding_states(&stack));
    check(&stack, &files, "after recovery", true);
    assert!(first.iter().chain(&second).chain(&third).all(|t| !alive(&stack, t)), "every replaced token is revoked once settled");
    smtp.record_in(&leaks);
    leaks.assert_clean();
}
