//! HTCondor IDTokens end to end: minted by the `condor_token_create` stand-in on one sshd host
//! over SSH, checked, delivered to two hosts' `tokens.d` owned by the client account, recorded;
//! left alone while fresh, rotated when the request changes, refused (old files kept) when the
//! minted token is not what was asked; and never leaked.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use token_bastion::state::{IdTokenState, StateStore};

use crate::deliver::{TEST_USER, test_user};
use crate::harness::Leaks;
use crate::harness::condor::{CondorTools, TRUST_DOMAIN, claims};
use crate::harness::openbao::JwtSpec;
use crate::harness::stack::{ServiceDef, Stack, shown};

const KEY: &str = "WMTEST";

/// A stack with two hosts, the stand-ins on `schedd1`, and service `wm` (account
/// [`TEST_USER`]) whose IDToken goes to `<host dir>/home/<account>/.condor/tokens.d/wm` on both.
fn stack_with_idtoken(leaks: &Leaks) -> (Stack<'_>, CondorTools, Vec<PathBuf>) {
    test_user();
    let mut stack = Stack::new(leaks).with_hosts(2);
    let tools = CondorTools::install(stack.host("schedd1"), KEY);
    let mut paths = Vec::new();
    for name in ["schedd1", "schedd2"] {
        // A home directory above which root owns everything, as on a schedd.
        let home = stack.host(name).dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        paths.push(home.join(TEST_USER).join(".condor/tokens.d/wm"));
        std::fs::create_dir_all(home.join(TEST_USER)).unwrap();
    }
    let mut def = ServiceDef::new("wm", &["compute.create"]);
    def.account = TEST_USER.into();
    stack.add_service(def);
    stack.put_token("wm", &JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() });
    stack.write_inventory();
    (stack, tools, paths)
}

/// The `idtoken:` block with `lifetime` and `authz`.
fn write_block(stack: &mut Stack<'_>, paths: &[PathBuf], lifetime: &str, authz: &str) {
    write_block_with(stack, paths, lifetime, authz, "");
}

