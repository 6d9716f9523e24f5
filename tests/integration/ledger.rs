//! The token ledger seen through the product against real OpenBao and sshd: tokens that only an
//! absent host keeps alive are shown by `status` and settled by `revoke --host`, and what an
//! older version kept (its token files and each destination's recorded token) is imported
//! without revoking anything a destination holds.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::harness::openbao::JwtSpec;
use crate::harness::stack::{shown, ServiceDef, Stack};
use crate::harness::tokens::{self, alive, hash};
use crate::harness::Leaks;

fn spec() -> JwtSpec {
    JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() }
}

fn top(stack: &Stack, host: &str) -> PathBuf {
    stack.host(host).spool.join("acctprod").join("cms_prod.top")
}

fn token_at(stack: &Stack, host: &str) -> String {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(top(stack, host)).unwrap()).unwrap();
    doc["vault_token"].as_str().unwrap().to_string()
}

fn stack_with<'l>(leaks: &'l Leaks, hosts: usize, renew_before: &str) -> Stack<'l> {
    let mut stack = Stack::new(leaks).with_hosts(hosts);
    let mut def = ServiceDef::new("prod", &["compute.create"]);
    def.extra = format!("    renew_before: {renew_before}\n");
    stack.add_service(def);
    stack.put_token("prod", &spec());
    stack.write_inventory();
    stack
}

#[test]
fn status_shows_what_only_an_absent_host_keeps_alive_and_revoke_host_settles_it() {
    let leaks = Leaks::default();
    let mut stack = stack_with(&leaks, 3, "2h");
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let first = token_at(&stack, "schedd3");
    leaks.secret(&first);
    stack.host_mut("schedd3").stop();
    assert_eq!(stack.run("schedd3 down", &["run"]).status.code(), Some(1));
    assert!(alive(&stack, &first), "schedd3 still holds it");

    let out = stack.run("status", &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let section = text.split("Vault tokens kept alive only by absent destinations").nth(1).unwrap_or_else(|| panic!("{}", shown(&out)));
    assert!(section.contains(&format!("sha256={}", hash(&first))) && section.contains("credd@schedd3 (schedd3: failing since"), "{}", shown(&out));
    assert!(section.contains("token-bastion revoke --host schedd3"), "{}", shown(&out));
    let ledger = tokens::ledger(&stack);
    let kept: Vec<&str> = ledger["kept_alive"].as_array().unwrap().iter().map(|k| k["token"].as_str().unwrap()).collect();
    assert_eq!(kept, [hash(&first).as_str()]);

    let out = stack.run("settle", &["revoke", "--host", "schedd3"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("sha256={} revoked", hash(&first))), "{}", shown(&out));
    assert!(!alive(&stack, &first), "settled");
    for host in ["schedd1", "schedd2"] {
        assert!(alive(&stack, &token_at(&stack, host)), "{host} keeps its working token");
    }
    let out = stack.run("status after", &["status"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("kept alive only by absent"), "{}", shown(&out));
    leaks.assert_clean();
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn write_top(stack: &Stack, host: &str, token: &str) {
    let dir = top(stack, host).parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    write_private(&top(stack, host), &format!("{}\n", json!({"vault_token": token, "vault_url": "https://htvault.example:8200/v1/x"})));
}

/// A state directory as the version before the ledger left it: the schema before the ledger
/// (version 3), per-service token files, and the token each destination depends on recorded
/// in `status.vault_root`.
#[test]
fn what_an_older_version_kept_is_imported_and_nothing_a_destination_holds_is_revoked() {
    let leaks = Leaks::default();
    let mut stack = stack_with(&leaks, 2, "10m");
    let file = stack.host("schedd1").dir.join("vt_prod");
    let file_dest = format!("file@schedd1:{}", file.display());
    stack.destinations.insert(
        "prod".into(),
        format!("    destinations:\n      - credd:\n          hosts: [schedd1, schedd2]\n      - file:\n          hosts: [schedd1]\n          path: {}\n          owner: root\n          ttl: 30m\n", file.display()),
    );
    stack.write_inventory();

    // What the older version did: schedd2 missed the last login, so it still holds the
    // superseded token; schedd1 holds the current one, and its file a child of it.
    let creds = stack.creds["prod"].clone();
    let superseded = stack.bao.login_service(&creds);
    let current = stack.bao.login_service(&creds);
    let child = stack.bao.api_as(&current, "write", "auth/token/create", Some(&json!({"ttl": "30m", "renewable": "false"}))).unwrap()["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    leaks.secret(&child);
    write_top(&stack, "schedd1", &current);
    write_top(&stack, "schedd2", &superseded);
    write_private(&file, &format!("{child}\n"));

    let out = stack.run("create the database", &["status"]);
    assert!(stack.state_dir.join("state.db").is_file(), "{}", shown(&out));
    let db = rusqlite::Connection::open(stack.state_dir.join("state.db")).unwrap();
    db.execute_batch("DROP TABLE tokens; DROP TABLE holdings; PRAGMA user_version = 3;").unwrap();
    let now = chrono::Utc::now().timestamp();
    let top_paths = |host: &str| json!([top(&stack, host), top(&stack, host).with_extension("use")]).to_string();
    for (dest, host, root, paths) in [
        ("credd@schedd1", "schedd1", &current, top_paths("schedd1")),
        ("credd@schedd2", "schedd2", &superseded, top_paths("schedd2")),
        (file_dest.as_str(), "schedd1", &current, json!([file]).to_string()),
    ] {
        db.execute(
            "INSERT INTO status (service, destination, host, last_attempt, last_success, vault_expiry, consecutive_failures, vault_root, paths)
             VALUES ('prod', ?1, ?2, ?3, ?3, ?4, 0, ?5, ?6)",
            rusqlite::params![dest, host, now, now + 3600, hash(root), paths],
        )
        .unwrap();
    }
    drop(db);
    let vault = stack.state_dir.join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    write_private(&vault.join("prod.current"), &format!("{current}\n"));
    write_private(&vault.join(format!("prod.{}.superseded", hash(&superseded))), &format!("{superseded}\n"));
    write_private(&vault.join(format!("prod.{}.child", token_bastion::keep::destination_key(&file_dest))), &format!("{child}\n"));

    // The first cycle of the new version, with schedd2 away.
    stack.host_mut("schedd2").stop();
    let out = stack.run("upgraded, schedd2 away", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(alive(&stack, &superseded), "schedd2 holds it: not revoked by the import nor by the cycle after it");
    assert_eq!(token_at(&stack, "schedd1"), current, "the current token is reused");
    assert!(alive(&stack, &current));
    assert!(!alive(&stack, &child), "the child was replaced at its file, then revoked");
    let names: Vec<String> = std::fs::read_dir(&vault).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n.ends_with(".token")), "the older files are gone: {names:?}");
    let ledger = tokens::ledger(&stack);
    assert_eq!(tokens::row(&ledger, &current).unwrap()["current"], true);
    assert_eq!(tokens::row(&ledger, &superseded).unwrap()["state"], "live");

    stack.host_mut("schedd2").restart();
    let out = stack.run("schedd2 back", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(token_at(&stack, "schedd2"), current);
    assert!(!alive(&stack, &superseded), "held by nothing any more: revoked");
    leaks.assert_clean();
}
