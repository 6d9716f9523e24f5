//! The `token-bastion` binary: arguments → tracing → the command. The only place exit codes are
//! chosen:
//!
//! * 0 — everything asked for was done (`check`: the inventory is valid; `run`: every service ×
//!   destination delivered; `status`: nothing inside its expiry warning);
//! * 1 — a service or destination was not delivered, or one is close to expiry (`status`);
//! * 2 — configuration or local setup error only (invalid inventory, unknown service, a state
//!   directory that cannot be used).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use token_bastion::cli::{Cli, Command, LogFormat};
use token_bastion::cycle::{self, CycleOptions, CycleSetupError, RunReport};
use token_bastion::daemon::{Control, DaemonExit, DaemonOptions};
use token_bastion::schedule::PlanOptions;
use token_bastion::state::StateStore;
use token_bastion::inventory::{self, InventoryError};
use token_bastion::notify::{self, Templates};
use token_bastion::credd_names::ScheddRead;
use token_bastion::redact;

const EXIT_OK: u8 = 0;
const EXIT_NOT_DELIVERED: u8 = 1;
const EXIT_SETUP: u8 = 2;

fn init_tracing(cli: &Cli) {
    // On a terminal, `run` shows a progress bar; info lines would tear it, so only warnings
    // and errors show unless more is asked for.
    let interactive_run = matches!(cli.command, Command::Run { .. }) && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let default = match cli.verbose {
        0 if interactive_run => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // tokio-cron-scheduler narrates every job it adds at info; its warnings are what matter.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{default},tokio_cron_scheduler=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| LogWriter);
    match cli.log_format {
        LogFormat::Human => builder.with_ansi(colour(std::io::IsTerminal::is_terminal(&std::io::stderr()), std::env::var_os("NO_COLOR"))).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(true).init(),
    }
}

/// Colour in human logs only on a terminal, and not when `NO_COLOR` is set to anything
/// (no-color.org): a file, a pipe, the journal or cron's mail get plain text.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The progress bar `run` shows on a terminal, once there is one: log lines are written around it.
static PROGRESS: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

/// stderr, writing around the progress bar (if any) so that neither tears the other, every line
/// scrubbed of the secrets the process holds.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let clean = redact::scrub_bytes(buf);
        match PROGRESS.get() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(&clean))?,
            None => std::io::stderr().write_all(&clean)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn main() -> ExitCode {
    #[cfg(feature = "failpoints")]
    let _failpoints = failpoints();
    let cli = Cli::parse();
    init_tracing(&cli);
    ExitCode::from(match &cli.command {
        Command::Check { strict, remote } => check(&cli, *strict, *remote),
        Command::Run { services, dry_run, wait, pushgateway, push_job } => run(
            &cli,
            CycleOptions { dry_run: *dry_run, ..CycleOptions::services(services.clone()) },
            *wait,
            pushgateway.as_deref().map(|url| (url, push_job.as_str())),
        ),
        Command::Revoke { service: Some(service), idtoken: true, wait, .. } => revoke_idtoken(&cli, service, *wait),
        Command::Revoke { service, host, wait, .. } => revoke(&cli, service.as_deref(), host.as_deref(), *wait),
        Command::Status { json, service: Some(service), host: Some(host), .. } => ready(&cli, *json, service, host),
        Command::Status { json, tokens, .. } => status(&cli, *json, *tokens),
        Command::Notify { test: _ } => notify_test(&cli),
        Command::Daemon { metrics_listen, no_metrics, grace, splay_max, window } => daemon(
            &cli,
            DaemonOptions {
                config: cli.config.clone(),
                state_dir: cli.state_dir.clone(),
                metrics_listen: (!no_metrics).then_some(*metrics_listen),
                grace: *grace,
                plan: PlanOptions { splay_max: *splay_max, window: *window },
            },
        ),
    })
}

/// Test builds only: failpoints configured from `FAILPOINTS`. A failpoint's `panic(kill)` ends
/// the whole process at once, as `kill -9` would (a panic would otherwise end only its task).
#[cfg(feature = "failpoints")]
fn failpoints() -> fail::FailScenario<'static> {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if message == Some("kill") {
            std::process::abort();
        }
        default(info);
    }));
    fail::FailScenario::setup()
}

