//! `token_bastion::deliver` against real OpenSSH sshd "schedds" on loopback. The sshd runs on
//! this machine, so what it wrote is checked directly on the local file system.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use token_bastion::deliver::{
    CreddContents,
    Credmon, DeliverError, HostOutcome, HostPlan, Owner, RemoteDir, RemoteFile, TopFile, credd_layout, push_to_host,
};
use token_bastion::secret::Secret;

use crate::harness::sshd::Sshd;
use crate::harness::{ChildGuard, Leaks, wait_until};

/// An account the tests chown to (as root) and log in as (to be refused a chown).
pub(crate) const TEST_USER: &str = "tb-deliver-test";

/// Creates [`TEST_USER`] once per machine: no home, a usable shell, and a password field of
/// `*` (not `!`), because sshd without PAM refuses key logins to locked accounts.
pub(crate) fn test_user() -> (u32, u32) {
    static CREATED: OnceLock<(u32, u32)> = OnceLock::new();
    *CREATED.get_or_init(|| {
        if id_of(&["-u", TEST_USER]).is_none() {
            let out = Command::new("useradd")
                .args(["-M", "-U", "-s", "/bin/sh", "-p", "*", TEST_USER])
                .output()
                .expect("run useradd");
            // 9: created meanwhile by another test process.
            assert!(
                out.status.success() || out.status.code() == Some(9),
                "useradd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (id_of(&["-u", TEST_USER]).unwrap(), id_of(&["-g", TEST_USER]).unwrap())
    })
}

pub(crate) fn id_of(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

pub(crate) fn test_owner() -> Owner {
    test_user();
    Owner { user: TEST_USER.into(), group: TEST_USER.into() }
}

/// A token-looking secret, registered with the leak check.
pub(crate) fn minted(leaks: &Leaks, prefix: &str) -> Secret {
    let s = format!("{prefix}.{:032x}", rand::random::<u128>());
    leaks.secret(&s);
    Secret::new(s)
}

/// A file whose remote-write rule starts at its own directory.
pub(crate) fn plain_file(id: &str, path: &Path, content: &Secret, mode: u32, owner: Option<Owner>) -> RemoteFile {
    RemoteFile {
        id: id.into(),
        path: path.to_str().unwrap().into(),
        root: path.parent().unwrap().to_str().unwrap().into(),
        uid_of: None,
        content: content.clone(),
        mode,
        owner,
        only_if_absent: false,
        after: None,
        keep_if_same: false,
    }
}

pub(crate) fn plan(sshd: &Sshd, user: &str, dirs: Vec<RemoteDir>, files: Vec<RemoteFile>, spools: Vec<&Path>) -> HostPlan {
    HostPlan {
        target: sshd.target("schedd-test", user),
        dirs,
        files,
        expect_present: Vec::new(),
        read_back: Vec::new(),
        signal_credmon: spools.iter().map(|p| Credmon { spool: p.to_str().unwrap().to_string(), user: "root".into() }).collect(),
        probe_credmon: Vec::new(),
        credd_names: Vec::new(),
    }
}

/// A `Write` into a shared buffer, for capturing the tracing output of one push.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs one push with its log captured at TRACE, and hands the log, the outcome's `Debug` and
/// every error's `Display` to the leak check.
pub(crate) fn push(leaks: &Leaks, plan: &HostPlan, dry_run: bool) -> HostOutcome {
    let buf = LogBuf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let outcome = tracing::subscriber::with_default(subscriber, || push_to_host(plan, dry_run));
    let log = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    leaks.text("deliver log", &log);
    leaks.text("outcome", &format!("{outcome:?}"));
    leaks.text("plan", &format!("{plan:?}"));
    for e in errors(&outcome) {
        leaks.text("error", &e);
    }
    outcome
}

pub(crate) fn errors(outcome: &HostOutcome) -> Vec<String> {
    let mut all = Vec::new();
    if let Err(e) = &outcome.connected {
        all.push(e.to_string());
    }
    for f in &outcome.files {
        if let Err(e) = &f.result {
            all.push(e.to_string());
        }
    }
    for (_, r) in &outcome.signalled {
        if let Err(e) = r {
            all.push(e.to_string());
        }
    }
    all
}

pub(crate) fn assert_all_delivered(outcome: &HostOutcome) {
    assert!(outcome.all_delivered(), "not all delivered: {:?}", errors(outcome));
}

pub(crate) fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Names of leftover temp files anywhere under `dir`.
pub(crate) fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap().to_string_lossy().contains(".tb-") {
                found.push(p);
            }
        }
    }
    found
}

