//! `token-bastion daemon` as a real process: cycles woken by tokio-cron-scheduler, `/metrics`
//! and `/healthz` while a destination fails and while cycles cannot run at all, SIGHUP with a
//! new schedule, a broken inventory and a broken templates dir, SIGTERM during a slow delivery
//! (within the grace period, past it, and past the hard deadline), and JSON log lines.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use serde_json::Value;

use crate::harness::openbao::JwtSpec;
use crate::harness::stack::{shown, ServiceDef, Stack};
use crate::harness::{free_port, product_bin, wait_until, ChildGuard, Leaks};
use crate::metrics::{parse, value};

/// The daemon's hard margin after the grace period (`daemon::HARD_MARGIN`).
const HARD_MARGIN: Duration = Duration::from_secs(10);

fn spec() -> JwtSpec {
    JwtSpec { scope: Some("compute.create".into()), ..JwtSpec::default() }
}

/// A service delivered every two seconds.
fn service(name: &str) -> ServiceDef {
    service_on(name, "*/2 * * * * *")
}

pub(crate) fn service_on(name: &str, schedule: &str) -> ServiceDef {
    let mut def = ServiceDef::new(name, &["compute.create"]);
    def.extra = format!("    schedule: \"{schedule}\"\n");
    def
}

/// A stack with `hosts` schedds and the service `prod`, delivered every two seconds.
fn prod_stack(leaks: &Leaks, hosts: usize) -> Stack<'_> {
    let mut stack = Stack::new(leaks).with_hosts(hosts);
    stack.add_service(service("prod"));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    stack
}

pub(crate) struct Daemon {
    guard: ChildGuard,
    log: PathBuf,
    metrics_port: u16,
}

impl Daemon {
    pub(crate) fn start(stack: &Stack, leaks: &Leaks, grace: &str) -> Daemon {
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

    /// Every log line, parsed; each must be JSON.
    fn lines(&self) -> Vec<Value> {
        self.log().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.guard.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to exit; its exit code.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<i32> {
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

    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    pub(crate) fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// One sample of `/metrics`.
    fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        value(&parse(&body), name, labels)
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

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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
fn the_daemon_delivers_on_schedule_and_its_metrics_count_down_while_a_destination_fails() {
    let leaks = Leaks::default();
    let mut stack = prod_stack(&leaks, 2);
    let mut daemon = Daemon::start(&stack, &leaks, "10s");

    let rows = wait_delivered(&stack, &daemon, "prod", None);
    assert_eq!(rows.len(), 2);
    let one = [("service", "prod"), ("destination", "credd@schedd1")];
    let two = [("service", "prod"), ("destination", "credd@schedd2")];
    // The status row is written during the cycle; the counters when the daemon folds it in.
    assert!(wait_until(Duration::from_secs(20), || daemon.sample("token_bastion_deliveries_total", &one).is_some_and(|n| n >= 1.0)));
    let left = daemon.sample("token_bastion_time_left_seconds", &one).unwrap();
    assert!((3000.0..=3600.0).contains(&left), "{left}");
    assert!(daemon.sample("token_bastion_last_cycle_timestamp_seconds", &[("service", "prod")]).is_some());
    let (code, health) = daemon.get("/healthz");
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");

    // schedd2 goes away. Each cycle logs in afresh (the login token lives an hour, less than
    // `renew_before`), so schedd1's expiry moves on; schedd2 still holds what it had, and its
    // expiry must say so.
    stack.host_mut("schedd2").stop();
    assert!(
        wait_until(Duration::from_secs(30), || daemon.sample("token_bastion_failures_total", &[two[0], two[1], ("stage", "deliver")]).is_some()),
        "{}",
        daemon.log()
    );
    let held_two = daemon.sample("token_bastion_expiry_timestamp_seconds", &two).unwrap();
    let left_two = daemon.sample("token_bastion_time_left_seconds", &two).unwrap();
    let held_one = daemon.sample("token_bastion_expiry_timestamp_seconds", &one).unwrap();
    let failures = daemon.sample("token_bastion_failures_total", &[two[0], two[1], ("stage", "deliver")]).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            daemon.sample("token_bastion_expiry_timestamp_seconds", &one).unwrap() > held_one
                && daemon.sample("token_bastion_failures_total", &[two[0], two[1], ("stage", "deliver")]).unwrap() > failures
        }),
        "schedd1 delivered again and schedd2 failed again:\n{}",
        daemon.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.sample("token_bastion_expiry_timestamp_seconds", &two), Some(held_two), "what schedd2 holds did not change");
    let left_later = daemon.sample("token_bastion_time_left_seconds", &two).unwrap();
    assert!(left_later < left_two, "time left counts down at every scrape: {left_two} then {left_later}");
    let (code, health) = daemon.get("/healthz");
    assert_eq!(code, 200, "cycles run (with a failure): the service is looked after: {health}");

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "{}", daemon.log());

