//! The cycle benchmark (`./scripts/bench`): N services × H hosts × D credd destinations per
//! service, against a real OpenBao laid out like HTVault and real loopback sshd "schedds" (the
//! integration tests' harness starts them), each host optionally behind a TCP proxy that delays
//! both directions (a WAN round trip; this kernel has no netem).
//!
//! Per service count it measures, in every run: a cold cycle (empty state directory and empty
//! spools: fresh logins, every account directory created), a warm cycle right after it (login
//! tokens reused), then the same files copied by `sftp -b` per host (several hosts at once,
//! `put -f`: fsynced) and by a per-file `scp` loop. It prints Markdown tables of the medians.
//!
//! A cycle that does not deliver everything ends the benchmark with exit status 1. Timings are
//! reported, never judged.

#[path = "../tests/integration/harness/mod.rs"]
#[allow(unused_imports)]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;

use harness::delay_proxy::DelayProxy;
use harness::measure::{self, Measured, RequestKind};
use harness::openbao::JwtSpec;
use harness::sshd::Sshd;
use harness::stack::{ServiceDef, Stack, VAULT_ISSUER};
use harness::{Leaks, product_bin};

/// How long sshd may take to reap a finished connection's processes before its CPU is read.
const REAP_WAIT: Duration = Duration::from_secs(30);
/// Services whose secrets are also searched for in every log afterwards (beyond this the
/// search itself would dominate the run).
const LEAK_CHECK_MAX_SERVICES: usize = 100;

#[derive(Parser, Debug)]
#[command(about = "token-bastion cycle benchmark: real OpenBao and sshd on 127.0.0.1")]
struct Args {
    /// Numbers of services, one row each.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100])]
    services: Vec<usize>,
    /// sshd "schedds".
    #[arg(long, default_value_t = 50)]
    hosts: usize,
    /// credd destinations per service, each on another host.
    #[arg(long, default_value_t = 3)]
    dests: usize,
    /// Milliseconds added in each direction by a proxy in front of every host; 0: direct.
    /// Several values: each is measured.
    #[arg(long, value_delimiter = ',', default_values_t = [0])]
    delay_ms: Vec<u64>,
    /// Runs per row; the tables show medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The most files the `scp` loop copies per run; with more files, its time is the time per
    /// file measured on this many (spread over the hosts) times the number of files.
    #[arg(long, default_value_t = 200)]
    scp_files: usize,
    /// Hosts `sftp -b` works on at once.
    #[arg(long, default_value_t = 8)]
    sftp_hosts: usize,
    /// Leave out the `scp` and `sftp -b` comparisons.
    #[arg(long)]
    no_baselines: bool,
    /// The smoke run: 10 services, 3 hosts, 1 run, a 20-file `scp` sample.
    #[arg(long)]
    quick: bool,
    /// The inventory's `delivery.hosts_at_once`; the product's default when not given.
    #[arg(long)]
    hosts_at_once: Option<usize>,
    /// Runs the product under this command (split at spaces), e.g. `--wrap "heaptrack -o
    /// /tmp/tb"`: for profiling. The CPU time and peak RSS reported are then the wrapper's.
    #[arg(long)]
    wrap: Option<String>,
    /// Keep the product's output and the copy jobs' logs here (default: the stack's temporary
    /// directory, removed at the end).
    #[arg(long)]
    logs: Option<PathBuf>,
}

impl Args {
    fn resolved(mut self) -> anyhow::Result<Args> {
        if self.quick {
            self.services = vec![10];
            self.hosts = 3;
            self.runs = 1;
            self.scp_files = self.scp_files.min(20);
        }
        self.services.sort_unstable();
        self.services.dedup();
        self.delay_ms.sort_unstable();
        self.delay_ms.dedup();
        ensure!(self.hosts >= 1 && self.dests >= 1, "--hosts and --dests must be at least 1");
        ensure!(self.dests <= self.hosts, "--dests {} is more than --hosts {}: each destination of a service is on another host", self.dests, self.hosts);
        ensure!(self.services.first().is_some_and(|&n| n >= 1), "--services needs at least one count above 0");
        ensure!(self.runs >= 1 && self.sftp_hosts >= 1 && self.scp_files >= 1, "--runs, --sftp-hosts and --scp-files must be at least 1");
        Ok(self)
    }
}

