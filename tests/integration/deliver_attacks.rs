//! The delivery under attack on the schedd side, driven by failpoints (`--features failpoints`)
//! at the exact moments an attacker or a broken connection would strike: swap the temp file for
//! a link just before its owner is set, replace the account directory by a link before the
//! write, plant a link or a directory at the final path, swap the file after the rename, stop
//! the server mid-rename, shut down between two files. Each time no file outside the destination
//! changes owner or content, and the destination is delivered safely or fails by name.
//!
//! fail-rs configuration is process-wide: every test here holds a `FailScenario` (which
//! serializes them) and acts only for its own host name.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fail::FailScenario;
use token_bastion::deliver::{CreddContents, DeliverError, HostOutcome, HostPlan, RemoteFile, credd_layout, failpoints, push_to_host_unless};
use token_bastion::secret::Secret;

use crate::deliver::{assert_all_delivered, errors, minted, plain_file, plan, push, temp_files, test_owner, test_user, top_file};
use crate::harness::Leaks;
use crate::harness::sshd::Sshd;

/// Runs `action` at failpoint `name` whenever it is reached for `host` (and `path`, if given).
fn at(name: &str, host: &str, path: Option<&str>, action: impl Fn(&str) + Send + Sync + 'static) {
    let (host, path) = (host.to_string(), path.map(str::to_string));
    fail::cfg_callback(name, move || {
        let (h, p) = failpoints::context();
        if h == host && path.as_ref().is_none_or(|want| *want == p) {
            action(&p);
        }
    })
    .unwrap();
}

/// A victim outside every destination: root's, with known content and mode.
fn victim(dir: &Path) -> PathBuf {
    let v = dir.join("victim");
    std::fs::write(&v, "victim content").unwrap();
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o644)).unwrap();
    v
}

fn assert_victim_untouched(v: &Path) {
    let meta = std::fs::metadata(v).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777), (0, 0, 0o644), "victim owner or mode changed");
    assert_eq!(std::fs::read_to_string(v).unwrap(), "victim content", "victim content changed");
}

fn with_host(mut p: HostPlan, host: &str) -> HostPlan {
    p.target.name = host.to_string();
    p
}

/// A file under the spool, owned by the test account, whose rule starts at the spool.
fn spool_file(sshd: &Sshd, name: &str, content: &Secret) -> RemoteFile {
    RemoteFile { root: sshd.spool.to_str().unwrap().into(), ..plain_file(name, &sshd.spool.join(name), content, 0o600, Some(test_owner())) }
}

#[test]
fn a_temp_file_swapped_for_a_link_before_its_owner_is_set() {
    let scenario = FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let v = victim(tmp.path());
    let old = sshd.spool.join("svc.top");
    std::fs::write(&old, "old token").unwrap();
    let host = "schedd-swap-temp";
    let target = v.clone();
    at("deliver::before_fsetstat", host, None, move |temp| {
        std::fs::rename(temp, format!("{temp}.moved")).unwrap();
        symlink(&target, temp).unwrap();
    });
    let token = minted(&leaks, "hvs.SWAPTEMP");
    let outcome = push(&leaks, &with_host(plan(&sshd, "root", vec![], vec![spool_file(&sshd, "svc.top", &token)], vec![]), host), false);
    scenario.teardown();

    assert_victim_untouched(&v);
    match &outcome.files[0].result {
        Err(e @ DeliverError::TempChanged { path, .. }) => {
            assert_eq!(path, old.to_str().unwrap());
            assert!(e.to_string().contains("is a symbolic link"), "{e}");
        }
        other => panic!("expected the swapped temp file to be caught, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "old token", "the old file stays");
    // The owner went to the file that was created (wherever it was moved), not to the link's target.
    let moved: Vec<_> = std::fs::read_dir(&sshd.spool).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".moved")).collect();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].metadata().unwrap().uid(), test_user().0);
    assert!(!temp_files(&sshd.spool).iter().any(|p| std::fs::symlink_metadata(p).unwrap().file_type().is_symlink()));
    leaks.assert_clean();
}