    // Every line is JSON; every delivery line names the run, the service and the host.
    let lines = daemon.lines();
    let deliveries: Vec<&Value> = lines.iter().filter(|l| l["message"] == "delivered").collect();
    assert!(deliveries.len() >= 2, "{}", daemon.log());
    for d in deliveries {
        assert_eq!(d["service"], "prod", "{d}");
        assert!(d["host"].as_str().is_some_and(|h| h.starts_with("schedd")), "{d}");
        let run_id = d["spans"].as_array().and_then(|spans| spans.iter().find_map(|s| s["run_id"].as_i64()));
        assert!(run_id.is_some(), "no run_id in {d}");
    }
    register_top(&leaks, &top(&stack, "schedd1", "acctprod", "cms_prod"));
    register_top(&leaks, &top(&stack, "schedd2", "acctprod", "cms_prod"));
    leaks.assert_clean();
}

const WOKEN: &str = "wake-up";
const NOBODY: &str = "wake-up for a schedule no service has; ignored";
const ALREADY_RUN: &str = "wake-up for a slot already run; ignored";

/// The log lines `message` about wake-ups for `schedule` (six-field form), as (slot, logged
/// at).
fn wakeups(daemon: &Daemon, schedule: &str, message: &str) -> Vec<(String, String)> {
    daemon
        .lines()
        .into_iter()
        .filter(|l| l["schedule"] == schedule && l["message"] == message)
        .map(|l| (l["slot"].as_str().unwrap_or_default().to_string(), l["timestamp"].as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Moves `prod` by SIGHUP to a per-minute schedule firing at a second a few seconds from now
/// (never `avoid`); returns the schedule and the time of the reload.
fn reschedule_soon(stack: &mut Stack, daemon: &Daemon, avoid: Option<&str>) -> (String, String) {
    let reloads = daemon.log().matches("inventory reloaded").count();
    let mut second = (Utc::now() + chrono::TimeDelta::seconds(4)).second();
    let mut schedule = format!("{second} * * * * *");
    if Some(schedule.as_str()) == avoid {
        second = (second + 1) % 60;
        schedule = format!("{second} * * * * *");
    }
    stack.defs.get_mut("prod").unwrap().extra = format!("    schedule: \"{schedule}\"\n");
    stack.write_inventory();
    let at = now_rfc3339();
    daemon.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || daemon.log().matches("inventory reloaded").count() > reloads), "{}", daemon.log());
    (schedule, at)
}

#[test]
fn a_per_minute_schedule_is_woken_by_the_cron_scheduler_and_sighup_moves_it() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1);
    // Once a year until the daemon is up; then every minute, at a second just ahead.
    stack.add_service(service_on("prod", "0 0 0 1 1 *"));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    let mut daemon = Daemon::start(&stack, &leaks, "10s");
    assert!(wait_until(Duration::from_secs(30), || daemon.log().contains("daemon started")), "{}", daemon.log());
    let started = Instant::now();
    let (old, at) = reschedule_soon(&mut stack, &daemon, None);
    wait_delivered(&stack, &daemon, "prod", Some(&at));
    let woken = wakeups(&daemon, &old, WOKEN);
    assert_eq!(woken.len(), 1, "one wake-up, from the cron job of the schedule:\n{}", daemon.log());
    let old_second = old.split(' ').next().unwrap().parse::<u32>().unwrap();
    assert!(woken[0].0.ends_with(&format!(":{old_second:02} UTC")), "the slot is the schedule's second: {woken:?}");
    eprintln!("wake-up for slot {} logged at {}", woken[0].0, woken[0].1);

    // SIGHUP moves it to another second of the minute.
    let (new, at) = reschedule_soon(&mut stack, &daemon, Some(&old));
    wait_delivered(&stack, &daemon, "prod", Some(&at));
    let woken_new = wakeups(&daemon, &new, WOKEN);
    assert_eq!(woken_new.len(), 1, "{}", daemon.log());
    eprintln!("wake-up for slot {} logged at {}", woken_new[0].0, woken_new[0].1);

    // A minute after its fire the old job would fire again, were it still there.
    let first_slot = chrono::NaiveDateTime::parse_from_str(woken[0].0.trim_end_matches(" UTC"), "%Y-%m-%d %H:%M:%S").unwrap().and_utc();
    let old_again = first_slot + chrono::TimeDelta::seconds(62);
    while Utc::now() < old_again {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(wakeups(&daemon, &old, WOKEN).len(), 1, "{}", daemon.log());
    assert!(wakeups(&daemon, &old, NOBODY).is_empty(), "the old schedule's job is gone:\n{}", daemon.log());
    assert_eq!(wakeups(&daemon, &new, WOKEN).len(), 1, "{}", daemon.log());
    let repeated = wakeups(&daemon, &old, ALREADY_RUN).len() + wakeups(&daemon, &new, ALREADY_RUN).len();
    eprintln!("repeated fires of a slot already run (ignored): {repeated}");
    eprintln!("per-minute test: {:?} of wall time from the first reload", started.elapsed());

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "{}", daemon.log());
    register_top(&leaks, &top(&stack, "schedd1", "acctprod", "cms_prod"));
    leaks.assert_clean();
}