/// Loads the inventory, printing its diagnostics; `None` means exit 2.
fn load_inventory(cli: &Cli) -> Option<inventory::Inventory> {
    match inventory::load(&cli.config) {
        Ok(inv) => Some(inv),
        Err(InventoryError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("{}: {} error(s)", cli.config.display(), diags.len());
            None
        }
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

fn check(cli: &Cli, strict: bool, remote: bool) -> u8 {
    let Some(inv) = load_inventory(cli) else { return EXIT_SETUP };
    let (errors, warnings) = inventory::check_local_files(&inv, strict);
    for w in &warnings {
        eprintln!("{}:{}:{}: {}: warning: {}", w.file.display(), w.line, w.col, w.field, w.message);
    }
    for e in &errors {
        eprintln!("{e}");
    }
    if !errors.is_empty() {
        eprintln!("{}: {} error(s)", cli.config.display(), errors.len());
        return EXIT_SETUP;
    }
    // Every message template is rendered with sample data: a broken one is found now.
    if let Err(e) = Templates::load(inv.notify.templates_dir.as_deref()) {
        eprintln!("{}: notify.templates_dir: {}", cli.config.display(), cycle::error_chain(&e));
        return EXIT_SETUP;
    }
    let destinations: usize = inv.services.values().map(|s| s.destinations.len()).sum();
    println!(
        "{}: OK ({} services, {} hosts, {} destinations{})",
        cli.config.display(),
        inv.services.len(),
        inv.hosts.len(),
        destinations,
        if warnings.is_empty() { String::new() } else { format!(", {} warning(s)", warnings.len()) }
    );
    if remote { check_remote(&inv) } else { EXIT_OK }
}

/// `check --remote`: what each credd host's credmon would ignore. Exit 2 when a name would be
/// ignored or a host's settings cannot be understood, else 1 when a host could not be read.
fn check_remote(inv: &inventory::Inventory) -> u8 {

    let (mut refused, mut unreachable) = (0, 0);
    for host in cycle::check_remote(inv) {
        match &host.read {
            Err(e) => {
                eprintln!("host {}: cannot read the schedd's credmon settings: {e}", host.host);
                unreachable += 1;
                continue;
            }
            Ok(ScheddRead::Refused(e)) => {
                eprintln!("{e}");
                refused += 1;
                continue;
            }
            Ok(ScheddRead::Unknown(why)) => {
                eprintln!("host {}: warning: the schedd's credmon settings are unknown ({why}); names judged by HTCondor's defaults", host.host)
            }
            Ok(ScheddRead::Read(s)) => {
                if let Some(other) = host.spool.as_deref().and_then(|spool| s.other_spool(spool)) {
                    eprintln!("host {}: warning: the schedd's SEC_CREDENTIAL_DIRECTORY_OAUTH is {other}, not the inventory's spool", host.host);
                }
            }
        }
        for (service, ignored) in &host.ignored {
            eprintln!("host {}: service {service}: {ignored}", host.host);
        }
        refused += host.ignored.len();
        println!("host {}: {} credd name(s), {} the credmon would ignore", host.host, host.names, host.ignored.len());
    }
    if refused > 0 {
        EXIT_SETUP
    } else if unreachable > 0 {
        EXIT_NOT_DELIVERED
    } else {
        EXIT_OK
    }
}

/// The inventory with its local files checked, printing what is wrong; `None` means exit 2. A
/// secret file others can read is refused here as in `check`: the bastion does not use a
/// credential that may already have leaked on its own host.
fn usable_inventory(cli: &Cli) -> Option<inventory::Inventory> {
    let inv = load_inventory(cli)?;
    let (errors, _) = inventory::check_local_files(&inv, false);
    for e in &errors {
        eprintln!("{e}");
    }
    errors.is_empty().then_some(inv)
}

fn new_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime").map_err(|e| eprintln!("{e:#}")).ok()
}

/// `notify --test`: one test message through each configured channel, sent directly (not
/// queued: a test that fails is not retried later).
fn notify_test(cli: &Cli) -> u8 {
    let Some(inv) = usable_inventory(cli) else { return EXIT_SETUP };
    let templates = match Templates::load(inv.notify.templates_dir.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: notify.templates_dir: {}", cli.config.display(), cycle::error_chain(&e));
            return EXIT_SETUP;
        }
    };
    let mut channels = notify::Channels::default();
    if let Some(smtp) = &inv.notify.smtp {
        if inv.notify.admins.is_empty() {
            eprintln!("{}: notify.admins: mail is configured but nobody to send it to", cli.config.display());
            return EXIT_SETUP;
        }
        match cycle::smtp_config(smtp) {
            Ok(c) => channels.smtp = Some(c),
            Err(e) => {
                eprintln!("{}: notify.smtp.password_file: {e}", cli.config.display());
                return EXIT_SETUP;
            }
        }
    }
    if let Some(w) = &inv.notify.webhook {
        match notify::WebhookConfig::from_file(&w.url_file, w.ca.clone(), w.timeout) {
            Ok(c) => channels.webhook = Some(c),
            Err(e) => {
                eprintln!("{}: notify.webhook.url_file: {e}", cli.config.display());
                return EXIT_SETUP;
            }
        }
    }
    let wanted: Vec<notify::Channel> =
        [(channels.smtp.is_some(), notify::Channel::Mail), (channels.webhook.is_some(), notify::Channel::Webhook)].into_iter().filter_map(|(on, c)| on.then_some(c)).collect();
    if wanted.is_empty() {
        eprintln!("{}: notify: no channel configured (notify.smtp with notify.admins, or notify.webhook)", cli.config.display());
        return EXIT_SETUP;
    }
    let mut messages = Vec::new();
    for channel in &wanted {
        let notice = notify::Notice::Test { at: chrono::Utc::now(), config: cli.config.display().to_string(), channel: channel.to_string() };
        let to = if *channel == notify::Channel::Mail { inv.notify.admins.clone() } else { Vec::new() };
        match templates.notice(&notice, &to) {
            Ok(m) => messages.push((*channel, m)),
            Err(e) => {
                eprintln!("{}: notify.templates_dir: {}", cli.config.display(), cycle::error_chain(&e));
                return EXIT_SETUP;
            }
        }
    }
    let Some(runtime) = new_runtime() else { return EXIT_SETUP };
    let refs: Vec<(notify::Channel, &notify::OutgoingMail)> = messages.iter().map(|(c, m)| (*c, m)).collect();
    let outcomes = notify::send_each(&channels, runtime.handle(), &refs);
    let mut failed = 0;
    for ((channel, m), outcome) in refs.iter().zip(&outcomes) {
        match outcome {
            notify::SendOutcome::Sent if m.to.is_empty() => println!("{channel}: sent"),
            notify::SendOutcome::Sent => println!("{channel}: sent to {}", m.to.join(", ")),
            notify::SendOutcome::Failed(e) => {
                failed += 1;
                println!("{channel}: FAILED: {e}");
            }
            notify::SendOutcome::Deferred => {
                failed += 1;
                println!("{channel}: FAILED: not attempted");
            }
        }
    }
    if failed == 0 { EXIT_OK } else { EXIT_NOT_DELIVERED }
}

fn run(cli: &Cli, opts: CycleOptions, wait: std::time::Duration, push: Option<(&str, &str)>) -> u8 {
    let Some(inv) = usable_inventory(cli) else { return EXIT_SETUP };
    let Some(runtime) = new_runtime() else { return EXIT_SETUP };
    let metrics = push.map(|_| token_bastion::metrics::Metrics::new());
    let bar = progress_bar(&inv, &opts);
    let mut opts = opts;
    opts.observer = Some(cycle::Observer(std::sync::Arc::new(RunObserver { bar: bar.clone(), metrics: metrics.clone() })));
    let outcome = cycle::run_once(&inv, &cli.state_dir, &opts, runtime.handle(), wait);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match outcome {
        Ok(report) => {
            print_report(&report);
            if let (Some((url, job)), Some(metrics)) = (push, &metrics) {
                metrics.record_outcome(&token_bastion::daemon::outcome(&report));
                for s in &report.services {
                    metrics.record_cycle_completed(&s.service, chrono::Utc::now());
                }
                let wanted = std::sync::Arc::new(std::sync::Mutex::new(
                    token_bastion::daemon::destinations(&inv).into_iter().flat_map(|(s, ds)| ds.into_iter().map(move |d| (s.clone(), d))).collect(),
                ));
                metrics.set_held_source(token_bastion::daemon::held_source(cli.state_dir.clone(), wanted));
                metrics.refresh_held();
                if let Err(e) = runtime.block_on(token_bastion::metrics::push(url, job, metrics)) {
                    tracing::error!(url, error = %cycle::error_chain(&e), "cannot push metrics to the Pushgateway");
                }
            }
            if report.all_ok() { EXIT_OK } else { EXIT_NOT_DELIVERED }
        }
        // Another cycle holds the lock: nothing was delivered by this run.
        Err(e @ CycleSetupError::Busy(_)) => {
            eprintln!("error: {e}; nothing was done (waited {})", humantime::format_duration(wait));
            EXIT_NOT_DELIVERED
        }
        Err(e) => {
            eprintln!("error: {}", redact::scrub(&cycle::error_chain(&e)));
            EXIT_SETUP
        }
    }
}

fn daemon(_cli: &Cli, opts: DaemonOptions) -> u8 {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_SETUP;
        }
    };
    let exit = runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        if let Err(e) = forward_signals(tx) {
            eprintln!("error: cannot install signal handlers: {e}");
            return DaemonExit::Setup;
        }
        token_bastion::daemon::run(opts, rx).await
    });
    // A cycle cut off at the hard deadline may still run on a blocking thread (a write that
    // does not return): it must not hold the exit.
    runtime.shutdown_background();
    match exit {
        DaemonExit::Clean => EXIT_OK,
        DaemonExit::Abandoned => EXIT_NOT_DELIVERED,
        DaemonExit::Setup => EXIT_SETUP,
    }
}

