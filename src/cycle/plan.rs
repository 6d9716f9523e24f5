//! From validated tokens to one plan per host, and the plans carried out: every host on its own
//! blocking thread (libssh2 is blocking), at most `delivery.hosts_at_once` at a time, each
//! service × destination's result mapped back from its files.
//!
//! Delivery overlaps the fetching: a host's turn starts while services are still fetched (its
//! connection, host-key check, account ids and credmon probe need the inventory only, see
//! [`opening`]), and its plan is made and pushed on that session as soon as every service with
//! a destination there is ready. Hosts take their places in the order their services are
//! expected to be ready.
//!
//! Around each host's push the ledger is told, from that host's thread: before it, what every
//! Vault-token file may hold afterwards (no intent recorded, nothing written); after it, how
//! each ended. An outcome that cannot be recorded is handed back to be retried.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use super::ledger::{found_at, needs_read_back, settle_file, Landing, Ledger};
use super::{access_request, error_chain, handle_access_request, CredmonReport, Ctx, DestinationKind, FileContent, Obtained};
use crate::credd_names;
use crate::credmon::{self, CredmonCheck, CredmonState, Rules};
use crate::deliver::{self, CreddContents, DeliverError, HostOutcome, HostPlan, HostTarget, Opened, Opening, RemoteFile, TopFile};
use crate::inventory::{HostSpec, Owner as InvOwner, ServiceSpec};
use crate::secret::Secret;
use crate::state::{Delivered, HoldState, Intent, RunId, Settled, StateError};

/// Results keyed by (service, destination id).
pub(super) type Results = BTreeMap<(String, String), Result<Delivered, String>>;

/// Warnings about destinations, keyed by (service, destination id).
pub(super) type Warnings = BTreeMap<(String, String), String>;

/// What was seen of credd destinations' credmons, keyed by (service, destination id).
pub(super) type Credmons = BTreeMap<(String, String), CredmonReport>;

/// A file's id in a host plan: the service, the destination and the file's role there.
fn file_id(service: &str, destination: &str, part: &str) -> String {
    format!("{service}\u{1f}{destination}\u{1f}{part}")
}

fn split_file_id(id: &str) -> Option<(&str, &str)> {
    let mut parts = id.split('\u{1f}');
    Some((parts.next()?, parts.next()?))
}

/// The directory a file destination's remote-write checks start from: the longest of the
/// host's `file_roots` it lies under (`check` guarantees one for every configured path), else,
/// for a path recorded before the roots changed, the file's own directory.
pub(super) fn file_root(host: &HostSpec, path: &str) -> String {
    crate::inventory::file_root_for(host, path).map(str::to_string).unwrap_or_else(|| match path.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((dir, _)) => dir.to_string(),
    })
}

pub(super) fn owner(o: &InvOwner) -> deliver::Owner {
    deliver::Owner { user: o.user.clone(), group: o.group.clone().unwrap_or_default() }
}

/// A file that carries a Vault token, and what the ledger is told about it.
struct Tracked {
    file_id: String,
    intent: Intent,
}

/// Every host's plan and what each destination will hold once its files land; destinations
/// that cannot be planned get their failure at once.
struct Plans {
    hosts: BTreeMap<String, HostPlan>,
    /// Per host, the files that carry a Vault token (none in a dry run).
    tracked: BTreeMap<String, Vec<Tracked>>,
    will_hold: BTreeMap<(String, String), Delivered>,
    failed: Results,
    /// `.top` paths expected to be there still, by host and path: whose they are.
    expected: BTreeMap<(String, String), (String, String)>,
}