pub(crate) fn top_file(leaks: &Leaks) -> TopFile {
    TopFile {
        vault_token: Some(minted(leaks, "hvs.CAES")),
        vault_url: "https://htvault.cern.ch:8200/v1/secret/oauth/sts/cms/default:wmagent".into(),
        scopes: Some("storage.read:/,compute.create".into()),
        audience: Some("https://wlcg.cern.ch/jwt/v1/any".into()),
    }
}

#[test]
fn credd_layout_lands_with_exact_bytes_modes_and_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let (uid, gid) = test_user();
    let top = top_file(&leaks);
    let access = minted(&leaks, "eyJhbGciOiJSUzI1NiJ9");
    let spool = sshd.spool.to_str().unwrap();
    let (dir, files) = credd_layout(spool, "cmsprod", "cms_wmagent", &CreddContents::new(&top, &access), &test_owner());

    let outcome = push(&leaks, &plan(&sshd, "root", vec![dir], files, vec![]), false);
    assert_all_delivered(&outcome);
    assert_eq!(outcome.host, "schedd-test");

    let user_dir = sshd.spool.join("cmsprod");
    let top_path = user_dir.join("cms_wmagent.top");
    let use_path = user_dir.join("cms_wmagent.use");
    assert_eq!(mode_of(&user_dir), 0o700);
    assert_eq!(mode_of(&top_path), 0o600);
    assert_eq!(mode_of(&use_path), 0o400);
    for p in [&user_dir, &top_path, &use_path] {
        let meta = std::fs::metadata(p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "owner of {}", p.display());
    }
    assert_eq!(std::fs::read(&use_path).unwrap(), format!("{}\n", access.expose()).into_bytes());
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&top_path).unwrap()).unwrap();
    assert_eq!(json["vault_token"], top.vault_token.as_ref().unwrap().expose());
    assert_eq!(json["vault_url"], top.vault_url.as_str());
    assert_eq!(json["scopes"], "storage.read:/,compute.create");
    assert_eq!(json["audience"], "https://wlcg.cern.ch/jwt/v1/any");
    assert_eq!(json.as_object().unwrap().len(), 4);
    assert_eq!(std::fs::read(&top_path).unwrap(), top.to_json().expose().as_bytes());

    let ids: Vec<_> = outcome.files.iter().map(|f| (f.id.as_str(), f.path.clone())).collect();
    assert_eq!(
        ids,
        vec![
            ("cmsprod/cms_wmagent.top", top_path.to_str().unwrap().to_string()),
            ("cmsprod/cms_wmagent.use", use_path.to_str().unwrap().to_string()),
        ]
    );
    assert!(temp_files(&sshd.spool).is_empty(), "{:?}", temp_files(&sshd.spool));
    leaks.assert_clean();
}