fn main() -> ExitCode {
    let args = match Args::parse().resolved() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The benchmark's own view of a service: where its two credd files land on each of its hosts.
struct Service {
    account: String,
    oauth_service: String,
    hosts: Vec<String>,
}

/// One file of the comparison copies: the delivered file as source, a twin path as target.
struct CopyJob {
    host: String,
    src: PathBuf,
    dst: PathBuf,
}

fn bench(args: &Args) -> anyhow::Result<()> {
    let leaks = Leaks::default();
    let machine = machine_note();
    eprintln!("{machine}");
    eprintln!("starting OpenBao and {} sshd …", args.hosts);
    let mut stack = Stack::new(&leaks);
    stack.bao.use_http();
    if let Some(n) = args.hosts_at_once {
        stack.sections_extra = format!("delivery:\n  hosts_at_once: {n}\n");
    }
    start_hosts(&mut stack, args.hosts);
    let direct: BTreeMap<String, (u16, PathBuf)> = stack.hosts.iter().map(|(n, h)| (n.clone(), (h.port, h.known_hosts.clone()))).collect();
    let proxies = start_proxies(&stack, &args.delay_ms);
    let logs = args.logs.clone().unwrap_or_else(|| stack.root().join("bench-logs"));
    std::fs::create_dir_all(&logs)?;
    leaks.path(&logs);

    let host_names: Vec<String> = stack.hosts.keys().cloned().collect();
    let mut services: Vec<Service> = Vec::new();
    let mut rows = Vec::new();
    for &n in &args.services {
        let setup = Instant::now();
        add_services(&mut stack, &mut services, n, &host_names, args.dests);
        eprintln!("{n} services set up in OpenBao ({:.1} s)", setup.elapsed().as_secs_f64());
        for &delay in &args.delay_ms {
            route(&mut stack, delay, &direct, &proxies);
            stack.write_inventory();
            let mut runs = Vec::new();
            for r in 1..=args.runs {
                let label = format!("{n} services, {delay} ms, run {r}/{}", args.runs);
                let run = one_run(&stack, &services, args, &logs, &label)?;
                eprintln!("{label}: {}", run.summary());
                runs.push(run);
            }
            rows.push(Row { services: n, delay_ms: delay, runs });
        }
    }
    if args.services.last().is_some_and(|&n| n <= LEAK_CHECK_MAX_SERVICES) {
        leaks.assert_clean();
        eprintln!("no minted secret appears in the product's output, state, or the sshd logs");
    }
    print!("{}", report(args, &rows, &machine));
    Ok(())
}

/// Starts the sshd schedds `schedd1`… a few at a time.
fn start_hosts(stack: &mut Stack, n: usize) {
    let root = stack.root().to_path_buf();
    let leaks = stack.leaks;
    let names: Vec<String> = (1..=n).map(|i| format!("schedd{i}")).collect();
    for chunk in names.chunks(4) {
        let started: Vec<(String, Sshd)> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|name| {
                    let dir = root.join(name);
                    s.spawn(move || {
                        std::fs::create_dir_all(&dir).unwrap();
                        (name.clone(), Sshd::start_quiet(&dir, leaks))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("sshd start")).collect()
        });
        stack.hosts.extend(started);
    }
}

/// Per delay above 0, a proxy in front of every host and a known_hosts file for its port.
fn start_proxies(stack: &Stack, delays: &[u64]) -> BTreeMap<u64, BTreeMap<String, (DelayProxy, PathBuf)>> {
    let mut all = BTreeMap::new();
    for &delay in delays.iter().filter(|&&d| d > 0) {
        let mut per_host = BTreeMap::new();
        for (name, h) in &stack.hosts {
            let proxy = DelayProxy::start(h.port, Duration::from_millis(delay));
            let line = h.known_hosts_line().replacen(&format!("]:{} ", h.port), &format!("]:{} ", proxy.port), 1);
            let known_hosts = h.dir.join(format!("known_hosts.delay{delay}"));
            std::fs::write(&known_hosts, line).unwrap();
            per_host.insert(name.clone(), (proxy, known_hosts));
        }
        all.insert(delay, per_host);
    }
    all
}

/// Points every host of the inventory (and of the comparison copies) at its sshd directly, or
/// at the proxy for `delay`.
fn route(stack: &mut Stack, delay: u64, direct: &BTreeMap<String, (u16, PathBuf)>, proxies: &BTreeMap<u64, BTreeMap<String, (DelayProxy, PathBuf)>>) {
    for (name, h) in stack.hosts.iter_mut() {
        let (port, known_hosts) = match proxies.get(&delay) {
            Some(per_host) => (per_host[name].0.port, per_host[name].1.clone()),
            None => direct[name].clone(),
        };
        h.port = port;
        h.known_hosts = known_hosts;
    }
}

/// Adds services up to `n`: an AppRole each and an access token where the broker hands it out.
/// Service `i` has its destinations on `dests` consecutive hosts (round robin), so every host
/// carries the same load.
fn add_services(stack: &mut Stack, services: &mut Vec<Service>, n: usize, hosts: &[String], dests: usize) {
    let first = services.len();
    let mut defs = Vec::new();
    for i in first..n {
        let name = format!("s{i:05}");
        let mut def = ServiceDef::new(&name, &["storage.read:/", "compute.create"]);
        // AppRole logins last 1 h here: reuse them in the warm cycle.
        def.extra = "    renew_before: 20m\n".into();
        let on: Vec<String> = (0..dests).map(|j| hosts[(i * dests + j) % hosts.len()].clone()).collect();
        stack.destinations.insert(name.clone(), format!("    destinations:\n      - credd:\n          hosts: [{}]\n", on.join(", ")));
        services.push(Service { account: def.account.clone(), oauth_service: format!("{VAULT_ISSUER}_{}", def.role), hosts: on });
        stack.defs.insert(name, def.clone());
        defs.push(def);
    }
    let spec = JwtSpec { ttl: Duration::from_secs(12 * 3600), ..JwtSpec::default() };
    let next = AtomicUsize::new(0);
    let created = Mutex::new(Vec::new());
    let shared: &Stack = stack;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while let Some(def) = defs.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let creds = shared.bao.add_service(&def.name, VAULT_ISSUER, &def.account, &def.role);
                    shared.put_token(&def.name, &spec);
                    created.lock().unwrap().push(creds);
                }
            });
        }
    });
    for creds in created.into_inner().unwrap() {
        stack.creds.insert(creds.name.clone(), creds);
    }
}

