use super::*;
use super::validate::DEFAULT_MIN_ACCESS;
use std::time::Duration;
use crate::broker::AuthMethod;

const BASE: &str = r#"broker:
  url: https://vault.example:8200
  ca_file: /etc/ca.pem
  issuer: cms
  vault_url: https://vault.example:8200
  auth:
    method: approle
    role_id_file: /etc/tb/{service}.role_id
    secret_id_file: /etc/tb/{service}.secret_id
issuers:
  iam:
    url: https://iam.example/
hosts:
  s1:
    address: 127.0.0.1
    port: 2222
    user: root
    key_file: /etc/tb/id
    known_hosts: /etc/tb/known_hosts
    spool: /var/lib/condor/oauth_credentials
  s2:
    address: 127.0.0.1
    user: root
    key_file: /etc/tb/id
    known_hosts: /etc/tb/known_hosts
services:
  prod:
    account: cmst1
    role: production
    required: [storage.read:/, compute.create]
    destinations:
      - credd:
          hosts: [s1]
      - file:
          hosts: [s1, s2]
          mode: "0600"
"#;

fn parse_str(text: &str) -> Result<Inventory, Vec<Diagnostic>> {
    match parse(Path::new("inv.yaml"), text) {
        Ok(inv) => Ok(inv),
        Err(InventoryError::Invalid(d)) => Err(d),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Parses `BASE` with `from` replaced by `to` and expects exactly one diagnostic at `line:col`
/// for `field` whose message contains `needle`.
fn check(from: &str, to: &str, expected: &str, needle: &str) {
    assert!(BASE.contains(from), "fixture does not contain {from:?}");
    refused_once(&BASE.replacen(from, to, 1), expected, needle);
}

/// Expects exactly one diagnostic for `text`, at `line:col` and field `expected`, whose message
/// contains `needle`.
fn refused_once(text: &str, expected: &str, needle: &str) {
    let diags = parse_str(text).expect_err("inventory should be refused");
    let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    assert_eq!(diags.len(), 1, "{shown:#?}");
    let d = &shown[0];
    assert!(d.starts_with(&format!("inv.yaml:{expected}: ")), "{d}");
    assert!(d.contains(needle), "{d} lacks {needle:?}");
}

#[test]
fn base_fixture_resolves_defaults_and_templates() {
    let inv = parse_str(BASE).unwrap();
    let s = &inv.services["prod"];
    assert_eq!(s.oauth_service, "cms_production");
    assert_eq!(s.credkey, "cmst1");
    assert_eq!(s.issuer, "iam");
    assert_eq!(s.allowed, s.required);
    assert_eq!(s.min_access_lifetime, DEFAULT_MIN_ACCESS);
    assert_eq!(
        s.login,
        AuthMethod::AppRole {
            mount: "approle".into(),
            role_id_file: "/etc/tb/prod.role_id".into(),
            secret_id_file: "/etc/tb/prod.secret_id".into()
        }
    );
    let ids: Vec<&str> = s.destinations.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["credd@s1", "file@s1:/tmp/vt_u{uid}-cms_production", "file@s2:/tmp/vt_u{uid}-cms_production"]);
    match &s.destinations[1].kind {
        DestinationKind::File { mode, owner, content, .. } => {
            assert_eq!(*mode, 0o600);
            assert_eq!(owner.user, "cmst1");
            assert_eq!(*content, FileContent::VaultToken);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(inv.hosts["s1"].port, 2222);
    assert_eq!(inv.hosts["s2"].port, 22);
    assert_eq!(inv.hosts["s1"].spool_owner, Owner { user: "root".into(), group: Some("root".into()) });
    assert_eq!(inv.broker.vault_url, "https://vault.example:8200");
}

#[test]
fn shipped_example_inventory_is_valid() {
    let inv = parse(Path::new("services.yaml"), include_str!("../../services.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inv.services.keys().collect::<Vec<_>>(), ["crab", "tier0", "wmagent"]);
    assert_eq!(inv.services["wmagent"].destinations.len(), 7, "credd and its handle on two hosts, a file, the IDToken on two hosts");
    assert_eq!(inv.services["wmagent"].idtoken.as_ref().map(|i| i.key.as_str()), Some("WMAGENT"));
    assert_eq!(inv.services["tier0"].min_access_lifetime, Duration::from_secs(1800));
    assert_eq!(inv.services["crab"].min_vault_lifetime, Duration::from_secs(2 * 86400));
    assert_eq!(inv.hosts["vocms0314"].spool_owner.to_string(), "condor:condor");
}

#[test]
fn syntax_and_type_errors_carry_line_column_and_field() {
    check("    port: 2222\n", "    prot: 2222\n", "16:5: hosts.s1.prot", "unknown field `prot`");
    check("    port: 2222\n", "    port: twelve\n", "16:11: hosts.s1.port", "u16");
    check("  ca_file: /etc/ca.pem\n", "\tca_file: /etc/ca.pem\n", "2:8: broker.url", "tab");
    check("      - credd:\n", "      - crud:\n", "32:9: services.prod.destinations.crud", "unknown variant `crud`");
}

#[test]
fn vault_url_is_checked_as_the_credmon_checks_it() {
    let f = "broker.vault_url";
    check("  vault_url: https://vault.example:8200\n", "  vault_url: http://vault.example:8200\n", "5:14", "only https");
    check("  vault_url: https://vault.example:8200\n", "  vault_url: https://vault.example\n", &format!("5:14: {f}"), "port 8200");
    check("  vault_url: https://vault.example:8200\n", "  vault_url: https://vault.example:8201\n", "5:14", "port 8200");
    check("  vault_url: https://vault.example:8200\n", "  vault_url: https://vault.example:8200/v1/x\n", "5:14", "origin only");
}

#[test]
fn references_and_duplicates_point_at_the_line() {
    check("          hosts: [s1]\n", "          hosts: [s9]\n", "33:19: services.prod.destinations[0].hosts[0]", "no host `s9`");
    check("          hosts: [s1]\n", "          hosts: [s2]\n", "33:19", "has no spool");
    check("          hosts: [s1, s2]\n", "          hosts: [s1, s1]\n", "35:23", "listed twice");
}

#[test]
fn service_fields_are_validated() {
    check("    role: production\n", "    role: prod_uction\n", "29:11: services.prod.role", "no `_`");
    check("    role: production\n", "    role: production\n    oauth_service: cms_a_b\n", "30:20", "issuer[_role]");
    check("    role: production\n", "    role: production\n    oauth_service: atlas\n", "30:20", "must start with the broker's issuer");
    check("    role: production\n", "    role: production\n    oauth_service: cms/x\n", "30:20", "characters");
    check("    account: cmst1\n", "    account: cms t1\n", "28:14: services.prod.account", "not a Unix account");
    check(
        "    required: [storage.read:/, compute.create]\n",
        "    required: [storage.read:/, compute.create]\n    allowed: [storage.read:/]\n",
        "30:32: services.prod.required[1]",
        "not inside any allowed scope",
    );
    check("    required: [storage.read:/, compute.create]\n", "    required: [storage.read, compute.create]\n", "30:16: services.prod.required[0]", "storage.read");
    check("    required: [storage.read:/, compute.create]\n", "    required: []\n", "28:5", "least privilege");
}

#[test]
fn durations_modes_owners_and_templates() {
    let extra = "    min_access_lifetime: soon\n";
    check("    role: production\n", &format!("    role: production\n{extra}"), "30:26: services.prod.min_access_lifetime", "not a duration");
    check("    role: production\n", "    role: production\n    min_access_lifetime: 7h\n", "30:26", "6 h");
    check("          mode: \"0600\"\n", "          mode: \"0644\"\n", "36:17: services.prod.destinations[1].mode", "group or others");
    check("          mode: \"0600\"\n", "          mode: \"rw\"\n", "36:17", "not an octal");
    check("          mode: \"0600\"\n", "          mode: \"0600\"\n          owner: \"bad user\"\n", "37:18", "not an owner");
    check("          mode: \"0600\"\n", "          mode: \"0600\"\n          path: /tmp/{user}\n", "37:17", "unknown placeholder `{user}`");
    check("    role_id_file: /etc/tb/{service}.role_id\n", "    role_id_file: /etc/tb/{uid}.role_id\n", "8:19: broker.auth.role_id_file", "unknown placeholder `{uid}`");
    let inv = parse_str(&BASE.replacen("mode: \"0600\"", "mode: 400", 1)).unwrap();
    assert!(matches!(inv.services["prod"].destinations[1].kind, DestinationKind::File { mode: 0o400, .. }));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = BASE.replacen("hosts: [s1]", "hosts: [nope]", 1).replacen("role: production", "role: a_b", 1);
    let diags = parse_str(&text).unwrap_err();
    assert_eq!(diags.len(), 2, "{diags:#?}");
    assert!(diags[0].line < diags[1].line);
}

#[test]
fn yaml_path_follows_indentation() {
    let text = "a:\n  b:\n    - c: 1\n      d: 2\n  e: 3\n";
    assert_eq!(yaml_path_at(text, 4), "a.b.d");
    assert_eq!(yaml_path_at(text, 5), "a.e");
    assert_eq!(yaml_path_at(text, 1), "a");
    assert_eq!(yaml_path_at(text, 99), "(document)");
}

#[test]
fn local_secret_files_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    std::fs::write(&key, "k").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, "").unwrap();
    std::fs::set_permissions(&kh, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = BASE.replace("/etc/tb/id", key.to_str().unwrap()).replace("/etc/tb/known_hosts", kh.to_str().unwrap());
    let inv = parse_str(&text).unwrap();
    let (errors, warnings) = check_local_files(&inv, false);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].to_string().contains("hosts.s1.key_file"), "{}", errors[0]);
    assert!(errors[0].message.contains("mode 0644"));
    // role_id, secret_id and CA files do not exist here: warnings, or errors when strict.
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    let (strict_errors, _) = check_local_files(&inv, true);
    assert_eq!(strict_errors.len(), 4);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (errors, _) = check_local_files(&inv, false);
    assert!(errors.is_empty(), "{errors:#?}");
}

const APPROLE_AUTH: &str = "    method: approle\n    role_id_file: /etc/tb/{service}.role_id\n    secret_id_file: /etc/tb/{service}.secret_id\n";
const KERBEROS_AUTH: &str = "    method: kerberos\n    principal: \"{account}@CERN.CH\"\n    keytab: /etc/tb/{service}.keytab\n";
const CERT_AUTH: &str = "    method: cert\n    cert_file: /etc/tb/{service}.crt\n    key_file: /etc/tb/{service}.key\n";

#[test]
fn kerberos_login_defaults_to_the_htvault_mount_and_a_ccache_per_service() {
    let inv = parse_str(&BASE.replacen(APPROLE_AUTH, KERBEROS_AUTH, 1)).unwrap();
    assert_eq!(
        inv.services["prod"].login,
        AuthMethod::Kerberos {
            principal: "cmst1@CERN.CH".into(),
            keytab: "/etc/tb/prod.keytab".into(),
            ccache: "krb5cc/prod".into(),
            mount: "kerberos-cms_production".into(),
            spn_host: None,
        }
    );
    assert_eq!(
        inv.services["prod"].login.with_ccache_under(Path::new("/var/lib/token-bastion")),
        AuthMethod::Kerberos {
            principal: "cmst1@CERN.CH".into(),
            keytab: "/etc/tb/prod.keytab".into(),
            ccache: "/var/lib/token-bastion/krb5cc/prod".into(),
            mount: "kerberos-cms_production".into(),
            spn_host: None,
        }
    );
    let keytab = inv.local_files.iter().find(|f| f.field == "broker.auth.keytab").expect("the keytab is checked");
    assert_eq!(keytab.kind, FileKind::Secret);

    let explicit = "    method: kerberos\n    principal: cmsprod/{service}@CERN.CH\n    keytab: /etc/tb/k\n    ccache: /run/tb/{service}.cc\n    mount: kerberos-cms_prod\n    spn_host: htvault.cern.ch\n";
    let inv = parse_str(&BASE.replacen(APPROLE_AUTH, explicit, 1)).unwrap();
    assert_eq!(
        inv.services["prod"].login,
        AuthMethod::Kerberos {
            principal: "cmsprod/prod@CERN.CH".into(),
            keytab: "/etc/tb/k".into(),
            ccache: "/run/tb/prod.cc".into(),
            mount: "kerberos-cms_prod".into(),
            spn_host: Some("htvault.cern.ch".into()),
        }
    );
    // An absolute ccache is left where the inventory put it.
    assert_eq!(inv.services["prod"].login.with_ccache_under(Path::new("/state")), inv.services["prod"].login);
}

#[test]
fn kerberos_login_fields_are_validated() {
    let with = |extra: &str| format!("{KERBEROS_AUTH}{extra}");
    check(APPROLE_AUTH, "    method: kerberos\n    keytab: /etc/tb/k\n", "7:13: broker.auth", "missing field `principal`");
    check(APPROLE_AUTH, "    method: kerberos\n    principal: cmst1\n    keytab: /etc/tb/k\n", "8:16: broker.auth.principal", "with a realm");
    check(APPROLE_AUTH, "    method: kerberos\n    principal: \"{account}@\"\n    keytab: /etc/tb/k\n", "8:16: broker.auth.principal", "with a realm");
    check(APPROLE_AUTH, "    method: kerberos\n    principal: \"{user}@CERN.CH\"\n    keytab: /etc/tb/k\n", "8:16: broker.auth.principal", "unknown placeholder `{user}`");
    check(APPROLE_AUTH, "    method: kerberos\n    principal: a@CERN.CH\n    keytab: tb.keytab\n", "9:13: broker.auth.keytab", "absolute path");
    check(APPROLE_AUTH, &with("    ccache: cc/{service}\n"), "10:13: broker.auth.ccache", "absolute path");
    check(APPROLE_AUTH, &with("    spn_host: host/vault\n"), "10:15: broker.auth.spn_host", "not a host name");
    check(APPROLE_AUTH, &with("    mount: ../sys\n"), "10:12: broker.auth.mount", "not an auth mount path");
    check(APPROLE_AUTH, &with("    role_id_file: /x\n"), "10:19: broker.auth.role_id_file", "unknown field `role_id_file` for method kerberos");
}

#[test]
fn cert_login_resolves_with_the_default_mount() {
    let inv = parse_str(&BASE.replacen(APPROLE_AUTH, CERT_AUTH, 1)).unwrap();
    assert_eq!(
        inv.services["prod"].login,
        AuthMethod::Cert { cert_file: "/etc/tb/prod.crt".into(), key_file: "/etc/tb/prod.key".into(), mount: "cert".into(), name: None }
    );
    let kinds: Vec<(&str, FileKind)> = inv.local_files.iter().filter(|f| f.field.starts_with("broker.auth")).map(|f| (f.field.as_str(), f.kind)).collect();
    assert_eq!(kinds, [("broker.auth.cert_file", FileKind::Certificates), ("broker.auth.key_file", FileKind::Secret)]);

    let named = format!("{CERT_AUTH}    mount: tls/cms\n    name: \"{{service}}\"\n");
    let inv = parse_str(&BASE.replacen(APPROLE_AUTH, &named, 1)).unwrap();
    assert!(matches!(&inv.services["prod"].login, AuthMethod::Cert { mount, name: Some(n), .. } if mount == "tls/cms" && n == "prod"));
    check(APPROLE_AUTH, "    method: cert\n    cert_file: /etc/tb/c\n", "7:13: broker.auth", "missing field `key_file`");
    check(APPROLE_AUTH, &format!("{CERT_AUTH}    mount: \"\"\n"), "10:12: broker.auth.mount", "not an auth mount path");
}

#[test]
fn a_service_overrides_the_login_with_its_own_kerberos_principal() {
    let service_auth = "    auth:\n      method: kerberos\n      principal: cmsprod@CERN.CH\n      keytab: /etc/tb/cmsprod.keytab\n";
    let inv = parse_str(&BASE.replacen("    role: production\n", &format!("    role: production\n{service_auth}"), 1)).unwrap();
    assert!(matches!(&inv.services["prod"].login, AuthMethod::Kerberos { principal, mount, .. } if principal == "cmsprod@CERN.CH" && mount == "kerberos-cms_production"));
    check("    role: production\n", "    role: production\n    auth:\n      method: kerberos\n      principal: x\n      keytab: /k\n", "32:18: services.prod.auth.principal", "with a realm");
}

#[test]
fn keytabs_and_cert_keys_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keytab = dir.path().join("prod.keytab");
    let cert_key = dir.path().join("prod.key");
    for f in [&keytab, &cert_key] {
        std::fs::write(f, b"k").unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let d = dir.path().display();
    let errors_for = |auth: &str| {
        let inv = parse_str(&BASE.replacen(APPROLE_AUTH, auth, 1)).unwrap();
        let (errors, _) = check_local_files(&inv, false);
        errors.into_iter().filter(|e| e.field.starts_with("broker.auth")).map(|e| e.to_string()).collect::<Vec<_>>()
    };
    let krb = format!("    method: kerberos\n    principal: a@B\n    keytab: {d}/{{service}}.keytab\n");
    let errors = errors_for(&krb);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("broker.auth.keytab") && errors[0].contains("mode 0640"), "{}", errors[0]);
    let cert = format!("    method: cert\n    cert_file: /etc/tb/c.pem\n    key_file: {d}/{{service}}.key\n");
    let errors = errors_for(&cert);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("broker.auth.key_file") && errors[0].contains("mode 0640"), "{}", errors[0]);

    std::fs::set_permissions(&keytab, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(errors_for(&krb).is_empty());
}

#[test]
fn schedules_are_parsed_with_their_position() {
    check("    role: production\n", "    role: production\n    schedule: \"61 * * * *\"\n", "30:15: services.prod.schedule", "61 * * * *");
    let inv = parse_str(&BASE.replacen("    role: production\n", "    role: production\n    schedule: \"*/20 * * * *\"\n", 1)).unwrap();
    let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:05:00Z").unwrap().with_timezone(&chrono::Utc);
    assert_eq!(inv.services["prod"].schedule.next_after(t).unwrap().to_rfc3339(), "2026-01-01T10:20:00+00:00");
}


#[test]
fn an_oversized_inventory_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.yaml");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_INVENTORY_BYTES + 1).unwrap();
    let e = load(&path).unwrap_err();
    assert!(matches!(e, InventoryError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("larger than the 4 MiB an inventory may hold"), "{e}");
}

#[test]
fn a_non_utf8_byte_is_placed_by_line_and_column() {
    let mut bytes = BASE.as_bytes().to_vec();
    let at = BASE.find("account: cmst1").unwrap() + "account: cm".len();
    bytes[at] = 0xff;
    let diags = match parse_bytes(Path::new("inv.yaml"), &bytes, SCHEDULE_FLOOR) {
        Err(InventoryError::Invalid(d)) => d,
        other => panic!("{:?}", other.map(|_| ())),
    };
    assert_eq!(diags[0].to_string(), "inv.yaml:28:16: services.prod.account: byte 0xff is not UTF-8 (the file must be UTF-8 text)");
}

#[test]
fn yaml_budgets_are_named_where_repetition_starts() {
    let aliases = vec!["*a"; ALIAS_BUDGET + 1].join(", ");
    let text = BASE.replacen("    role: production\n", &format!("    role: production\n    audience: &a https://aud.example\n    allowed: [{aliases}]\n"), 1);
    let diags = parse_str(&text).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert!(diags[0].message.contains("alias budget of 1000 aliases"), "{}", diags[0]);
    assert_eq!((diags[0].line, diags[0].field.as_str()), (31, "services.prod.allowed"), "{}", diags[0]);

    // A long list repeated by an alias in each of many services: the node budget, counting
    // every node the aliases repeat.
    let (head, service) = BASE.split_once("services:\n").unwrap();
    let list = (0..1000).map(|i| format!("s{i}")).collect::<Vec<_>>().join(", ");
    let mut text = format!("{head}services:\n");
    for i in 0..600 {
        let allowed = if i == 0 { format!("&l [{list}]") } else { "*l".to_string() };
        text.push_str(&service.replacen("  prod:", &format!("  prod{i}:"), 1).replacen("    role: production\n", &format!("    role: production\n    allowed: {allowed}\n"), 1));
    }
    let diags = parse_str(&text).unwrap_err();
    assert!(diags[0].message.contains(&format!("node budget of {NODE_BUDGET} YAML nodes")), "{}", diags[0]);

    // Few aliases of a large value: the text budget, counting what the aliases repeat.
    let big = "x".repeat(64 * 1024);
    let text = BASE.replacen("    role: production\n", &format!("    role: production\n    audience: &a {big}\n    allowed: [{}]\n", vec!["*a"; 100].join(", ")), 1);
    let diags = parse_str(&text).unwrap_err();
    assert!(diags[0].message.contains("text budget of 4 MiB"), "{}", diags[0]);
    assert!(diags[0].to_string().len() < 300, "{}", diags[0]);
}

/// Thousands of services, with no alias, are well within every budget.
#[test]
fn an_inventory_of_thousands_of_services_is_within_the_budgets() {
    let (head, service) = BASE.split_once("services:\n").unwrap();
    let mut text = format!("{head}services:\n");
    for i in 0..5000 {
        text.push_str(&service.replacen("  prod:", &format!("  prod{i}:"), 1).replace("role: production", &format!("role: production{i}")));
    }
    let inv = parse_str(&text).unwrap_or_else(|d| panic!("{}", d[0]));
    assert_eq!(inv.services.len(), 5000);
}

#[test]
fn schedules_keep_runs_a_minute_apart_unless_the_floor_is_lowered() {
    let text = BASE.replacen("    role: production\n", "    role: production\n    schedule: \"*/2 * * * * *\"\n", 1);
    let diags = parse_str(&text).unwrap_err();
    assert!(diags[0].to_string().starts_with("inv.yaml:30:15: services.prod.schedule: `*/2 * * * * *` runs the service 2s apart; runs must be at least 1m apart"), "{}", diags[0]);
    assert!(parse_bytes(Path::new("inv.yaml"), text.as_bytes(), Duration::from_secs(1)).is_ok());
    let every_minute = BASE.replacen("    role: production\n", "    role: production\n    schedule: \"* * * * *\"\n", 1);
    assert!(parse_str(&every_minute).is_ok());
}

#[test]
fn file_roots_default_and_the_longest_root_holds_a_path() {
    let inv = parse_str(BASE).unwrap();
    let s1 = &inv.hosts["s1"];
    assert_eq!(s1.file_roots, DEFAULT_FILE_ROOTS);
    assert_eq!(file_root_for(s1, "/tmp/vt_u{uid}-cms_production"), Some("/tmp"));
    assert_eq!(file_root_for(s1, "/run/user/{uid}/bt"), Some("/run/user"));
    assert_eq!(file_root_for(s1, "/database/x"), None);
    assert_eq!(file_root_for(s1, "/opt/x"), None);

    let text = BASE.replacen("    spool: /var/lib/condor/oauth_credentials\n", "    spool: /var/lib/condor/oauth_credentials\n    file_roots: [/data, /data/tier0/, /srv/tokens]\n", 1);
    let inv = parse_str(&text.replacen("          mode: \"0600\"\n", "          mode: \"0600\"\n          path: /data/tier0/bt\n", 1)).unwrap();
    let s1 = &inv.hosts["s1"];
    assert_eq!(s1.file_roots, ["/data", "/data/tier0", "/srv/tokens"]);
    assert_eq!(file_root_for(s1, "/data/tier0/bt"), Some("/data/tier0"));
    assert_eq!(file_root_for(s1, "/data/tier0x/bt"), Some("/data"));
    assert_eq!(file_root_for(s1, "/srv/tokens"), Some("/srv/tokens"));
    // s2 keeps the default roots, where /data/tier0/bt lies too.
    assert_eq!(file_root_for(&inv.hosts["s2"], "/data/tier0/bt"), Some("/data"));
}

const IDTOKEN: &str = "    idtoken:
      identity: cmst1@cms.example
      authz: [READ, WRITE]
      lifetime: 30d
      key: WMAGENT
      issuer: cms.example
      mint_host: s1
      destinations:
        - hosts: [s1, s2]
";

/// `BASE` with the IDToken block (its `from` replaced by `to`) appended to service `prod`;
/// the block starts on line 37.
fn with_idtoken(from: &str, to: &str) -> String {
    assert!(IDTOKEN.contains(from), "block does not contain {from:?}");
    format!("{BASE}{}", IDTOKEN.replacen(from, to, 1))
}

fn check_idtoken(from: &str, to: &str, expected: &str, needle: &str) {
    refused_once(&with_idtoken(from, to), expected, needle);
}

#[test]
fn an_idtoken_block_resolves_defaults_and_destinations() {
    let inv = parse_str(&with_idtoken("", "")).unwrap();
    let s = &inv.services["prod"];
    let id = s.idtoken.as_ref().unwrap();
    assert_eq!((id.name.as_str(), id.renew_before, id.config_dir.as_str()), ("prod", Duration::from_secs(7 * 86400), "/etc/condor/config.d"));
    assert_eq!(id.scope().as_deref(), Some("condor:/READ condor:/WRITE"));
    let ids: Vec<&str> = s.destinations.iter().filter(|d| matches!(d.kind, DestinationKind::IdToken { .. })).map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["idtoken@s1:~cmst1/.condor/tokens.d/prod", "idtoken@s2:~cmst1/.condor/tokens.d/prod"]);
}