/// The plan of `only` (a host's name) from the services with destinations there.
fn plan_hosts(ctx: &Ctx<'_>, ready: &[(&ServiceSpec, &Obtained)], only: &str) -> Plans {
    let inv = ctx.inv;
    let mut plans =
        Plans { hosts: BTreeMap::new(), tracked: BTreeMap::new(), will_hold: BTreeMap::new(), failed: BTreeMap::new(), expected: BTreeMap::new() };
    let mut host_errors: BTreeMap<String, String> = BTreeMap::new();
    for (spec, obtained) in ready {
        let Ok(tokens) = &obtained.tokens else { continue };
        let children = &obtained.children;
        let root = Some(tokens.vault_token.short_hash());
        for dest in spec.destinations.iter().filter(|d| d.host == only && delivered_here(ctx, d)) {
            let key = (spec.name.clone(), dest.id.clone());
            let Some(host) = inv.hosts.get(&dest.host) else { continue };
            if let Some(e) = host_errors.get(&host.name) {
                plans.failed.insert(key, Err(e.clone()));
                continue;
            }
            if !plans.hosts.contains_key(&host.name) {
                match host_target(host) {
                    Ok(target) => {
                        plans.hosts.insert(host.name.clone(), HostPlan { target, dirs: Vec::new(), files: Vec::new(), signal_credmon: Vec::new(), expect_present: Vec::new(), read_back: Vec::new(), probe_credmon: Vec::new(), credd_names: Vec::new() });
                    }
                    Err(e) => {
                        host_errors.insert(host.name.clone(), e.clone());
                        plans.failed.insert(key, Err(e));
                        continue;
                    }
                }
            }
            let plan = plans.hosts.get_mut(&host.name).expect("inserted above");
            let access_fp = Some(tokens.validated.fingerprint.clone());
            match &dest.kind {
                DestinationKind::Credd => {
                    let spool = host.spool.as_deref().unwrap_or("/");
                    let contents = tokens.credd_contents.get_or_init(|| {
                        let request = access_request(spec);
                        let top = TopFile {
                            vault_token: Some(tokens.vault_token.clone()),
                            vault_url: inv.top_vault_url(spec),
                            scopes: (!request.scopes.is_empty()).then(|| request.scopes.join(",")),
                            audience: spec.audience.clone(),
                        };
                        CreddContents::new(&top, &tokens.access_token)
                    });
                    let (dir, files) = deliver::credd_layout(spool, &spec.account, &spec.oauth_service, contents, &owner(&host.spool_owner));
                    if !plan.dirs.iter().any(|d| d.path == dir.path) {
                        plan.dirs.push(dir);
                    }
                    let top_path = files[0].path.clone();
                    if credd_checks(ctx, &key, spool, &top_path, &files[1].path, &mut plan.probe_credmon, &mut plan.expect_present) {
                        plans.expected.insert((host.name.clone(), top_path), key.clone());
                    }
                    plan.credd_names.push(deliver::CreddName {
                        service: spec.name.clone(),
                        stem: spec.oauth_service.clone(),
                        is_handle: false,
                        spool: spool.to_string(),
                        file_ids: ["top", "use"].iter().map(|part| file_id(&spec.name, &dest.id, part)).collect(),
                    });
                    for (mut f, part) in files.into_iter().zip(["top", "use"]) {
                        f.id = file_id(&spec.name, &dest.id, part);
                        if part == "top" && !ctx.dry_run {
                            plans.tracked.entry(host.name.clone()).or_default().push(Tracked::of(&f, &spec.name, &dest.id, &host.name, &tokens.vault_token));
                        }
                        plan.files.push(f);
                    }
                    if host.signal_credmon && !plan.signal_credmon.iter().any(|c| c.spool == spool) {
                        plan.signal_credmon.push(deliver::Credmon { spool: spool.to_string(), user: host.spool_owner.user.clone() });
                    }
                    plans.will_hold.insert(key, Delivered { vault_expiry: Some(tokens.vault_expiry), access: access_fp, vault_root: root.clone(), paths: Vec::new() });
                }
                DestinationKind::Handle { name } => {
                    // Beside the service's own `.top`, which this plan writes first on the same
                    // host; a handle whose parent fails is not put in place.
                    let parent = file_id(&spec.name, &format!("credd@{}", host.name), "top");
                    let (Some(handle), Some(spool)) = (spec.handle(name), host.spool.as_deref()) else { continue };
                    let token = match tokens.handles.get(name) {
                        Some(Ok(token)) => token,
                        Some(Err(f)) => {
                            plans.failed.insert(key, Err(format!("{}: {}", f.stage, f.reason)));
                            continue;
                        }
                        None => {
                            plans.failed.insert(key, Err(format!("fetch: handle `{name}`: no access token was read")));
                            continue;
                        }
                    };
                    if !plan.files.iter().any(|f| f.id == parent) {
                        plans.failed.insert(key, Err(format!("deliver: handle `{name}`: the service's own .top is not delivered to {} in this cycle", host.name)));
                        continue;
                    }
                    let request = handle_access_request(spec, handle);
                    let top = TopFile {
                        vault_token: None,
                        vault_url: inv.handle_vault_url(spec, handle),
                        scopes: Some(request.scopes.join(",")),
                        audience: handle.audience.clone(),
                    };
                    let stem = spec.handle_stem(name);
                    let (_, files) = deliver::credd_layout(spool, &spec.account, &stem, &CreddContents::new(&top, &token.access_token), &owner(&host.spool_owner));
                    plan.credd_names.push(deliver::CreddName {
                        service: spec.name.clone(),
                        stem,
                        is_handle: true,
                        spool: spool.to_string(),
                        file_ids: ["top", "use"].iter().map(|part| file_id(&spec.name, &dest.id, part)).collect(),
                    });
                    for (mut f, part) in files.into_iter().zip(["top", "use"]) {
                        f.id = file_id(&spec.name, &dest.id, part);
                        f.after = Some(parent.clone());
                        // It holds nothing secret and changes only with the inventory: left alone
                        // (and no credmon woken for it) while the host shows these very bytes.
                        f.keep_if_same = part == "top";
                        plan.files.push(f);
                    }
                    // It holds no token of its own: the parent's Vault token is what keeps it
                    // working, so it has that expiry and no ledger row.
                    let access = Some(token.validated.fingerprint.clone());
                    plans.will_hold.insert(key, Delivered { vault_expiry: Some(tokens.vault_expiry), access, vault_root: None, paths: Vec::new() });
                }
                DestinationKind::File { path, content, owner: o, mode, .. } => {
                    let (body, expiry, access, vault_root) = match content {
                        FileContent::VaultToken => match children.get(&key) {
                            Some(Ok(child)) => (&child.token, child.expiry, None, root.clone()),
                            Some(Err(e)) => {
                                plans.failed.insert(key, Err(e.clone()));
                                continue;
                            }
                            // A dry run mints no child; the parent stands in, written nowhere.
                            None => (&tokens.vault_token, tokens.vault_expiry, None, root.clone()),
                        },
                        FileContent::AccessToken => (&tokens.access_token, tokens.validated.exp, access_fp, None),
                    };
                    let file = RemoteFile {
                        id: file_id(&spec.name, &dest.id, "file"),
                        path: path.clone(),
                        root: file_root(host, path),
                        uid_of: path.contains("{uid}").then(|| spec.account.clone()),
                        content: Secret::new(format!("{}\n", body.expose())),
                        mode: *mode,
                        owner: Some(owner(o)),
                        only_if_absent: false,
                        after: None,
                        keep_if_same: false,
                    };
                    if matches!(content, FileContent::VaultToken) && !ctx.dry_run {
                        plans.tracked.entry(host.name.clone()).or_default().push(Tracked::of(&file, &spec.name, &dest.id, &host.name, body));
                    }
                    plan.files.push(file);
                    plans.will_hold.insert(key, Delivered { vault_expiry: Some(expiry), access, vault_root, paths: Vec::new() });
                }
                DestinationKind::IdToken { .. } => {}
            }
        }
    }
    plans
}