#[test]
fn uid_in_a_file_path_is_resolved_on_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let (uid, _) = test_user();
    let out_dir = tmp.path().join("tokens");
    std::fs::create_dir(&out_dir).unwrap();
    let token = minted(&leaks, "eyJ0eXAiOiJKV1QifQ");
    let template = format!("{}/bt_u{{uid}}", out_dir.display());
    let good = RemoteFile {
        id: "crab/bearer@schedd-test".into(),
        path: template.clone(),
        root: out_dir.to_str().unwrap().into(),
        uid_of: Some(TEST_USER.into()),
        content: Secret::new(format!("{}\n", token.expose())),
        mode: 0o600,
        owner: Some(test_owner()),
        only_if_absent: false,
        after: None,
        keep_if_same: false,
    };
    let unknown_account = RemoteFile {
        id: "ghost/bearer@schedd-test".into(),
        path: format!("{}/vt_u{{uid}}", out_dir.display()),
        root: out_dir.to_str().unwrap().into(),
        uid_of: Some("tb-no-such-account".into()),
        content: token.clone(),
        mode: 0o600,
        owner: None,
        only_if_absent: false,
        after: None,
        keep_if_same: false,
    };
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], vec![good, unknown_account], vec![]), false);

    let expected = out_dir.join(format!("bt_u{uid}"));
    assert_eq!(outcome.files[0].path, expected.to_str().unwrap());
    assert!(outcome.files[0].result.is_ok(), "{:?}", outcome.files[0].result);
    assert_eq!(std::fs::read_to_string(&expected).unwrap(), format!("{}\n", token.expose()));
    assert_eq!(mode_of(&expected), 0o600);
    assert_eq!(std::fs::metadata(&expected).unwrap().uid(), uid);

    match &outcome.files[1].result {
        Err(e @ DeliverError::Uid { account, .. }) => {
            assert_eq!(account, "tb-no-such-account");
            assert!(e.to_string().contains("schedd-test"), "{e}");
        }
        other => panic!("expected a uid error, got {other:?}"),
    }
    let names: Vec<_> = std::fs::read_dir(&out_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 1, "only the good file may exist: {names:?}");
    leaks.assert_clean();
}

#[test]
fn unknown_host_key_fails_the_host_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let old = sshd.spool.join("old.top");
    std::fs::write(&old, b"old content").unwrap();
    // known_hosts holds this very key, but for another port: a different host.
    let other = sshd.known_hosts_line().replace(&format!("]:{} ", sshd.port), "]:1 ");
    std::fs::write(&sshd.known_hosts, other).unwrap();

    let token = minted(&leaks, "hvs.UNKNOWNHOST");
    let files = vec![
        plain_file("a", &old, &token, 0o600, None),
        plain_file("b", &sshd.spool.join("new.top"), &token, 0o600, None),
    ];
    let dirs = vec![RemoteDir { path: sshd.spool.join("newdir").to_str().unwrap().into(), mode: 0o700, owner: None, clear_mark: false }];
    let outcome = push(&leaks, &plan(&sshd, "root", dirs, files, vec![]), false);

    match &outcome.connected {
        Err(e @ DeliverError::HostKeyUnknown { host, fingerprint, .. }) => {
            assert_eq!(host, "schedd-test");
            assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
            assert!(e.to_string().contains("schedd-test"), "{e}");
        }
        other => panic!("expected HostKeyUnknown, got {other:?}"),
    }
    assert!(outcome.files.iter().all(|f| matches!(f.result, Err(DeliverError::NotAttempted { .. }))));
    assert_eq!(std::fs::read(&old).unwrap(), b"old content");
    let names: Vec<_> = std::fs::read_dir(&sshd.spool).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("old.top")]);

    // An empty known_hosts is no better.
    std::fs::write(&sshd.known_hosts, "").unwrap();
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], vec![plain_file("a", &old, &token, 0o600, None)], vec![]), false);
    assert!(matches!(outcome.connected, Err(DeliverError::HostKeyUnknown { .. })), "{:?}", outcome.connected);
    assert_eq!(std::fs::read(&old).unwrap(), b"old content");
    leaks.assert_clean();
}

#[test]
fn changed_host_key_fails_the_host_and_old_files_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let mut sshd = Sshd::start(tmp.path(), &leaks);
    let path = sshd.spool.join("svc.top");
    let first = minted(&leaks, "hvs.FIRST");
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], vec![plain_file("a", &path, &first, 0o600, None)], vec![]), false);
    assert_all_delivered(&outcome);

    sshd.regenerate_host_key();
    let second = minted(&leaks, "hvs.SECOND");
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], vec![plain_file("a", &path, &second, 0o600, None)], vec![]), false);
    match &outcome.connected {
        Err(e @ DeliverError::HostKeyMismatch { host, port, .. }) => {
            assert_eq!(host, "schedd-test");
            assert_eq!(*port, sshd.port);
            assert!(e.to_string().contains("does not match"), "{e}");
        }
        other => panic!("expected HostKeyMismatch, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first.expose());
    assert!(temp_files(&sshd.spool).is_empty());

    // Once known_hosts learns the new key the host is good again: the failure was the key.
    std::fs::write(&sshd.known_hosts, sshd.known_hosts_line()).unwrap();
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], vec![plain_file("a", &path, &second, 0o600, None)], vec![]), false);
    assert_all_delivered(&outcome);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), second.expose());
    leaks.assert_clean();
}

