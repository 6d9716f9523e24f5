//! The broker client against a real OpenBao laid out like HTVault: logins, token housekeeping,
//! access-token reads on the creds and sts paths (checked in OpenBao's audit log), and what
//! failures look like. Every formatted error is checked for minted secrets.

use std::error::Error as _;
use std::time::Duration;

use token_bastion::broker::{AccessRequest, AuthMethod, Broker, BrokerConfig, BrokerError};
use token_bastion::http::CaSource;
use token_bastion::secret::Secret;

use crate::harness::Leaks;
use crate::harness::openbao::{JwtSpec, OpenBao, ServiceCreds};

const ISSUER: &str = "cms";

fn broker_trusting(bao: &OpenBao, ca: std::path::PathBuf, timeout: Duration) -> Broker {
    Broker::new(&BrokerConfig { url: bao.url(), ca: CaSource::File(ca), issuer: ISSUER.into(), timeout, limits: Default::default() }).unwrap()
}

fn broker(bao: &OpenBao) -> Broker {
    broker_trusting(bao, bao.ca_path(), Duration::from_secs(10))
}

fn approle(creds: &ServiceCreds) -> AuthMethod {
    AuthMethod::AppRole { mount: creds.mount.clone(), role_id_file: creds.role_id_file.clone(), secret_id_file: creds.secret_id_file.clone() }
}

fn request(credkey: &str, scopes: &[&str], audiences: &[&str], minimum_seconds: u64) -> AccessRequest {
    AccessRequest {
        credkey: credkey.into(),
        role: AccessRequest::DEFAULT_ROLE.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        audiences: audiences.iter().map(|s| s.to_string()).collect(),
        minimum_seconds,
    }
}

/// Records an error's Display, Debug and source chain for the leak check and returns the Display.
fn shown(leaks: &Leaks, label: &str, e: &BrokerError) -> String {
    let mut chain = String::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        chain.push_str(&format!(" <- {c}"));
        cause = c.source();
    }
    leaks.text(label, &format!("{e}\n{e:?}\n{chain}"));
    e.to_string()
}

#[tokio::test]
async fn approle_login_then_lookup_self() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(dir.path(), &leaks);
    let creds = bao.add_service("wmagent", ISSUER, "wmagent", "default");
    let broker = broker(&bao);

    let login = broker.login(&approle(&creds)).await.unwrap();
    assert!(login.token.expose().starts_with("s."), "a service token");
    assert_eq!(login.lease, Duration::from_secs(3600));
    assert!(login.policies.contains(&creds.policy), "{:?}", login.policies);

    let info = broker.lookup_self(&login.token).await.unwrap();
    assert!(info.ttl <= Duration::from_secs(3600) && info.ttl >= Duration::from_secs(3500), "{info:?}");
    let left = info.expire_time.expect("a service token expires") - chrono::Utc::now();
    assert!((3500..=3601).contains(&left.num_seconds()), "{left:?}");
    assert!(info.policies.contains(&creds.policy));
    leaks.text("debug", &format!("{login:?} {info:?} {broker:?}"));
    leaks.assert_clean();
}

#[tokio::test]
async fn approle_login_refuses_bad_credential_files() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(dir.path(), &leaks);
    let creds = bao.add_service("crab", ISSUER, "crab", "default");
    let broker = broker(&bao);

    let missing = dir.path().join("nowhere.secret_id");
    let auth = AuthMethod::AppRole { mount: "approle".into(), role_id_file: creds.role_id_file.clone(), secret_id_file: missing.clone() };
    let e = broker.login(&auth).await.unwrap_err();
    assert!(matches!(e, BrokerError::ReadCredential { .. }));
    assert!(shown(&leaks, "missing", &e).contains(&missing.display().to_string()));

    let empty = dir.path().join("empty.secret_id");
    std::fs::write(&empty, "\n").unwrap();
    let auth = AuthMethod::AppRole { mount: "approle".into(), role_id_file: creds.role_id_file.clone(), secret_id_file: empty.clone() };
    let e = broker.login(&auth).await.unwrap_err();
    assert!(matches!(e, BrokerError::EmptyCredential { .. }));
    assert!(shown(&leaks, "empty", &e).contains(&empty.display().to_string()));

    // A secret_id from another role: Vault says no, and the error says what Vault said.
    let other = bao.add_service("tier0", ISSUER, "tier0", "default");
    let auth = AuthMethod::AppRole { mount: "approle".into(), role_id_file: creds.role_id_file.clone(), secret_id_file: other.secret_id_file.clone() };
    let e = broker.login(&auth).await.unwrap_err();
    let text = shown(&leaks, "wrong secret_id", &e);
    assert!(matches!(e, BrokerError::Vault { status: 400, .. }), "{text}");
    assert!(text.contains("POST /v1/auth/approle/login") && text.contains("invalid"), "{text}");
    leaks.assert_clean();
}

