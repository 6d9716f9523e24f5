//! `token-bastion run --dry-run` end to end against a real OpenBao laid out like HTVault: what
//! the product asks the broker for, how each kind of bad token is refused, and issuer keys that
//! outlive a run.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Leaks;
use crate::harness::proxy::TcpRelay;
use crate::harness::openbao::{JwtAlg, JwtSpec, OpenBao, WLCG_ANY_AUDIENCE};
use crate::harness::stack::{shown, ServiceDef, Stack, VAULT_ISSUER};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line the run printed for `service`.
fn line_for(out: &std::process::Output, service: &str) -> String {
    stdout(out).lines().find(|l| l.starts_with(&format!("{service}: "))).unwrap_or_else(|| panic!("no line for {service}\n{}", shown(out))).to_string()
}

fn spec(scope: &str) -> JwtSpec {
    JwtSpec { scope: Some(scope.into()), ..JwtSpec::default() }
}

/// The reads (not the harness's own writes) the audit log holds for `path` (without `/v1/`).
fn requests(bao: &OpenBao, path: &str) -> Vec<Value> {
    bao.audit_requests(path).into_iter().filter(|r| r["operation"] == "read").collect()
}

#[test]
fn a_good_token_passes_and_the_broker_saw_exactly_what_the_service_needs() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    let mut sts = ServiceDef::new("prod", &["storage.read:/", "compute.create"]);
    sts.audience = Some(WLCG_ANY_AUDIENCE.into());
    sts.min_access_lifetime = "20m".into();
    stack.add_service(sts);
    let mut creds = ServiceDef::new("plain", &["storage.read:/store"]);
    creds.request_scopes = false;
    creds.allowed = Some(vec!["storage.read:/store".into(), "compute.read".into()]);
    stack.add_service(creds);
    stack.put_token("prod", &JwtSpec { alg: JwtAlg::Es256, ..spec("storage.read:/ compute.create") });
    stack.put_token("plain", &spec("storage.read:/store compute.read"));
    stack.write_inventory();

    let out = stack.run("dry run", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(line_for(&out, "prod").contains("tokens valid"), "{}", shown(&out));
    assert!(line_for(&out, "plain").contains("tokens valid"), "{}", shown(&out));
    assert!(stdout(&out).contains("credd@schedd1 reachable, host key verified"), "{}", shown(&out));
    // A dry run writes nothing on the host.
    let spool = &stack.host("schedd1").spool;
    assert_eq!(std::fs::read_dir(spool).unwrap().count(), 0, "dry run wrote into {}", spool.display());

    // The sts path with scopes, audience and minimum_seconds = 20 min + 60 s margin.
    let sts_reqs = requests(&stack.bao, &format!("secret/oauth/sts/{VAULT_ISSUER}/acctprod:prod"));
    assert_eq!(sts_reqs.len(), 1, "{sts_reqs:#?}");
    let data = &sts_reqs[0]["data"];
    assert_eq!(data["minimum_seconds"], "1260");
    assert_eq!(data["scopes"], "storage.read:/,compute.create");
    assert_eq!(data["audiences"], WLCG_ANY_AUDIENCE);
    assert_eq!(sts_reqs[0]["operation"], "read");

    // No scopes asked, no audience: the creds path, with only minimum_seconds.
    let creds_reqs = requests(&stack.bao, &format!("secret/oauth/creds/{VAULT_ISSUER}/acctplain:plain"));
    assert_eq!(creds_reqs.len(), 1, "{creds_reqs:#?}");
    assert_eq!(creds_reqs[0]["data"]["minimum_seconds"], "960");
    assert!(creds_reqs[0]["data"].get("scopes").is_none());
    assert!(requests(&stack.bao, &format!("secret/oauth/sts/{VAULT_ISSUER}/acctplain:plain")).is_empty());
    leaks.assert_clean();
}

