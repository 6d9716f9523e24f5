//! Credd names as a schedd's credmon takes them (HTCondor 25.13+), read from each schedd with
//! the `condor_config_val` stand-in (`harness::condor::CondorConfig`) on real sshd hosts, with
//! real OpenBao: `run` refuses a name that schedd would ignore (and delivers the rest),
//! `check --remote` reports it, a host without `condor_config_val` gets the defaults, and the
//! schedd's own refresh interval decides whether a `.use` is overdue.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::harness::Leaks;
use crate::harness::condor::CondorConfig;
use crate::harness::credmon::CredmonStandin;
use crate::harness::openbao::JwtSpec;
use crate::harness::stack::{ServiceDef, Stack, shown};

fn spec() -> JwtSpec {
    JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() }
}

/// Service `prod` (credd name `cms_prod`) with a credd destination on schedd1 and a token file
/// on the same host.
fn stack(leaks: &Leaks) -> (Stack<'_>, PathBuf) {
    let mut stack = Stack::new(leaks).with_hosts(1);
    stack.add_service(ServiceDef::new("prod", &["compute.create"]));
    stack.put_token("prod", &spec());
    let file = stack.host("schedd1").dir.join("vt_prod");
    stack.destinations.insert(
        "prod".into(),
        format!("    destinations:\n      - credd:\n          hosts: [schedd1]\n      - file:\n          hosts: [schedd1]\n          path: {}\n          owner: root\n          ttl: 30m\n", file.display()),
    );
    stack.write_inventory();
    (stack, file)
}

fn top(stack: &Stack) -> PathBuf {
    stack.host("schedd1").spool.join("acctprod").join("cms_prod.top")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Records the Vault token the `.top` holds as a secret the outputs must not show.
fn note_top(stack: &Stack) {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(top(stack)).unwrap()).unwrap();
    stack.leaks.secret(doc["vault_token"].as_str().unwrap());
}

