//! Handles end to end: `token-bastion run` against OpenBao laid out like HTVault and an OpenSSH
//! sshd schedd. A handle's `.top` lands beside its parent's with the handle's scopes and
//! audience and no Vault token; a handle token wider than the handle allows is refused for that
//! handle alone. The broker here is a KV store that ignores `scopes=`, so the service reads the
//! creds path and the handle gets its own token at the sts path.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::harness::openbao::WLCG_ANY_AUDIENCE;
use crate::harness::stack::{shown, ServiceDef, Stack, VAULT_ISSUER};
use crate::harness::credmon::CredmonStandin;
use crate::harness::Leaks;
use crate::push::{mode, spec, stdout};

fn spool_file(stack: &Stack, name: &str) -> PathBuf {
    stack.host("schedd1").spool.join("acctprod").join(name)
}

/// `prod` on the creds path with handle `reader` (reads under /store/data only), the service's
/// token at the creds path and `handle_scope` as the handle's token at the sts path.
fn stack_with_handle<'l>(leaks: &'l Leaks, handle_scope: &str) -> (Stack<'l>, String, String) {
    let mut stack = Stack::new(leaks).with_hosts(1).with_smtp();
    let mut prod = ServiceDef::new("prod", &["storage.read:/store", "compute.create"]);
    prod.request_scopes = false;
    stack.add_service(prod);
    stack.destinations.insert(
        "prod".into(),
        format!(
            "    destinations:\n      - credd:\n          hosts: [schedd1]\n          handles:\n            - name: reader\n              scopes: [storage.read:/store/data]\n              audience: {WLCG_ANY_AUDIENCE}\n"
        ),
    );
    let parent_jwt = stack.put_token("prod", &spec("storage.read:/store compute.create"));
    let handle_jwt = stack.bao.mint_jwt(&spec(handle_scope));
    let exp = chrono::Utc::now() + chrono::Duration::hours(1);
    stack.bao.put_access_token(VAULT_ISSUER, "acctprod", "prod", true, &handle_jwt, Some(exp));
    stack.write_inventory();
    (stack, parent_jwt, handle_jwt)
}

#[test]
fn a_handle_lands_beside_its_parent_with_its_own_scopes_and_no_vault_token() {
    let leaks = Leaks::default();
    let (stack, parent_jwt, handle_jwt) = stack_with_handle(&leaks, "storage.read:/store/data");
    let out = stack.run("run", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(stdout(&out).contains("handle@schedd1:reader delivered"), "{}", shown(&out));

    // The parent: its own Vault token, the creds path, its own access token.
    let parent: Value = serde_json::from_str(&std::fs::read_to_string(spool_file(&stack, "cms_prod.top")).unwrap()).unwrap();
    let vault_token = parent["vault_token"].as_str().expect("the parent holds the Vault token").to_string();
    leaks.secret(&vault_token);
    assert_eq!(parent["vault_url"], "https://htvault.example:8200/v1/secret/oauth/creds/cms/acctprod:prod");
    assert_eq!(std::fs::read_to_string(spool_file(&stack, "cms_prod.use")).unwrap(), format!("{parent_jwt}\n"));

    // The handle: what condor_credential_storer writes for one, nothing secret in it.
    let top = spool_file(&stack, "cms_prod_reader.top");
    let used = spool_file(&stack, "cms_prod_reader.use");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&top).unwrap()).unwrap();
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["audience", "scopes", "vault_url"], "the handle .top holds no vault_token");
    assert_eq!(doc["vault_url"], "https://htvault.example:8200/v1/secret/oauth/sts/cms/acctprod:prod");
    assert_eq!(doc["scopes"], "storage.read:/store/data");
    assert_eq!(doc["audience"], WLCG_ANY_AUDIENCE);
    assert_eq!(std::fs::read_to_string(&used).unwrap(), format!("{handle_jwt}\n"));
    assert_eq!((mode(&top), mode(&used)), (0o600, 0o400));
    for p in [&top, &used] {
        let meta = std::fs::metadata(p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "spool_owner root:root on {}", p.display());
    }

    // The handle's token was read with the service's Vault token, asking for the handle's scopes.
    let reads: Vec<Value> = stack
        .bao
        .audit_requests(&format!("secret/oauth/sts/{VAULT_ISSUER}/acctprod:prod"))
        .into_iter()
        .filter(|r| r["operation"] == "read")
        .collect();
    assert_eq!(reads.len(), 1, "{reads:#?}");
    assert_eq!(reads[0]["data"]["scopes"], "storage.read:/store/data");
    assert_eq!(reads[0]["data"]["audiences"], WLCG_ANY_AUDIENCE);

    // A second cycle leaves the handle's .use to the credmon, as the parent's.
    let newer = stack.bao.mint_jwt(&spec("storage.read:/store/data"));
    stack.bao.put_access_token(VAULT_ISSUER, "acctprod", "prod", true, &newer, Some(chrono::Utc::now() + chrono::Duration::hours(1)));
    let inode = std::fs::metadata(&top).unwrap().ino();
    let out = stack.run("second run", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(std::fs::metadata(&top).unwrap().ino(), inode, "an unchanged handle .top is left as it is");
    assert_eq!(std::fs::read_to_string(&used).unwrap(), format!("{handle_jwt}\n"), "the .use is the credmon's once there");

    let status = stack.run("status", &["status", "--json"]);
    let rows: Vec<Value> = serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", shown(&status)));
    let row = rows.iter().find(|r| r["destination"] == "handle@schedd1:reader").unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(row["health"], "ok", "{row}");
    leaks.assert_clean();
}

