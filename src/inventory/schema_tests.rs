//! The shipped JSON Schema (`schema/services.schema.json`): current with the raw structs, the
//! shipped example valid against it, and refusing unknown keys where the parser does.
//!
//! Regenerate the shipped file with `TOKEN_BASTION_WRITE_SCHEMA=1 cargo test --lib schema_tests`.

use std::path::{Path, PathBuf};

use super::{json_schema, parse};

const WRITE_ENV: &str = "TOKEN_BASTION_WRITE_SCHEMA";

fn in_repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn shipped_schema() -> serde_json::Value {
    let text = std::fs::read_to_string(in_repo("schema/services.schema.json")).expect("schema/services.schema.json is shipped");
    serde_json::from_str(&text).expect("the shipped schema is JSON")
}

fn shipped_example() -> String {
    std::fs::read_to_string(in_repo("services.yaml")).expect("services.yaml is shipped")
}

/// Schema errors for `yaml` against the shipped schema, each as `<json pointer>: <message>`.
fn schema_errors(yaml: &str) -> Vec<String> {
    let instance: serde_json::Value = serde_saphyr::from_str(yaml).expect("test YAML parses");
    let schema = shipped_schema();
    let validator = jsonschema::validator_for(&schema).expect("the shipped schema is a valid JSON Schema");
    validator.iter_errors(&instance).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// The shipped example with `from` replaced by `to` is refused by both the schema, with every
/// error at `pointer` or an object enclosing it (a validator reports a failed `anyOf`, as for an
/// optional section, where the alternatives start), and the parser.
fn check(from: &str, to: &str, pointer: &str) {
    let base = shipped_example();
    assert!(base.contains(from), "fixture text `{from}` not in services.yaml");
    let yaml = base.replacen(from, to, 1);
    let errors = schema_errors(&yaml);
    assert!(!errors.is_empty(), "the schema accepts `{to}`");
    for e in &errors {
        let at = e.split_once(": ").map_or("", |(p, _)| p);
        let encloses = pointer == at || pointer.starts_with(&format!("{at}/"));
        assert!(encloses, "schema error outside {pointer}: {e}");
    }
    assert!(parse(Path::new("services.yaml"), &yaml).is_err(), "the parser accepts what the schema refuses");
}

#[test]
fn shipped_schema_is_current() {
    let want = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    let path = in_repo("schema/services.schema.json");
    if std::env::var_os(WRITE_ENV).is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "schema/services.schema.json differs from the raw structs: regenerate with `{WRITE_ENV}=1 cargo test --lib schema_tests` and commit it"
    );
}

#[test]
fn shipped_example_is_valid_against_the_shipped_schema() {
    let errors = schema_errors(&shipped_example());
    assert!(errors.is_empty(), "services.yaml does not match schema/services.schema.json: {errors:#?}");
}

#[test]
fn editors_find_the_schema_from_the_example() {
    let first = shipped_example().lines().next().unwrap_or_default().to_string();
    assert_eq!(first, "# yaml-language-server: $schema=schema/services.schema.json");
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_like_the_parser_does() {
    check("defaults:\n", "colour: blue\ndefaults:\n", "");
    check("  timeout: 30s\n", "  timeout: 30s\n  retries: 3\n", "/broker");
    check("    method: kerberos\n", "    method: kerberos\n    mount_point: x\n", "/broker/auth");
    check("    method: kerberos\n", "    method: approle\n", "/broker/auth");
    check("    spool_owner: condor:condor", "    spool_owner: condor:condor\n    colour: blue", "/hosts/vocms0314");
    check("hosts: [crab-sched-903]\n", "hosts: [crab-sched-903]\n          colour: blue\n", "/services/crab/destinations/0");
    check("      - credd:\n          hosts: [crab-sched-903]", "      - spool:\n          hosts: [crab-sched-903]", "/services/crab/destinations/0");
    check("    port: 25\n", "    port: twenty-five\n", "/notify/smtp/port");
    check("  min_vault_lifetime: 2d\n", "  min_vault_lifetime: [2d]\n", "/defaults/min_vault_lifetime");
}

#[test]
fn every_object_in_the_schema_refuses_unknown_properties() {
    fn walk(v: &serde_json::Value, at: &str, open: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if map.contains_key("properties") && map.get("additionalProperties") != Some(&serde_json::Value::Bool(false)) {
                    open.push(at.to_string());
                }
                for (k, child) in map {
                    walk(child, &format!("{at}/{k}"), open);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), open);
                }
            }
            _ => {}
        }
    }
    let mut open = Vec::new();
    walk(&json_schema(), "", &mut open);
    assert!(open.is_empty(), "objects without additionalProperties: false: {open:?}");
}