/// SIGHUP → reload, SIGTERM/SIGINT → terminate.
fn forward_signals(tx: tokio::sync::mpsc::Sender<Control>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let ctl = tokio::select! {
                _ = hup.recv() => Control::Reload,
                _ = term.recv() => Control::Terminate,
                _ = int.recv() => Control::Terminate,
            };
            if tx.send(ctl).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

fn revoke(cli: &Cli, service: Option<&str>, host: Option<&str>, wait: std::time::Duration) -> u8 {
    let Some(inv) = load_inventory(cli) else { return EXIT_SETUP };
    if let (Some(h), Some(_)) = (host, service)
        && !inv.hosts.contains_key(h) {
            eprintln!("error: no host `{h}` in the inventory");
            return EXIT_SETUP;
        }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_SETUP;
        }
    };
    let (service, outcome) = match (service, host) {
        (Some(service), _) => (service, cycle::revoke(&inv, &cli.state_dir, service, host, runtime.handle(), wait)),
        (None, Some(h)) => (h, cycle::settle_host(&inv, &cli.state_dir, h, runtime.handle(), wait)),
        (None, None) => {
            eprintln!("error: revoke needs --service, --host or both");
            return EXIT_SETUP;
        }
    };
    match outcome {
        Ok(report) => {
            for (hash, r) in &report.revoked {
                match r {
                    Ok(()) => println!("{service}: Vault token sha256={hash} revoked"),
                    Err(e) => println!("{service}: Vault token sha256={hash} NOT REVOKED: {}", redact::scrub(&e.to_string())),
                }
            }
            for (dest, h, r) in &report.removed {
                match r {
                    Ok(()) => println!("{service}: {dest} removed from {h}"),
                    Err(e) => println!("{service}: {dest} on {h} NOT REMOVED: {}", redact::scrub(&e.to_string())),
                }
            }
            if report.revoked.is_empty() && report.removed.is_empty() {
                println!("{service}: nothing held and nothing recorded as delivered");
            }
            if let Some(r) = &report.redelivered {
                println!("re-delivering {service} to its other destinations:");
                print_report(r);
            }
            if report.all_ok() { EXIT_OK } else { EXIT_NOT_DELIVERED }
        }
        Err(e) => drill_not_started(e),
    }
}