/// One service per way a token can be wrong, all in one run: each is refused at validation with
/// a reason naming the claim, and the good one still passes.
#[test]
fn bad_tokens_are_refused_naming_the_claim() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    type Case<'a> = (&'a str, &'a [&'a str], Option<&'a [&'a str]>);
    let cases: &[Case] = &[
        ("good", &["storage.read:/store", "compute.create"], None),
        ("missing", &["storage.read:/store", "compute.create"], None),
        ("wide", &["storage.create:/store/unmerged"], None),
        ("aud", &["compute.create"], None),
        ("anyaud", &["compute.create"], None),
        ("short", &["compute.create"], None),
        ("expired", &["compute.create"], None),
        ("forged", &["compute.create"], None),
        ("newver", &["compute.create"], None),
    ];
    for (name, required, allowed) in cases {
        let mut def = ServiceDef::new(name, required);
        def.allowed = allowed.map(|a| a.iter().map(|s| s.to_string()).collect());
        if *name == "aud" || *name == "anyaud" {
            def.audience = Some("https://schedd.example:9618".into());
        }
        stack.add_service(def);
    }
    stack.put_token("good", &spec("storage.read:/store compute.create"));
    stack.put_token("missing", &spec("storage.read:/store"));
    stack.put_token("wide", &spec("storage.create:/store"));
    stack.put_token("aud", &JwtSpec { audience: "https://other.example".into(), ..spec("compute.create") });
    stack.put_token("anyaud", &JwtSpec { audience: WLCG_ANY_AUDIENCE.into(), ..spec("compute.create") });
    stack.put_token("short", &JwtSpec { ttl: Duration::from_secs(600), ..spec("compute.create") });
    stack.put_token("expired", &JwtSpec { ttl: Duration::from_secs(1), ..spec("compute.create") });
    stack.put_token("newver", &JwtSpec { wlcg_ver: Some("2.0".into()), ..spec("compute.create") });
    // A token whose signature was tampered with: valid header and claims, wrong signature.
    let real = stack.bao.mint_jwt(&spec("compute.create"));
    let (head, sig) = real.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
    let forged = format!("{head}.{}", sig.into_iter().collect::<String>());
    leaks.secret(&forged);
    stack.bao.put_access_token(VAULT_ISSUER, "acctforged", "forged", true, &forged, None);
    stack.write_inventory();
    std::thread::sleep(Duration::from_secs(2)); // let the 1-second token expire

    let out = stack.run("dry run", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(line_for(&out, "good").contains("tokens valid"), "{}", shown(&out));
    let expect: &[(&str, &str)] = &[
        ("missing", "required scope compute.create is not granted"),
        ("wide", "granted scope storage.create:/store is wider than allowed"),
        ("aud", "does not include https://schedd.example:9618"),
        ("anyaud", "wider than the expected https://schedd.example:9618"),
        ("short", "less than the required 900 s"),
        ("expired", "token expired at"),
        ("forged", "signature does not verify"),
        ("newver", "wlcg.ver \"2.0\""),
    ];
    for (service, needle) in expect {
        let line = line_for(&out, service);
        assert!(line.contains("FAILED at validate"), "{service}: {line}");
        assert!(line.contains(needle), "{service}: {line} lacks {needle:?}");
    }
    assert!(stdout(&out).contains("1 of 9 services ok"), "{}", shown(&out));
    leaks.assert_clean();
}

/// A token from an issuer the inventory does not list is refused, naming both issuers.
#[test]
fn a_foreign_issuer_is_refused() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    stack.add_service(ServiceDef::new("svc", &["compute.create"]));
    let foreign_dir = stack.root().join("foreign");
    let foreign = OpenBao::start(&foreign_dir, &leaks);
    let jwt = foreign.mint_jwt(&spec("compute.create"));
    stack.bao.put_access_token(VAULT_ISSUER, "acctsvc", "svc", true, &jwt, None);
    stack.write_inventory();

    let out = stack.run("dry run", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let line = line_for(&out, "svc");
    assert!(line.contains("FAILED at validate"), "{line}");
    assert!(line.contains(&foreign.issuer_url()), "names the foreign issuer: {line}");
    assert!(line.contains(&format!("expected {}", stack.bao.issuer_url())), "{line}");
    leaks.assert_clean();
}