/// A destination this module delivers: on a host of the inventory and not left out this cycle
/// (IDTokens are minted and delivered by `crate::idtoken`).
fn delivered_here(ctx: &Ctx<'_>, dest: &crate::inventory::Destination) -> bool {
    !ctx.skip_hosts.contains(&dest.host) && !matches!(dest.kind, DestinationKind::IdToken { .. }) && ctx.inv.hosts.contains_key(&dest.host)
}

/// What a credd destination has looked at before anything is written (not in a dry run): its
/// credmon, and its `.top` when the last cycle delivered it there and nothing failed since (the
/// credmon deletes one whose Vault token is refused). True when that `.top` is expected.
fn credd_checks(
    ctx: &Ctx<'_>,
    key: &(String, String),
    spool: &str,
    top: &str,
    use_file: &str,
    probes: &mut Vec<deliver::CredmonProbe>,
    expect_present: &mut Vec<String>,
) -> bool {
    if ctx.dry_run {
        return false;
    }
    let probe = deliver::ProbeFile { id: file_id(&key.0, &key.1, "credmon"), top: top.to_string(), use_file: use_file.to_string() };
    match probes.iter_mut().find(|p| p.spool == spool) {
        Some(p) => p.files.push(probe),
        None => probes.push(deliver::CredmonProbe { spool: spool.to_string(), files: vec![probe] }),
    }
    let healthy = ctx.prior.get(key).is_some_and(|st| st.last_success.is_some() && st.consecutive_failures == 0 && st.paths.iter().any(|p| p == top));
    if healthy {
        expect_present.push(top.to_string());
    }
    healthy
}