/// A drill that could not start: busy (another cycle holds the state directory) or a setup error.
fn drill_not_started(e: CycleSetupError) -> u8 {
    if let CycleSetupError::Busy(_) = e {
        eprintln!("error: {e}; nothing was done");
        return EXIT_NOT_DELIVERED;
    }
    eprintln!("error: {}", redact::scrub(&cycle::error_chain(&e)));
    EXIT_SETUP
}

/// `revoke --service S --idtoken`: the IDToken drill, each step printed.
fn revoke_idtoken(cli: &Cli, service: &str, wait: std::time::Duration) -> u8 {
    let Some(inv) = load_inventory(cli) else { return EXIT_SETUP };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_SETUP;
        }
    };
    match cycle::revoke_idtoken(&inv, &cli.state_dir, service, runtime.handle(), wait) {
        Ok(report) => {
            for (dest, h, r) in &report.removed {
                match r {
                    Ok(()) => println!("{service}: {dest} removed from {h}"),
                    Err(e) => println!("{service}: {dest} on {h} NOT REMOVED: {}", redact::scrub(e)),
                }
            }
            for jti in &report.denied {
                println!("{service}: IDToken jti={jti} denied");
            }
            for (h, r) in &report.configured {
                match r {
                    Ok(()) => println!("{service}: revocation expression installed on {h}, daemons reconfigured"),
                    Err(e) => println!("{service}: revocation expression NOT installed on {h}: {}", redact::scrub(e)),
                }
            }
            if let Some(r) = &report.redelivered {
                println!("minting and distributing a new IDToken for {service}:");
                print_report(r);
            }
            if report.all_ok() { EXIT_OK } else { EXIT_NOT_DELIVERED }
        }
        Err(e) => drill_not_started(e),
    }
}

