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
use token_bastion::cycle::{self, CycleOptions, RunReport};
use token_bastion::inventory::{self, InventoryError};

const EXIT_OK: u8 = 0;
const EXIT_NOT_DELIVERED: u8 = 1;
const EXIT_SETUP: u8 = 2;

fn init_tracing(cli: &Cli) {
    let default = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.with_ansi(std::env::var_os("NO_COLOR").is_none()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    ExitCode::from(match &cli.command {
        Command::Check { strict } => check(&cli, *strict),
        Command::Run { services, dry_run } => run(&cli, CycleOptions { services: services.clone(), dry_run: *dry_run, state_dir: cli.state_dir.clone() }),
        Command::Status { .. } => {
            eprintln!("status: no state has been recorded yet (delivery is not enabled in this build)");
            EXIT_SETUP
        }
    })
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

fn check(cli: &Cli, strict: bool) -> u8 {
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
    let destinations: usize = inv.services.values().map(|s| s.destinations.len()).sum();
    println!(
        "{}: OK ({} services, {} hosts, {} destinations{})",
        cli.config.display(),
        inv.services.len(),
        inv.hosts.len(),
        destinations,
        if warnings.is_empty() { String::new() } else { format!(", {} warning(s)", warnings.len()) }
    );
    EXIT_OK
}

fn run(cli: &Cli, opts: CycleOptions) -> u8 {
    let Some(inv) = load_inventory(cli) else { return EXIT_SETUP };
    let runtime = match tokio::runtime::Runtime::new().context("cannot start the async runtime") {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e:#}");
            return EXIT_SETUP;
        }
    };
    match runtime.block_on(cycle::run_cycle(&inv, &opts)) {
        Ok(report) => {
            print_report(&report);
            if report.all_ok() { EXIT_OK } else { EXIT_NOT_DELIVERED }
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SETUP
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
            Err(f) => println!("{}: FAILED at {}: {}", s.service, f.stage, f.reason),
        }
    }
    let failed = report.services.iter().filter(|s| s.tokens.is_err()).count();
    println!(
        "{}{} of {} services ok",
        if report.dry_run { "dry run: " } else { "" },
        report.services.len() - failed,
        report.services.len()
    );
}