#[test]
fn redelivery_replaces_atomically_while_a_reader_polls() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let top = sshd.spool.join("u").join("svc.top");
    let dir = RemoteDir { path: sshd.spool.join("u").to_str().unwrap().into(), mode: 0o700, owner: None, clear_mark: false };
    // Long, distinct contents, so that a partial read cannot look like a whole one.
    let versions: Vec<Secret> =
        (0..2).map(|i| Secret::new(format!("{}{}", minted(&leaks, &format!("hvs.V{i}")).expose(), "x".repeat(200_000)))).collect();
    let in_spool = |v: &Secret| RemoteFile { root: sshd.spool.to_str().unwrap().into(), ..plain_file("a", &top, v, 0o600, None) };
    let delivery = |v: &Secret| plan(&sshd, "root", vec![dir.clone()], vec![in_spool(v)], vec![]);
    assert_all_delivered(&push(&leaks, &delivery(&versions[0]), false));

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let top = top.clone();
        let allowed: Vec<Vec<u8>> = versions.iter().map(|v| v.expose().as_bytes().to_vec()).collect();
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let content = std::fs::read(&top).expect("the file must never be missing");
                assert!(allowed.contains(&content), "partial or foreign content ({} bytes)", content.len());
                assert_eq!(std::fs::metadata(&top).unwrap().permissions().mode() & 0o077, 0, "readable by others");
                reads += 1;
            }
            reads
        })
    };
    for round in 1..=6 {
        let outcome = push(&leaks, &delivery(&versions[round % 2]), false);
        assert_all_delivered(&outcome);
        assert_eq!(std::fs::read(&top).unwrap(), versions[round % 2].expose().as_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader saw a missing, partial or open file");
    assert!(reads > 6, "the reader must actually have raced the writes ({reads} reads)");
    assert!(temp_files(&sshd.spool).is_empty(), "{:?}", temp_files(&sshd.spool));
    leaks.assert_clean();
}

#[test]
fn owner_that_cannot_be_set_fails_only_that_file_and_keeps_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let bad_path = sshd.spool.join("bad.top");
    let good_path = sshd.spool.join("good.top");
    std::fs::write(&bad_path, b"old bad").unwrap();
    std::fs::write(&good_path, b"old good").unwrap();
    let token = minted(&leaks, "hvs.OWNERTEST");
    let nobody = Owner { user: "tb-no-such-user".into(), group: "root".into() };
    let files = vec![
        plain_file("bad", &bad_path, &token, 0o600, Some(nobody)),
        plain_file("good", &good_path, &token, 0o600, Some(Owner { user: "root".into(), group: "root".into() })),
    ];
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], files, vec![]), false);
    assert!(outcome.connected.is_ok());
    match &outcome.files[0].result {
        Err(e @ DeliverError::Owner { host, path, owner, .. }) => {
            assert_eq!(host, "schedd-test");
            assert_eq!(path, bad_path.to_str().unwrap());
            assert_eq!(owner, "tb-no-such-user:root");
            let text = e.to_string();
            assert!(text.contains("tb-no-such-user") && text.contains("bad.top"), "{text}");
        }
        other => panic!("expected an owner error, got {other:?}"),
    }
    assert!(outcome.files[1].result.is_ok(), "{:?}", outcome.files[1].result);
    assert_eq!(std::fs::read(&bad_path).unwrap(), b"old bad");
    assert_eq!(std::fs::read_to_string(&good_path).unwrap(), token.expose());
    assert!(temp_files(&sshd.spool).is_empty(), "{:?}", temp_files(&sshd.spool));
    leaks.assert_clean();
}

