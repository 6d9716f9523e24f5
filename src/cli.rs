//! Command-line arguments: raw values as clap parses them. `main` turns them into the settings
//! a command needs; nothing else reads them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "token-bastion", version, about = "Fetch, validate and deliver WLCG tokens to HTCondor schedds")]
pub struct Cli {
    /// The inventory.
    #[arg(long, global = true, env = "TOKEN_BASTION_CONFIG", default_value = "/etc/token-bastion/services.yaml")]
    pub config: PathBuf,

    /// Where state (SQLite), kept Vault tokens and the cycle lock live.
    #[arg(long, global = true, env = "TOKEN_BASTION_STATE_DIR", default_value = "/var/lib/token-bastion")]
    pub state_dir: PathBuf,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, env = "TOKEN_BASTION_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// More log detail (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the inventory; errors as file:line:col: field: message. Exit 0 valid, 2 not.
    Check {
        /// Also fail on files the inventory names that do not exist (use on the bastion host).
        #[arg(long)]
        strict: bool,
        /// Also connect to every host with credd destinations (host key verified, nothing
        /// written), read its credmon settings with `condor_config_val` and report every credd
        /// name that schedd's credmon would ignore.
        #[arg(long)]
        remote: bool,
    },
    /// Run one cycle now: fetch, validate and deliver for all services or the named ones.
    Run {
        /// Only this service (repeatable).
        #[arg(long = "service", value_name = "NAME")]
        services: Vec<String>,
        /// Log in, fetch and validate, connect to every host and verify its host key; write
        /// nothing remotely.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for a cycle already running on this state directory (e.g. the
        /// daemon's) before giving up; 0 refuses at once.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// After the cycle, push its metrics to this Prometheus Pushgateway (e.g.
        /// http://pushgateway:9091); a failed push is logged, never fails the run.
        #[arg(long, value_name = "URL")]
        pushgateway: Option<String>,
        /// Job name for the Pushgateway.
        #[arg(long, value_name = "NAME", default_value = "token-bastion")]
        push_job: String,
    },
    /// The incident drill: remove a service's credentials from its destinations (or one host's)
    /// and revoke every Vault token the bastion holds for it. With `--host` alone: revoke the
    /// tokens that only that host may still hold (an unreachable or removed schedd).
    Revoke {
        /// The service (also one already removed from the inventory).
        #[arg(long, value_name = "NAME", required_unless_present = "host")]
        service: Option<String>,
        /// With `--service`: only this host (a compromised schedd); the service's other
        /// destinations get fresh tokens from a new login right away. Alone: settle the tokens
        /// only this host keeps alive (`status` lists them); also a host no longer in the
        /// inventory.
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// With `--service`: the IDToken drill instead. Remove the service's IDToken files, deny
        /// every recorded token and any for its identity issued before now on the daemons that
        /// accept it (`SEC_TOKEN_REVOCATION_EXPR` in config.d, then `condor_reconfig`), then mint
        /// and distribute a new one.
        #[arg(long, requires = "service", conflicts_with = "host")]
        idtoken: bool,
        /// How long to wait for a cycle already running on this state directory.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Run cycles on each service's schedule until SIGTERM/SIGINT; SIGHUP reloads the inventory.
    Daemon {
        /// Where /metrics and /healthz are served.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
        metrics_listen: std::net::SocketAddr,
        /// Serve no metrics endpoint.
        #[arg(long)]
        no_metrics: bool,
        /// How long a cycle in flight may take to finish after SIGTERM. Then nothing more of it
        /// starts and writes not yet renamed are abandoned; 10 s later the daemon exits even
        /// if a write is still running.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Upper bound of the per-service delay after a schedule fires (spreads broker load).
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
        splay_max: std::time::Duration,
        /// Services due within this window run in one cycle (one SSH session per host).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        window: std::time::Duration,
    },
    /// Send one test message through every configured channel (mail to notify.admins, the
    /// webhook) and say which worked. Exit 0 all worked, 1 some failed, 2 configuration error.
    Notify {
        /// Send the test message (the only action).
        #[arg(long, required = true)]
        test: bool,
    },
    /// Per service and destination: last success, token expiry, consecutive failures; and the
    /// Vault tokens only absent destinations keep alive.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The token ledger instead: every Vault token, its state and where it may be held.
        #[arg(long, conflicts_with = "service")]
        tokens: bool,
        /// With `--host`: is this service ready on that host? Exit 0 only when each of its
        /// destinations there holds a credential with more than the service's minimum left and,
        /// for a credd destination, a credmon seen refreshing it.
        #[arg(long, value_name = "NAME", requires = "host")]
        service: Option<String>,
        /// The host (inventory name) `--service` is asked about.
        #[arg(long, value_name = "HOST", requires = "service")]
        host: Option<String>,
    },
}
