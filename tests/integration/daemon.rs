//! `token-bastion daemon` as a real process: cycles on schedule, `/metrics` and `/healthz`,
//! SIGHUP with a good and a broken inventory, SIGTERM during a slow delivery with a short and a
//! long grace period, and JSON log lines.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::openbao::JwtSpec;
use crate::harness::stack::{shown, ServiceDef, Stack};
use crate::harness::{free_port, product_bin, wait_until, ChildGuard, Leaks};

fn spec() -> JwtSpec {
    JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() }
}

/// A service delivered every two seconds.
fn service(name: &str) -> ServiceDef {
    let mut def = ServiceDef::new(name, &["compute.create"]);
    def.extra = "    schedule: \"*/2 * * * * *\"\n".into();
    def
}

struct Daemon {
    guard: ChildGuard,
    log: PathBuf,
    metrics_port: u16,
}

impl Daemon {
    fn start(stack: &Stack, leaks: &Leaks, grace: &str) -> Daemon {
        let log = stack.root().join("daemon.log");
        leaks.path(&log);
        let metrics_port = free_port(false);
        let mut cmd = Command::new(product_bin());
        cmd.args(["--config", stack.config.to_str().unwrap(), "--state-dir", stack.state_dir.to_str().unwrap(), "--log-format", "json"])
            .args(["daemon", "--metrics-listen", &format!("127.0.0.1:{metrics_port}"), "--splay-max", "0s", "--window", "1s", "--grace", grace])
            .env_remove("RUST_LOG")
            .envs(stack.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let guard = ChildGuard::spawn("token-bastion daemon", cmd, &log);
        Daemon { guard, log, metrics_port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.guard.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to exit; its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut code = None;
        let exited = wait_until(within, || match self.guard.child.try_wait() {
            Ok(Some(status)) => {
                code = status.code();
                true
            }
            _ => false,
        });
        assert!(exited, "daemon still running after {within:?}:\n{}", self.log());
        code
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

fn status_rows(stack: &Stack) -> Vec<Value> {
    let out = stack.run("status", &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Waits until every destination of `service` has a success newer than `after`.
fn wait_delivered(stack: &Stack, daemon: &Daemon, service: &str, after: Option<&str>) -> Vec<Value> {
    let mut rows = Vec::new();
    let ok = wait_until(Duration::from_secs(40), || {
        rows = status_rows(stack).into_iter().filter(|r| r["service"] == service).collect();
        !rows.is_empty()
            && rows.iter().all(|r| r["last_success"].as_str().is_some_and(|t| after.is_none_or(|a| t > a)))
    });
    assert!(ok, "{service} not delivered by the daemon: {rows:#?}\n{}", daemon.log());
    rows
}

fn top(stack: &Stack, host: &str, account: &str, oauth: &str) -> PathBuf {
    stack.host(host).spool.join(account).join(format!("{oauth}.top"))
}

fn register_top(leaks: &Leaks, path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path) {
        let doc: Value = serde_json::from_str(&text).unwrap();
        leaks.secret(doc["vault_token"].as_str().unwrap());
    }
}

#[test]
fn the_daemon_delivers_on_schedule_serves_metrics_and_logs_json() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(2);
    stack.add_service(service("prod"));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    let mut daemon = Daemon::start(&stack, &leaks, "10s");

    let rows = wait_delivered(&stack, &daemon, "prod", None);
    assert_eq!(rows.len(), 2);
    let (code, body) = daemon.get("/metrics");
    assert_eq!(code, 200);
    let delivered: f64 = body
        .lines()
        .filter(|l| l.starts_with("token_bastion_deliveries_total{") && l.contains("service=\"prod\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(delivered >= 2.0, "{body}");
    let left = body.lines().find(|l| l.starts_with("token_bastion_time_left_seconds{") && l.contains("destination=\"credd@schedd1\"")).unwrap_or_else(|| panic!("{body}"));
    let left: f64 = left.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((3000.0..=3600.0).contains(&left), "{left}");
    assert!(body.contains("token_bastion_last_cycle_timestamp_seconds{service=\"prod\"}"), "{body}");
    let (code, health) = daemon.get("/healthz");
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "{}", daemon.log());

    // Every line is JSON; every delivery line names the run, the service and the host.
    let log = daemon.log();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let deliveries: Vec<&Value> = lines.iter().filter(|l| l["message"] == "delivered").collect();
    assert!(deliveries.len() >= 2, "{log}");
    for d in deliveries {
        assert_eq!(d["service"], "prod", "{d}");
        assert!(d["host"].as_str().is_some_and(|h| h.starts_with("schedd")), "{d}");
        let run_id = d["spans"].as_array().and_then(|spans| spans.iter().find_map(|s| s["run_id"].as_i64()));
        assert!(run_id.is_some(), "no run_id in {d}");
    }
    register_top(&leaks, &top(&stack, "schedd1", "acctprod", "cms_prod"));
    leaks.assert_clean();
}

#[test]
fn sighup_applies_a_good_inventory_and_refuses_a_broken_one_mailing_once() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1).with_smtp();
    stack.add_service(service("prod"));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    let mut daemon = Daemon::start(&stack, &leaks, "10s");
    wait_delivered(&stack, &daemon, "prod", None);

    // A new service: scheduled after the reload.
    stack.add_service(service("crab"));
    stack.put_token("crab", &spec());
    stack.write_inventory();
    daemon.signal("HUP");
    wait_delivered(&stack, &daemon, "crab", None);

    // A broken file, signalled twice: refused both times, mailed once, old inventory kept.
    let good = stack.inventory_text();
    let broken = good.replacen("    required: [compute.create]\n", "    required: [compute.create]\n    colour: blue\n", 1);
    std::fs::write(&stack.config, &broken).unwrap();
    let line = broken.lines().position(|l| l == "    colour: blue").unwrap() + 1;
    daemon.signal("HUP");
    let needle = format!("{}:{line}:5:", stack.config.display());
    assert!(wait_until(Duration::from_secs(10), || daemon.log().contains(&needle)), "{}", daemon.log());
    daemon.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || daemon.log().matches(&needle).count() >= 2), "{}", daemon.log());
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let rows = wait_delivered(&stack, &daemon, "crab", Some(&since));
    assert!(!rows.is_empty(), "still delivering with the running inventory");
    let smtp = stack.smtp.as_ref().unwrap();
    let mails: Vec<_> = smtp.messages().into_iter().filter(|m| m.subject.contains("reload refused")).collect();
    assert_eq!(mails.len(), 1, "one mail per distinct broken file: {mails:#?}");
    assert!(mails[0].body.contains(&needle) && mails[0].body.contains("colour"), "{}", mails[0].body);
    assert_eq!(mails[0].to, ["oncall@example.org"]);

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "{}", daemon.log());
    smtp.record_in(&leaks);
    register_top(&leaks, &top(&stack, "schedd1", "acctprod", "cms_prod"));
    register_top(&leaks, &top(&stack, "schedd1", "acctcrab", "cms_crab"));
    leaks.assert_clean();
}