#[test]
fn an_unprivileged_login_cannot_give_files_to_root() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let (uid, _) = test_user();
    // A root-owned sticky directory the unprivileged account may write into (the rule accepts
    // it), holding a root-owned token.
    let spool = sshd.spool.join("sticky");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let top = spool.join("svc.top");
    std::fs::write(&top, b"old root token").unwrap();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mine = spool.join(format!("mine_u{uid}.use"));

    let token = minted(&leaks, "hvs.UNPRIV");
    let root = Owner { user: "root".into(), group: "root".into() };
    // The uid lookup must not trip over what sshd prints for an account without a home.
    let mut by_uid = plain_file("use", &spool.join("mine_u{uid}.use"), &token, 0o400, None);
    by_uid.uid_of = Some(TEST_USER.into());
    let files = vec![plain_file("top", &top, &token, 0o600, Some(root)), by_uid];
    let outcome = push(&leaks, &plan(&sshd, TEST_USER, vec![], files, vec![]), false);
    assert!(outcome.connected.is_ok(), "{:?}", outcome.connected);
    assert!(
        matches!(&outcome.files[0].result, Err(DeliverError::Owner { owner, .. }) if owner == "root:root"),
        "{:?}",
        outcome.files[0].result
    );
    assert_eq!(std::fs::read(&top).unwrap(), b"old root token");
    assert_eq!(std::fs::metadata(&top).unwrap().uid(), 0);
    // The file without an owner is delivered, owned by the login account.
    assert!(outcome.files[1].result.is_ok(), "{:?}", outcome.files[1].result);
    assert_eq!(std::fs::metadata(&mine).unwrap().uid(), uid);
    assert_eq!(mode_of(&mine), 0o400);
    assert!(temp_files(&spool).is_empty(), "{:?}", temp_files(&spool));
    leaks.assert_clean();
}

/// A process whose command line is `name 600` (a renamed `sleep`), killed on drop.
pub(crate) fn fake_process(dir: &Path, name: &str) -> ChildGuard {
    let mut cmd = Command::new("sleep");
    cmd.arg0(name).arg("600");
    // SIGHUP back to its default, also when this test runs under `nohup` (an ignored signal
    // is inherited across exec, and the credmon tests expect the process to die of it).
    // SAFETY: `signal` is async-signal-safe, as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = ChildGuard::spawn(name, cmd, &dir.join(format!("{name}.log")));
    let cmdline = PathBuf::from(format!("/proc/{}/cmdline", child.pid()));
    let ready = wait_until(Duration::from_secs(5), || {
        std::fs::read(&cmdline).map(|c| c.starts_with(name.as_bytes())).unwrap_or(false)
    });
    if !ready {
        child.stop();
        panic!("{name} did not start");
    }
    child
}

/// Waits (bounded) for `child` to end; its terminating signal, if it ended.
pub(crate) fn ended_by(child: &mut ChildGuard, within: Duration) -> Option<Option<i32>> {
    let mut status = None;
    wait_until(within, || {
        status = child.child.try_wait().unwrap();
        status.is_some()
    });
    status.map(|s| s.signal())
}