#[test]
fn sighup_refuses_a_broken_inventory_and_a_broken_templates_dir_mailing_once_each() {
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

    // A valid file whose templates dir holds a broken template: refused as well.
    let templates = stack.root().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("admin_failure.txt.j2"), "{% if %}\n").unwrap();
    stack.notify_extra.push_str(&format!("  templates_dir: {}\n", templates.display()));
    stack.write_inventory();
    daemon.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || daemon.log().contains("notify.templates_dir") && daemon.log().contains("admin_failure.txt.j2")),
        "{}",
        daemon.log()
    );
    let since = now_rfc3339();
    let rows = wait_delivered(&stack, &daemon, "crab", Some(&since));
    assert!(!rows.is_empty(), "still delivering with the running inventory");

    let smtp = stack.smtp.as_ref().unwrap();
    let mails: Vec<_> = smtp.messages().into_iter().filter(|m| m.subject.contains("reload refused")).collect();
    let yaml: Vec<_> = mails.iter().filter(|m| m.body.contains(&needle) && m.body.contains("colour")).collect();
    let template: Vec<_> = mails.iter().filter(|m| m.body.contains("admin_failure.txt.j2")).collect();
    assert_eq!((yaml.len(), template.len(), mails.len()), (1, 1, 2), "one mail per distinct broken file: {mails:#?}");
    assert_eq!(mails[0].to, ["oncall@example.org"]);

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "{}", daemon.log());
    smtp.record_in(&leaks);
    register_top(&leaks, &top(&stack, "schedd1", "acctprod", "cms_prod"));
    register_top(&leaks, &top(&stack, "schedd1", "acctcrab", "cms_crab"));
    leaks.assert_clean();
}