/// What `host`'s session can do before any of `specs` has its tokens: everything its plan will
/// look at before writing, and the accounts and groups it will name. `None` when the host
/// cannot be reached as configured (its plan then fails every destination there).
fn opening(ctx: &Ctx<'_>, host: &HostSpec, specs: &[&ServiceSpec]) -> Option<Opening> {
    let target = host_target(host).ok()?;
    let mut o = Opening { target, probe_credmon: Vec::new(), expect_present: Vec::new(), owners: Vec::new(), accounts: Vec::new(), read_schedd: false };
    for spec in specs {
        for dest in spec.destinations.iter().filter(|d| d.host == host.name && delivered_here(ctx, d)) {
            let key = (spec.name.clone(), dest.id.clone());
            match &dest.kind {
                DestinationKind::Credd => {
                    let spool = host.spool.as_deref().unwrap_or("/");
                    let (_, top, use_file) = deliver::credd_paths(spool, &spec.account, &spec.oauth_service);
                    credd_checks(ctx, &key, spool, &top, &use_file, &mut o.probe_credmon, &mut o.expect_present);
                    o.owners.push(owner(&host.spool_owner));
                    o.read_schedd = true;
                    if host.signal_credmon {
                        o.accounts.push(host.spool_owner.user.clone());
                    }
                }
                DestinationKind::File { path, owner: file_owner, .. } => {
                    o.owners.push(owner(file_owner));
                    if path.contains("{uid}") {
                        o.accounts.push(spec.account.clone());
                    }
                }
                // Beside its parent's files, in the same spool.
                DestinationKind::Handle { .. } => {
                    o.owners.push(owner(&host.spool_owner));
                    o.read_schedd = true;
                }
                DestinationKind::IdToken { .. } => {}
            }
        }
    }
    o.owners.dedup();
    o.accounts.sort();
    o.accounts.dedup();
    Some(o)
}

impl Tracked {
    fn of(file: &RemoteFile, service: &str, destination: &str, host: &str, token: &Secret) -> Tracked {
        Tracked {
            file_id: file.id.clone(),
            intent: Intent {
                service: service.to_string(),
                destination: destination.to_string(),
                host: host.to_string(),
                template: file.path.clone(),
                content: file.content.short_hash(),
                token: token.short_hash(),
            },
        }
    }
}

