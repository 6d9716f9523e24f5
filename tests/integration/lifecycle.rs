//! The Vault token lifecycle across cycles, against real OpenBao and sshd: a kept login token
//! reused while it has more than `renew_before` left, a new login below it, superseded tokens
//! revoked only once no destination depends on them, children for token files (kept until
//! `renew_before`, revoked unless they landed), no token short of `min_vault_lifetime` delivered, and the `revoke` drill.

use std::path::PathBuf;

use serde_json::Value;

use crate::harness::openbao::JwtSpec;
use crate::harness::stack::{shown, ServiceDef, Stack};
use crate::harness::{tokens, Leaks};

fn spec() -> JwtSpec {
    JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() }
}

fn top(stack: &Stack, host: &str) -> PathBuf {
    stack.host(host).spool.join("acctprod").join("cms_prod.top")
}

/// The Vault token in a host's `.top`, registered as a secret for the leak check.
fn vault_token_at(stack: &Stack, leaks: &Leaks, host: &str) -> String {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(top(stack, host)).unwrap()).unwrap();
    let t = doc["vault_token"].as_str().unwrap().to_string();
    leaks.secret(&t);
    t
}

/// AppRole logins of `service` that OpenBao saw.
fn logins(stack: &Stack, service: &str) -> usize {
    let role_id = stack.creds[service].role_id.clone();
    stack
        .bao
        .audit_entries()
        .iter()
        .filter(|e| e["type"] == "request" && e["request"]["path"] == "auth/approle/login" && e["request"]["data"]["role_id"] == role_id.as_str())
        .count()
}

fn alive(stack: &Stack, token: &str) -> bool {
    stack.bao.alive(token)
}

/// The ledger's row for `token`.
fn ledger_row(stack: &Stack, token: &str) -> Option<Value> {
    tokens::row(&tokens::ledger(stack), token).cloned()
}

/// One service `prod` (credd on every host) with `renew_before` as given; tokens from the
/// harness's AppRoles live 1 h.
fn stack_with<'l>(leaks: &'l Leaks, hosts: usize, renew_before: &str, file_dest: bool) -> Stack<'l> {
    let mut stack = Stack::new(leaks).with_hosts(hosts);
    let mut def = ServiceDef::new("prod", &["compute.create"]);
    def.extra = format!("    renew_before: {renew_before}\n");
    stack.add_service(def);
    if file_dest {
        let path = stack.host("schedd1").dir.join("vt_prod");
        stack.destinations.insert(
            "prod".into(),
            format!(
                "    destinations:\n      - credd:\n          hosts: [{}]\n      - file:\n          hosts: [schedd1]\n          path: {}\n          owner: root\n          ttl: 30m\n",
                stack.hosts.keys().cloned().collect::<Vec<_>>().join(", "),
                path.display()
            ),
        );
    }
    stack.put_token("prod", &spec());
    stack.write_inventory();
    stack
}

#[test]
fn a_kept_token_is_reused_while_it_has_more_than_renew_before_left() {
    let leaks = Leaks::default();
    let stack = stack_with(&leaks, 2, "10m", false);
    let lookups_before = stack.bao.audit_requests("auth/token/lookup-self").len();
    for label in ["first", "second", "third"] {
        let out = stack.run(label, &["run"]);
        assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    }
    assert_eq!(logins(&stack, "prod"), 1, "one login, reused by the later cycles");
    // One broker request per service and cycle: the recorded expiry says the kept token is
    // good, the access-token read proves it works; the fresh login needed no lookup either.
    assert_eq!(stack.bao.audit_requests("auth/token/lookup-self").len(), lookups_before, "no lookup-self");
    let reads = stack
        .bao
        .audit_entries()
        .iter()
        .filter(|e| e["type"] == "request" && e["request"]["operation"] == "read" && e["request"]["path"].as_str().is_some_and(|p| p.starts_with("secret/oauth/")))
        .count();
    assert_eq!(reads, 3, "one access-token read per cycle");
    let t1 = vault_token_at(&stack, &leaks, "schedd1");
    assert_eq!(t1, vault_token_at(&stack, &leaks, "schedd2"));
    assert!(alive(&stack, &t1));
    let row = ledger_row(&stack, &t1).expect("in the ledger");
    assert_eq!((row["state"].as_str(), row["current"].as_bool(), row["kind"].as_str()), (Some("live"), Some(true), Some("login")), "{row}");
    let kept = stack.state_dir.join("vault").join(format!("{}.token", row["hash"].as_str().unwrap()));
    assert_eq!(std::fs::read_to_string(&kept).unwrap().trim(), t1, "kept in its own file in the state directory");
    leaks.assert_clean();
}