#[test]
fn a_ca_file_gone_makes_every_cycle_a_counted_failure_and_healthz_unhealthy() {
    let leaks = Leaks::default();
    let mut stack = Stack::new(&leaks).with_hosts(1).with_smtp();
    stack.add_service(service("prod"));
    stack.put_token("prod", &spec());
    stack.write_inventory();
    // The inventory trusts a copy of the broker's CA, which the test then removes.
    let ca = stack.root().join("trusted-ca.pem");
    std::fs::copy(stack.bao.ca_path(), &ca).unwrap();
    let text = stack.inventory_text().replace(stack.bao.ca_path().to_str().unwrap(), ca.to_str().unwrap());
    std::fs::write(&stack.config, text).unwrap();
    let mut daemon = Daemon::start(&stack, &leaks, "10s");
    wait_delivered(&stack, &daemon, "prod", None);

    std::fs::remove_file(&ca).unwrap();
    let setup = [("service", "prod"), ("destination", "credd@schedd1"), ("stage", "setup")];
    assert!(wait_until(Duration::from_secs(30), || daemon.sample("token_bastion_failures_total", &setup).is_some()), "{}", daemon.log());
    let last_cycle = daemon.sample("token_bastion_last_cycle_timestamp_seconds", &[("service", "prod")]);
    // Twice the two-second interval after the last completed run, the watchdog reports it.
    let mut health = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(30), || {
            health = daemon.get("/healthz");
            health.0 == 503
        }),
        "{health:?}\n{}",
        daemon.log()
    );
    let doc: Value = serde_json::from_str(&health.1).unwrap();
    assert_eq!((doc["status"].as_str(), doc["overdue"].clone()), (Some("unhealthy"), serde_json::json!(["prod"])));
    assert!(daemon.sample("token_bastion_failures_total", &setup).unwrap() >= 2.0, "every cycle is counted");
    assert_eq!(
        daemon.sample("token_bastion_last_cycle_timestamp_seconds", &[("service", "prod")]),
        last_cycle,
        "a cycle that could not run completes nothing"
    );
    let not_run: Vec<Value> = daemon.lines().into_iter().filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("the cycle could not run"))).collect();
    assert!(!not_run.is_empty() && not_run.iter().all(|l| l["reason"].as_str().is_some_and(|r| r.contains("trusted-ca.pem"))), "{not_run:#?}");
    assert!(daemon.lines().iter().any(|l| l["message"] == "service has not completed a run within twice its interval"), "{}", daemon.log());
    // On-call is told at once, and not again while the reason lasts (remind_every: 6h).
    let smtp = stack.smtp.as_ref().unwrap();
    let setup_mail: Vec<_> = smtp.messages().into_iter().filter(|m| m.subject == "[token-bastion] URGENT: a cycle could not run (1 service)").collect();
    assert_eq!(setup_mail.len(), 1, "{:#?}", smtp.messages());
    assert!(setup_mail[0].body.contains("trusted-ca.pem") && setup_mail[0].to == ["oncall@example.org"], "{:#?}", setup_mail[0]);

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "{}", daemon.log());
    smtp.record_in(&leaks);
    register_top(&leaks, &top(&stack, "schedd1", "acctprod", "cms_prod"));
    leaks.assert_clean();
}

/// What a SIGTERM during a slow delivery left.
struct Stopped {
    code: Option<i32>,
    /// From SIGTERM to the exit.
    took: Duration,
    before: String,
    after: String,
    /// The access token at the `.use` after (empty when none), and the one the broker had ready.
    used: String,
    new_jwt: String,
    last_error: String,
    /// Temp files left in the account's spool directory, with their modes.
    temps: Vec<(String, u32)>,
}