/// One cycle of the product as measured.
#[derive(Debug, Clone)]
struct Cycle {
    run: Measured,
    deliveries: usize,
    broker: BTreeMap<RequestKind, usize>,
    /// SSH logins per host that has destinations: (fewest, most).
    logins: (usize, usize),
    sshd_cpu: Duration,
    bao_cpu: Duration,
}

impl Cycle {
    fn broker_requests(&self) -> usize {
        self.broker.iter().filter(|(k, _)| k.is_broker()).map(|(_, n)| n).sum()
    }
}

/// One of the comparison copies as measured.
#[derive(Debug, Clone)]
struct Copied {
    /// Files copied, and how many the whole set has.
    files: usize,
    total_files: usize,
    wall: Duration,
    sshd_cpu: Duration,
}

impl Copied {
    /// The time for the whole set: measured, or time per file × files.
    fn whole(&self) -> Duration {
        self.wall.mul_f64(self.total_files as f64 / self.files as f64)
    }
}

#[derive(Debug, Clone)]
struct Run {
    cold: Cycle,
    warm: Cycle,
    sftp: Option<Copied>,
    scp: Option<Copied>,
}

impl Run {
    fn summary(&self) -> String {
        let mut s = format!("cold {}, warm {}", secs(self.cold.run.wall), secs(self.warm.run.wall));
        if let Some(c) = &self.sftp {
            write!(s, ", sftp -b {}", secs(c.wall)).unwrap();
        }
        if let Some(c) = &self.scp {
            write!(s, ", scp loop {} ({} of {} files)", secs(c.whole()), c.files, c.total_files).unwrap();
        }
        s
    }
}

struct Row {
    services: usize,
    delay_ms: u64,
    runs: Vec<Run>,
}

