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
    assert!(stdout.contains("OK (3 services, 4 hosts, 10 destinations"), "{stdout}");
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

/// Bytes with every `from` replaced by `to` (a corpus file need not be UTF-8).
fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Every file in `tests/corpus/inventory/` is a broken inventory whose first line says where
/// `check` must refuse it: `# expect: LINE:COL FIELD: FRAGMENT`. `@DIR@` stands for a directory
/// of fixture files (a PEM file that holds no certificate).
#[test]
fn every_broken_inventory_in_the_corpus_is_refused_at_its_place() {
    let leaks = Leaks::default();
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/inventory");
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures");
    std::fs::create_dir(&fixtures).unwrap();
    std::fs::write(fixtures.join("not-a-certificate.pem"), "this file names a CA but holds no certificate\n").unwrap();
    let mut cases: Vec<_> = std::fs::read_dir(&corpus).unwrap().flatten().map(|e| e.path()).collect();
    cases.sort();
    assert!(cases.len() >= 70, "the corpus lost cases: {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(case).unwrap();
        let header = String::from_utf8_lossy(bytes.split(|b| *b == b'\n').next().unwrap()).into_owned();
        let expect = header.strip_prefix("# expect: ").unwrap_or_else(|| panic!("{name}: first line is not `# expect: ...`"));
        let (place, rest) = expect.split_once(' ').unwrap();
        let (field, fragment) = rest.split_once(": ").unwrap();
        let path = dir.path().join(&name);
        std::fs::write(&path, replace_bytes(&bytes, b"@DIR@", fixtures.to_str().unwrap().as_bytes())).unwrap();
        let out = check(&leaks, &path, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("{}:{place}: {field}: ", path.display());
        let found = stderr.lines().any(|l| l.starts_with(&want) && l.contains(fragment));
        if out.status.code() != Some(2) || !found {
            failures.push(format!("{name}: want exit 2 and `{want}…{fragment}…`, got {:?}:\n{stderr}", out.status.code()));
        }
        // Whatever the value, a diagnostic is one bounded line.
        if let Some(long) = stderr.lines().find(|l| l.len() > 600) {
            failures.push(format!("{name}: a diagnostic line of {} bytes: {}…", long.len(), &long[..200]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    leaks.assert_clean();
}

/// `check --strict` opens every file the inventory names as the user it runs as: a secret_id
/// left `root:root 0600` passes as root and fails as the unprivileged user, naming the file,
/// who cannot read it and why. `run` refuses to start on the same grounds.
#[test]
fn strict_check_proves_the_running_user_can_read_every_file() {
    use std::os::unix::fs::chown;
    const NOBODY: u32 = 65534;
    let leaks = Leaks::default();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = dir.path().display();
    let file = |name: &str, mode: u32, owner: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{name}-fixture-content\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        chown(&p, Some(owner), Some(owner)).unwrap();
        p
    };
    file("id", 0o600, NOBODY);
    file("known_hosts", 0o644, 0);
    file("prod.role_id", 0o644, 0);
    let secret_id = file("prod.secret_id", 0o600, 0);
    let inventory = format!(
        "broker:\n  url: https://vault.example:8200\n  issuer: cms\n  vault_url: https://vault.example:8200\n  auth:\n    method: approle\n    role_id_file: {d}/{{service}}.role_id\n    secret_id_file: {d}/{{service}}.secret_id\n\
         issuers:\n  iam:\n    url: https://iam.example/\n\
         hosts:\n  s1:\n    address: schedd.example\n    user: root\n    key_file: {d}/id\n    known_hosts: {d}/known_hosts\n    spool: /var/lib/condor/oauth_credentials\n\
         services:\n  prod:\n    account: cmst1\n    required: [compute.create]\n    destinations:\n      - credd:\n          hosts: [s1]\n"
    );
    let config = dir.path().join("services.yaml");
    std::fs::write(&config, inventory).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(crate::harness::product_bin());
        cmd.args(["--config", config.to_str().unwrap(), "--state-dir", dir.path().join("state").to_str().unwrap()]).args(args);
        let out = cmd.env("NO_COLOR", "1").env_remove("RUST_LOG").output().expect("setpriv runs the product as nobody");
        leaks.record_output("as nobody", &out);
        out
    };

    // Root reads everything.
    let out = check(&leaks, &config, &["--strict"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let out = as_nobody(&["check", "--strict"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("broker.auth.secret_id_file")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.starts_with(&format!("{}:8:21: broker.auth.secret_id_file: {} cannot be read by nobody (uid 65534)", config.display(), secret_id.display())), "{line}");
    assert!(line.contains("Permission denied") && line.contains("it is root:root 0600"), "{line}");
    assert_eq!(stderr.lines().filter(|l| l.contains("cannot be read")).count(), 1, "only the secret_id is closed to nobody:\n{stderr}");

    // `run` checks the same before it starts anything.
    let out = as_nobody(&["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be read by nobody"), "{}", String::from_utf8_lossy(&out.stderr));

    chown(&secret_id, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = as_nobody(&["check", "--strict"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    leaks.assert_clean();
}

/// The `vault_url` every accepted inventory puts into `.top` files is one the credmon accepts:
/// the shipped example, and every value `check` lets through of many written the ways an
/// operator might (the stack's own inventories are checked as they are written).
#[test]
fn every_accepted_vault_url_is_one_the_credmon_accepts() {
    use crate::harness::stack::credmon_accepts;
    use proptest::prelude::*;
    use token_bastion::inventory;

    let shipped_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services.yaml");
    let shipped = inventory::load(&shipped_path).unwrap();
    for spec in shipped.services.values() {
        let url = shipped.top_vault_url(spec);
        assert!(credmon_accepts(&url), "{}: {url}", spec.name);
    }

    let text = std::fs::read_to_string(&shipped_path).unwrap();
    let original = "  vault_url: https://htvault.cern.ch:8200\n";
    assert!(text.contains(original));
    let pieces = (
        prop::sample::select(vec!["https://", "http://", "HTTPS://", "https:/", "", "https://u:p@", "https://u@"]),
        prop::sample::select(vec!["htvault.cern.ch", "10.0.0.1", "[::1]", "", "a..b", "h_st", "h st"]),
        prop::sample::select(vec![":8200", "", ":08200", ":8201", ":", ":8200:8200", ":82000"]),
        prop::sample::select(vec!["", "/", "//", "/v1", "/v1/secret", "?x=1", "#frag", "#", "?", "\\\\", "/#/v1", "%2F"]),
    );
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config { cases: 400, ..Default::default() });
    runner
        .run(&pieces, |(scheme, host, port, tail)| {
            let value = format!("{scheme}{host}{port}{tail}");
            let yaml = text.replacen(original, &format!("  vault_url: {:?}\n", value), 1);
            if let Ok(inv) = inventory::parse(std::path::Path::new("services.yaml"), &yaml) {
                for spec in inv.services.values() {
                    let url = inv.top_vault_url(spec);
                    prop_assert!(credmon_accepts(&url), "check accepted vault_url {value:?}, giving {url}");
                }
            }
            Ok(())
        })
        .unwrap();
}