/// A kept token revoked behind the bastion's back still has a good recorded expiry: the
/// refused read is followed by a lookup, the token is recorded dead, and a fresh login is
/// delivered in the same cycle.
#[test]
fn a_kept_token_revoked_elsewhere_is_found_by_its_refused_read_and_replaced() {
    let leaks = Leaks::default();
    let stack = stack_with(&leaks, 1, "10m", false);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let old = vault_token_at(&stack, &leaks, "schedd1");
    stack.bao.revoke(&old);
    let lookups_before = stack.bao.audit_requests("auth/token/lookup-self").len();
    let out = stack.run("second", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(logins(&stack, "prod"), 2, "logged in again");
    let new = vault_token_at(&stack, &leaks, "schedd1");
    assert_ne!(old, new);
    assert!(alive(&stack, &new));
    assert_eq!(stack.bao.audit_requests("auth/token/lookup-self").len(), lookups_before + 1, "one lookup, after the refused read");
    assert_eq!(ledger_row(&stack, &old).unwrap()["state"], "dead");
    leaks.assert_clean();
}

#[test]
fn below_renew_before_a_new_login_is_delivered_and_the_old_token_revoked() {
    let leaks = Leaks::default();
    let stack = stack_with(&leaks, 2, "2h", false);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let old = vault_token_at(&stack, &leaks, "schedd1");
    let out = stack.run("second", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(logins(&stack, "prod"), 2);
    let new = vault_token_at(&stack, &leaks, "schedd1");
    assert_ne!(old, new);
    assert_eq!(new, vault_token_at(&stack, &leaks, "schedd2"));
    assert!(alive(&stack, &new), "the delivered token works after the next login");
    assert!(!alive(&stack, &old), "superseded, held by no destination: revoked");
    assert_eq!(ledger_row(&stack, &old).unwrap()["state"], "revoked");
    assert_eq!(stack.state_dir.join("vault").read_dir().unwrap().count(), 1, "only the current token's file is left");
    leaks.assert_clean();
}

#[test]
fn a_superseded_token_lives_while_a_destination_still_depends_on_it() {
    let leaks = Leaks::default();
    let mut stack = stack_with(&leaks, 3, "2h", false);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let a = vault_token_at(&stack, &leaks, "schedd3");

    stack.host_mut("schedd3").stop();
    assert_eq!(stack.run("second", &["run"]).status.code(), Some(1));
    let b = vault_token_at(&stack, &leaks, "schedd1");
    assert_ne!(a, b);
    assert_eq!(vault_token_at(&stack, &leaks, "schedd3"), a, "schedd3 still holds the first token");
    assert!(alive(&stack, &a), "never revoked while schedd3 depends on it");

    stack.host_mut("schedd3").restart();
    assert_eq!(stack.run("third", &["run"]).status.code(), Some(0));
    let c = vault_token_at(&stack, &leaks, "schedd3");
    assert!(alive(&stack, &c));
    assert!(!alive(&stack, &a) && !alive(&stack, &b), "once every destination holds the newest, both older ones are revoked");
    leaks.assert_clean();
}

#[test]
fn a_token_file_keeps_its_child_until_renew_before_then_gets_a_new_one_and_the_old_is_revoked() {
    let leaks = Leaks::default();
    let mut stack = stack_with(&leaks, 1, "10m", true);
    let file = stack.host("schedd1").dir.join("vt_prod");
    let creates = |stack: &Stack| stack.bao.audit_requests("auth/token/create").len();
    let creates_before = creates(&stack);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let parent = vault_token_at(&stack, &leaks, "schedd1");
    let c1 = std::fs::read_to_string(&file).unwrap().trim().to_string();
    leaks.secret(&c1);
    assert_ne!(c1, parent);
    let info = stack.bao.lookup(&c1).unwrap();
    assert!(info["ttl"].as_u64().unwrap() <= 1800, "the destination's ttl: {info}");

    assert_eq!(creates(&stack) - creates_before, 1);

    // The child has ~30 min left, more than renew_before: written again, not minted again.
    assert_eq!(stack.run("second", &["run"]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), c1, "the same child");
    assert_eq!(creates(&stack) - creates_before, 1, "no new child");
    assert!(alive(&stack, &c1));

    // With renew_before above what the child has left (but below the parent's hour), it is
    // replaced; the parent is not.
    stack.defs.get_mut("prod").unwrap().extra = "    renew_before: 40m\n".into();
    stack.write_inventory();
    assert_eq!(stack.run("third", &["run"]).status.code(), Some(0));
    let c2 = std::fs::read_to_string(&file).unwrap().trim().to_string();
    leaks.secret(&c2);
    assert_ne!(c1, c2);
    assert_eq!(creates(&stack) - creates_before, 2);
    assert_eq!(vault_token_at(&stack, &leaks, "schedd1"), parent, "the parent is reused");
    assert!(alive(&stack, &c2) && alive(&stack, &parent));
    assert!(!alive(&stack, &c1), "the replaced child is revoked");
    leaks.assert_clean();
}

#[test]
fn a_vault_token_short_of_min_vault_lifetime_is_not_delivered_and_the_unused_login_is_revoked() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    let mut def = ServiceDef::new("prod", &["compute.create"]);
    // The AppRole's tokens live 1 h.
    def.extra = "    min_vault_lifetime: 2h\n".into();
    stack.add_service(def);
    stack.put_token("prod", &spec());
    stack.write_inventory();
    let out = stack.run("short token", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("prod: FAILED at lookup") && text.contains("less than min_vault_lifetime 2h"), "{}", shown(&out));
    assert!(!top(&stack, "schedd1").exists(), "nothing delivered");
    let issued = tokens::issued(&stack, "prod");
    assert_eq!(issued.len(), 1, "one login");
    assert!(!alive(&stack, &issued[0]), "the fresh login token nothing holds is revoked");
    assert_eq!(ledger_row(&stack, &issued[0]).unwrap()["state"], "revoked");
    leaks.assert_clean();
}

/// A dry run settles nothing at the end of its cycle, so the login it made for the check must be
/// revoked where it is given up, not left for a later cycle.
#[test]
fn a_dry_run_revokes_the_login_token_it_made() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    stack.add_service(ServiceDef::new("prod", &["compute.create"]));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    let out = stack.run("dry run", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let issued = tokens::issued(&stack, "prod");
    assert_eq!(issued.len(), 1, "one login");
    assert!(!alive(&stack, &issued[0]), "the dry run's login token is revoked");
    assert_eq!(ledger_row(&stack, &issued[0]).unwrap()["state"], "revoked");
    leaks.assert_clean();
}

#[test]
fn an_undelivered_child_is_revoked_and_a_landed_one_is_not() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(2);
    let mut def = ServiceDef::new("prod", &["compute.create"]);
    def.extra = "    renew_before: 10m\n".into();
    stack.add_service(def);
    let files: Vec<PathBuf> = ["schedd1", "schedd2"].iter().map(|h| stack.host(h).dir.join("vt_prod")).collect();
    let mut yaml = "    destinations:\n".to_string();
    for (h, f) in ["schedd1", "schedd2"].iter().zip(&files) {
        yaml.push_str(&format!("      - file:\n          hosts: [{h}]\n          path: {}\n          owner: root\n          ttl: 30m\n", f.display()));
    }
    stack.destinations.insert("prod".into(), yaml);
    stack.put_token("prod", &spec());
    stack.write_inventory();
    stack.host_mut("schedd2").stop();
    let out = stack.run("schedd2 down", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));

    let issued = tokens::issued(&stack, "prod");
    assert_eq!(issued.len(), 3, "a login and two children");
    let (parent, children) = (&issued[0], &issued[1..]);
    let landed = std::fs::read_to_string(&files[0]).unwrap().trim().to_string();
    assert!(!files[1].exists());
    assert!(children.contains(&landed));
    assert!(alive(&stack, &landed), "the child that landed is not revoked");
    assert!(alive(&stack, parent), "nor its parent");
    let undelivered = children.iter().find(|c| **c != landed).unwrap();
    assert!(!alive(&stack, undelivered), "the child that did not land is revoked");
    leaks.assert_clean();
}