#[test]
fn credmon_gets_sighup_and_a_stale_pid_file_gets_nobody_signalled() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let token = minted(&leaks, "hvs.CREDMON");

    let live = sshd.spool.join("live");
    let stale = sshd.spool.join("stale");
    let gone = sshd.spool.join("gone");
    for d in [&live, &stale, &gone] {
        std::fs::create_dir(d).unwrap();
    }
    let mut credmon = fake_process(tmp.path(), "condor_credmon_vault");
    let mut bystander = fake_process(tmp.path(), "sleep");
    std::fs::write(live.join("pid"), format!("{}\n", credmon.pid())).unwrap();
    std::fs::write(stale.join("pid"), format!("{}\n", bystander.pid())).unwrap();
    std::fs::write(gone.join("pid"), "4194303\n").unwrap();

    let files = [&live, &stale, &gone]
        .iter()
        .map(|d| plain_file("f", &d.join("svc.top"), &token, 0o600, None))
        .collect();
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], files, vec![&live, &stale, &gone]), false);
    assert_all_delivered(&outcome);
    let signalled: Vec<_> = outcome.signalled.iter().map(|(s, r)| (s.clone(), r.as_ref().ok().copied())).collect();
    assert_eq!(
        signalled,
        vec![
            (live.to_str().unwrap().to_string(), Some(true)),
            (stale.to_str().unwrap().to_string(), Some(false)),
            (gone.to_str().unwrap().to_string(), Some(false)),
        ]
    );
    assert_eq!(ended_by(&mut credmon, Duration::from_secs(5)), Some(Some(1)), "the credmon must get SIGHUP");
    assert_eq!(ended_by(&mut bystander, Duration::from_millis(500)), None, "an unrelated process must not be signalled");

    // A spool under which nothing was delivered is not signalled at all.
    let mut credmon2 = fake_process(tmp.path(), "condor_credmon_oauth");
    std::fs::write(live.join("pid"), format!("{}\n", credmon2.pid())).unwrap();
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], vec![], vec![&live]), false);
    assert!(matches!(outcome.signalled[0].1, Ok(false)));
    assert_eq!(ended_by(&mut credmon2, Duration::from_millis(300)), None);

    // A pid file that does not hold a pid is a named error.
    std::fs::write(live.join("pid"), "not a pid\n").unwrap();
    let files = vec![plain_file("f", &live.join("svc.top"), &token, 0o600, None)];
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], files, vec![&live]), false);
    match &outcome.signalled[0].1 {
        Err(e @ DeliverError::PidFile { path, .. }) => {
            assert_eq!(path, live.join("pid").to_str().unwrap());
            assert!(e.to_string().contains("schedd-test"), "{e}");
        }
        other => panic!("expected a pid-file error, got {other:?}"),
    }
    leaks.assert_clean();
}

#[test]
fn dry_run_checks_everything_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let (uid, _) = test_user();
    let top = top_file(&leaks);
    let access = minted(&leaks, "eyJEUllSVU4");
    let spool = sshd.spool.to_str().unwrap();
    let (dir, mut files) = credd_layout(spool, "cmsprod", "cms_wmagent", &CreddContents::new(&top, &access), &test_owner());
    files.push(RemoteFile {
        id: "bearer".into(),
        path: format!("{spool}/bt_u{{uid}}"),
        root: spool.into(),
        uid_of: Some(TEST_USER.into()),
        content: access.clone(),
        mode: 0o600,
        owner: None,
        only_if_absent: false,
        after: None,
        keep_if_same: false,
    });
    let mut credmon = fake_process(tmp.path(), "condor_credmon_vault");
    std::fs::write(sshd.spool.join("pid"), format!("{}\n", credmon.pid())).unwrap();
    let before: Vec<_> = std::fs::read_dir(&sshd.spool).unwrap().flatten().map(|e| e.file_name()).collect();

    let outcome = push(&leaks, &plan(&sshd, "root", vec![dir], files, vec![&sshd.spool]), true);
    assert_all_delivered(&outcome);
    assert_eq!(outcome.files[2].path, format!("{spool}/bt_u{uid}"), "{{uid}} is resolved in a dry run too");
    assert!(matches!(outcome.signalled[0].1, Ok(false)));
    let after: Vec<_> = std::fs::read_dir(&sshd.spool).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(before, after, "a dry run must not create anything");
    assert_eq!(ended_by(&mut credmon, Duration::from_millis(300)), None, "a dry run must not signal");

    // A directory that could not be created is reported, by name, in a dry run.
    let orphan = RemoteDir { path: format!("{spool}/missing/parent"), mode: 0o700, owner: None, clear_mark: false };
    let file = RemoteFile { root: spool.into(), ..plain_file("x", &sshd.spool.join("missing/parent/svc.top"), &access, 0o600, None) };
    let outcome = push(&leaks, &plan(&sshd, "root", vec![orphan], vec![file], vec![]), true);
    match &outcome.files[0].result {
        Err(e @ DeliverError::UnsafeDirectory { dir, reason, .. }) => {
            assert_eq!(dir, &format!("{spool}/missing"));
            assert_eq!(reason, "does not exist");
            assert!(e.to_string().contains("missing/parent/svc.top"), "{e}");
        }
        other => panic!("expected a directory error, got {other:?}"),
    }
    assert!(!sshd.spool.join("missing").exists());
    leaks.assert_clean();
}

