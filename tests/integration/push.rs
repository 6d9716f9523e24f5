//! `token-bastion run` delivering for real: OpenBao laid out like HTVault, three OpenSSH sshd
//! schedds, an SMTP sink. What lands where, with which modes and owners; what happens when a
//! host is down, a token is refused, a host key changes; atomic replacement; `status`; and one
//! cycle at a time per state directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::openbao::{JwtSpec, WLCG_ANY_AUDIENCE};
use crate::harness::stack::{shown, ServiceDef, Stack};
use crate::harness::Leaks;

const HOSTS: [&str; 3] = ["schedd1", "schedd2", "schedd3"];

pub(crate) fn spec(scope: &str) -> JwtSpec {
    JwtSpec { scope: Some(scope.into()), ..JwtSpec::default() }
}

pub(crate) fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

fn top_path(stack: &Stack, host: &str, account: &str, oauth_service: &str) -> PathBuf {
    stack.host(host).spool.join(account).join(format!("{oauth_service}.top"))
}

fn use_path(stack: &Stack, host: &str, account: &str, oauth_service: &str) -> PathBuf {
    stack.host(host).spool.join(account).join(format!("{oauth_service}.use"))
}

fn read_top(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Two services: `prod` (credd on every host) and `tier` (credd on every host plus a Vault
/// token file for the `nobody` account on schedd2), with tokens waiting at the broker.
fn two_services<'l>(leaks: &'l Leaks) -> (Stack<'l>, String, String) {
    let mut stack = Stack::new(leaks).with_hosts(3).with_smtp();
    stack.add_service(ServiceDef::new("prod", &["storage.read:/", "compute.create"]));
    let mut tier = ServiceDef::new("tier", &["compute.create"]);
    tier.account = "nobody".into();
    tier.audience = Some(WLCG_ANY_AUDIENCE.into());
    stack.add_service(tier);
    let file = stack.host("schedd2").dir.join("vt_u{uid}-{oauth_service}");
    stack.destinations.insert(
        "tier".into(),
        format!(
            "    destinations:\n      - credd:\n          hosts: [{}]\n      - file:\n          hosts: [schedd2]\n          path: {}\n          owner: nobody:nogroup\n",
            HOSTS.join(", "),
            file.display()
        ),
    );
    let prod_jwt = stack.put_token("prod", &spec("storage.read:/ compute.create"));
    let tier_jwt = stack.put_token("tier", &spec("compute.create"));
    stack.write_inventory();
    (stack, prod_jwt, tier_jwt)
}

fn uid_of(name: &str) -> u32 {
    let out = std::process::Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn two_services_land_on_three_hosts_with_exact_bytes_modes_and_owners() {
    let leaks = Leaks::default();
    let (stack, prod_jwt, tier_jwt) = two_services(&leaks);
    let out = stack.run("run", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(stdout(&out).contains("2 of 2 services ok, 7 of 7 destinations delivered"), "{}", shown(&out));

    let mut vault_tokens = Vec::new();
    for host in HOSTS {
        for (account, oauth, jwt, path, scopes, audience) in [
            ("acctprod", "cms_prod", &prod_jwt, "sts/cms/acctprod:prod", Some("storage.read:/,compute.create"), None),
            ("nobody", "cms_tier", &tier_jwt, "sts/cms/nobody:tier", Some("compute.create"), Some(WLCG_ANY_AUDIENCE)),
        ] {
            let dir = stack.host(host).spool.join(account);
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
            let top = top_path(&stack, host, account, oauth);
            let used = use_path(&stack, host, account, oauth);
            assert_eq!(mode(&top), 0o600, "{}", top.display());
            assert_eq!(mode(&used), 0o400, "{}", used.display());
            for p in [&dir, &top, &used] {
                let meta = std::fs::metadata(p).unwrap();
                assert_eq!((meta.uid(), meta.gid()), (0, 0), "spool_owner root:root on {}", p.display());
            }
            // The .use is the access token the broker handed out, and the issuer vouches for it.
            assert_eq!(std::fs::read_to_string(&used).unwrap(), format!("{jwt}\n"));
            assert!(stack.bao.introspect(std::fs::read_to_string(&used).unwrap().trim()), "{} holds a live token", used.display());
            let doc = read_top(&top);
            let obj = doc.as_object().unwrap();
            assert_eq!(doc["vault_url"], format!("https://htvault.example:8200/v1/secret/oauth/{path}"));
            assert_eq!(doc["scopes"].as_str(), scopes);
            assert_eq!(doc["audience"].as_str(), audience);
            let expected_keys = 2 + usize::from(scopes.is_some()) + usize::from(audience.is_some());
            assert_eq!(obj.len(), expected_keys, "{doc}");
            let vt = doc["vault_token"].as_str().unwrap().to_string();
            leaks.secret(&vt);
            // A working Vault token of that service's own policy.
            let info = stack.bao.lookup(&vt).unwrap();
            let service = if account == "nobody" { "tier" } else { "prod" };
            assert!(info["policies"].as_array().unwrap().iter().any(|p| p == &format!("svc-{service}")), "{info}");
            vault_tokens.push((service, vt));
        }
    }
    // One login per service per cycle: every host got the same Vault token of a service.
    for service in ["prod", "tier"] {
        let mut tokens: Vec<&String> = vault_tokens.iter().filter(|(s, _)| *s == service).map(|(_, t)| t).collect();
        tokens.dedup();
        assert_eq!(tokens.len(), 1, "{service}");
    }

    // The token file: a child of the Vault token the credd got (its own token, same policy,
    // never outliving its parent), 0600, owned by nobody, {uid} resolved on the host.
    let file = stack.host("schedd2").dir.join(format!("vt_u{}-cms_tier", uid_of("nobody")));
    assert_eq!(mode(&file), 0o600);
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), uid_of("nobody"));
    let tier_vt = &vault_tokens.iter().find(|(s, _)| *s == "tier").unwrap().1;
    let child = std::fs::read_to_string(&file).unwrap();
    assert!(child.ends_with('\n'));
    let child = child.trim().to_string();
    leaks.secret(&child);
    assert_ne!(&child, tier_vt, "a file destination gets a child, not the credd's token");
    let child_info = stack.bao.lookup(&child).unwrap();
    let parent_info = stack.bao.lookup(tier_vt).unwrap();
    assert!(child_info["policies"].as_array().unwrap().iter().any(|p| p == "svc-tier"), "{child_info}");
    let exp = |v: &Value| chrono::DateTime::parse_from_rfc3339(v["expire_time"].as_str().unwrap()).unwrap();
    assert!(exp(&child_info) <= exp(&parent_info), "the child never outlives its parent");
    // Revoking the parent takes the child with it: it is a child in Vault's token tree.
    stack.bao.revoke(tier_vt);
    assert!(stack.bao.lookup(&child).is_err(), "child died with its parent");

    // Nothing failed: nobody was mailed.
    assert!(stack.smtp.as_ref().unwrap().messages().is_empty());
    stack.smtp.as_ref().unwrap().record_in(&leaks);
    leaks.assert_clean();
}

#[test]
fn a_stopped_host_fails_alone_and_admins_and_owners_are_told() {
    let leaks = Leaks::default();
    let (mut stack, _, _) = two_services(&leaks);
    stack.host_mut("schedd3").stop();
    let out = stack.run("run", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = stdout(&out);
    assert!(text.contains("credd@schedd3 NOT DELIVERED: deliver:"), "{}", shown(&out));
    assert!(text.contains("5 of 7 destinations delivered"), "{}", shown(&out));
    for host in ["schedd1", "schedd2"] {
        assert!(top_path(&stack, host, "acctprod", "cms_prod").is_file(), "{host} still gets its tokens");
        assert!(top_path(&stack, host, "nobody", "cms_tier").is_file());
    }

    let smtp = stack.smtp.as_ref().unwrap();
    let mails = smtp.wait_for_messages(3, Duration::from_secs(10));
    assert_eq!(mails.len(), 3, "one admin mail and one per affected service: {mails:#?}");
    let admin = mails.iter().find(|m| m.to.iter().any(|t| t == "oncall@example.org")).expect("admin mail");
    assert!(admin.subject.contains("schedd3"), "{}", admin.subject);
    assert!(admin.body.contains("credd@schedd3"), "{}", admin.body);
    assert!(admin.body.contains("prod") && admin.body.contains("tier"), "{}", admin.body);
    for service in ["prod", "tier"] {
        let owner = mails.iter().find(|m| m.to.iter().any(|t| t == &format!("{service}-owner@example.org"))).expect("owner mail");
        assert!(owner.body.contains("schedd3"), "{}", owner.body);
    }
    smtp.record_in(&leaks);
    for host in ["schedd1", "schedd2"] {
        leaks.secret(read_top(&top_path(&stack, host, "acctprod", "cms_prod"))["vault_token"].as_str().unwrap());
    }
    leaks.assert_clean();
}

#[test]
fn a_refused_token_is_delivered_nowhere_and_the_mail_says_why() {
    let leaks = Leaks::default();
    let (stack, _, _) = two_services(&leaks);
    // tier's broker now hands out a token that lacks its required scope.
    stack.put_token("tier", &spec("compute.read"));
    let out = stack.run("run", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(stdout(&out).contains("tier: FAILED at validate"), "{}", shown(&out));
    for host in HOSTS {
        assert!(top_path(&stack, host, "acctprod", "cms_prod").is_file());
        assert!(!stack.host(host).spool.join("nobody").exists(), "nothing of tier on {host}");
    }
    assert!(std::fs::read_dir(&stack.host("schedd2").dir).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with("vt_u")));
    let smtp = stack.smtp.as_ref().unwrap();
    let mails = smtp.wait_for_messages(2, Duration::from_secs(10));
    assert_eq!(mails.len(), 2, "{mails:#?}");
    for m in &mails {
        assert!(m.body.contains("required scope compute.create is not granted"), "{}", m.body);
        assert!(!m.body.contains("prod-owner"), "only tier is affected");
    }
    assert!(mails.iter().all(|m| !m.to.iter().any(|t| t == "prod-owner@example.org")));
    smtp.record_in(&leaks);
    leaks.assert_clean();
}

#[test]
fn a_changed_host_key_is_refused_and_the_old_files_stay() {
    let leaks = Leaks::default();
    let (mut stack, _, _) = two_services(&leaks);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let top = top_path(&stack, "schedd2", "acctprod", "cms_prod");
    let before = (std::fs::read(&top).unwrap(), std::fs::metadata(&top).unwrap().mtime_nsec());
    leaks.secret(read_top(&top)["vault_token"].as_str().unwrap());

    stack.host_mut("schedd2").regenerate_host_key();
    stack.put_token("prod", &spec("storage.read:/ compute.create"));
    let out = stack.run("second", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = stdout(&out);
    let line = text.lines().find(|l| l.contains("credd@schedd2 NOT DELIVERED")).unwrap_or_else(|| panic!("{}", shown(&out)));
    assert!(line.to_lowercase().contains("host key"), "{line}");
    assert_eq!((std::fs::read(&top).unwrap(), std::fs::metadata(&top).unwrap().mtime_nsec()), before, "old files untouched");
    // The other hosts got the new tokens.
    let other = top_path(&stack, "schedd1", "acctprod", "cms_prod");
    assert_ne!(std::fs::read(&other).unwrap(), before.0);
    leaks.secret(read_top(&other)["vault_token"].as_str().unwrap());
    stack.smtp.as_ref().unwrap().record_in(&leaks);
    leaks.assert_clean();
}

#[test]
fn a_second_delivery_replaces_the_first_atomically() {
    let leaks = Leaks::default();
    let (stack, _, _) = two_services(&leaks);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let top = top_path(&stack, "schedd1", "acctprod", "cms_prod");
    let used = use_path(&stack, "schedd1", "acctprod", "cms_prod");
    let old_top = std::fs::read_to_string(&top).unwrap();
    let old_use = std::fs::read_to_string(&used).unwrap();
    leaks.secret(read_top(&top)["vault_token"].as_str().unwrap());

    // A reader polls both files for the whole second run: every read must find a whole file.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, top, used) = (stop.clone(), top.clone(), used.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) && reads < 5_000_000 {
                match std::fs::read_to_string(&top) {
                    Ok(t) if t.ends_with('\n') && serde_json::from_str::<Value>(&t).is_ok() => {}
                    Ok(t) => bad.push(format!("partial .top ({} bytes)", t.len())),
                    Err(e) => bad.push(format!(".top missing: {e}")),
                }
                match std::fs::read_to_string(&used) {
                    Ok(t) if t.ends_with('\n') && t.matches('.').count() == 2 => {}
                    Ok(t) => bad.push(format!("partial .use ({} bytes)", t.len())),
                    Err(e) => bad.push(format!(".use missing: {e}")),
                }
                reads += 1;
            }
            (reads, bad)
        })
    };
    let new_jwt = stack.put_token("prod", &spec("storage.read:/ compute.create"));
    let out = stack.run("second", &["run"]);
    stop.store(true, Ordering::Relaxed);
    let (reads, bad) = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(reads > 10, "the reader ran during the delivery ({reads} reads)");
    assert!(bad.is_empty(), "a reader saw {} bad reads, first: {:?}", bad.len(), bad.first());

    assert_ne!(std::fs::read_to_string(&top).unwrap(), old_top);
    // The .use that is there is the credmon's to refresh (the new .top is newer than it).
    assert_eq!(std::fs::read_to_string(&used).unwrap(), old_use);
    assert_ne!(old_use, format!("{new_jwt}\n"));
    leaks.secret(read_top(&top)["vault_token"].as_str().unwrap());
    // No temp file left anywhere on any host.
    for host in HOSTS {
        let mut stack_dirs = vec![stack.host(host).dir.clone()];
        while let Some(d) = stack_dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                assert!(!name.contains(".tb-"), "temp file left: {}", e.path().display());
                if e.file_type().unwrap().is_dir() {
                    stack_dirs.push(e.path());
                }
            }
        }
    }
    leaks.assert_clean();
}