#[test]
fn revoke_leaves_no_usable_token_behind() {
    let leaks = Leaks::default();
    let stack = stack_with(&leaks, 2, "10m", true);
    assert_eq!(stack.run("run", &["run"]).status.code(), Some(0));
    let parent = vault_token_at(&stack, &leaks, "schedd1");
    let file = stack.host("schedd1").dir.join("vt_prod");
    let child = std::fs::read_to_string(&file).unwrap().trim().to_string();
    leaks.secret(&child);

    let out = stack.run("revoke", &["revoke", "--service", "prod"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("credd@schedd1 removed from schedd1") && text.contains("credd@schedd2 removed from schedd2"), "{text}");
    for host in ["schedd1", "schedd2"] {
        assert!(!top(&stack, host).exists(), "{host}: .top removed");
        assert!(!top(&stack, host).with_extension("use").exists(), "{host}: .use removed");
    }
    assert!(!file.exists());
    assert!(!alive(&stack, &parent) && !alive(&stack, &child), "every token revoked");
    let kept: Vec<_> = stack.state_dir.join("vault").read_dir().unwrap().flatten().collect();
    assert!(kept.is_empty(), "nothing kept: {kept:?}");
    let status = stack.run("status", &["status", "--json"]);
    let rows: Vec<Value> = serde_json::from_slice(&status.stdout).unwrap();
    assert!(rows.iter().all(|r| r["health"] == "never"), "{rows:#?}");
    leaks.assert_clean();
}

#[test]
fn revoke_on_one_host_redelivers_fresh_tokens_to_the_others() {
    let leaks = Leaks::default();
    let stack = stack_with(&leaks, 3, "10m", false);
    assert_eq!(stack.run("run", &["run"]).status.code(), Some(0));
    let old = vault_token_at(&stack, &leaks, "schedd1");

    let out = stack.run("revoke host", &["revoke", "--service", "prod", "--host", "schedd2"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(!top(&stack, "schedd2").exists(), "the compromised host's credentials are gone");
    assert!(!alive(&stack, &old), "the token the compromised host saw is dead");
    for host in ["schedd1", "schedd3"] {
        let fresh = vault_token_at(&stack, &leaks, host);
        assert_ne!(fresh, old);
        assert!(alive(&stack, &fresh), "{host} got a fresh working token at once");
    }
    leaks.assert_clean();
}

#[test]
fn a_service_removed_from_the_inventory_is_reported_until_revoked() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1).with_smtp();
    for name in ["prod", "gone"] {
        let mut def = ServiceDef::new(name, &["compute.create"]);
        def.extra = "    renew_before: 10m\n".into();
        stack.add_service(def);
        stack.put_token(name, &spec());
    }
    stack.write_inventory();
    assert_eq!(stack.run("both", &["run"]).status.code(), Some(0));
    let gone_top = stack.host("schedd1").spool.join("acctgone").join("cms_gone.top");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&gone_top).unwrap()).unwrap();
    let gone_token = doc["vault_token"].as_str().unwrap().to_string();
    leaks.secret(&gone_token);

    stack.defs.remove("gone");
    stack.write_inventory();
    let out = stack.run("without gone", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoke --service gone"), "{}", shown(&out));
    let smtp = stack.smtp.as_ref().unwrap();
    let mails = smtp.wait_for_messages(1, std::time::Duration::from_secs(10));
    assert!(mails.iter().any(|m| m.body.contains("token-bastion revoke --service gone")), "{mails:#?}");
    assert!(alive(&stack, &gone_token), "nothing is revoked without being asked");

    let out = stack.run("revoke gone", &["revoke", "--service", "gone"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(!gone_top.exists());
    assert!(!alive(&stack, &gone_token));
    let out = stack.run("after", &["run"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("revoke --service gone"), "{}", shown(&out));
    smtp.record_in(&leaks);
    vault_token_at(&stack, &leaks, "schedd1");
    leaks.assert_clean();
}
