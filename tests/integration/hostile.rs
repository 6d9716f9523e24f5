//! The broker client, and the whole binary, against a hostile HTTPS broker (the stand-in in
//! `harness::hostile`): a reply of a gigabyte is refused at the size limit whether its length
//! is declared or it is streamed, a reply of the wrong type is named as such, and secrets the
//! broker (or a proxy before it) echoes back reach no error, log line, run report, state DB or
//! mail.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use token_bastion::broker::{AccessRequest, AuthMethod, Broker, BrokerConfig, BrokerError};
use token_bastion::http::CaSource;
use token_bastion::secret::Secret;

use crate::harness::Leaks;
use crate::harness::hostile::{GIGABYTE, HostileServer, Reply, Request};
use crate::harness::stack::{ServiceDef, Stack, shown};

fn broker(server: &HostileServer) -> Broker {
    let url = url::Url::parse(&server.url()).unwrap();
    Broker::new(&BrokerConfig { url, ca: CaSource::File(server.ca.clone()), issuer: "cms".into(), timeout: Duration::from_secs(20) }).unwrap()
}

fn request() -> AccessRequest {
    AccessRequest { credkey: "prod".into(), role: AccessRequest::DEFAULT_ROLE.into(), scopes: vec![], audiences: vec![], minimum_seconds: 960 }
}

fn json_error(status: u16, text: String) -> Reply {
    Reply::Body { status, content_type: "application/json", body: serde_json::json!({ "errors": [text] }).to_string() }
}

/// Everything a request carried that a server could echo: the token header and the body.
fn echo(req: &Request) -> String {
    format!("denied: X-Vault-Token: {} with body {}", req.header("x-vault-token").unwrap_or("-"), req.body)
}

/// An error's Display, Debug and source chain, recorded for the leak check.
fn shown_error(leaks: &Leaks, label: &str, e: &BrokerError) -> String {
    let mut text = format!("{e}\n{e:?}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!("\n<- {c}"));
        cause = c.source();
    }
    leaks.text(label, &text);
    text
}

#[tokio::test]
async fn a_gigabyte_reply_is_refused_at_the_limit_whether_declared_or_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start(dir.path(), Arc::new(|req: &Request| Reply::Huge { size: GIGABYTE, declared: req.path.ends_with("/lookup-self") }));
    let b = broker(&server);
    let token = Secret::new("hvs.hostile-fixture-token-0001");

    // Declared: refused before a byte of the body is read.
    let e = b.lookup_self(&token).await.unwrap_err();
    assert!(matches!(e, BrokerError::TooLarge { declared: Some(GIGABYTE), limit: 1_048_576, .. }), "{e}");
    assert!(e.to_string().contains("is larger than the 1 MiB limit (it declares 1024 MiB); not read"), "{e}");

    // Streamed without a length: reading stops at the limit.
    let e = b.access_token(&token, &request()).await.unwrap_err();
    assert!(matches!(e, BrokerError::TooLarge { declared: None, .. }), "{e}");
    assert!(e.to_string().starts_with("GET /v1/secret/oauth/creds/cms/prod:default: the broker's reply (HTTP 200) is larger than the 1 MiB limit; not read"), "{e}");

    // The client hung up long before a gigabyte went out (socket buffers hold a few MiB).
    let sent = server.huge_bytes_sent.load(SeqCst);
    assert!(sent < 256 * 1024 * 1024, "{sent} bytes went out before the client hung up");
}

#[tokio::test]
async fn a_reply_that_is_not_json_is_named_with_its_content_type() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start(
        dir.path(),
        Arc::new(|req: &Request| {
            let status = if req.path.ends_with("/login") { 200 } else { 502 };
            Reply::Body { status, content_type: "text/html; charset=utf-8", body: "<html><body>Please sign in to the proxy</body></html>".into() }
        }),
    );
    let b = broker(&server);
    let role_id = dir.path().join("role_id");
    let secret_id = dir.path().join("secret_id");
    std::fs::write(&role_id, "role-id-fixture-0001\n").unwrap();
    std::fs::write(&secret_id, "secret-id-fixture-0001\n").unwrap();
    let auth = AuthMethod::AppRole { mount: "approle".into(), role_id_file: role_id, secret_id_file: secret_id };

    let e = b.login(&auth).await.unwrap_err();
    assert!(matches!(e, BrokerError::BadReply { status: 200, .. }), "{e}");
    assert!(e.to_string().contains("the body (53 bytes, text/html; charset=utf-8) is not JSON"), "{e}");

    let e = b.lookup_self(&Secret::new("hvs.hostile-fixture-token-0002")).await.unwrap_err();
    assert!(matches!(e, BrokerError::Vault { status: 502, .. }), "{e}");
    assert!(e.to_string().contains("text/html; charset=utf-8) is not JSON"), "{e}");
}