#[test]
fn idtoken_mistakes_are_named_where_they_are_written() {
    check_idtoken("cmst1@cms.example", "cmst1", "38:17", "services.prod.idtoken.identity: `cmst1` is not of the form user@domain");
    check_idtoken("[READ, WRITE]", "[READ, SUPERUSER]", "39:21", "services.prod.idtoken.authz[1]: `SUPERUSER` is not an authorization level");
    check_idtoken("lifetime: 30d", "lifetime: 30d\n      renew_before: 30d", "41:21", "renew_before: must be shorter than the lifetime");
    check_idtoken("lifetime: 30d", "lifetime: 10m", "40:17", "lifetime");
    check_idtoken("mint_host: s1", "mint_host: s9", "43:18", "no host `s9` under hosts");
    check_idtoken("key: WMAGENT", "key: -rf", "41:12", "not a signing key name");
    check_idtoken("hosts: [s1, s2]", "hosts: [s1, s2]\n          path: ~cmst0/.condor/tokens.d/prod", "46:17", "lies in ~cmst0, but the token belongs to the service account cmst1");
    check_idtoken("hosts: [s1, s2]", "hosts: [s1, s1]", "45:23", "listed twice");
}

#[test]
fn broker_pace_and_host_fan_out_have_defaults_and_bounds() {
    let inv = parse_str(BASE).unwrap();
    assert_eq!(inv.broker.limits, crate::broker::pace::Limits::default());
    assert_eq!(inv.delivery.hosts_at_once, DeliverySpec::DEFAULT_HOSTS_AT_ONCE);

    let set = BASE.replacen("  issuer: cms\n", "  issuer: cms\n  concurrency: 4\n  rate: 20\n", 1) + "delivery:\n  hosts_at_once: 50\n";
    let inv = parse_str(&set).unwrap();
    assert_eq!(inv.broker.limits.concurrency, 4);
    assert_eq!(inv.broker.limits.spacing, Some(Duration::from_millis(50)));
    assert_eq!(inv.delivery.hosts_at_once, 50);

    check("  issuer: cms\n", "  issuer: cms\n  concurrency: 0\n", "5:16: broker.concurrency", "not between 1 and 256");
    check("  issuer: cms\n", "  issuer: cms\n  rate: 0\n", "5:9: broker.rate", "no rate");
    check("  issuer: cms\n", "  issuer: cms\n  rate: -3\n", "5:9: broker.rate", "no rate");
    let diags = parse_str(&(BASE.to_string() + "delivery:\n  hosts_at_once: 0\n")).unwrap_err();
    assert!(diags.iter().any(|d| d.to_string().contains("delivery.hosts_at_once") && d.to_string().contains("not between 1 and 512")), "{diags:?}");
}