#[test]
fn an_account_directory_replaced_by_a_link_before_the_write() {
    let scenario = FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let v = victim(&elsewhere);
    std::fs::write(elsewhere.join("cms_wmagent.top"), "not a credd file").unwrap();
    let account = sshd.spool.join("cmsprod");
    let host = "schedd-swap-dir";
    let (dir, files) = credd_layout(sshd.spool.to_str().unwrap(), "cmsprod", "cms_wmagent", &CreddContents::new(&top_file(&leaks), &minted(&leaks, "eyJ")), &test_owner());
    let (account2, target) = (account.clone(), elsewhere.clone());
    at("deliver::before_write", host, None, move |_| {
        if !std::fs::symlink_metadata(&account2).unwrap().file_type().is_symlink() {
            std::fs::rename(&account2, account2.with_extension("real")).unwrap();
            symlink(&target, &account2).unwrap();
        }
    });
    let outcome = push(&leaks, &with_host(plan(&sshd, "root", vec![dir], files, vec![]), host), false);
    scenario.teardown();

    for f in &outcome.files {
        match &f.result {
            Err(e @ DeliverError::TempChanged { .. }) => assert!(e.to_string().contains("was replaced"), "{e}"),
            other => panic!("expected the moved directory to be caught, got {other:?}"),
        }
    }
    assert_victim_untouched(&v);
    assert_eq!(std::fs::read_to_string(elsewhere.join("cms_wmagent.top")).unwrap(), "not a credd file");
    let names: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 2, "nothing may be left in the link's target: {names:?}");
    leaks.assert_clean();
}

#[test]
fn a_link_planted_at_the_final_path_is_replaced_not_followed() {
    let scenario = FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let v = victim(tmp.path());
    let host = "schedd-final-link";
    let target = v.clone();
    at("deliver::before_rename", host, None, move |path| {
        let _ = std::fs::remove_file(path);
        symlink(&target, path).unwrap();
    });
    let token = minted(&leaks, "hvs.FINALLINK");
    let outcome = push(&leaks, &with_host(plan(&sshd, "root", vec![], vec![spool_file(&sshd, "svc.top", &token)], vec![]), host), false);
    scenario.teardown();

    assert_all_delivered(&outcome);
    assert_victim_untouched(&v);
    let fin = sshd.spool.join("svc.top");
    assert!(std::fs::symlink_metadata(&fin).unwrap().file_type().is_file());
    assert_eq!(std::fs::read_to_string(&fin).unwrap(), token.expose());
    leaks.assert_clean();
}

#[test]
fn a_directory_planted_at_the_final_path_fails_that_file_by_name() {
    let scenario = FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let host = "schedd-final-dir";
    at("deliver::before_rename", host, Some(sshd.spool.join("a.top").to_str().unwrap()), |path| {
        std::fs::create_dir(path).unwrap();
    });
    let token = minted(&leaks, "hvs.FINALDIR");
    let files = vec![spool_file(&sshd, "a.top", &token), spool_file(&sshd, "b.top", &token)];
    let outcome = push(&leaks, &with_host(plan(&sshd, "root", vec![], files, vec![]), host), false);
    scenario.teardown();

    match &outcome.files[0].result {
        Err(e @ DeliverError::Rename { path, .. }) => assert!(path.ends_with("/a.top") && e.to_string().contains("a.top"), "{e}"),
        other => panic!("expected a rename failure, got {other:?}"),
    }
    assert!(outcome.files[1].result.is_ok(), "{:?}", errors(&outcome));
    assert_eq!(std::fs::read_dir(sshd.spool.join("a.top")).unwrap().count(), 0, "nothing moved into the directory");
    assert!(temp_files(&sshd.spool).is_empty(), "{:?}", temp_files(&sshd.spool));
    leaks.assert_clean();
}

/// A handle's `.top` comes after its parent's: when the parent's rename fails, the handle's
/// file is not put in place (its temp file goes), while a file that depends on nothing lands.
#[test]
fn a_file_whose_parent_failed_is_not_put_in_place() {
    let scenario = FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let host = "schedd-parent-failed";
    at("deliver::before_rename", host, Some(sshd.spool.join("a.top").to_str().unwrap()), |path| {
        std::fs::create_dir(path).unwrap();
    });
    let token = minted(&leaks, "hvs.PARENTFAILED");
    let handle = RemoteFile { after: Some("a.top".into()), ..spool_file(&sshd, "a_h.top", &token) };
    let files = vec![spool_file(&sshd, "a.top", &token), handle, spool_file(&sshd, "b.top", &token)];
    let outcome = push(&leaks, &with_host(plan(&sshd, "root", vec![], files, vec![]), host), false);
    scenario.teardown();

    assert!(matches!(outcome.files[0].result, Err(DeliverError::Rename { .. })), "{:?}", errors(&outcome));
    match &outcome.files[1].result {
        Err(e @ DeliverError::ParentNotDelivered { parent, .. }) => assert!(parent.ends_with("/a.top") && e.to_string().contains("a_h.top"), "{e}"),
        other => panic!("expected the handle to wait for its parent, got {other:?}"),
    }
    assert!(!sshd.spool.join("a_h.top").exists(), "the handle was put in place without its parent");
    assert!(outcome.files[2].result.is_ok(), "{:?}", errors(&outcome));
    assert!(temp_files(&sshd.spool).is_empty(), "{:?}", temp_files(&sshd.spool));
    leaks.assert_clean();
}