fn status_json(stack: &Stack) -> (Option<i32>, Vec<Value>) {
    let out = stack.run("status --json", &["status", "--json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", shown(&out)));
    (out.status.code(), rows)
}

#[test]
fn status_shows_every_destination_and_exits_by_the_expiry_warning() {
    let leaks = Leaks::default();
    let (mut stack, _, _) = two_services(&leaks);

    // Before any run: every destination is NEVER delivered, which needs attention.
    let (code, rows) = status_json(&stack);
    assert_eq!(code, Some(1));
    assert_eq!(rows.len(), 7);
    assert!(rows.iter().all(|r| r["health"] == "never"), "{rows:#?}");

    assert_eq!(stack.run("run", &["run"]).status.code(), Some(0));
    // Vault tokens from the harness's AppRoles live 1 h; the stack warns at 10 min.
    let (code, rows) = status_json(&stack);
    assert_eq!(code, Some(0), "{rows:#?}");
    for r in &rows {
        assert_eq!(r["health"], "ok", "{r}");
        let left = r["time_left_secs"].as_i64().unwrap();
        assert!((3000..=3600).contains(&left), "{r}");
        assert_eq!(r["consecutive_failures"], 0);
        assert!(r["last_success"].is_string());
    }
    let prod_credd = rows.iter().find(|r| r["service"] == "prod" && r["destination"] == "credd@schedd1").unwrap();
    assert!(prod_credd["access"]["jti"].is_string(), "{prod_credd}");
    let text = stack.run("status", &["status"]);
    let table = stdout(&text);
    assert_eq!(text.status.code(), Some(0));
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("prod") && l.contains("credd@schedd1") && l.contains(" ok ")), "{table}");

    // A failed attempt is counted, the old credential's time left still shown.
    stack.host_mut("schedd3").stop();
    assert_eq!(stack.run("run", &["run", "--service", "prod"]).status.code(), Some(1));
    let (_, rows) = status_json(&stack);
    let failing = rows.iter().find(|r| r["service"] == "prod" && r["destination"] == "credd@schedd3").unwrap();
    assert_eq!(failing["consecutive_failures"], 1, "{failing}");
    assert_eq!(failing["health"], "failing", "{failing}");
    assert!(failing["last_error"].as_str().unwrap().starts_with("deliver:"), "{failing}");

    // Warning window wider than what is left: EXPIRING, exit 1.
    let text = stack.inventory_text().replace("defaults:\n", "defaults:\n  expiry_warning: 2h\n").replace("  expiry_warning: 10m\n", "");
    std::fs::write(&stack.config, text).unwrap();
    let (code, rows) = status_json(&stack);
    assert_eq!(code, Some(1));
    assert!(rows.iter().all(|r| r["health"] == "expiring"), "{rows:#?}");
    let table = stdout(&stack.run("status", &["status"]));
    assert!(table.contains("expiring"), "{table}");
    for host in HOSTS {
        leaks.secret(read_top(&top_path(&stack, host, "acctprod", "cms_prod"))["vault_token"].as_str().unwrap());
    }
    stack.smtp.as_ref().unwrap().record_in(&leaks);
    leaks.assert_clean();
}