#[test]
fn a_handle_token_wider_than_the_handle_is_refused_and_the_parent_still_lands() {
    let leaks = Leaks::default();
    // All of /store: the service may read it, the handle may not.
    let (stack, parent_jwt, _) = stack_with_handle(&leaks, "storage.read:/store");
    let out = stack.run("run", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = stdout(&out);
    assert!(text.contains("credd@schedd1 delivered"), "{}", shown(&out));
    let line = text.lines().find(|l| l.contains("handle@schedd1:reader")).unwrap_or_else(|| panic!("{}", shown(&out)));
    assert!(line.contains("NOT DELIVERED: validate: handle `reader`"), "{line}");
    assert!(line.contains("storage.read:/store"), "{line}");

    assert_eq!(std::fs::read_to_string(spool_file(&stack, "cms_prod.use")).unwrap(), format!("{parent_jwt}\n"));
    let parent: Value = serde_json::from_str(&std::fs::read_to_string(spool_file(&stack, "cms_prod.top")).unwrap()).unwrap();
    leaks.secret(parent["vault_token"].as_str().unwrap());
    for name in ["cms_prod_reader.top", "cms_prod_reader.use"] {
        assert!(!spool_file(&stack, name).exists(), "{name} was written");
    }

    let smtp = stack.smtp.as_ref().unwrap();
    let mails = smtp.wait_for_messages(1, Duration::from_secs(10));
    assert!(mails.iter().any(|m| m.body.contains("handle@schedd1:reader") && m.body.contains("handle `reader`")), "{mails:#?}");
    smtp.record_in(&leaks);
    leaks.assert_clean();
}

fn hangup(pid: u32) {
    let status = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// What the bastion writes for a handle works with the credmon: it reads the handle's token with
/// the parent's Vault token, and drops the handle once the parent is gone.
#[test]
fn the_credmon_refreshes_a_handle_with_its_parents_vault_token_and_drops_it_with_the_parent() {
    let leaks = Leaks::default();
    let (stack, _, _) = stack_with_handle(&leaks, "storage.read:/store/data");
    let credmon = CredmonStandin::start(&stack.host("schedd1").spool, &stack.bao, true);
    let out = stack.run("run", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let parent: Value = serde_json::from_str(&std::fs::read_to_string(spool_file(&stack, "cms_prod.top")).unwrap()).unwrap();
    leaks.secret(parent["vault_token"].as_str().unwrap());

    let (top, used) = (spool_file(&stack, "cms_prod_reader.top"), spool_file(&stack, "cms_prod_reader.use"));
    let newer = stack.bao.mint_jwt(&spec("storage.read:/store/data"));
    stack.bao.put_access_token(VAULT_ISSUER, "acctprod", "prod", true, &newer, Some(chrono::Utc::now() + chrono::Duration::hours(1)));
    std::fs::remove_file(&used).unwrap();
    hangup(credmon.pid());
    assert!(credmon.wait_for("refreshed acctprod/cms_prod_reader.use", 1, Duration::from_secs(30)), "{}", credmon.log_text());
    assert_eq!(std::fs::read_to_string(&used).unwrap(), format!("{newer}\n"), "read with the parent's Vault token");

    // The parent goes (as the credmon deletes one whose Vault token is refused): the handle goes with it.
    std::fs::remove_file(spool_file(&stack, "cms_prod.top")).unwrap();
    std::fs::File::options().append(true).open(&top).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
    hangup(credmon.pid());
    assert!(credmon.wait_for("parent of acctprod/cms_prod_reader is gone", 1, Duration::from_secs(30)), "{}", credmon.log_text());
    assert!(!top.exists() && !used.exists());
    leaks.assert_clean();
}