#[tokio::test]
async fn token_file_login_proves_the_token_with_lookup_self() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(dir.path(), &leaks);
    let creds = bao.add_service("wmagent", ISSUER, "wmagent", "default");
    let token = bao.create_token(&[&creds.policy], "2h");
    let file = dir.path().join("vt_u1000-cms");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let broker = broker(&bao);

    let login = broker.login(&AuthMethod::TokenFile { path: file.clone() }).await.unwrap();
    assert_eq!(login.token.expose(), token);
    assert!(login.lease <= Duration::from_secs(7200) && login.lease >= Duration::from_secs(7100), "{login:?}");
    assert!(login.policies.contains(&creds.policy));

    bao.revoke(&token);
    let e = broker.login(&AuthMethod::TokenFile { path: file }).await.unwrap_err();
    let text = shown(&leaks, "revoked token file", &e);
    assert!(e.is_permission_denied(), "{text}");
    assert!(text.contains("GET /v1/auth/token/lookup-self"), "{text}");
    leaks.assert_clean();
}

#[tokio::test]
async fn creds_path_sends_minimum_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(dir.path(), &leaks);
    let creds = bao.add_service("wmagent", ISSUER, "wmagent", "default");
    let jwt = bao.mint_jwt(&JwtSpec::default());
    let exp = chrono::DateTime::from_timestamp(crate::harness::openbao::jwt_claims(&jwt)["exp"].as_i64().unwrap(), 0).unwrap();
    bao.put_access_token(ISSUER, "wmagent", "default", false, &jwt, Some(exp));
    let broker = broker(&bao);
    let login = broker.login(&approle(&creds)).await.unwrap();

    let reply = broker.access_token(&login.token, &request("wmagent", &[], &[], 1234)).await.unwrap();
    assert_eq!(reply.token.expose(), jwt);
    assert_eq!(reply.kind, "Bearer");
    assert_eq!(reply.expire_time, Some(exp));

    let seen = bao.audit_requests("secret/oauth/creds/cms/wmagent:default");
    let last = seen.last().expect("the read is in the audit log");
    assert_eq!(last["operation"], "read");
    assert_eq!(last["data"], serde_json::json!({"minimum_seconds": "1234"}));
    leaks.text("debug", &format!("{reply:?}"));
    leaks.assert_clean();
}

#[tokio::test]
async fn sts_path_sends_scopes_and_audiences() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(dir.path(), &leaks);
    let creds = bao.add_service("crab", ISSUER, "crab", "default");
    let jwt = bao.mint_jwt(&JwtSpec { scope: Some("storage.read:/store compute.create".into()), ..JwtSpec::default() });
    bao.put_access_token(ISSUER, "crab", "default", true, &jwt, None);
    let broker = broker(&bao);
    let login = broker.login(&approle(&creds)).await.unwrap();

    let req = request("crab", &["storage.read:/store", "compute.create"], &["https://cms-xrootd.example:1094", "cms"], 3600);
    let reply = broker.access_token(&login.token, &req).await.unwrap();
    assert_eq!(reply.token.expose(), jwt);
    assert_eq!(reply.expire_time, None);

    let seen = bao.audit_requests("secret/oauth/sts/cms/crab:default");
    let last = seen.last().expect("the read is in the audit log");
    assert_eq!(
        last["data"],
        serde_json::json!({
            "minimum_seconds": "3600",
            "scopes": "storage.read:/store,compute.create",
            "audiences": "https://cms-xrootd.example:1094,cms",
        })
    );
    assert!(bao.audit_requests("secret/oauth/creds/cms/crab:default").is_empty(), "scopes must not go to the creds path");
    leaks.assert_clean();
}