#[test]
fn one_cycle_at_a_time_per_state_directory() {
    let leaks = Leaks::default();
    let (stack, _, _) = two_services(&leaks);

    // A held lock: a run that may not wait refuses, naming the holder; nothing is delivered.
    {
        let _held = token_bastion::state::CycleLock::acquire(&stack.state_dir, None).unwrap();
        let out = stack.run("refused", &["run", "--wait", "0s"]);
        assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("another cycle (pid {}", std::process::id())), "{err}");
        assert!(!stack.host("schedd1").spool.join("acctprod").exists());
    }

    // Two runs started together: both deliver, one after the other. In OpenBao's audit log
    // each run's login is followed by its own token read before the next login.
    let config = stack.config.to_str().unwrap().to_string();
    let state = stack.state_dir.to_str().unwrap().to_string();
    let spawn = || {
        std::process::Command::new(crate::harness::product_bin())
            .args(["--config", &config, "--state-dir", &state, "run", "--service", "prod"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for (label, child) in [("a", a), ("b", b)] {
        let out = child.wait_with_output().unwrap();
        leaks.record_output(label, &out);
        assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    }
    let mut events: Vec<(String, &'static str)> = Vec::new();
    for entry in stack.bao.audit_entries() {
        if entry["type"] != "request" {
            continue;
        }
        let path = entry["request"]["path"].as_str().unwrap_or("");
        let what = if path == "auth/approle/login" && entry["request"]["data"]["role_id"] == stack.creds["prod"].role_id.as_str() {
            "login"
        } else if path == "secret/oauth/sts/cms/acctprod:prod" && entry["request"]["operation"] == "read" {
            "read"
        } else {
            continue;
        };
        events.push((entry["time"].as_str().unwrap_or("").to_string(), what));
    }
    events.sort();
    let sequence: Vec<&str> = events.iter().map(|(_, w)| *w).collect();
    let logins = sequence.iter().filter(|w| **w == "login").count();
    assert!(logins >= 2, "{sequence:?}");
    assert!(sequence.chunks(2).all(|c| c == ["login", "read"]), "runs interleaved: {sequence:?}");
    leaks.secret(read_top(&top_path(&stack, "schedd1", "acctprod", "cms_prod"))["vault_token"].as_str().unwrap());
    leaks.assert_clean();
}

/// The credmon deletes a `.top` whose Vault token Vault refuses. A `.top` the last cycle
/// delivered that is gone at the next one is reported (and delivered again).
#[test]
fn a_top_file_that_disappeared_since_the_last_delivery_is_reported() {
    let leaks = Leaks::default();
    let (stack, _, _) = two_services(&leaks);
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(0));
    let out = stack.run("second", &["run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stdout(&out).contains("WARNING"), "nothing disappeared: {}", shown(&out));
    let smtp = stack.smtp.as_ref().unwrap();
    assert!(smtp.messages().is_empty());

    let gone = top_path(&stack, "schedd2", "acctprod", "cms_prod");
    std::fs::remove_file(&gone).unwrap();
    let out = stack.run("third", &["run"]);
    assert_eq!(out.status.code(), Some(0), "delivered again: {}", shown(&out));
    let text = stdout(&out);
    let line = text.lines().find(|l| l.contains("credd@schedd2 WARNING")).unwrap_or_else(|| panic!("{}", shown(&out)));
    assert!(line.contains(&gone.display().to_string()) && line.contains("had disappeared"), "{line}");
    assert_eq!(text.matches("WARNING").count(), 1, "only the prod .top on schedd2: {text}");
    assert!(gone.is_file(), "delivered again");
    let mails = smtp.wait_for_messages(2, Duration::from_secs(10));
    let admin = mails.iter().find(|m| m.to.iter().any(|t| t == "oncall@example.org")).expect("admin mail");
    assert!(admin.body.contains("had disappeared") && admin.body.contains("schedd2"), "{}", admin.body);
    assert!(mails.iter().any(|m| m.to.iter().any(|t| t == "prod-owner@example.org")));
    smtp.record_in(&leaks);
    for host in HOSTS {
        leaks.secret(read_top(&top_path(&stack, host, "acctprod", "cms_prod"))["vault_token"].as_str().unwrap());
        leaks.secret(read_top(&top_path(&stack, host, "nobody", "cms_tier"))["vault_token"].as_str().unwrap());
    }
    leaks.assert_clean();
}

/// A lasting failure is mailed when it starts, then at most every `notify.remind_every`.
#[test]
fn a_lasting_failure_is_mailed_when_it_starts_and_then_reminded_at_a_bounded_rate() {
    let leaks = Leaks::default();
    let (mut stack, _, _) = two_services(&leaks);
    stack.host_mut("schedd3").stop();
    assert_eq!(stack.run("first", &["run"]).status.code(), Some(1));
    let smtp = stack.smtp.as_ref().unwrap();
    assert_eq!(smtp.wait_for_messages(3, Duration::from_secs(10)).len(), 3);
    assert_eq!(stack.run("second", &["run"]).status.code(), Some(1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(smtp.messages().len(), 3, "the same failure an hour later is not mailed again");

    let text = stack.inventory_text().replace("  admins: [oncall@example.org]\n", "  admins: [oncall@example.org]\n  remind_every: 0s\n");
    std::fs::write(&stack.config, text).unwrap();
    assert_eq!(stack.run("third", &["run"]).status.code(), Some(1));
    let mails = smtp.wait_for_messages(6, Duration::from_secs(10));
    assert_eq!(mails.len(), 6, "reminded once remind_every has passed");
    assert!(mails[3..].iter().any(|m| m.body.contains("3 attempts in a row")), "{:#?}", &mails[3..]);
    smtp.record_in(&leaks);
    for host in ["schedd1", "schedd2"] {
        leaks.secret(read_top(&top_path(&stack, host, "acctprod", "cms_prod"))["vault_token"].as_str().unwrap());
    }
    leaks.assert_clean();
}
