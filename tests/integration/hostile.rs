//! The broker client, and the whole binary, against a hostile HTTPS broker (the stand-in in
//! `harness::hostile`): a reply of a gigabyte is refused at the size limit whether its length
//! is declared or it is streamed, a reply of the wrong type is named as such, and secrets the
//! broker (or a proxy before it) echoes back reach no error, log line, run report, state DB or
//! mail. What is repeated: a request the broker declined (429/503, after its `Retry-After`) or
//! a read left unanswered, a bounded number of times; a login left unanswered never.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use token_bastion::broker::pace::MAX_ATTEMPTS;
use token_bastion::broker::{AccessRequest, AuthMethod, Broker, BrokerConfig, BrokerError, RequestKind};
use token_bastion::http::CaSource;
use token_bastion::secret::Secret;

use crate::harness::Leaks;
use crate::harness::hostile::{GIGABYTE, HostileServer, Reply, Request};
use crate::harness::stack::{ServiceDef, Stack, shown};

fn broker(server: &HostileServer) -> Broker {
    let url = url::Url::parse(&server.url()).unwrap();
    Broker::new(&BrokerConfig { url, ca: CaSource::File(server.ca.clone()), issuer: "cms".into(), timeout: Duration::from_secs(20), limits: Default::default() }).unwrap()
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

fn approle_files(dir: &std::path::Path) -> AuthMethod {
    let (role_id, secret_id) = (dir.join("role_id"), dir.join("secret_id"));
    std::fs::write(&role_id, "role-id-fixture-0009\n").unwrap();
    std::fs::write(&secret_id, "secret-id-fixture-0009\n").unwrap();
    AuthMethod::AppRole { mount: "approle".into(), role_id_file: role_id, secret_id_file: secret_id }
}

const LOGIN_REPLY: &str = r#"{"auth":{"client_token":"hvs.hostile-fixture-token-0009","lease_duration":3600,"renewable":true,"policies":["p"]}}"#;
const ACCESS_REPLY: &str = r#"{"data":{"access_token":"eyJ.fixture.jwt","type":"Bearer"}}"#;

/// A login declined with 503 and a read declined twice with 429 and `Retry-After: 1` go
/// through on later attempts, each repeat no sooner than the broker asked, and are counted.
#[tokio::test]
async fn declined_requests_are_repeated_after_retry_after_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let seen: Arc<Mutex<(usize, usize)>> = Arc::default();
    let counts = seen.clone();
    let server = HostileServer::start(
        dir.path(),
        Arc::new(move |req: &Request| {
            let mut c = counts.lock().unwrap();
            let ok = |body: &str| Reply::Body { status: 200, content_type: "application/json", body: body.into() };
            if req.path.ends_with("/login") {
                c.0 += 1;
                if c.0 == 1 { Reply::Declined { status: 503, retry_after: None } } else { ok(LOGIN_REPLY) }
            } else {
                c.1 += 1;
                if c.1 <= 2 { Reply::Declined { status: 429, retry_after: Some(1) } } else { ok(ACCESS_REPLY) }
            }
        }),
    );
    let b = broker(&server);
    let login = b.login(&approle_files(dir.path())).await.expect("the second login attempt goes through");
    b.access_token(&login.token, &request()).await.expect("the third read goes through");
    assert_eq!(*seen.lock().unwrap(), (2, 3));
    let repeats = b.repeats();
    assert_eq!((repeats.get(&RequestKind::Login), repeats.get(&RequestKind::AccessToken)), (Some(&1), Some(&2)), "{repeats:?}");
    let reads: Vec<_> = server.requests().into_iter().filter(|r| r.path.contains("/secret/oauth/")).collect();
    for pair in reads.windows(2) {
        assert!(pair[1].at.duration_since(pair[0].at) >= Duration::from_secs(1), "a repeat came before the Retry-After it was given");
    }
}

/// Shutdown cuts a backoff short: a read declined with `Retry-After: 10` is not repeated once
/// the client's cancellation token fires, and fails as not sent rather than after the wait.
#[tokio::test]
async fn a_backoff_ends_when_shutdown_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start(dir.path(), Arc::new(|_: &Request| Reply::Declined { status: 429, retry_after: Some(10) }));
    let cancel = tokio_util::sync::CancellationToken::new();
    let b = broker(&server).with_cancel(cancel.clone());
    let read = tokio::spawn(async move { b.lookup_self(&Secret::new("hvs.hostile-fixture-token-0012")).await });
    for _ in 0..500 {
        if !server.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.requests().len(), 1, "the first attempt was declined");
    cancel.cancel();
    let e = read.await.unwrap().unwrap_err();
    assert!(matches!(e, BrokerError::Cancelled { .. }), "{e}");
    assert!(e.to_string().contains("shutting down"), "{e}");
    assert_eq!(server.requests().len(), 1, "no repeat after the cancellation");
}

/// A broker that keeps declining is asked a bounded number of times, then its answer stands.
#[tokio::test]
async fn repeats_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start(dir.path(), Arc::new(|_: &Request| Reply::Declined { status: 429, retry_after: None }));
    let b = broker(&server);
    let e = b.lookup_self(&Secret::new("hvs.hostile-fixture-token-0010")).await.unwrap_err();
    assert_eq!(e.status(), Some(429), "{e}");
    assert_eq!(server.requests().len(), MAX_ATTEMPTS as usize);
    assert_eq!(b.repeats().get(&RequestKind::LookupSelf), Some(&u64::from(MAX_ATTEMPTS - 1)));
}

/// A login or a child creation whose reply is lost may have issued a token: sent once, never
/// again, and its error says the outcome is unknown. A read whose reply is lost is repeated.
#[tokio::test]
async fn a_lost_login_or_child_creation_is_not_repeated_but_a_lost_read_is() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start(dir.path(), Arc::new(|_: &Request| Reply::HangUp));
    let b = broker(&server);
    let token = Secret::new("hvs.hostile-fixture-token-0011");

    let e = b.login(&approle_files(dir.path())).await.unwrap_err();
    assert!(e.outcome_unknown(), "{e:?}");
    assert!(e.to_string().contains("the broker may have acted on it, so it was not repeated"), "{e}");
    let e = b.create_child(&token, Duration::from_secs(600)).await.unwrap_err();
    assert!(e.outcome_unknown(), "{e:?}");
    let posts = |path: &str| server.requests().iter().filter(|r| r.path.ends_with(path)).count();
    assert_eq!((posts("/login"), posts("/auth/token/create")), (1, 1), "sent once each");

    let e = b.access_token(&token, &request()).await.unwrap_err();
    assert!(!e.outcome_unknown(), "a read changes nothing: {e:?}");
    assert_eq!(server.requests().iter().filter(|r| r.path.contains("/secret/oauth/")).count(), MAX_ATTEMPTS as usize);
    assert_eq!(b.repeats().get(&RequestKind::AccessToken), Some(&u64::from(MAX_ATTEMPTS - 1)));
    assert_eq!(b.repeats().get(&RequestKind::Login), None);
}