#[tokio::test]
async fn revoked_or_unauthorised_token_is_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(dir.path(), &leaks);
    let creds = bao.add_service("wmagent", ISSUER, "wmagent", "default");
    let jwt = bao.mint_jwt(&JwtSpec::default());
    bao.put_access_token(ISSUER, "wmagent", "default", false, &jwt, None);
    bao.put_access_token(ISSUER, "tier0", "default", false, &jwt, None);
    let broker = broker(&bao);
    let login = broker.login(&approle(&creds)).await.unwrap();

    // Another service's credkey: the policy does not allow it.
    let e = broker.access_token(&login.token, &request("tier0", &[], &[], 60)).await.unwrap_err();
    let text = shown(&leaks, "other credkey", &e);
    assert!(matches!(e, BrokerError::PermissionDenied { status: 403, .. }), "{text}");
    assert_eq!(e.path(), Some("/v1/secret/oauth/creds/cms/tier0:default"));

    bao.revoke(login.token.expose());
    let e = broker.access_token(&login.token, &request("wmagent", &[], &[], 60)).await.unwrap_err();
    let text = shown(&leaks, "revoked", &e);
    let BrokerError::PermissionDenied { status, path, errors, .. } = &e else { panic!("not permission denied: {text}") };
    assert_eq!(*status, 403);
    assert_eq!(path, "/v1/secret/oauth/creds/cms/wmagent:default");
    assert!(errors.contains("permission denied"), "{errors}");
    assert!(text.contains("403") && text.contains(path.as_str()) && text.contains("permission denied"), "{text}");
    let debug = format!("{e:?}");
    assert!(!text.contains(login.token.expose()) && !debug.contains(login.token.expose()));
    leaks.assert_clean();
}

#[tokio::test]
async fn a_different_ca_fails_tls() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(dir.path(), &leaks);
    let other = OpenBao::start(other_dir.path(), &leaks);
    let token = Secret::new(bao.create_token(&["default"], "1h"));

    let broker = broker_trusting(&bao, other.ca_path(), Duration::from_secs(10));
    let before = bao.audit_requests("auth/token/lookup-self").len();
    let e = broker.lookup_self(&token).await.unwrap_err();
    shown(&leaks, "wrong CA", &e);
    assert!(matches!(e, BrokerError::Transport { .. }), "{e:?}");
    let mut chain = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        chain.push(c.to_string());
        cause = c.source();
    }
    let chain = chain.join(" <- ");
    assert!(chain.to_lowercase().contains("certificate"), "the cause names the certificate problem: {chain}");
    assert_eq!(bao.audit_requests("auth/token/lookup-self").len(), before, "nothing reached Vault");
    leaks.assert_clean();
}

#[tokio::test]
async fn a_silent_broker_times_out() {
    // Accepts connections (the kernel completes the handshake) but never speaks TLS.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let broker = Broker::new(&BrokerConfig {
        url: url::Url::parse(&format!("https://127.0.0.1:{port}")).unwrap(),
        ca: CaSource::System,
        issuer: ISSUER.into(),
        timeout: Duration::from_millis(500),
        limits: Default::default(),
    })
    .unwrap();
    let started = std::time::Instant::now();
    let e = broker.lookup_self(&Secret::new("s.notarealtoken")).await.unwrap_err();
    assert!(matches!(e, BrokerError::Timeout { .. }), "{e:?}");
    // A read is repeated a bounded number of times, each attempt bounded by the timeout.
    assert_eq!(broker.repeats().get(&token_bastion::broker::RequestKind::LookupSelf), Some(&u64::from(token_bastion::broker::pace::MAX_ATTEMPTS - 1)));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(e.to_string().contains("GET /v1/auth/token/lookup-self"), "{e}");
}

#[tokio::test]
async fn child_token_is_no_longer_than_asked_and_dies_with_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(dir.path(), &leaks);
    let creds = bao.add_service("wmagent", ISSUER, "wmagent", "default");
    let broker = broker(&bao);
    let parent = broker.login(&approle(&creds)).await.unwrap();

    let child = broker.create_child(&parent.token, Duration::from_secs(600)).await.unwrap();
    leaks.secret(child.token.expose());
    assert_ne!(child.token.expose(), parent.token.expose());
    assert!(child.lease <= Duration::from_secs(600) && child.lease > Duration::ZERO, "{child:?}");
    assert!(!child.renewable);
    let info = broker.lookup_self(&child.token).await.unwrap();
    assert!(info.ttl <= Duration::from_secs(600), "{info:?}");
    assert!(info.policies.contains(&creds.policy), "the child carries the parent's policies: {info:?}");

    let seen = bao.audit_requests("auth/token/create");
    assert_eq!(seen.last().unwrap()["data"]["ttl"], "600s");
    assert_eq!(seen.last().unwrap()["data"]["renewable"], "false");

    bao.revoke(parent.token.expose());
    let e = broker.lookup_self(&child.token).await.unwrap_err();
    assert!(e.is_permission_denied(), "{}", shown(&leaks, "orphaned child", &e));
    leaks.assert_clean();
}