#[tokio::test]
async fn secrets_a_broker_echoes_are_blotted_out_of_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let server = HostileServer::start(dir.path(), Arc::new(|req: &Request| json_error(400, echo(req))));
    let b = broker(&server);
    let token = Secret::new("hvs.hostile-fixture-token-0003");
    leaks.secret(token.expose());
    let (role_id, secret_id) = (dir.path().join("role_id"), dir.path().join("secret_id"));
    std::fs::write(&role_id, "role-id-fixture-0003\n").unwrap();
    std::fs::write(&secret_id, "secret-id-fixture-0003\n").unwrap();
    leaks.secret("role-id-fixture-0003");
    leaks.secret("secret-id-fixture-0003");
    let auth = AuthMethod::AppRole { mount: "approle".into(), role_id_file: role_id, secret_id_file: secret_id };

    let errors = vec![
        ("login", b.login(&auth).await.unwrap_err()),
        ("lookup-self", b.lookup_self(&token).await.unwrap_err()),
        ("access token", b.access_token(&token, &request()).await.unwrap_err()),
        ("create child", b.create_child(&token, Duration::from_secs(600)).await.unwrap_err()),
        ("revoke-self", b.revoke_self(&token).await.unwrap_err()),
    ];
    for (label, e) in &errors {
        let text = shown_error(&leaks, label, e);
        assert!(text.contains("denied: X-Vault-Token: ") && text.contains("[redacted]"), "{label}: {text}");
    }
    // Every request but the login carried the token, and the server echoed what it got.
    let requests = server.requests();
    assert_eq!(requests.iter().filter(|r| r.header("x-vault-token") == Some(token.expose())).count(), 4, "{requests:#?}");
    leaks.assert_clean();
}

/// The whole binary against a broker that hands out a token and then echoes it, and the
/// secret_id it was logged in with, in every error; and that streams a gigabyte to another
/// service. Run report, logs, state DB and mail are swept for every secret.
#[test]
fn echoed_secrets_reach_no_log_report_state_or_mail() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1).with_smtp();
    stack.add_service(ServiceDef::new("prod", &["compute.create"]));
    stack.add_service(ServiceDef::new("big", &["compute.create"]));
    let token = format!("hvs.HOSTILE{:016x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    leaks.secret(&token);
    let login_bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let (token, login_bodies) = (token.clone(), login_bodies.clone());
        Arc::new(move |req: &Request| {
            if req.path.ends_with("/login") {
                login_bodies.lock().unwrap().push(req.body.clone());
                let auth = serde_json::json!({ "auth": { "client_token": token, "lease_duration": 3600, "policies": ["default"], "renewable": false } });
                return Reply::Body { status: 200, content_type: "application/json", body: auth.to_string() };
            }
            if req.path.ends_with("/lookup-self") {
                let data = serde_json::json!({ "data": { "ttl": 3600, "expire_time": null, "policies": ["default"], "renewable": false } });
                return Reply::Body { status: 200, content_type: "application/json", body: data.to_string() };
            }
            if req.path.contains("acctbig") {
                return Reply::Huge { size: GIGABYTE, declared: false };
            }
            // What a careless proxy does: repeat the request, headers and all, and what it saw before.
            json_error(400, format!("{}; earlier logins: {}", echo(req), login_bodies.lock().unwrap().join(" | ")))
        })
    };
    let server = HostileServer::start(&stack.root().join("hostile"), handler);
    stack.broker_url = server.url();
    stack.write_inventory();
    let broker_ca = format!("  ca_file: {}\n", stack.bao.ca_path().display());
    let text = stack.inventory_text().replacen(&broker_ca, &format!("  ca_file: {}\n", server.ca.display()), 1);
    std::fs::write(&stack.config, text).unwrap();

    let out = stack.run("hostile broker", &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |service: &str| stdout.lines().find(|l| l.starts_with(&format!("{service}: "))).unwrap_or_default().to_string();
    assert!(line("prod").contains("FAILED") && line("prod").contains("denied: X-Vault-Token: [redacted]"), "{}", shown(&out));
    assert!(line("big").contains("larger than the 1 MiB limit"), "{}", shown(&out));
    // The broker did get the token back on the access-token read, so the echo carried it.
    assert!(server.requests().iter().any(|r| r.header("x-vault-token") == Some(token.as_str())), "{:#?}", server.requests());
    assert!(!login_bodies.lock().unwrap().is_empty());

    let smtp = stack.smtp.as_ref().unwrap();
    let mail = smtp.wait_for_messages(1, Duration::from_secs(20));
    assert!(!mail.is_empty(), "a failure is mailed");
    smtp.record_in(&leaks);
    leaks.assert_clean();
}