#[test]
fn a_passphrase_protected_key_logs_in_and_a_wrong_passphrase_is_a_named_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let passphrase = minted(&leaks, "passphrase");
    let key = sshd.passphrase_key(passphrase.expose());
    let path = sshd.spool.join("svc.use");
    let token = minted(&leaks, "eyJQQVNTUEhSQVNF");
    let mut good = plan(&sshd, "root", vec![], vec![plain_file("a", &path, &token, 0o400, None)], vec![]);
    good.target.key_file = key.clone();
    good.target.key_passphrase = Some(passphrase.clone());
    assert_all_delivered(&push(&leaks, &good, false));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), token.expose());

    let mut wrong = good.clone();
    wrong.target.key_passphrase = Some(minted(&leaks, "wrongpassphrase"));
    wrong.files[0].content = minted(&leaks, "eyJORVZFUldSSVRURU4");
    let outcome = push(&leaks, &wrong, false);
    match &outcome.connected {
        Err(e @ DeliverError::Auth { host, user, key_file, .. }) => {
            assert_eq!((host.as_str(), user.as_str(), key_file), ("schedd-test", "root", &key));
            assert!(e.to_string().contains("schedd-test"), "{e}");
        }
        other => panic!("expected an authentication failure, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), token.expose());
    leaks.assert_clean();
}

#[test]
fn a_failed_rename_is_reported_for_its_file_and_the_others_land() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    // A directory where the file should be: mv must fail, not move the token into it.
    let blocked = sshd.spool.join("blocked.top");
    std::fs::create_dir(&blocked).unwrap();
    let fine = sshd.spool.join("fine.top");
    let token = minted(&leaks, "hvs.RENAME");
    let files = vec![
        plain_file("fine-1", &fine, &token, 0o600, None),
        plain_file("blocked", &blocked, &token, 0o600, None),
        plain_file("fine-2", &sshd.spool.join("fine2.top"), &token, 0o600, None),
    ];
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], files, vec![]), false);
    assert!(outcome.files[0].result.is_ok() && outcome.files[2].result.is_ok(), "{:?}", errors(&outcome));
    match &outcome.files[1].result {
        Err(e @ DeliverError::Rename { host, path, .. }) => {
            assert_eq!(host, "schedd-test");
            assert_eq!(path, blocked.to_str().unwrap());
            assert!(e.to_string().contains("blocked.top"), "{e}");
        }
        other => panic!("expected a rename error, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(&blocked).unwrap().count(), 0, "nothing may be moved into the directory");
    assert_eq!(std::fs::read_to_string(&fine).unwrap(), token.expose());
    assert!(temp_files(&sshd.spool).is_empty(), "{:?}", temp_files(&sshd.spool));
    leaks.assert_clean();
}

#[test]
fn a_host_that_never_speaks_ssh_fails_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    // Accepts the TCP connection and then says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut target = sshd.target("schedd-silent", "root");
    target.port = silent.local_addr().unwrap().port();
    target.timeout = Duration::from_secs(1);
    let token = minted(&leaks, "hvs.SILENT");
    let host_plan = HostPlan {
        target,
        dirs: vec![],
        files: vec![plain_file("a", &sshd.spool.join("x.top"), &token, 0o600, None)],
        expect_present: Vec::new(),
        read_back: Vec::new(),
        signal_credmon: vec![],
        probe_credmon: Vec::new(),
        credd_names: Vec::new(),
    };
    let started = std::time::Instant::now();
    let outcome = push(&leaks, &host_plan, false);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    match &outcome.connected {
        Err(e @ DeliverError::Ssh { host, .. }) => {
            assert_eq!(host, "schedd-silent");
            assert!(e.to_string().contains("schedd-silent"), "{e}");
        }
        other => panic!("expected an SSH failure, got {other:?}"),
    }
    assert!(!sshd.spool.join("x.top").exists());
    drop(silent);
    leaks.assert_clean();
}