#[test]
fn a_credd_host_with_trusted_vault_hosts_takes_only_a_vault_url_among_them() {
    let spool = "    spool: /var/lib/condor/oauth_credentials\n";
    let trusting = |list: &str| format!("{spool}    trusted_vault_hosts: {list}\n");
    for list in ["[vault.example]", "[other.example, VAULT.Example]"] {
        let inv = parse_str(&BASE.replacen(spool, &trusting(list), 1)).unwrap_or_else(|d| panic!("{list}: {d:?}"));
        assert_eq!(inv.services.len(), 1);
    }
    check(
        spool,
        &trusting("[vault.cern.ch, vault2.cern.ch]"),
        "34:19: services.prod.destinations[0].hosts[0]",
        "host `s1` trusts only the Vault hosts vault.cern.ch, vault2.cern.ch (hosts.s1.trusted_vault_hosts), but service `prod`'s .top would name vault host `vault.example`",
    );
    // A file destination on the same host is not the credd's business.
    let file_only = BASE.replacen(spool, &trusting("[vault.cern.ch]"), 1).replacen("      - credd:\n          hosts: [s1]\n", "", 1);
    parse_str(&file_only).unwrap_or_else(|d| panic!("{d:?}"));
    // An IPv6 vault_url matches its address, bracketed or not.
    for list in ["[\"::1\"]", "[\"[::1]\"]"] {
        let text = BASE.replacen(spool, &trusting(list), 1).replacen("vault_url: https://vault.example:8200", "vault_url: https://[::1]:8200", 1);
        parse_str(&text).unwrap_or_else(|d| panic!("{list}: {d:?}"));
    }
}

