//! The product's Vault tokens seen from outside: every token OpenBao handed out to a service
//! (read from its audit log), what each destination file on the sshd "schedds" holds, what the
//! product's ledger says (`status --tokens --json`), and the invariants that must hold whatever
//! happened to the product: every destination holds a token OpenBao accepts, no live token is
//! missing from the ledger, and nothing that no destination may hold is left live.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use super::openbao::JwtSpec;
use super::stack::{shown, ServiceDef, Stack};

/// Two schedds, each with a credd destination and (`with_files`) a Vault-token file, for one
/// service that logs in anew every cycle (`renew_before` beyond the AppRole's 1 h TTL), so that
/// every cycle supersedes tokens; mail goes to an SMTP sink. Returns the token files' paths.
pub fn two_schedds<'l>(leaks: &'l super::Leaks, service: &str, with_files: bool) -> (Stack<'l>, Vec<PathBuf>) {
    let mut stack = Stack::new(leaks).with_hosts(2).with_smtp();
    let mut def = ServiceDef::new(service, &["compute.create"]);
    def.extra = "    renew_before: 2h\n".into();
    stack.add_service(def);
    let hosts = ["schedd1", "schedd2"];
    let files: Vec<PathBuf> = if with_files { hosts.iter().map(|h| stack.host(h).dir.join(format!("vt_{service}"))).collect() } else { Vec::new() };
    let mut yaml = "    destinations:\n      - credd:\n          hosts: [schedd1, schedd2]\n".to_string();
    for (h, f) in hosts.iter().zip(&files) {
        yaml.push_str(&format!("      - file:\n          hosts: [{h}]\n          path: {}\n          owner: root\n          ttl: 30m\n", f.display()));
    }
    stack.destinations.insert(service.into(), yaml);
    stack.put_token(service, &JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() });
    stack.write_inventory();
    (stack, files)
}

/// Every Vault token OpenBao handed out for `service`, in the order it did: AppRole logins
/// with the service's role_id, and tokens created (children) with one of those.
pub fn issued(stack: &Stack, service: &str) -> Vec<String> {
    let role_id = stack.creds[service].role_id.clone();
    let mut logins: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for e in stack.bao.audit_entries().into_iter().filter(|e| e["type"] == "response") {
        let Some(token) = e["response"]["auth"]["client_token"].as_str() else { continue };
        let path = e["request"]["path"].as_str().unwrap_or_default();
        let by = e["request"]["client_token"].as_str().unwrap_or_default();
        let mine = match path {
            "auth/approle/login" => e["request"]["data"]["role_id"] == role_id.as_str(),
            "auth/token/create" => logins.contains(by),
            _ => false,
        };
        if mine {
            if path == "auth/approle/login" {
                logins.insert(token.to_string());
            }
            stack.leaks.secret(token);
            out.push(token.to_string());
        }
    }
    out
}

/// Whether OpenBao accepts `token` (a lookup as root).
pub fn alive(stack: &Stack, token: &str) -> bool {
    stack.bao.lookup(token).is_ok()
}

/// The tokens OpenBao accepts among `tokens`, looked up a few at a time (each lookup is a CLI
/// process).
pub fn alive_among<'t>(stack: &Stack, tokens: impl IntoIterator<Item = &'t String>) -> BTreeSet<&'t String> {
    let tokens: Vec<&String> = tokens.into_iter().collect();
    let mut out = BTreeSet::new();
    for chunk in tokens.chunks(8) {
        std::thread::scope(|scope| {
            let lookups: Vec<_> = chunk.iter().map(|t| (*t, scope.spawn(|| alive(stack, t)))).collect();
            for (t, lookup) in lookups {
                if lookup.join().unwrap_or(false) {
                    out.insert(t);
                }
            }
        });
    }
    out
}

/// Every Vault-token file on every host of the stack that exists, with the token it holds:
/// credd `.top` files (their `vault_token`) and the files given in `files` (bare tokens).
pub fn held(stack: &Stack, files: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for h in stack.hosts.values() {
        for account in std::fs::read_dir(&h.spool).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(account.path()).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "top") && !f.file_name().to_string_lossy().starts_with('.') {
                    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                    out.insert(p, doc["vault_token"].as_str().unwrap().to_string());
                }
            }
        }
    }
    for f in files {
        if let Ok(text) = std::fs::read_to_string(f) {
            out.insert(f.clone(), text.trim().to_string());
        }
    }
    for t in out.values() {
        stack.leaks.secret(t);
    }
    out
}

/// The ledger as `status --tokens --json` shows it.
pub fn ledger(stack: &Stack) -> Value {
    let out = stack.run("ledger", &["status", "--tokens", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", shown(&out)))
}

pub fn hash(token: &str) -> String {
    token_bastion::secret::Secret::new(token).short_hash()
}

/// The ledger's row for `token`.
pub fn row<'v>(ledger: &'v Value, token: &str) -> Option<&'v Value> {
    let h = hash(token);
    ledger["tokens"].as_array().unwrap().iter().find(|t| t["hash"] == h.as_str())
}

/// Every destination file that exists holds a token OpenBao accepts.
pub fn assert_destinations_work(stack: &Stack, files: &[PathBuf], when: &str) {
    let held = held(stack, files);
    let live = alive_among(stack, held.values());
    for (path, token) in &held {
        assert!(live.contains(token), "{when}: {} holds a token OpenBao refuses (sha256={})", path.display(), hash(token));
    }
}

/// Every live token issued for `service` is in the ledger as live, except those in `window`
/// (tokens whose reply a killed process had not yet recorded).
pub fn assert_none_missing(stack: &Stack, service: &str, window: &BTreeSet<String>, when: &str) {
    let ledger = ledger(stack);
    let issued = issued(stack, service);
    for t in alive_among(stack, issued.iter().filter(|t| !window.contains(*t))) {
        let state = row(&ledger, t).map(|r| r["state"].as_str().unwrap_or_default().to_string());
        assert!(
            matches!(state.as_deref(), Some("live" | "revoke-pending")),
            "{when}: live token sha256={} is {:?} in the ledger\n{ledger:#}",
            hash(t),
            state
        );
    }
}

/// After a clean cycle: every live token issued for `service` is its current token, is held by
/// a destination file, or is the parent of a live token a file holds; nothing else is left live
/// (except tokens in `window`, never recorded, which expire on their own).
pub fn assert_nothing_unheld(stack: &Stack, service: &str, files: &[PathBuf], window: &BTreeSet<String>, when: &str) {
    let ledger = ledger(stack);
    let in_files: BTreeSet<String> = held(stack, files).into_values().collect();
    let parents: BTreeSet<String> = ledger["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| in_files.iter().any(|f| hash(f) == t["hash"].as_str().unwrap_or_default()))
        .filter_map(|t| t["parent"].as_str().map(str::to_string))
        .collect();
    let issued = issued(stack, service);
    for t in alive_among(stack, issued.iter().filter(|t| !window.contains(*t))) {
        let current = row(&ledger, t).is_some_and(|r| r["current"] == true);
        assert!(
            current || in_files.contains(t) || parents.contains(&hash(t)),
            "{when}: sha256={} is live, but it is not current and no destination holds it (or a child of it)\n{ledger:#}",
            hash(t)
        );
    }
}