pub(super) fn host_target(host: &HostSpec) -> Result<HostTarget, String> {
    let key_passphrase = match &host.key_passphrase_file {
        Some(p) => Some(Secret::new(
            std::fs::read_to_string(p)
                .map_err(|e| format!("deliver: cannot read key passphrase file {}: {e}", p.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        )),
        None => None,
    };
    Ok(HostTarget {
        name: host.name.clone(),
        address: host.address.clone(),
        port: host.port,
        user: host.user.clone(),
        key_file: host.key_file.clone(),
        key_passphrase,
        known_hosts: host.known_hosts.clone(),
        timeout: host.timeout,
    })
}

/// What delivering to every host came to.
#[derive(Default)]
pub(super) struct Delivery {
    pub results: Results,
    pub warnings: Warnings,
    pub credmon: Credmons,
    /// Hosts a push was attempted on (their files were read back then, if they answered).
    pub hosts: BTreeSet<String>,
    /// Outcomes the ledger could not take when they were known: retried before the cycle ends
    /// (until they are written, their files count as "may hold" what was intended).
    pub unrecorded: Vec<Unrecorded>,
    /// When each host's turn ended.
    pub done_at: BTreeMap<String, Instant>,
}

/// One host's outcomes that could not be written.
pub(super) struct Unrecorded {
    pub host: String,
    pub error: StateError,
    pub settled: Vec<Settled>,
}

/// How one host's turn ended.
enum HostRun {
    /// What the host's files may hold could not be recorded, so nothing was written there.
    NoIntent(StateError),
    Pushed { outcome: Box<HostOutcome>, unrecorded: Option<(StateError, Vec<Settled>)> },
}

/// How a file's push ended for the ledger: a rename sent and not answered may have landed.
fn landing_of(connected: &Result<(), DeliverError>, result: &Result<(), DeliverError>) -> Landing {
    match (connected, result) {
        (Ok(()), Ok(())) => Landing::Delivered,
        (Ok(()), Err(e)) if e.may_have_landed() => Landing::Unknown,
        _ => Landing::Failed,
    }
}

/// One host's turn, on its own blocking thread: the intent, the push (which first reads back
/// every file whose earlier outcome is not known), the outcome.
/// `opened` is the session opened for the host while its services were fetched (`None`: open
/// one now).
fn push_recorded(
    ledger: &Ledger,
    run: RunId,
    mut plan: HostPlan,
    tracked: &[Tracked],
    dry_run: bool,
    abandon: &AtomicBool,
    opened: Option<Result<Opened, DeliverError>>,
) -> HostRun {
    let intents: Vec<Intent> = tracked.iter().map(|t| t.intent.clone()).collect();
    let before = if intents.is_empty() {
        Vec::new()
    } else {
        match ledger.db(|s| s.record_intents(run, &intents)) {
            Ok(before) => before,
            Err(e) => return HostRun::NoIntent(e),
        }
    };
    crate::failpoint!("cycle::after_intent");
    let unsettled: Vec<Option<String>> = before.iter().map(|rows| needs_read_back(rows).map(str::to_string)).collect();
    for path in unsettled.iter().flatten() {
        if !plan.read_back.contains(path) {
            plan.read_back.push(path.clone());
        }
    }
    // A file the ledger says holds exactly what it would be given is left as it is once the
    // host shows those very bytes (deliver compares them): a warm cycle rewrites nothing the
    // destination already has, and wakes no credmon for it.
    for (t, rows) in tracked.iter().zip(&before) {
        if rows.iter().any(|h| h.content == t.intent.content && h.state == HoldState::Holds)
            && let Some(f) = plan.files.iter_mut().find(|f| f.id == t.file_id)
        {
            f.keep_if_same = true;
        }
    }
    let opened = opened.unwrap_or_else(|| deliver::open(&Opening::of(&plan)));
    let outcome = deliver::push_opened(opened, &plan, dry_run, abandon);
    let settled: Vec<Settled> = tracked
        .iter()
        .zip(&before)
        .zip(&unsettled)
        .map(|((t, before), unsettled)| {
            let (landing, resolved) = match outcome.files.iter().find(|f| f.id == t.file_id) {
                Some(f) => (landing_of(&outcome.connected, &f.result), Some(f.path.as_str()).filter(|p| !p.contains("{uid}"))),
                None => (Landing::Unknown, None),
            };
            let found = unsettled.as_deref().and_then(|p| found_at(&outcome.read_back, p));
            settle_file(before, found, &t.intent, resolved, landing)
        })
        .collect();
    let unrecorded =
        if settled.is_empty() { None } else { ledger.write(|s| s.record_settled(Some(run), &settled)).err().map(|e| (e, settled)) };
    HostRun::Pushed { outcome: Box::new(outcome), unrecorded }
}

/// How a host's task ended.
enum HostEnd {
    /// Its push ran (or its thread ended abnormally).
    Ran(Result<HostRun, tokio::task::JoinError>),
    /// The grace period ended before its turn or while it waited for its services: nothing was
    /// recorded or written there.
    NotStarted,
    /// None of its services got tokens: nothing to write.
    Nothing,
}

/// What a host's turn is given once its services are ready: its plan and the files the ledger
/// is told about.
type Job = (HostPlan, Vec<Tracked>);

/// One host's turn, as a task: a place among `hosts_at_once`, the session opened (while services
/// are still fetched), then, once `job` brings the plan, the push on that session.
#[allow(clippy::too_many_arguments)]
async fn host_turn(
    name: String,
    gate: Arc<Semaphore>,
    cancel: tokio_util::sync::CancellationToken,
    opening: Option<Opening>,
    job: oneshot::Receiver<Job>,
    (ledger, run): (Ledger, RunId),
    dry_run: bool,
    abandon: Arc<AtomicBool>,
) -> (String, HostEnd) {
    let _permit = gate.acquire_owned().await.expect("semaphore never closed");
    // A host not yet started when the grace period ends is not started: nothing is recorded or
    // written there.
    if cancel.is_cancelled() {
        return (name, HostEnd::NotStarted);
    }
    let opened = match opening {
        Some(o) => tokio::task::spawn_blocking(move || deliver::open(&o)).await.ok(),
        None => None,
    };
    // Started: a plan that is ready is carried out (past the grace period its files are
    // abandoned one by one, as in any push); one still awaited is not waited for.
    let job = tokio::select! {
        biased;
        job = job => job,
        () = cancel.cancelled() => return (name, HostEnd::NotStarted),
    };
    let Ok((plan, tracked)) = job else { return (name, HostEnd::Nothing) };
    let ran = tokio::task::spawn_blocking(move || push_recorded(&ledger, run, plan, &tracked, dry_run, &abandon, opened)).await;
    (name, HostEnd::Ran(ran))
}

/// Delivers to every host as its services become ready. `obtaining` are the services' tasks
/// (each ends with its index in `services` and what it obtained); what they ended with is
/// handed back with the delivery.
pub(super) async fn deliver_all(
    ctx: &Ctx<'_>,
    services: &[&ServiceSpec],
    mut obtaining: JoinSet<(usize, Obtained)>,
) -> (Delivery, BTreeMap<usize, Obtained>) {
    // Per host, the services with destinations there; hosts take their places in the order of
    // the last of those (services are fetched roughly in order), so that a host seldom holds a
    // place while it waits.
    let mut members: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, spec) in services.iter().enumerate() {
        for d in spec.destinations.iter().filter(|d| delivered_here(ctx, d)) {
            members.entry(d.host.clone()).or_default().insert(i);
        }
    }
    let mut order: Vec<&String> = members.keys().collect();
    order.sort_by_key(|h| (members[*h].last().copied(), *h));
    // Each host has one connection; a slow host holds one place, never the others.
    let gate = Arc::new(Semaphore::new(ctx.inv.delivery.hosts_at_once.max(1)));
    let mut turns = JoinSet::new();
    let mut jobs: BTreeMap<String, oneshot::Sender<Job>> = BTreeMap::new();
    for name in order {
        let (tx, rx) = oneshot::channel();
        jobs.insert(name.clone(), tx);
        let specs: Vec<&ServiceSpec> = members[name].iter().map(|&i| services[i]).collect();
        let opening = ctx.inv.hosts.get(name).and_then(|host| opening(ctx, host, &specs));
        let span = tracing::info_span!("host", host = %name);
        turns.spawn(
            host_turn(name.clone(), gate.clone(), ctx.cancel.clone(), opening, rx, (ctx.ledger.clone(), ctx.run), ctx.dry_run, ctx.abandon.clone())
                .instrument(span),
        );
    }
    let mut waiting = members.clone();
    let mut obtained: BTreeMap<usize, Obtained> = BTreeMap::new();
    let mut collected = Collected::default();
    let mut all_obtained = obtaining.is_empty();
    if all_obtained {
        for (host, tx) in std::mem::take(&mut jobs) {
            collected.plan_and_send(ctx, services, &members[&host], &obtained, &host, tx);
        }
    }
    loop {
        tokio::select! {
            joined = obtaining.join_next(), if !all_obtained => {
                match joined {
                    Some(Ok((i, o))) => {
                        obtained.insert(i, o);
                        let ready: Vec<String> = waiting.iter_mut().filter_map(|(h, w)| (w.remove(&i) && w.is_empty()).then(|| h.clone())).collect();
                        for host in ready {
                            if let Some(tx) = jobs.remove(&host) {
                                collected.plan_and_send(ctx, services, &members[&host], &obtained, &host, tx);
                            }
                        }
                    }
                    Some(Err(e)) => warn!(error = %e, "a service task ended abnormally"),
                    None => {}
                }
                if obtaining.is_empty() {
                    // Every service has ended: a host still waiting (for a service whose task
                    // ended abnormally) gets what is ready.
                    all_obtained = true;
                    for (host, tx) in std::mem::take(&mut jobs) {
                        collected.plan_and_send(ctx, services, &members[&host], &obtained, &host, tx);
                    }
                }
            }
            joined = turns.join_next(), if !turns.is_empty() => {
                if let Some(Ok((host, end))) = joined {
                    collected.take(ctx, &host, end);
                }
            }
            else => break,
        }
    }
    (collected.finish(services, ctx.dry_run), obtained)
}

/// Host outcomes gathered into service × destination results.
#[derive(Default)]
struct Collected {
    results: Results,
    warnings: Warnings,
    credmons: Credmons,
    unrecorded: Vec<Unrecorded>,
    will_hold: BTreeMap<(String, String), Delivered>,
    expected: BTreeMap<(String, String), (String, String)>,
    files_of: BTreeMap<String, Vec<String>>,
    attempted: BTreeSet<String>,
    done_at: BTreeMap<String, Instant>,
}

impl Collected {
    /// Plans `host` from its services (`members`) that are ready, and hands the plan to its
    /// task; a host left with nothing to write is told so (its sender dropped).
    fn plan_and_send(&mut self, ctx: &Ctx<'_>, services: &[&ServiceSpec], members: &BTreeSet<usize>, obtained: &BTreeMap<usize, Obtained>, host: &str, tx: oneshot::Sender<Job>) {
        let ready: Vec<(&ServiceSpec, &Obtained)> = members.iter().filter_map(|i| obtained.get(i).map(|o| (services[*i], o))).collect();
        let Plans { hosts: mut plans, mut tracked, will_hold, failed, expected } = plan_hosts(ctx, &ready, host);
        self.results.extend(failed);
        self.will_hold.extend(will_hold);
        self.expected.extend(expected);
        let Some(plan) = plans.remove(host) else { return };
        self.files_of.insert(host.to_string(), plan.files.iter().map(|f| f.id.clone()).collect());
        if tx.send((plan, tracked.remove(host).unwrap_or_default())).is_ok() {
            self.attempted.insert(host.to_string());
        }
    }

    /// Takes in how one host's turn ended.
    fn take(&mut self, ctx: &Ctx<'_>, host: &str, end: HostEnd) {
        let host = host.to_string();
        self.done_at.insert(host.clone(), Instant::now());
        let outcome = match end {
            HostEnd::NotStarted | HostEnd::Nothing => return,
            HostEnd::Ran(Ok(HostRun::Pushed { outcome, unrecorded: lost })) => {
                if let Some((error, settled)) = lost {
                    warn!(host = %host, error = %error_chain(&error), "cannot record what the host's files now hold; retried before the cycle ends");
                    self.unrecorded.push(Unrecorded { host: host.clone(), error, settled });
                }
                outcome
            }
            HostEnd::Ran(Ok(HostRun::NoIntent(e))) => {
                let reason = format!("state: cannot record what {host} may hold afterwards, so nothing was written there: {}", error_chain(&e));
                warn!(host = %host, error = %error_chain(&e), "cannot record the intent; the host is left as it is");
                for id in self.files_of.get(&host).into_iter().flatten() {
                    if let Some((service, dest)) = split_file_id(id) {
                        self.results.entry((service.to_string(), dest.to_string())).or_insert_with(|| Err(reason.clone()));
                    }
                }
                if let Some(super::Observer(o)) = &ctx.observer {
                    o.host_done(&host, false);
                }
                return;
            }
            HostEnd::Ran(Err(e)) => {
                warn!(host = %host, error = %e, "delivery thread ended abnormally");
                return;
            }
        };
        if let Some(super::Observer(o)) = &ctx.observer {
            o.host_done(&host, outcome.all_delivered());
        }
        for m in &outcome.missing {
            if let Some(key) = self.expected.get(&(host.clone(), m.path.clone())) {
                let path = &m.path;
                let since = ctx.prior.get(key).and_then(|st| st.last_success).map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default();
                if m.refused_by_credmon() {
                    let warning = format!(
                        "credmon: {path} delivered at {since} had disappeared while its account directory stayed and no .mark was there: the credmon refused its Vault token; delivered again"
                    );
                    warn!(service = %key.0, host = %host, destination = %key.1, "{warning}");
                    self.warnings.insert(key.clone(), warning);
                } else {
                    info!(service = %key.0, host = %host, destination = %key.1, path = %path, "the credd swept the account directory after its .mark (its normal clean-up once the credentials were removed); delivered again");
                }
            }
        }
        judge_credmons(ctx, &host, &outcome, &mut self.credmons);
        for (spool, signalled) in outcome.signalled.iter().filter(|_| outcome.connected.is_ok()) {
            if let Err(e) = signalled {
                warn!(host = %host, spool = %spool, error = %error_chain(e), "cannot signal the credmon");
            }
        }
        for f in &outcome.files {
            let Some((service, dest)) = split_file_id(&f.id) else { continue };
            let key = (service.to_string(), dest.to_string());
            let file_result = match (&outcome.connected, &f.result) {
                (Err(e), _) | (Ok(()), Err(e)) => Err(format!("deliver: {}", error_chain(e))),
                (Ok(()), Ok(())) => Ok(()),
            };
            match file_result {
                // The first failing file of a destination names the destination's failure.
                Err(reason) => {
                    if !matches!(self.results.get(&key), Some(Err(_))) {
                        warn!(service = %service, host = %host, destination = %dest, path = %f.path, reason = %reason, "not delivered");
                        self.results.insert(key, Err(reason));
                    }
                }
                Ok(()) => {
                    if let Some(held) = self.will_hold.get_mut(&key) {
                        held.paths.push(f.path.clone());
                    }
                }
            }
        }
    }

    /// Every destination whose files all landed is delivered (or, in a dry run, deliverable).
    fn finish(mut self, services: &[&ServiceSpec], dry_run: bool) -> Delivery {
        for (key, held) in self.will_hold {
            if self.results.contains_key(&key) || held.paths.is_empty() {
                continue;
            }
            let host = services
                .iter()
                .find(|s| s.name == key.0)
                .and_then(|s| s.destinations.iter().find(|d| d.id == key.1))
                .map(|d| d.host.clone())
                .unwrap_or_default();
            info!(service = %key.0, host = %host, destination = %key.1, dry_run, "{}", if dry_run { "deliverable" } else { "delivered" });
            self.results.insert(key, Ok(held));
        }
        Delivery {
            results: self.results,
            warnings: self.warnings,
            credmon: self.credmons,
            hosts: self.attempted,
            unrecorded: self.unrecorded,
            done_at: self.done_at,
        }
    }
}

/// Judges every credd destination's credmon from what the host showed before the writes, and
/// logs a change of state once.
fn judge_credmons(ctx: &Ctx<'_>, host: &str, outcome: &HostOutcome, into: &mut Credmons) {
    let now = super::now_unix();
    // The schedd's own refresh interval, when its settings could be read.
    let rules = match &outcome.schedd {
        Some(credd_names::ScheddRead::Read(s)) => Rules { refresh: s.refresh_interval(), ..Rules::default() },
        _ => Rules::default(),
    };
    for seen in &outcome.credmon {
        for f in &seen.files {
            let Some((service, dest)) = split_file_id(&f.id) else { continue };
            let key = (service.to_string(), dest.to_string());
            let prior = ctx.prior.get(&key);
            // Before this version recorded its own `.use` writes, it rewrote the `.use` at every
            // delivery.
            let bastion_wrote = prior
                .and_then(|p| if p.credmon_checked_at.is_some() { p.use_written_at } else { p.last_success })
                .map(|t| t.timestamp());
            let check: CredmonCheck = credmon::assess(seen, f, now, bastion_wrote, &rules);
            let was = prior.and_then(|p| p.credmon);
            let alarm = check.state.is_alarm() && !was.is_some_and(CredmonState::is_alarm);
            if alarm {
                warn!(service, host = %host, destination = dest, credmon = %check.state, reason = %check.reason, "the credmon is not refreshing this destination");
            } else if check.state == CredmonState::Refreshing && was.is_some_and(CredmonState::is_alarm) {
                info!(service, host = %host, destination = dest, reason = %check.reason, "the credmon is refreshing this destination again");
            }
            let use_id = file_id(service, dest, "use");
            let wrote_use = outcome
                .files
                .iter()
                .find(|o| o.id == use_id && o.result.is_ok() && !o.kept && outcome.connected.is_ok())
                .and_then(|o| o.landed_mtime);
            into.insert(key, CredmonReport { check, alarm, wrote_use });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{file_root, HostSpec};

    #[test]
    fn file_roots() {
        let host = HostSpec {
            name: "h".into(),
            address: "h.example".into(),
            port: 22,
            user: "root".into(),
            key_file: "/k".into(),
            key_passphrase_file: None,
            known_hosts: "/kh".into(),
            spool: None,
            spool_owner: crate::inventory::Owner { user: "root".into(), group: None },
            signal_credmon: true,
            timeout: std::time::Duration::from_secs(1),
            file_roots: ["/tmp", "/var/tmp", "/run/user", "/data", "/data/tier0"].map(String::from).to_vec(),
        };
        assert_eq!(file_root(&host, "/tmp/vt_u{uid}-cms"), "/tmp");
        assert_eq!(file_root(&host, "/var/tmp/x"), "/var/tmp");
        assert_eq!(file_root(&host, "/run/user/{uid}/bt_u{uid}"), "/run/user");
        assert_eq!(file_root(&host, "/data/tier0/tokens/bt"), "/data/tier0");
        assert_eq!(file_root(&host, "/data/x/bt"), "/data");
        assert_eq!(file_root(&host, "/datax/bt"), "/datax");
        assert_eq!(file_root(&host, "/token"), "/");
    }
}