#[test]
fn trusted_vault_hosts_entries_are_bare_host_names() {
    let spool = "    spool: /var/lib/condor/oauth_credentials\n";
    let trusting = |list: &str| format!("{spool}    trusted_vault_hosts: {list}\n");
    let f = "hosts.s1.trusted_vault_hosts";
    check(spool, &trusting("[]"), &format!("21:26: {f}"), "trust no Vault host");
    check(spool, &trusting("[vault.example, \"https://vault.example\"]"), &format!("21:42: {f}[1]"), "without scheme");
    check(spool, &trusting("[\"vault.example:8200\"]"), &format!("21:27: {f}[0]"), "without a port");
    check(spool, &trusting("[\"vault.example, other.example\"]"), &format!("21:27: {f}[0]"), "one host per entry");
    check(spool, &trusting("[\"vault..example\"]"), &format!("21:27: {f}[0]"), "not a host name");
}

/// `BASE` with handles on its credd destination (YAML lines under `handles:`).
fn with_handles(handles: &str) -> String {
    BASE.replacen("          hosts: [s1]\n      - file:", &format!("          hosts: [s1]\n          handles:\n{handles}      - file:"), 1)
}

#[test]
fn handles_narrow_the_service_and_get_a_destination_beside_its_credd_one() {
    let text = with_handles("            - name: reader\n              scopes: [storage.read:/store/data]\n              audience: https://aud.example\n            - name: jobs\n              scopes: [compute.create]\n");
    let inv = parse_str(&text).unwrap();
    let s = &inv.services["prod"];
    assert_eq!(s.handles.len(), 2);
    assert_eq!(s.handles[0].name, "reader");
    assert_eq!(s.handles[0].scopes, vec!["storage.read:/store/data".parse().unwrap()]);
    assert_eq!(s.handles[0].audience.as_deref(), Some("https://aud.example"));
    assert_eq!(s.handle_stem("reader"), "cms_production_reader");
    let ids: Vec<&str> = s.destinations.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(&ids[..3], ["credd@s1", "handle@s1:reader", "handle@s1:jobs"], "each handle right after its parent");
    assert_eq!(s.destinations[1].kind, DestinationKind::Handle { name: "reader".into() });
    assert_eq!(
        inv.handle_vault_url(s, &s.handles[0]),
        "https://vault.example:8200/v1/secret/oauth/sts/cms/cmst1:production",
        "the sts path; scopes and audience go in the .top's own fields"
    );
    let req = s.handle_request(&s.handles[0], 60);
    assert_eq!((req.scopes, req.audiences), (vec!["storage.read:/store/data".to_string()], vec!["https://aud.example".to_string()]));
}