/// A progress bar over the selected services and the hosts they deliver to, when stderr is a
/// terminal (plain log lines otherwise).
fn progress_bar(inv: &inventory::Inventory, opts: &CycleOptions) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let services: Vec<&inventory::ServiceSpec> =
        inv.services.values().filter(|s| opts.services.is_empty() || opts.services.contains(&s.name)).collect();
    let hosts: std::collections::BTreeSet<&str> = services.iter().flat_map(|s| s.destinations.iter().map(|d| d.host.as_str())).collect();
    let bar = indicatif::ProgressBar::new((services.len() + hosts.len()) as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar.set_message("logging in and validating");
    let _ = PROGRESS.set(bar.clone());
    Some(bar)
}

/// What `run` shows and measures while the cycle goes.
struct RunObserver {
    bar: Option<indicatif::ProgressBar>,
    metrics: Option<token_bastion::metrics::Metrics>,
}

impl cycle::CycleObserver for RunObserver {
    fn broker_request(&self, kind: token_bastion::broker::RequestKind, took: std::time::Duration) {
        if let Some(m) = &self.metrics {
            token_bastion::daemon::MetricsObserver(m.clone()).broker_request(kind, took);
        }
    }

    fn service_done(&self, service: &str, ok: bool) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(format!("{service}: {}", if ok { "tokens valid" } else { "FAILED" }));
        }
    }

    fn host_done(&self, host: &str, ok: bool) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(format!("{host}: {}", if ok { "done" } else { "FAILED" }));
        }
    }
}