fn one_run(stack: &Stack, services: &[Service], args: &Args, logs: &Path, label: &str) -> anyhow::Result<Run> {
    reset(stack)?;
    let expected = services.len() * args.dests;
    let used: BTreeSet<&str> = services.iter().flat_map(|s| s.hosts.iter().map(String::as_str)).collect();
    let tag = label.replace([' ', ',', '/'], "_");
    let wrap: Vec<&str> = args.wrap.as_deref().map(|w| w.split_whitespace().collect()).unwrap_or_default();
    let cold = cycle(stack, &used, expected, &wrap, &logs.join(format!("{tag}_cold")), &format!("{label}: cold cycle"))?;
    let warm = cycle(stack, &used, expected, &wrap, &logs.join(format!("{tag}_warm")), &format!("{label}: warm cycle"))?;
    let (mut sftp, mut scp) = (None, None);
    if !args.no_baselines {
        let copies = copies(stack, services)?;
        sftp = Some(sftp_batches(stack, &copies, args.sftp_hosts, &logs.join(format!("{tag}_sftp")))?);
        scp = Some(scp_loop(stack, &copies, args.scp_files, &logs.join(format!("{tag}_scp")))?);
    }
    Ok(Run { cold, warm, sftp, scp })
}

/// Empty state directory (no kept login tokens, no records) and empty spools.
fn reset(stack: &Stack) -> anyhow::Result<()> {
    if stack.state_dir.exists() {
        std::fs::remove_dir_all(&stack.state_dir).with_context(|| format!("remove {}", stack.state_dir.display()))?;
    }
    for h in stack.hosts.values() {
        for entry in std::fs::read_dir(&h.spool)? {
            let path = entry?.path();
            if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// What every sshd and OpenBao have spent, and every sshd's logins so far.
struct PeersNow {
    sshd_cpu: Duration,
    bao_cpu: Duration,
    logins: BTreeMap<String, usize>,
}

/// Reads the peers' counters once every sshd has reaped the processes of its closed
/// connections (their CPU reaches the listener's only then).
fn peers_now(stack: &Stack) -> PeersNow {
    let mut sshd_cpu = Duration::ZERO;
    let mut logins = BTreeMap::new();
    for (name, h) in &stack.hosts {
        if !measure::wait_for_no_children(h.pid(), REAP_WAIT) {
            eprintln!("warning: {name}'s sshd still has connection processes after {REAP_WAIT:?}; its CPU time is short of theirs");
        }
        sshd_cpu += measure::process_cpu(h.pid(), true).unwrap_or_default();
        logins.insert(name.clone(), measure::accepted_logins(&h.log_text()));
    }
    PeersNow { sshd_cpu, bao_cpu: measure::process_cpu(stack.bao.pid(), false).unwrap_or_default(), logins }
}

/// Runs `token-bastion run` once and checks that it delivered all `expected` destinations.
/// SSH logins are counted on the `used` hosts (those with destinations).
fn cycle(stack: &Stack, used: &BTreeSet<&str>, expected: usize, wrap: &[&str], log: &Path, label: &str) -> anyhow::Result<Cycle> {
    let audit_path = stack.bao.audit_log_path();
    let audit_at = std::fs::metadata(&audit_path).map(|m| m.len()).unwrap_or(0);
    let before = peers_now(stack);
    let (stdout, stderr) = (log.with_extension("stdout"), log.with_extension("stderr"));
    let mut cmd = match wrap.split_first() {
        Some((wrapper, wrapper_args)) => {
            let mut c = Command::new(wrapper);
            c.args(wrapper_args).arg(product_bin());
            c
        }
        None => Command::new(product_bin()),
    };
    cmd.arg("--config").arg(&stack.config).arg("--state-dir").arg(&stack.state_dir).arg("run");
    // As its systemd unit runs it (ansible/roles/token_bastion/templates/token-bastion.service.j2).
    cmd.env("MALLOC_ARENA_MAX", "2");
    cmd.env("NO_COLOR", "1").env_remove("RUST_LOG").stdin(Stdio::null()).stdout(File::create(&stdout)?).stderr(File::create(&stderr)?);
    let run = measure::run_measured(&mut cmd).with_context(|| format!("start {}", product_bin().display()))?;
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    let summary = out.lines().last().unwrap_or("(no output)");
    let wanted = format!("{expected} of {expected} destinations delivered");
    if !run.status.success() || !summary.contains(&wanted) {
        let failures: Vec<&str> = out.lines().filter(|l| l.contains("NOT DELIVERED") || l.contains("FAILED")).take(10).collect();
        bail!(
            "{label}: exit status {:?}, `{summary}` (wanted {wanted})\n{}\noutput: {} and {}",
            run.status.code(),
            failures.join("\n"),
            stdout.display(),
            stderr.display()
        );
    }
    let after = peers_now(stack);
    let (audit, _) = measure::read_since(&audit_path, audit_at);
    let per_host: Vec<usize> = used.iter().map(|h| after.logins[*h] - before.logins[*h]).collect();
    Ok(Cycle {
        run,
        deliveries: expected,
        broker: measure::audit_requests_by_kind(&audit),
        logins: (per_host.iter().copied().min().unwrap_or(0), per_host.iter().copied().max().unwrap_or(0)),
        sshd_cpu: after.sshd_cpu.saturating_sub(before.sshd_cpu),
        bao_cpu: after.bao_cpu.saturating_sub(before.bao_cpu),
    })
}

/// Every file the last cycle delivered, with a twin path under `<host dir>/copies/` whose
/// directories exist (made here, outside the timing), so both copy methods write files only.
fn copies(stack: &Stack, services: &[Service]) -> anyhow::Result<Vec<CopyJob>> {
    let mut all = Vec::new();
    for s in services {
        for host in &s.hosts {
            let h = &stack.hosts[host];
            let dst_dir = h.dir.join("copies").join(&s.account);
            std::fs::create_dir_all(&dst_dir)?;
            for ext in ["top", "use"] {
                let file = format!("{}.{ext}", s.oauth_service);
                all.push(CopyJob { host: host.clone(), src: h.spool.join(&s.account).join(&file), dst: dst_dir.join(&file) });
            }
        }
    }
    Ok(all)
}

/// The ssh options both copy methods use to reach `host` as the product does.
fn ssh_options(h: &Sshd) -> Vec<String> {
    vec![
        "-i".into(),
        h.client_key.display().to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", h.known_hosts.display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-P".into(),
        h.port.to_string(),
    ]
}

/// `sftp -b` per host, `put -f` (fsync) of each of its files, `hosts_at_once` hosts at a time.
fn sftp_batches(stack: &Stack, copies: &[CopyJob], hosts_at_once: usize, log: &Path) -> anyhow::Result<Copied> {
    let mut batches: BTreeMap<&str, String> = BTreeMap::new();
    for c in copies {
        writeln!(batches.entry(c.host.as_str()).or_default(), "put -f \"{}\" \"{}\"", c.src.display(), c.dst.display()).unwrap();
    }
    let mut jobs = Vec::new();
    for (host, batch) in &batches {
        let file = log.with_extension(format!("{host}.batch"));
        std::fs::write(&file, batch)?;
        jobs.push((*host, file));
    }
    let before = peers_now(stack);
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..hosts_at_once.min(jobs.len()) {
            s.spawn(|| {
                while let Some((host, batch)) = jobs.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let h = &stack.hosts[*host];
                    let out = log.with_extension(format!("{host}.out"));
                    let mut cmd = Command::new("sftp");
                    cmd.arg("-b").arg(batch).args(ssh_options(h)).arg("root@127.0.0.1").stdin(Stdio::null());
                    let result = File::create(&out).and_then(|f| {
                        cmd.stdout(f.try_clone()?).stderr(f);
                        measure::run_measured(&mut cmd)
                    });
                    if !result.is_ok_and(|m| m.status.success()) {
                        failed.lock().unwrap().push(format!("{host} (see {})", out.display()));
                    }
                }
            });
        }
    });
    let wall = started.elapsed();
    let failed = failed.into_inner().unwrap();
    ensure!(failed.is_empty(), "sftp -b failed on {}", failed.join(", "));
    let after = peers_now(stack);
    Ok(Copied { files: copies.len(), total_files: copies.len(), wall, sshd_cpu: after.sshd_cpu.saturating_sub(before.sshd_cpu) })
}

