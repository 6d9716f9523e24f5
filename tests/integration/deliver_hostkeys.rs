//! known_hosts read the way OpenSSH reads it, against a real sshd: `@revoked`, `[host]:port`
//! versus a bare host, hashed names, `@cert-authority`; and the credmon signal that only the
//! credd user's credmon gets.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use token_bastion::deliver::{DeliverError, HostOutcome};

use crate::deliver::{TEST_USER, assert_all_delivered, ended_by, minted, plain_file, plan, push, test_user};
use crate::harness::sshd::Sshd;
use crate::harness::{ChildGuard, Leaks, wait_until};

/// Pushes one file with `known_hosts` as the host's known_hosts file.
fn push_with(sshd: &Sshd, leaks: &Leaks, known_hosts: &str) -> (HostOutcome, PathBuf) {
    std::fs::write(&sshd.known_hosts, known_hosts).unwrap();
    let path = sshd.spool.join("svc.top");
    let _ = std::fs::remove_file(&path);
    let token = minted(leaks, "hvs.KNOWNHOSTS");
    (push(leaks, &plan(sshd, "root", vec![], vec![plain_file("f", &path, &token, 0o600, None)], vec![]), false), path)
}

/// `kind key` of the sshd's host key.
fn key_of(sshd: &Sshd) -> String {
    sshd.known_hosts_line().split_once(' ').unwrap().1.trim().to_string()
}

#[test]
fn a_revoked_key_is_refused_even_when_a_plain_line_lists_it() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let revoked = format!("{}@revoked [127.0.0.1]:{} {}\n", sshd.known_hosts_line(), sshd.port, key_of(&sshd));
    let (outcome, path) = push_with(&sshd, &leaks, &revoked);
    match &outcome.connected {
        Err(e @ DeliverError::HostKeyRevoked { host, .. }) => {
            assert_eq!(host, "schedd-test");
            assert!(e.to_string().contains("@revoked"), "{e}");
        }
        other => panic!("expected a revoked host key, got {other:?}"),
    }
    assert!(!path.exists());
    // Without the revocation the same key is fine.
    assert_all_delivered(&push_with(&sshd, &leaks, &sshd.known_hosts_line()).0);
    leaks.assert_clean();
}

#[test]
fn a_bare_host_line_is_for_port_22_only() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let (outcome, path) = push_with(&sshd, &leaks, &format!("127.0.0.1 {}\n", key_of(&sshd)));
    assert!(matches!(outcome.connected, Err(DeliverError::HostKeyUnknown { .. })), "{:?}", outcome.connected);
    assert!(!path.exists());
    leaks.assert_clean();
}

#[test]
fn hashed_known_hosts_entries_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    std::fs::write(&sshd.known_hosts, sshd.known_hosts_line()).unwrap();
    let out = Command::new("ssh-keygen").arg("-H").arg("-f").arg(&sshd.known_hosts).output().expect("run ssh-keygen -H");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hashed = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    assert!(hashed.starts_with("|1|") && !hashed.contains("127.0.0.1"), "{hashed}");
    let (outcome, path) = push_with(&sshd, &leaks, &hashed);
    assert_all_delivered(&outcome);
    assert!(path.exists());
    leaks.assert_clean();
}

#[test]
fn cert_authority_lines_alone_are_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let ca = format!("@cert-authority [127.0.0.1]:{} {}\n", sshd.port, key_of(&sshd));
    let (outcome, path) = push_with(&sshd, &leaks, &ca);
    match &outcome.connected {
        Err(e @ DeliverError::HostKeyCertificateOnly { host, .. }) => {
            assert_eq!(host, "schedd-test");
            let text = e.to_string();
            assert!(text.contains("@cert-authority") && text.contains("plain key"), "{text}");
        }
        other => panic!("expected a certificate-only refusal, got {other:?}"),
    }
    assert!(!path.exists());
    // With the host's plain key beside it, the host is usable.
    assert_all_delivered(&push_with(&sshd, &leaks, &format!("{ca}{}", sshd.known_hosts_line())).0);
    leaks.assert_clean();
}

/// A process named `name` running as the test account, killed on drop.
fn foreign_process(dir: &Path, name: &str) -> ChildGuard {
    let (uid, gid) = test_user();
    let mut cmd = Command::new("setpriv");
    cmd.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into(), "bash".into(), "-c".into()])
        .arg(format!("exec -a {name} sleep 600"));
    let mut child = ChildGuard::spawn(name, cmd, &dir.join(format!("{name}-{TEST_USER}.log")));
    let cmdline = PathBuf::from(format!("/proc/{}/cmdline", child.pid()));
    if !wait_until(Duration::from_secs(5), || std::fs::read(&cmdline).map(|c| c.starts_with(name.as_bytes())).unwrap_or(false)) {
        child.stop();
        panic!("{name} did not start");
    }
    child
}

#[test]
fn a_credmon_of_another_user_is_not_signalled() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let mut impostor = foreign_process(tmp.path(), "condor_credmon_vault");
    std::fs::write(sshd.spool.join("pid"), format!("{}\n", impostor.pid())).unwrap();
    let token = minted(&leaks, "hvs.IMPOSTOR");
    let files = vec![plain_file("f", &sshd.spool.join("svc.top"), &token, 0o600, None)];
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], files, vec![&sshd.spool]), false);
    assert_all_delivered(&outcome);
    assert!(matches!(outcome.signalled[0].1, Ok(false)), "{:?}", outcome.signalled);
    assert_eq!(ended_by(&mut impostor, Duration::from_millis(500)), None, "a credmon of another user must not be signalled");
    leaks.assert_clean();
}