/// `run`, refused at the credd name by `knob`: the token file on the same host still delivered.
fn refused(stack: &Stack, label: &str, knob: &str, why: &str) {
    let before = std::fs::read(top(stack)).ok();
    let out = stack.run(label, &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let said = text(&out);
    let line = said.lines().find(|l| l.contains("credd@schedd1 NOT DELIVERED")).unwrap_or_else(|| panic!("{said}"));
    for part in ["host schedd1", "service prod", "cms_prod.top", knob, why] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    assert!(said.lines().any(|l| l.contains("file@schedd1") && l.ends_with("delivered")), "the host's other destination still goes: {said}");
    assert_eq!(std::fs::read(top(stack)).ok(), before, "nothing written for the refused name");
}

/// Exec channels (remote commands) schedd1's sshd has started so far.
fn exec_count(stack: &Stack) -> usize {
    stack.host("schedd1").log_text().matches("Starting session: command").count()
}

fn delivered(stack: &Stack, label: &str) {
    let out = stack.run(label, &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    note_top(stack);
}

#[test]
fn provider_names_under_both_settings_of_special_char_names() {
    let leaks = Leaks::default();
    let (stack, _) = stack(&leaks);
    let config = CondorConfig::install(stack.host("schedd1"), "VAULT_CREDMON_PROVIDER_NAMES = cms\n");
    // Handles on (the default): cms_prod is provider cms, handle prod.
    delivered(&stack, "handles");
    let calls = config.calls();
    assert_eq!(calls, 5, "one condor_config_val per knob, in the exec that resolves ids");

    // Special characters allowed: the whole name is the provider, and cms_prod is not listed.
    config.set("CREDMON_ALLOW_SPECIAL_CHAR_NAMES = True\nVAULT_CREDMON_PROVIDER_NAMES = cms\n");
    refused(&stack, "special", "VAULT_CREDMON_PROVIDER_NAMES", "provider \"cms_prod\" is not listed");
    config.set("CREDMON_ALLOW_SPECIAL_CHAR_NAMES = true\nVAULT_CREDMON_PROVIDER_NAMES = cms_prod\n");
    let execs = exec_count(&stack);
    delivered(&stack, "special listed");
    assert_eq!(exec_count(&stack) - execs, 1, "the settings come in the exec that resolves ids: {}", stack.host("schedd1").log_text());

    // The same list without the knob: the credmon refuses to start at all.
    config.set("VAULT_CREDMON_PROVIDER_NAMES = cms_prod\n");
    refused(&stack, "strict list", "VAULT_CREDMON_PROVIDER_NAMES", "refuses to start");
    leaks.assert_clean();
}

#[test]
fn a_provider_missing_from_the_list_is_refused_and_star_takes_any() {
    let leaks = Leaks::default();
    let (stack, _) = stack(&leaks);
    let config = CondorConfig::install(stack.host("schedd1"), "VAULT_CREDMON_PROVIDER_NAMES = dune, atlas\n");
    refused(&stack, "missing", "VAULT_CREDMON_PROVIDER_NAMES", "provider \"cms\" is not listed");
    assert!(!top(&stack).exists(), "nothing written for a name the credmon would ignore");
    for list in ["*", "dune *", "dune,cms"] {
        config.set(&format!("VAULT_CREDMON_PROVIDER_NAMES = {list}\n"));
        delivered(&stack, list);
    }
    leaks.assert_clean();
}

#[test]
fn a_host_without_condor_config_val_gets_the_defaults_with_a_warning() {
    let leaks = Leaks::default();
    let (stack, _) = stack(&leaks);
    let out = stack.run("first", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let said = text(&out);
    assert!(said.contains("credmon settings are unknown") && said.contains("condor_config_val is not installed"), "{said}");
    note_top(&stack);
    let out = stack.run("check", &["check", "--remote"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(text(&out).contains("host schedd1: warning: the schedd's credmon settings are unknown"), "{}", shown(&out));
    leaks.assert_clean();
}

#[test]
fn check_remote_reports_every_name_a_schedd_would_ignore() {
    let leaks = Leaks::default();
    let (mut stack, _) = stack(&leaks);
    let config = CondorConfig::install(stack.host("schedd1"), "VAULT_CREDMON_PROVIDER_NAMES = cms\nSEC_CREDENTIAL_DIRECTORY_OAUTH = /elsewhere\n");
    let out = stack.run("check ok", &["check", "--remote"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let said = text(&out);
    assert!(said.contains("host schedd1: 1 credd name(s), 0 the credmon would ignore"), "{said}");
    assert!(said.contains("SEC_CREDENTIAL_DIRECTORY_OAUTH is /elsewhere"), "{said}");

    // Plain `check` stays offline.
    let calls = config.calls();
    config.set("VAULT_CREDMON_PROVIDER_NAMES = dune\n");
    let out = stack.run("check offline", &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(config.calls(), calls, "plain check connects nowhere");

    let out = stack.run("check ignored", &["check", "--remote"]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    let said = text(&out);
    assert!(
        said.contains("host schedd1: service prod: the schedd's credmon would ignore cms_prod.top: provider \"cms\" is not listed (VAULT_CREDMON_PROVIDER_NAMES)"),
        "{said}"
    );

    config.set("CREDMON_OAUTH_TOKEN_REFRESH = soon\n");
    let out = stack.run("check garbage", &["check", "--remote"]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(text(&out).contains("host schedd1: CREDMON_OAUTH_TOKEN_REFRESH: \"soon\" is not a number of seconds"), "{}", shown(&out));
    // `run` refuses the destination for the same reason, naming the knob.
    refused(&stack, "run garbage", "CREDMON_OAUTH_TOKEN_REFRESH", "cannot be judged");

    stack.host_mut("schedd1").stop();
    let out = stack.run("check down", &["check", "--remote"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(text(&out).contains("host schedd1: cannot read the schedd's credmon settings"), "{}", shown(&out));
    leaks.assert_clean();
}

fn credmon_row(stack: &Stack) -> serde_json::Value {
    let out = stack.run("status", &["status", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", shown(&out)));
    rows.into_iter().find(|r| r["destination"] == "credd@schedd1").expect("a credd row")
}

/// Sets a file's mtime `secs` seconds into the past.
fn age(path: &PathBuf, secs: i64) {
    let at = chrono::Utc::now().timestamp() - secs;
    let st = Command::new("touch").args(["-m", "-d", &format!("@{at}")]).arg(path).status().unwrap();
    assert!(st.success());
}

/// The credmon's state after a run that saw the `.use` `use_age` seconds old and its `.top` a
/// little older.
fn verdict(stack: &Stack, label: &str, use_age: i64) -> serde_json::Value {
    age(&top(stack), use_age + 100);
    age(&top(stack).with_extension("use"), use_age);
    delivered(stack, label);
    credmon_row(stack)
}

#[test]
fn the_schedds_refresh_interval_decides_when_a_use_is_overdue() {
    let leaks = Leaks::default();
    let (stack, _) = stack(&leaks);
    let config = CondorConfig::install(stack.host("schedd1"), "");
    let spool = stack.host("schedd1").spool.clone();
    let _credmon = CredmonStandin::start(&spool, &stack.bao, false);
    delivered(&stack, "first");
    delivered(&stack, "second");
    // A .use ten minutes old, newer than its .top: within the default 20 min.
    let r = verdict(&stack, "default refresh", 600);
    assert_eq!(r["credmon"], "refreshing", "{r:#}");

    // The schedd refreshes every minute: ten minutes is overdue.
    config.set("CREDMON_OAUTH_TOKEN_REFRESH = 60\n");
    let r = verdict(&stack, "one minute", 600);
    assert_eq!(r["credmon"], "not_refreshing", "{r:#}");
    assert!(r["credmon_reason"].as_str().unwrap().contains("refresh interval 1m 0s"), "{r:#}");

    // Half of CREDMON_OAUTH_TOKEN_MINIMUM when the refresh is not set: 47 min is within the hour
    // (and past the default 20 min).
    config.set("CREDMON_OAUTH_TOKEN_MINIMUM = 7200\n");
    let r = verdict(&stack, "half the minimum", 2800);
    assert_eq!(r["credmon"], "refreshing", "{r:#}");
    leaks.assert_clean();
}