#[test]
fn a_handle_wider_than_the_service_is_refused_naming_the_scope() {
    refused_once(
        &with_handles("            - name: reader\n              scopes: [storage.read:/store, storage.create:/store]\n"),
        "36:45: services.prod.destinations[0].credd.handles[0].scopes[1]",
        "`storage.create:/store` is wider than the service allows",
    );
    // Path prefixes follow the WLCG rules: `/` covers `/store`, `/store` does not cover `/storex`.
    let narrow = BASE.replacen("required: [storage.read:/, compute.create]", "required: [storage.read:/store, compute.create]", 1);
    let narrow = narrow.replacen("          hosts: [s1]\n      - file:", "          hosts: [s1]\n          handles:\n            - {name: a, scopes: [storage.read:/storex]}\n      - file:", 1);
    let diags = parse_str(&narrow).expect_err("not under the prefix");
    assert!(diags[0].to_string().contains("storage.read:/storex"), "{}", diags[0]);
}

#[test]
fn a_bad_handle_is_refused_where_it_is_written() {
    let one = |handles: &str, expected: &str, needle: &str| refused_once(&with_handles(handles), expected, needle);
    one("            - name: read_only\n              scopes: [compute.create]\n", "35:21", "not a handle name");
    one("            - name: a\n              scopes: [compute.create]\n            - name: a\n              scopes: [compute.create]\n", "37:21", "listed twice");
    one("            - name: a\n              scopes: []\n", "36:23", "list the handle's scopes");
    one("            - name: a\n              scopes: [compute.create]\n              audience: \"a,b\"\n", "37:25", "comma");
    one("            - name: a\n              scopes: [compute.create]\n              ttl: 1h\n", "37:15", "unknown field `ttl`");
}

#[test]
fn a_handle_cannot_take_another_services_credential_name() {
    // `other` (default role: `cms`) with handle `production` would write prod's `cms_production.top`.
    let text = BASE.to_string()
        + "  other:\n    account: cmst1\n    required: [compute.create]\n    destinations:\n      - credd:\n          hosts: [s1]\n          handles:\n            - {name: production, scopes: [compute.create]}\n";
    let diags = parse_str(&text).expect_err("same .top");
    assert!(diags.iter().any(|d| d.to_string().contains("cmst1/cms_production.top")), "{diags:?}");
}