/// The same with `more` (raw YAML, 6 spaces deep) at the end of the block.
fn write_block_with(stack: &mut Stack<'_>, paths: &[PathBuf], lifetime: &str, authz: &str, more: &str) {
    let mut def = stack.defs["wm"].clone();
    def.extra = format!(
        "    idtoken:\n      identity: wm@{TRUST_DOMAIN}\n      authz: [{authz}]\n      lifetime: {lifetime}\n      renew_before: 1d\n      key: {KEY}\n      issuer: {TRUST_DOMAIN}\n      mint_host: schedd1\n      destinations:\n        - hosts: [schedd1]\n          path: {}\n        - hosts: [schedd2]\n          path: {}\n{more}",
        paths[0].display(),
        paths[1].display()
    );
    stack.defs.insert("wm".into(), def);
    stack.write_inventory();
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Registers every token the stand-in printed so far with the leak check.
fn register_minted(leaks: &Leaks, tools: &CondorTools) {
    for t in tools.minted() {
        leaks.secret(&t);
    }
}

#[test]
fn an_idtoken_is_minted_checked_delivered_to_two_hosts_recorded_and_left_alone_while_fresh() {
    let leaks = Leaks::default();
    let (mut stack, tools, paths) = stack_with_idtoken(&leaks);
    write_block(&mut stack, &paths, "30d", "READ, WRITE");

    let out = stack.run("first run", &["run"]);
    register_minted(&leaks, &tools);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(tools.mints(), 1);
    let token = read(&paths[0]);
    assert_eq!(read(&paths[1]), token, "both hosts hold the same token");
    assert!(token.ends_with('\n'));
    assert_eq!(tools.minted(), [token.trim_end()]);
    let c = claims(&token);
    assert_eq!((c["sub"].as_str(), c["scope"].as_str(), c["iss"].as_str()), (Some(&*format!("wm@{TRUST_DOMAIN}")), Some("condor:/READ condor:/WRITE"), Some(TRUST_DOMAIN)));
    let (uid, _) = test_user();
    for p in &paths {
        let file = std::fs::symlink_metadata(p).unwrap();
        assert_eq!((file.uid(), file.mode() & 0o7777), (uid, 0o600), "{}", p.display());
        for dir in [p.parent().unwrap(), p.parent().unwrap().parent().unwrap()] {
            let m = std::fs::symlink_metadata(dir).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777), (uid, 0o700), "{}", dir.display());
        }
    }
    // The ledger: jti, sub, iat and exp as the token carries them.
    let store = StateStore::open(&stack.state_dir).unwrap();
    let rows = store.idtokens(Some("wm")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, IdTokenState::Current);
    assert_eq!(
        (rows[0].jti.as_str(), rows[0].sub.as_str(), rows[0].iat, rows[0].exp, rows[0].kid.as_str()),
        (c["jti"].as_str().unwrap(), c["sub"].as_str().unwrap(), c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap(), KEY)
    );

    // Fresh and unchanged: nothing minted, nothing rewritten.
    let before = std::fs::symlink_metadata(&paths[0]).unwrap().ino();
    let out = stack.run("second run", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(tools.mints(), 1, "a fresh token is not minted again");
    assert_eq!(std::fs::symlink_metadata(&paths[0]).unwrap().ino(), before, "a file that holds the token is not rewritten");

    // A file removed on one host gets the current token back without a new one being minted.
    std::fs::remove_file(&paths[1]).unwrap();
    let out = stack.run("third run", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!((tools.mints(), read(&paths[1])), (1, token.clone()));

    let status = stack.run("status", &["status", "--json"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(&format!("idtoken@schedd2:{}", paths[1].display())), "{}", shown(&status));
    assert!(!text.contains("other_token_files"), "{}", shown(&status));

    // Another token file beside it, which HTCondor would try first: the run and status say so.
    let stray = paths[1].parent().unwrap().join("00-hand-made");
    std::fs::write(&stray, "not ours\n").unwrap();
    let out = stack.run("with a stray file", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("other token files in the same tokens.d: 00-hand-made"), "{}", shown(&out));
    let status = stack.run("status", &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    let warning = text.lines().find(|l| l.starts_with("warning: wm idtoken@schedd2")).unwrap_or_else(|| panic!("{}", shown(&status)));
    assert!(warning.contains("00-hand-made"), "{warning}");
    assert!(!text.contains("warning: wm idtoken@schedd1"), "{}", shown(&status));
    std::fs::remove_file(&stray).unwrap();
    assert_eq!(stack.run("stray gone", &["run"]).status.code(), Some(0));
    let status = stack.run("status", &["status"]);
    assert!(!String::from_utf8_lossy(&status.stdout).contains("00-hand-made"), "{}", shown(&status));
    leaks.assert_clean();
}

#[test]
fn a_changed_request_rotates_and_a_token_unlike_the_request_is_refused_keeping_the_old_file() {
    let leaks = Leaks::default();
    let (mut stack, tools, paths) = stack_with_idtoken(&leaks);
    write_block(&mut stack, &paths, "30d", "READ");
    let out = stack.run("first run", &["run"]);
    register_minted(&leaks, &tools);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let first = read(&paths[0]);

    // The request changed: a new token, on both hosts, the first one superseded.
    write_block(&mut stack, &paths, "20d", "READ, WRITE");
    let out = stack.run("rotation", &["run"]);
    register_minted(&leaks, &tools);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let second = read(&paths[0]);
    assert_ne!(second, first);
    assert_eq!(read(&paths[1]), second);
    assert_eq!(claims(&second)["scope"], "condor:/READ condor:/WRITE");
    let store = StateStore::open(&stack.state_dir).unwrap();
    let states: Vec<IdTokenState> = store.idtokens(Some("wm")).unwrap().iter().map(|r| r.state).collect();
    assert_eq!(states, [IdTokenState::Superseded, IdTokenState::Current]);

    // Each way the minting host can get it wrong: refused, named, nothing delivered.
    for (how, lifetime, expected) in [("wrong-sub", "21d", "claim sub"), ("no-exp", "22d", "no exp"), ("fail", "23d", "exit status 1")] {
        tools.misbehave(how);
        write_block(&mut stack, &paths, lifetime, "READ, WRITE");
        let out = stack.run(how, &["run"]);
        register_minted(&leaks, &tools);
        assert_eq!(out.status.code(), Some(1), "{how}: {}", shown(&out));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(expected), "{how}: {}", shown(&out));
        assert_eq!((read(&paths[0]), read(&paths[1])), (second.clone(), second.clone()), "{how}: the old files stay");
        assert_eq!(store.current_idtoken("wm").unwrap().unwrap().jti, claims(&second)["jti"].as_str().unwrap(), "{how}");
    }
    assert_eq!(tools.mints(), 5);
    leaks.assert_clean();
}

#[test]
fn the_drill_removes_the_files_denies_every_recorded_token_merging_with_the_last_drill_and_mints_a_new_one() {
    let leaks = Leaks::default();
    let (mut stack, tools, paths) = stack_with_idtoken(&leaks);
    let other = CondorTools::install(stack.host("schedd2"), "UNUSED");
    // Both "hosts" are this machine: one config.d serves both, so the second host's write also
    // shows that a drill merges with what the file already holds.
    let shared = stack.root().join("config.d");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let more = format!("      revocation:\n        hosts: [schedd1, schedd2]\n        config_dir: {}\n", shared.display());
    write_block_with(&mut stack, &paths, "30d", "READ", &more);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    write_block_with(&mut stack, &paths, "20d", "READ", &more);
    assert_eq!(stack.run("rotation", &["run"]).status.code(), Some(0));
    register_minted(&leaks, &tools);
    let before: Vec<String> = tools.minted().iter().map(|t| claims(t)["jti"].as_str().unwrap().to_string()).collect();
    assert_eq!(before.len(), 2);
    let file = shared.join("99-token-bastion-revoke-wm.conf");

    let started = chrono::Utc::now().timestamp();
    let out = stack.run("drill", &["revoke", "--service", "wm", "--idtoken"]);
    register_minted(&leaks, &tools);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for host in ["schedd1", "schedd2"] {
        assert!(text.contains(&format!("removed from {host}")), "{}", shown(&out));
        assert!(text.contains(&format!("revocation expression installed on {host}")), "{}", shown(&out));
    }
    assert_eq!((tools.reconfigs(), other.reconfigs()), (1, 1), "condor_reconfig ran on each accepting host");
    let conf = read(&file);
    let expr = conf.lines().find(|l| l.starts_with("SEC_TOKEN_REVOCATION_EXPR = ")).unwrap_or_else(|| panic!("{conf}"));
    assert!(expr.starts_with("SEC_TOKEN_REVOCATION_EXPR = ($(SEC_TOKEN_REVOCATION_EXPR:false)) || "), "{expr}");
    for jti in &before {
        assert!(expr.contains(&format!("jti =?= \"{jti}\"")), "{expr}");
    }
    let cutoff: i64 = expr.rsplit("iat < ").next().unwrap().trim_end_matches(')').parse().unwrap();
    assert!(cutoff >= started, "{expr}");
    assert!(expr.contains(&format!("(sub =?= \"wm@{TRUST_DOMAIN}\" && iat < {cutoff})")), "{expr}");
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o644);

    // A new token was minted after the drill and delivered to both hosts.
    let minted = tools.minted();
    assert_eq!(minted.len(), 3);
    let third = &minted[2];
    assert_eq!((read(&paths[0]).trim_end(), read(&paths[1]).trim_end()), (third.as_str(), third.as_str()));
    let store = StateStore::open(&stack.state_dir).unwrap();
    let states: Vec<IdTokenState> = store.idtokens(Some("wm")).unwrap().iter().map(|r| r.state).collect();
    assert_eq!(states, [IdTokenState::Denied, IdTokenState::Denied, IdTokenState::Current]);

    // A second drill keeps what the first denied and adds the third token.
    let out = stack.run("second drill", &["revoke", "--service", "wm", "--idtoken"]);
    register_minted(&leaks, &tools);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let conf = read(&file);
    let expr = conf.lines().find(|l| l.starts_with("SEC_TOKEN_REVOCATION_EXPR = ")).unwrap();
    for jti in before.iter().chain([claims(third)["jti"].as_str().unwrap().to_string()].iter()) {
        assert_eq!(expr.matches(&format!("jti =?= \"{jti}\"")).count(), 1, "{expr}");
    }
    assert!(expr.contains(&format!("iat < {cutoff})")), "the first drill's cut-off stays: {expr}");
    assert_eq!(expr.matches("iat < ").count(), 2, "{expr}");
    assert_eq!((tools.reconfigs(), other.reconfigs()), (2, 2));
    leaks.assert_clean();
}
