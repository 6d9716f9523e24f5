//! `token-bastion check` as an operator runs it: diagnostics as `file:line:col: field: message`
//! and the exit status.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{run_product, Leaks};

fn check(leaks: &Leaks, path: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--config", path.to_str().unwrap(), "check"];
    args.extend_from_slice(extra);
    run_product(leaks, "check", &args, &[])
}

#[test]
fn the_shipped_inventory_is_accepted() {
    let leaks = Leaks::default();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services.yaml");
    let out = check(&leaks, &path, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OK (3 services, 4 hosts, 6 destinations"), "{stdout}");
    // Files that exist only on a bastion host are warnings here, errors with --strict.
    let strict = check(&leaks, &path, &["--strict"]);
    assert_eq!(strict.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("/etc/token-bastion/ssh/id_ed25519 does not exist"));
}

#[test]
fn a_broken_inventory_names_file_line_column_and_exits_2() {
    let leaks = Leaks::default();
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services.yaml")).unwrap();
    let path = dir.path().join("services.yaml");

    // A typo in a key: a syntax-level error with its position.
    let typo = shipped.replacen("    known_hosts: /etc/token-bastion/ssh/known_hosts\n", "    knownhosts: /etc/token-bastion/ssh/known_hosts\n", 1);
    std::fs::write(&path, &typo).unwrap();
    let line = typo.lines().position(|l| l.starts_with("    knownhosts:")).unwrap() + 1;
    let out = check(&leaks, &path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}:{line}:5: hosts.vocms0250.knownhosts: unknown field `knownhosts`", path.display())), "{stderr}");

    // Semantic errors: every one reported, each at its own line.
    let bad = shipped
        .replacen("      - storage.create:/store/user\n", "      - storage.create\n", 1)
        .replacen("          hosts: [crab-sched-903]\n", "          hosts: [crab-sched-904]\n", 1)
        .replacen("  vault_url: https://htvault.cern.ch:8200\n", "  vault_url: https://htvault.cern.ch\n", 1);
    std::fs::write(&path, &bad).unwrap();
    let at = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let at_line = |whole: &str| bad.lines().position(|l| l == whole).unwrap() + 1;
    let out = check(&leaks, &path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let p = path.display();
    assert!(stderr.contains(&format!("{p}:{}:14: broker.vault_url: ", at("vault_url: https://htvault.cern.ch"))), "{stderr}");
    assert!(stderr.contains(&format!("{p}:{}:9: services.crab.required[1]: ", at_line("      - storage.create"))), "{stderr}");
    assert!(stderr.contains("needs a path"), "{stderr}");
    assert!(stderr.contains(&format!("{p}:{}:19: services.crab.destinations[0].hosts[0]: no host `crab-sched-904`", at("crab-sched-904"))), "{stderr}");
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

#[test]
fn a_readable_secret_file_is_refused() {
    let leaks = Leaks::default();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    std::fs::write(&key, "not really a key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let shipped = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services.yaml")).unwrap();
    let text = shipped.replace("/etc/token-bastion/ssh/id_ed25519", key.to_str().unwrap());
    let path = dir.path().join("services.yaml");
    std::fs::write(&path, &text).unwrap();
    let out = check(&leaks, &path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("hosts.crab-sched-903.key_file") || stderr.contains("hosts.vocms0250.key_file"), "{stderr}");
    assert!(stderr.contains("mode 0640"), "{stderr}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(check(&leaks, &path, &[]).status.code(), Some(0));
}

#[test]
fn a_missing_inventory_is_a_setup_error() {
    let leaks = Leaks::default();
    let out = check(&leaks, std::path::Path::new("/nonexistent/services.yaml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/services.yaml: cannot read"));
}