/// One `scp` per file, one after another, over at most `max_files` files taken from every host
/// in turn.
fn scp_loop(stack: &Stack, copies: &[CopyJob], max_files: usize, log: &Path) -> anyhow::Result<Copied> {
    let mut by_host: BTreeMap<&str, Vec<&CopyJob>> = BTreeMap::new();
    for c in copies {
        by_host.entry(c.host.as_str()).or_default().push(c);
    }
    let mut sample: Vec<&CopyJob> = Vec::new();
    for i in 0.. {
        let before = sample.len();
        sample.extend(by_host.values().filter_map(|files| files.get(i)));
        if sample.len() == before || sample.len() >= max_files {
            break;
        }
    }
    sample.truncate(max_files);
    let out = log.with_extension("out");
    let out_file = File::create(&out)?;
    let before = peers_now(stack);
    let started = Instant::now();
    for c in &sample {
        let h = &stack.hosts[&c.host];
        let mut cmd = Command::new("scp");
        cmd.arg("-q").args(ssh_options(h)).arg(&c.src).arg(format!("root@127.0.0.1:{}", c.dst.display()));
        cmd.stdin(Stdio::null()).stdout(out_file.try_clone()?).stderr(out_file.try_clone()?);
        let m = measure::run_measured(&mut cmd)?;
        ensure!(m.status.success(), "scp to {} failed (see {})", c.host, out.display());
    }
    let wall = started.elapsed();
    let after = peers_now(stack);
    Ok(Copied { files: sample.len(), total_files: copies.len(), wall, sshd_cpu: after.sshd_cpu.saturating_sub(before.sshd_cpu) })
}