/// A delivery made slow (the account-id lookup, its one remote command, takes `slow` seconds on
/// the schedd) is in flight when SIGTERM arrives.
fn sigterm_during_a_slow_delivery(grace: &str, slow: u32) -> Stopped {
    let leaks = Leaks::default();
    let mut stack = prod_stack(&leaks, 1);
    let first = stack.run("first", &["run"]);
    assert_eq!(first.status.code(), Some(0), "{}", shown(&first));
    let path = top(&stack, "schedd1", "acctprod", "cms_prod");
    let before = std::fs::read_to_string(&path).unwrap();
    register_top(&leaks, &path);

    stack.host_mut("schedd1").slow_down("getent", slow);
    // A `.use` that is there is the credmon's: with none there, this delivery writes one.
    std::fs::remove_file(path.with_extension("use")).unwrap();
    let new_jwt = stack.put_token("prod", &spec());
    let mut daemon = Daemon::start(&stack, &leaks, grace);
    assert!(wait_until(Duration::from_secs(30), || daemon.log().contains("tokens valid")), "{}", daemon.log());
    std::thread::sleep(Duration::from_millis(1500)); // inside the slow account lookup
    let signalled = Instant::now();
    daemon.signal("TERM");
    let code = daemon.wait_exit(Duration::from_secs(grace_secs(grace) + HARD_MARGIN.as_secs() + 15));
    let took = signalled.elapsed();
    let after = std::fs::read_to_string(&path).unwrap();
    let used = std::fs::read_to_string(path.with_extension("use")).unwrap_or_default().trim().to_string();
    register_top(&leaks, &path);
    let temps = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tb-"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().permissions().mode() & 0o777))
        .collect();
    assert!(serde_json::from_str::<Value>(&after).is_ok(), "the .top is whole");
    let status = status_rows(&stack);
    let last_error = status.iter().find(|r| r["destination"] == "credd@schedd1").and_then(|r| r["last_error"].as_str().map(str::to_string)).unwrap_or_default();
    leaks.assert_clean();
    eprintln!("SIGTERM with --grace {grace} during a delivery slowed by {slow} s in its account lookup: exit {code:?} after {took:?}");
    Stopped { code, took, before, after, used, new_jwt, last_error, temps }
}

fn grace_secs(grace: &str) -> u64 {
    humantime::parse_duration(grace).unwrap().as_secs()
}

#[test]
fn sigterm_past_the_grace_period_abandons_writes_and_keeps_the_old_files() {
    let s = sigterm_during_a_slow_delivery("1s", 4);
    assert_eq!(s.code, Some(1), "writes abandoned: exit 1");
    assert!(s.took < Duration::from_secs(1) + HARD_MARGIN + Duration::from_secs(15), "hang guard: {:?}", s.took);
    assert_eq!(s.after, s.before, "the old .top stays, byte for byte");
    assert_ne!(s.used, s.new_jwt, "the new access token was not put in place");
    assert!(s.temps.is_empty(), "temp files left: {:?}", s.temps);
    assert!(s.last_error.contains("abandoned"), "recorded as failed: {}", s.last_error);
}

#[test]
fn sigterm_past_the_hard_deadline_exits_with_the_write_still_running() {
    // The id lookup takes longer than the grace period and the hard margin together.
    let s = sigterm_during_a_slow_delivery("1s", 40);
    assert_eq!(s.code, Some(1));
    assert!(s.took < Duration::from_secs(1) + HARD_MARGIN + Duration::from_secs(15), "hang guard: {:?}", s.took);
    assert_eq!(s.after, s.before, "nothing was renamed: the old .top stays");
    assert_ne!(s.used, s.new_jwt);
    assert!(s.temps.iter().all(|(_, mode)| mode & 0o077 == 0), "a temp file cut off keeps its 0600: {:?}", s.temps);
}

#[test]
fn sigterm_within_the_grace_period_lets_the_delivery_finish() {
    let s = sigterm_during_a_slow_delivery("30s", 4);
    assert_eq!(s.code, Some(0));
    assert_ne!(s.after, s.before, "the delivery in flight finished");
    assert_eq!(s.used, s.new_jwt);
    assert!(s.temps.is_empty(), "temp files left: {:?}", s.temps);
}

/// `run --pushgateway` pushes the cycle's metrics to a real Pushgateway.
#[test]
fn a_run_pushes_its_metrics_to_a_pushgateway() {
    let leaks = Leaks::default();
    let stack = prod_stack(&leaks, 1);
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
    assert!(text.contains("token_bastion_expiry_timestamp_seconds{"), "what the destination holds is pushed too:\n{text}");
    let logins = text
        .lines()
        .find(|l| l.starts_with("token_bastion_broker_request_duration_seconds_count{") && l.contains("request=\"login\"") && l.contains("job=\"bastion-test\""))
        .unwrap_or_else(|| panic!("no broker login timing:\n{text}"));
    assert!(logins.ends_with(" 1"), "{logins}");
    register_top(&leaks, &top(&stack, "schedd1", "acctprod", "cms_prod"));
    leaks.assert_clean();
}