/// After the issuer moves to a new signing key, a token signed with it carries a kid the cached
/// key set lacks: validation refetches the keys once and accepts it. (OpenBao publishes the
/// *next* key of a named key ahead of a rotation, so a brand-new key is what makes the kid
/// unknown to a warm cache.)
#[tokio::test]
async fn a_rotated_key_is_found_by_refetching_once() {
    use token_bastion::jwks::{validate_token, IssuerSource, JwksCache};
    use token_bastion::scopes::Scope;
    use token_bastion::secret::Secret;
    use token_bastion::validate::Expectation;

    let leaks = Leaks::default();
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path(), &leaks);
    let client = token_bastion::http::client(&token_bastion::http::CaSource::File(bao.ca_path()), Duration::from_secs(10)).unwrap();
    let cache = JwksCache::new(vec![IssuerSource { issuer: bao.issuer_url(), client }]);
    let required: Vec<Scope> = vec!["compute.create".parse().unwrap()];
    let issuer = bao.issuer_url();
    let expect = Expectation {
        issuer: &issuer,
        audience: None,
        min_lifetime: Duration::from_secs(600),
        required: &required,
        allowed: &required,
        leeway: Duration::from_secs(60),
    };
    let now = || chrono::Utc::now().timestamp();

    let before = Secret::new(bao.mint_jwt(&spec("compute.create")));
    let first = validate_token(&cache, &before, &expect, now()).await.unwrap();
    let kids_before = cache.keys(&issuer, now()).await.unwrap().kids().iter().map(|k| k.to_string()).collect::<Vec<_>>();

    bao.add_key("successor", JwtAlg::Rs256);
    let after = Secret::new(bao.mint_jwt(&JwtSpec { key: Some("successor".into()), ..spec("compute.create") }));
    let new_kid = crate::harness::openbao::jwt_header(after.expose())["kid"].as_str().unwrap().to_string();
    assert!(!kids_before.contains(&new_kid), "the rotated key must be new to the cache");

    let second = validate_token(&cache, &after, &expect, now()).await.unwrap();
    assert_ne!(first.jti, second.jti);
    let kids_after = cache.keys(&issuer, now()).await.unwrap().kids().iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert!(kids_after.contains(&new_kid), "the cache now holds the new key");
    leaks.assert_clean();
}

/// Issuer keys are kept in the state directory: a run that validated once keeps validating
/// through an outage of the issuer, with no daemon holding the keys in memory (keys younger
/// than 6 h are not even asked for).
#[test]
fn a_run_validates_through_an_issuer_outage_on_persisted_keys() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    // The issuer is reached through a relay that can be cut while the broker stays up.
    let mut relay = TcpRelay::start(stack.bao.port());
    stack.bao.serve_issuer_at(&format!("https://127.0.0.1:{}", relay.port()));
    stack.add_service(ServiceDef::new("prod", &["compute.create"]));
    stack.put_token("prod", &spec("compute.create"));
    stack.write_inventory();
    let out = stack.run("issuer up", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let cache = stack.state_dir.join("jwks.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&cache).unwrap().contains(&stack.bao.issuer_url()));

    relay.stop();
    let jwt = stack.put_token("prod", &spec("compute.create"));
    let out = stack.run("issuer down", &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let delivered = std::fs::read_to_string(stack.host("schedd1").spool.join("acctprod/cms_prod.use")).unwrap();
    assert_eq!(delivered.trim(), jwt, "the new access token was validated and delivered");
    leaks.assert_clean();
}

#[test]
fn an_unknown_service_is_a_setup_error() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    stack.add_service(ServiceDef::new("svc", &["compute.create"]));
    stack.write_inventory();
    let out = stack.run("unknown service", &["run", "--dry-run", "--service", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service `nope`"), "{}", shown(&out));
    leaks.assert_clean();
}

/// A broker that refuses the login (a revoked secret_id) fails that service at login with
/// Vault's status and text, never the secret.
#[test]
fn a_refused_login_names_the_stage_and_status() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    stack.add_service(ServiceDef::new("svc", &["compute.create"]));
    stack.add_service(ServiceDef::new("ok", &["compute.create"]));
    stack.put_token("ok", &spec("compute.create"));
    std::fs::write(stack.bao.dir().join("svc.secret_id"), "00000000-0000-0000-0000-000000000000\n").unwrap();
    stack.write_inventory();
    let out = stack.run("bad login", &["run", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let line = line_for(&out, "svc");
    assert!(line.contains("FAILED at login"), "{line}");
    assert!(line.contains("/v1/auth/approle/login"), "{line}");
    assert!(line_for(&out, "ok").contains("tokens valid"));
    leaks.assert_clean();
}