// ---- report ----

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn med(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

fn secs(d: Duration) -> String {
    fmt_secs(d.as_secs_f64())
}

fn fmt_secs(s: f64) -> String {
    if s >= 100.0 { format!("{s:.0} s") } else if s >= 10.0 { format!("{s:.1} s") } else { format!("{s:.2} s") }
}

fn ms(s: f64) -> String {
    let ms = s * 1000.0;
    if ms >= 10.0 { format!("{ms:.1} ms") } else { format!("{ms:.2} ms") }
}

fn report(args: &Args, rows: &[Row], machine: &str) -> String {
    let mut t = String::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    writeln!(t, "\n{machine}; load average {} at the end", load.join(" ")).unwrap();
    writeln!(
        t,
        "{} hosts, {} credd destinations per service (2 files each), {} hosts at once; medians of {} run(s).\n",
        args.hosts,
        args.dests,
        args.hosts_at_once.map_or_else(|| format!("{} (the default)", token_bastion::inventory::DeliverySpec::DEFAULT_HOSTS_AT_ONCE), |n| n.to_string()),
        args.runs
    )
    .unwrap();
    writeln!(t, "| services | delay each way | cold cycle | warm cycle | warm vs 0 ms | deliveries/s (warm) | time per delivery (warm) | broker requests per service, cold / warm | SSH logins per host, cold / warm | token-bastion CPU per delivery, cold / warm | sshd CPU per file, cold / warm | OpenBao CPU, cold / warm | peak RSS, cold / warm |").unwrap();
    writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for row in rows {
        let r = &row.runs;
        let n = row.services as f64;
        let deliveries = r[0].warm.deliveries as f64;
        let files = deliveries * 2.0;
        let cold = med(r, |x| x.cold.run.wall.as_secs_f64());
        let warm = med(r, |x| x.warm.run.wall.as_secs_f64());
        let vs = rows
            .iter()
            .find(|o| o.services == row.services && o.delay_ms == 0)
            .filter(|_| row.delay_ms > 0)
            .map(|o| format!("{:.2}×", warm / med(&o.runs, |x| x.warm.run.wall.as_secs_f64())))
            .unwrap_or_else(|| "—".into());
        let logins = |c: &Cycle| if c.logins.0 == c.logins.1 { c.logins.1.to_string() } else { format!("{}–{}", c.logins.0, c.logins.1) };
        writeln!(
            t,
            "| {} | {} ms | {} | {} | {} | {:.0} | {} | {:.1} / {:.1} | {} / {} | {} / {} | {} / {} | {} / {} | {:.0} / {:.0} MiB |",
            row.services,
            row.delay_ms,
            fmt_secs(cold),
            fmt_secs(warm),
            vs,
            deliveries / warm,
            ms(warm / deliveries),
            med(r, |x| x.cold.broker_requests() as f64) / n,
            med(r, |x| x.warm.broker_requests() as f64) / n,
            logins(&r[r.len() / 2].cold),
            logins(&r[r.len() / 2].warm),
            ms(med(r, |x| x.cold.run.cpu.as_secs_f64()) / deliveries),
            ms(med(r, |x| x.warm.run.cpu.as_secs_f64()) / deliveries),
            ms(med(r, |x| x.cold.sshd_cpu.as_secs_f64()) / files),
            ms(med(r, |x| x.warm.sshd_cpu.as_secs_f64()) / files),
            fmt_secs(med(r, |x| x.cold.bao_cpu.as_secs_f64())),
            fmt_secs(med(r, |x| x.warm.bao_cpu.as_secs_f64())),
            med(r, |x| x.cold.run.max_rss_kib as f64) / 1024.0,
            med(r, |x| x.warm.run.max_rss_kib as f64) / 1024.0,
        )
        .unwrap();
    }

    writeln!(t, "\nBroker requests by kind (cold / warm, whole cycle):\n").unwrap();
    writeln!(t, "| services | delay each way | requests |").unwrap();
    writeln!(t, "|---:|---:|---|").unwrap();
    for row in rows {
        let run = &row.runs[row.runs.len() / 2];
        let mut kinds: Vec<RequestKind> = run.cold.broker.keys().chain(run.warm.broker.keys()).copied().collect();
        kinds.sort();
        kinds.dedup();
        let parts: Vec<String> = kinds
            .iter()
            .map(|k| format!("{} {} / {}", k.name(), run.cold.broker.get(k).unwrap_or(&0), run.warm.broker.get(k).unwrap_or(&0)))
            .collect();
        writeln!(t, "| {} | {} ms | {} |", row.services, row.delay_ms, parts.join(", ")).unwrap();
    }

    if !args.no_baselines {
        writeln!(t, "\nThe same files by OpenSSH's own clients, in the same runs (into twin directories that exist already):\n").unwrap();
        writeln!(t, "| services | delay each way | files | token-bastion, warm | `sftp -b`, {} hosts at once, `put -f` | per-file `scp` loop | `sftp -b` ÷ token-bastion | `scp` loop ÷ token-bastion | sshd CPU per file: token-bastion / `sftp -b` / `scp` |", args.sftp_hosts).unwrap();
        writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
        for row in rows {
            let r = &row.runs;
            let warm = med(r, |x| x.warm.run.wall.as_secs_f64());
            let sftp = med(r, |x| x.sftp.as_ref().unwrap().wall.as_secs_f64());
            let scp = med(r, |x| x.scp.as_ref().unwrap().whole().as_secs_f64());
            let scp_run = r[0].scp.as_ref().unwrap();
            let files = scp_run.total_files as f64;
            let scp_note = if scp_run.files < scp_run.total_files { format!(" (from {} files)", scp_run.files) } else { String::new() };
            writeln!(
                t,
                "| {} | {} ms | {} | {} | {} | {}{} | {:.2} | {:.1} | {} / {} / {} |",
                row.services,
                row.delay_ms,
                scp_run.total_files,
                fmt_secs(warm),
                fmt_secs(sftp),
                fmt_secs(scp),
                scp_note,
                sftp / warm,
                scp / warm,
                ms(med(r, |x| x.warm.sshd_cpu.as_secs_f64()) / files),
                ms(med(r, |x| x.sftp.as_ref().unwrap().sshd_cpu.as_secs_f64()) / files),
                ms(med(r, |x| x.scp.as_ref().unwrap().sshd_cpu.as_secs_f64() / x.scp.as_ref().unwrap().files as f64)),
            )
            .unwrap();
        }
    }
    t
}

/// The machine and its load, for the report: the numbers mean little without them.
fn machine_note() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("unknown CPU").trim().to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let ssh = Command::new("ssh").arg("-V").output().map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_default();
    let build = if cfg!(debug_assertions) { "debug build (numbers not representative)" } else { "release build" };
    format!("Machine: {model}, {cores} cores, load average {} at start; {ssh}; token-bastion {build} {}", load.join(" "), product_bin().display())
}