/// A delivery made slow (the account-id lookup, its one remote command, takes 4 s on the
/// schedd) is in flight when SIGTERM arrives.
fn sigterm_during_a_slow_delivery(grace: &str) -> (Option<i32>, String, String, String, String) {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    stack.add_service(service("prod"));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    let first = stack.run("first", &["run"]);
    assert_eq!(first.status.code(), Some(0), "{}", shown(&first));
    let path = top(&stack, "schedd1", "acctprod", "cms_prod");
    let before = std::fs::read_to_string(&path).unwrap();
    register_top(&leaks, &path);

    stack.host_mut("schedd1").slow_down("id", 4);
    let new_jwt = stack.put_token("prod", &spec());
    let mut daemon = Daemon::start(&stack, &leaks, grace);
    assert!(wait_until(Duration::from_secs(30), || daemon.log().contains("child token minted") || daemon.log().contains("tokens valid")), "{}", daemon.log());
    std::thread::sleep(Duration::from_millis(1500)); // inside the slow id lookup
    daemon.signal("TERM");
    let code = daemon.wait_exit(Duration::from_secs(40));
    let after = std::fs::read_to_string(&path).unwrap();
    let used = std::fs::read_to_string(path.with_extension("use")).unwrap();
    register_top(&leaks, &path);
    let temps: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tb-")).collect();
    assert!(temps.is_empty(), "temp files left: {temps:?}");
    assert!(serde_json::from_str::<Value>(&after).is_ok(), "the .top is whole");
    let status = status_rows(&stack);
    let last_error = status.iter().find(|r| r["destination"] == "credd@schedd1").and_then(|r| r["last_error"].as_str().map(str::to_string)).unwrap_or_default();
    leaks.assert_clean();
    (code, before, after, format!("{used}|{new_jwt}"), last_error)
}

#[test]
fn sigterm_past_the_grace_period_abandons_writes_and_keeps_the_old_files() {
    let (code, before, after, used_and_new, last_error) = sigterm_during_a_slow_delivery("1s");
    assert_eq!(code, Some(1), "writes abandoned: exit 1");
    assert_eq!(after, before, "the old .top stays, byte for byte");
    let (used, new) = used_and_new.split_once('|').unwrap();
    assert_ne!(used.trim(), new, "the new access token was not put in place");
    assert!(last_error.contains("abandoned"), "recorded as failed: {last_error}");
}

#[test]
fn sigterm_within_the_grace_period_lets_the_delivery_finish() {
    let (code, before, after, used_and_new, _) = sigterm_during_a_slow_delivery("30s");
    assert_eq!(code, Some(0));
    assert_ne!(after, before, "the delivery in flight finished");
    let (used, new) = used_and_new.split_once('|').unwrap();
    assert_eq!(used.trim(), new);
}

/// `run --pushgateway` pushes the cycle's metrics to a real Pushgateway.
#[test]
fn a_run_pushes_its_metrics_to_a_pushgateway() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    stack.add_service(service("prod"));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    let pgw_dir = stack.root().join("pgw");
    std::fs::create_dir_all(&pgw_dir).unwrap();
    let pgw = crate::harness::pushgateway::Pushgateway::start(&pgw_dir);
    let out = stack.run("run", &["run", "--pushgateway", &pgw.url(), "--push-job", "bastion-test"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let addr = pgw.url().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(addr.as_str()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("token_bastion_deliveries_total{") && l.contains("job=\"bastion-test\"") && l.contains("service=\"prod\""))
        .unwrap_or_else(|| panic!("{text}\n{}", pgw.log_text()));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(text.contains("token_bastion_stage_duration_seconds_count{") && text.contains("stage=\"validate\""), "{text}");
    let logins = text
        .lines()
        .find(|l| l.starts_with("token_bastion_broker_request_duration_seconds_count{") && l.contains("request=\"login\"") && l.contains("job=\"bastion-test\""))
        .unwrap_or_else(|| panic!("no broker login timing:\n{text}"));
    assert!(logins.ends_with(" 1"), "{logins}");
    register_top(&leaks, &top(&stack, "schedd1", "acctprod", "cms_prod"));
    leaks.assert_clean();
}