#[tokio::test]
async fn revoke_self_then_lookup_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(dir.path(), &leaks);
    let creds = bao.add_service("wmagent", ISSUER, "wmagent", "default");
    let broker = broker(&bao);
    let login = broker.login(&approle(&creds)).await.unwrap();

    broker.revoke_self(&login.token).await.unwrap();
    let e = broker.lookup_self(&login.token).await.unwrap_err();
    let text = shown(&leaks, "after revoke-self", &e);
    assert!(matches!(e, BrokerError::PermissionDenied { status: 403, .. }), "{text}");
    assert!(bao.lookup(login.token.expose()).is_err(), "Vault no longer knows the token");
    leaks.assert_clean();
}

fn cert_login(files: &crate::harness::openbao::ClientCertFiles, name: Option<&str>) -> AuthMethod {
    AuthMethod::Cert { cert_file: files.cert.clone(), key_file: files.key.clone(), mount: AuthMethod::DEFAULT_CERT_MOUNT.into(), name: name.map(str::to_string) }
}

#[tokio::test]
async fn cert_login_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(&dir.path().join("bao"), &leaks);
    let creds = bao.add_service("wmagent", ISSUER, "wmagent", "default");
    let files = crate::harness::openbao::make_client_cert(&dir.path().join("pki"), "wmagent", &leaks);
    bao.add_cert_role("wmagent", &files.ca, &[&creds.policy]);
    let broker = broker(&bao);

    for name in [Some("wmagent"), None] {
        let login = broker.login(&cert_login(&files, name)).await.unwrap();
        leaks.secret(login.token.expose());
        assert!(login.policies.contains(&creds.policy), "{:?}", login.policies);
        assert_eq!(login.lease, Duration::from_secs(3600));
        let info = broker.lookup_self(&login.token).await.unwrap();
        assert!(info.policies.contains(&creds.policy), "{info:?}");
    }
    let logins = bao.audit_requests("auth/cert/login");
    assert_eq!(logins.len(), 2, "{logins:#?}");
    assert_eq!(logins[0]["data"]["name"], "wmagent");
    assert!(logins[1]["data"].get("name").is_none(), "{}", logins[1]);
    leaks.assert_clean();
}

#[tokio::test]
async fn cert_login_refuses_a_foreign_certificate_and_names_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let bao = OpenBao::start(&dir.path().join("bao"), &leaks);
    let creds = bao.add_service("crab", ISSUER, "crab", "default");
    let trusted = crate::harness::openbao::make_client_cert(&dir.path().join("pki"), "crab", &leaks);
    let foreign = crate::harness::openbao::make_client_cert(&dir.path().join("pki"), "intruder", &leaks);
    bao.add_cert_role("crab", &trusted.ca, &[&creds.policy]);
    let broker = broker(&bao);

    let e = broker.login(&cert_login(&foreign, Some("crab"))).await.unwrap_err();
    let text = shown(&leaks, "foreign", &e);
    assert!(text.starts_with("POST /v1/auth/cert/login: "), "{text}");
    assert!(matches!(e.status(), Some(400..=403)), "{text}");
    assert!(text.contains("invalid certificate") || text.contains("permission denied"), "{text}");

    let with_key = |key_file: std::path::PathBuf| AuthMethod::Cert {
        cert_file: trusted.cert.clone(),
        key_file,
        mount: AuthMethod::DEFAULT_CERT_MOUNT.into(),
        name: Some("crab".into()),
    };
    let missing = with_key(dir.path().join("nokey.pem"));
    let e = broker.login(&missing).await.unwrap_err();
    let text = shown(&leaks, "missing key", &e);
    assert!(text.contains("cannot read") && text.contains("nokey.pem"), "{text}");

    // A key that does not go with the certificate is caught before anything is sent.
    let mismatched = with_key(foreign.key.clone());
    let e = broker.login(&mismatched).await.unwrap_err();
    let text = shown(&leaks, "mismatched", &e);
    assert!(text.contains("not a usable certificate and private key pair") && text.contains(&foreign.key.display().to_string()), "{text}");
    leaks.assert_clean();
}