fn print_report(report: &RunReport) {
    for s in &report.services {
        match &s.tokens {
            Ok(t) => println!(
                "{}: tokens valid: access {} scopes [{}]; vault {}",
                s.service,
                t.validated.fingerprint,
                t.validated.scopes.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" "),
                t.vault_fingerprint
            ),
            Err(f) => println!("{}: FAILED at {}: {}", s.service, f.stage, redact::scrub(&f.reason)),
        }
        for d in &s.destinations {
            match &d.result {
                Ok(_) => println!("  {} {}", d.id, if report.dry_run { "reachable, host key verified" } else { "delivered" }),
                Err(reason) => println!("  {} NOT DELIVERED: {}", d.id, redact::scrub(reason)),
            }
            if let Some(w) = &d.warning {
                println!("  {} WARNING: {}", d.id, redact::scrub(w));
            }
        }
    }
    for e in &report.state_errors {
        println!("STATE NOT RECORDED: {}", redact::scrub(e));
    }
    if !report.broker_repeats.is_empty() {
        let by_kind: Vec<String> = report.broker_repeats.iter().map(|(k, n)| format!("{} {n}", k.as_str())).collect();
        println!("broker requests repeated (declined with 429/503, or reads unanswered): {}", by_kind.join(", "));
    }
    let total = report.destinations().count();
    let ok = report.destinations().filter(|(_, d)| d.result.is_ok()).count();
    let failed_services = report.services.iter().filter(|s| s.tokens.is_err()).count();
    println!(
        "{}{} of {} services ok, {} of {} destinations {}",
        if report.dry_run { "dry run: " } else { "" },
        report.services.len() - failed_services,
        report.services.len(),
        ok,
        total,
        if report.dry_run { "reachable" } else { "delivered" }
    );
}

/// `status --service S --host H`: 0 ready, 1 not ready, 2 no such service or destination, or
/// no inventory or state to judge by.
fn ready(cli: &Cli, json: bool, service: &str, host: &str) -> u8 {
    let Some(inv) = load_inventory(cli) else {
        eprintln!("status: the inventory is invalid; readiness cannot be judged");
        return EXIT_SETUP;
    };
    let statuses = match StateStore::open(&cli.state_dir).and_then(|s| s.statuses()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    };
    match token_bastion::status::readiness(&inv, &statuses, service, host, chrono::Utc::now()) {
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SETUP
        }
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                println!("{} on {}: {}: {}", r.service, r.host, if r.ready { "ready" } else { "not ready" }, r.reason);
            }
            if r.ready { EXIT_OK } else { EXIT_NOT_DELIVERED }
        }
    }
}

fn status(cli: &Cli, json: bool, tokens: bool) -> u8 {
    // A broken inventory must not hide what the destinations hold: show the recorded state,
    // judged without expiry warnings, and exit 2 for the inventory.
    let inv = load_inventory(cli);
    if inv.is_none() {
        eprintln!("status: the inventory is invalid; showing the recorded state only");
    }
    let store = match StateStore::open(&cli.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    };
    let statuses = match store.statuses() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    };
    let (ledger, holdings) = match store.tokens().and_then(|t| Ok((t, store.holdings()?))) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    };
    let now = chrono::Utc::now();
    let mut rows = token_bastion::status::rows(inv.as_ref(), &statuses, now);
    match store.idtoken_neighbours() {
        Ok(neighbours) => {
            for (service, destination, others) in neighbours {
                if let Some(r) = rows.iter_mut().find(|r| r.service == service && r.destination == destination) {
                    r.other_token_files = others;
                }
            }
        }
        Err(e) => eprintln!("status: {e}"),
    }
    let kept_alive = token_bastion::status::kept_alive(inv.as_ref(), &ledger, &holdings, &statuses);
    let shown = match (json, tokens) {
        (true, false) => serde_json::to_string_pretty(&rows),
        (true, true) => serde_json::to_string_pretty(&serde_json::json!({"tokens": ledger, "holdings": holdings, "kept_alive": kept_alive})),
        (false, false) => Ok(format!("{}{}", token_bastion::status::render_table(&rows, now), token_bastion::status::render_kept_alive(&kept_alive))),
        (false, true) => Ok(format!("{}{}", token_bastion::status::render_ledger(&ledger, &holdings), token_bastion::status::render_kept_alive(&kept_alive))),
    };
    match shown {
        Ok(text) => println!("{}", text.trim_end()),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    }
    if inv.is_none() {
        EXIT_SETUP
    } else if rows.iter().any(|r| r.health.needs_attention()) {
        EXIT_NOT_DELIVERED
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