#[test]
fn a_file_swapped_after_the_rename_is_not_reported_delivered() {
    let scenario = FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let v = victim(tmp.path());
    let host = "schedd-after-rename";
    let target = v.clone();
    at("deliver::after_rename", host, None, move |path| {
        std::fs::remove_file(path).unwrap();
        symlink(&target, path).unwrap();
    });
    let token = minted(&leaks, "hvs.AFTERRENAME");
    let outcome = push(&leaks, &with_host(plan(&sshd, "root", vec![], vec![spool_file(&sshd, "svc.top", &token)], vec![]), host), false);
    scenario.teardown();

    match &outcome.files[0].result {
        Err(e @ DeliverError::OutcomeUnknown { .. }) => {
            assert!(e.may_have_landed());
            assert!(e.to_string().contains("is a symbolic link"), "{e}");
        }
        other => panic!("expected the check after the rename to fail, got {other:?}"),
    }
    assert_victim_untouched(&v);
    leaks.assert_clean();
}

/// Every process below `pid` (the sshd's connections, their sessions, their sftp-servers).
fn descendants(pid: u32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut parents = vec![pid as i32];
    for _ in 0..10 {
        let mut next = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
            let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse::<i32>().ok());
            if ppid.is_some_and(|p| parents.contains(&p)) && !found.contains(&child) {
                next.push(child);
            }
        }
        if next.is_empty() {
            break;
        }
        found.extend(&next);
        parents = next;
    }
    found
}

fn signal(pids: &[i32], sig: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    }
}

#[test]
fn a_rename_left_unanswered_is_an_unknown_outcome_and_the_next_delivery_cleans_up() {
    let scenario = FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let host = "schedd-stalls";
    let listener = sshd.pid();
    let stopped = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = stopped.clone();
    at("deliver::before_rename", host, None, move |_| {
        let mut done = record.lock().unwrap();
        if done.is_empty() {
            let pids = descendants(listener);
            signal(&pids, "STOP");
            *done = pids;
        }
    });
    let token = minted(&leaks, "hvs.STALL");
    let files = vec![spool_file(&sshd, "a.top", &token), spool_file(&sshd, "b.top", &token)];
    let mut stalling = with_host(plan(&sshd, "root", vec![], files.clone(), vec![]), host);
    stalling.target.timeout = Duration::from_secs(2);
    let outcome = push(&leaks, &stalling, false);
    scenario.teardown();
    // The server never answers: its processes go before they could read the request.
    signal(&stopped.lock().unwrap(), "KILL");

    // Both renames went out at once (a host's renames are sent together): neither answer came,
    // so either file may be in place.
    for f in &outcome.files {
        match &f.result {
            Err(e @ DeliverError::OutcomeUnknown { .. }) => assert!(e.may_have_landed() && e.to_string().contains("no answer"), "{e}"),
            other => panic!("expected an unknown outcome, got {other:?}"),
        }
    }
    assert!(!temp_files(&sshd.spool).is_empty(), "the temp files could not be removed over the dead session");

    // The next connection delivers and sweeps what the dead one left.
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], files, vec![]), false);
    assert_all_delivered(&outcome);
    assert!(temp_files(&sshd.spool).is_empty(), "{:?}", temp_files(&sshd.spool));
    leaks.assert_clean();
}

#[test]
fn shutdown_between_two_files_keeps_the_second_old_file() {
    let scenario = FailScenario::setup();
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let host = "schedd-shutdown";
    std::fs::write(sshd.spool.join("b.top"), "old b").unwrap();
    let abandon = Arc::new(AtomicBool::new(false));
    let flag = abandon.clone();
    // Shutdown is asked for while the first file is being renamed.
    at("deliver::before_rename", host, Some(sshd.spool.join("a.top").to_str().unwrap()), move |_| flag.store(true, Ordering::SeqCst));
    let token = minted(&leaks, "hvs.SHUTDOWN");
    let files = vec![spool_file(&sshd, "a.top", &token), spool_file(&sshd, "b.top", &token)];
    let outcome: HostOutcome = push_to_host_unless(&with_host(plan(&sshd, "root", vec![], files, vec![]), host), false, &abandon);
    scenario.teardown();

    assert!(outcome.files[0].result.is_ok(), "{:?}", errors(&outcome));
    assert!(matches!(outcome.files[1].result, Err(DeliverError::Abandoned { .. })), "{:?}", errors(&outcome));
    assert_eq!(std::fs::read_to_string(sshd.spool.join("b.top")).unwrap(), "old b");
    assert!(temp_files(&sshd.spool).is_empty(), "{:?}", temp_files(&sshd.spool));
    leaks.assert_clean();
}
