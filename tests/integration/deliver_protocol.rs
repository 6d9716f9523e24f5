//! What the delivery says to a real OpenSSH sftp-server, read from its own log (`-l DEBUG3`),
//! and how it behaves at scale and around HTCondor's spool: the `.mark` the credd sweeps by,
//! stale temp files, the remote-write rule on real directories, read-back and revoke.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use token_bastion::deliver::{
    CreddContents,
    Credmon, CredmonProbe, DeliverError, ProbeFile, HostPlan, Owner, Removal, RemoteFile, credd_layout, read_back, remove_from_host,
};
use token_bastion::secret::short_hash_bytes;

use crate::deliver::{
    assert_all_delivered, errors, minted, mode_of, plain_file, plan, push, temp_files, test_owner, test_user, top_file,
};
use crate::harness::Leaks;
use crate::harness::sshd::Sshd;

/// How many exec channels (remote commands) the sshd has started so far.
fn exec_count(sshd: &Sshd) -> usize {
    sshd.log_text().matches("Starting session: command").count()
}

/// The credd files of `accounts` one service each, owned by the test account. (One token pair
/// for all: the leak check looks for every minted secret in every log.)
fn credd_plan(sshd: &Sshd, leaks: &Leaks, accounts: &[String]) -> HostPlan {
    let spool = sshd.spool.to_str().unwrap();
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    let (top, access) = (top_file(leaks), minted(leaks, "eyJ"));
    for account in accounts {
        let (dir, f) = credd_layout(spool, account, "cms_wmagent", &CreddContents::new(&top, &access), &test_owner());
        dirs.push(dir);
        files.extend(f);
    }
    plan(sshd, "root", dirs, files, vec![])
}

/// Every `.top` of a [`credd_plan`] to be kept when it already holds its content, and the
/// credmon probe looking at each `.top` and `.use` before the push.
fn keep_and_probe(host_plan: &mut HostPlan, spool: &str) {
    for f in host_plan.files.iter_mut().filter(|f| !f.only_if_absent) {
        f.keep_if_same = true;
    }
    let probed: Vec<ProbeFile> = host_plan
        .files
        .chunks(2)
        .map(|pair| ProbeFile { id: pair[0].id.clone(), top: pair[0].path.clone(), use_file: pair[1].path.clone() })
        .collect();
    host_plan.probe_credmon = vec![CredmonProbe { spool: spool.to_string(), files: probed }];
}

/// Index of the first log line at or after `from` that contains every needle.
fn line_with(lines: &[&str], from: usize, needles: &[&str]) -> Option<usize> {
    (from..lines.len()).find(|&i| needles.iter().all(|n| lines[i].contains(n)))
}

#[test]
fn the_sftp_log_shows_each_file_written_on_its_handle_and_renamed_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let (uid, gid) = test_user();
    let accounts: Vec<String> = (0..3).map(|i| format!("acct{i}")).collect();
    let host_plan = credd_plan(&sshd, &leaks, &accounts);

    let outcome = push(&leaks, &host_plan, false);
    assert_all_delivered(&outcome);
    let log = sshd.sftp_log();
    let lines: Vec<&str> = log.lines().collect();
    for f in &host_plan.files {
        let (dir, name) = f.path.rsplit_once('/').unwrap();
        let temp_prefix = format!("{dir}/.{name}.tb-");
        let open = line_with(&lines, 0, &["open \"", &temp_prefix]).unwrap_or_else(|| panic!("no open of a temp for {name}:\n{log}"));
        let temp = lines[open].split('"').nth(1).unwrap().to_string();
        // Created exclusively, with the final mode in the open itself.
        assert!(lines[open].contains("flags WRITE,CREATE,EXCL mode "), "{}", lines[open]);
        assert!(lines[open].ends_with(&format!("{:o}", f.mode)), "{}", lines[open]);
        let q = |p: &str| format!("\"{p}\"");
        let steps: [&[&str]; 8] = [
            &["realpath ", &q(&temp)],
            &["write ", &q(&temp)],
            &["fsync ", &q(&temp)],
            &["fsetstat handle"],
            &["set ", &q(&temp), &format!("owner {uid} group {gid}")],
            &["lstat name ", &q(&temp)],
            // A `.use` is put in place only where there is none: the plain SFTP rename, which
            // sftp-server carries out with link(2) and so never replaces a file.
            &[if f.only_if_absent { "rename old " } else { "posix-rename old " }, &q(&temp), &format!("new {}", q(&f.path))],
            &["lstat name ", &q(&f.path)],
        ];
        let mut at = open;
        for step in steps {
            at = line_with(&lines, at + 1, step).unwrap_or_else(|| panic!("{step:?} not after line {at} for {name}:\n{log}"));
            if f.only_if_absent && step[0] == "rename old " {
                assert!(!lines[at].contains("posix-rename"), "{}", lines[at]);
            }
        }
        // Nothing is ever changed by name.
        assert!(!lines.iter().any(|l| l.contains("setstat name") && (l.contains(&temp) || l.contains(&f.path))), "{log}");
    }
    // Each step goes out for all six files at once: every temp file is created before the place
    // of the first is checked, and every place checked before the first is written.
    let temp_lines = |step: &str| -> Vec<usize> { (0..lines.len()).filter(|&i| lines[i].contains(".tb-") && lines[i].contains(step)).collect() };
    let (opens, realpaths, writes) = (temp_lines("open \""), temp_lines("realpath \""), temp_lines("write \""));
    assert_eq!((opens.len(), realpaths.len(), writes.len()), (6, 6, 6), "{log}");
    assert!(opens.iter().max() < realpaths.iter().min() && realpaths.iter().max() < writes.iter().min(), "written one file after another:\n{log}");
    // And so do the checks of the temp files, the renames and the checks of the final paths.
    let lines_with = |pred: &dyn Fn(&str) -> bool| -> Vec<usize> { (0..lines.len()).filter(|&i| pred(lines[i])).collect() };
    let temp_lstats = temp_lines("lstat name ");
    let renames = lines_with(&|l: &str| l.contains("rename old "));
    let landed = lines_with(&|l: &str| l.contains("lstat name ") && !l.contains(".tb-") && host_plan.files.iter().any(|f| l.ends_with(&format!("\"{}\"", f.path))));
    assert_eq!((temp_lstats.len(), renames.len(), landed.len()), (6, 6, 6), "{log}");
    assert!(temp_lstats.iter().max() < renames.iter().min() && renames.iter().max() < landed.iter().min(), "renamed one file after another:\n{log}");
    // Two exec requests for six files: the id lookup and `chown -h` of the new account
    // directories. Once they exist, one.
    assert_eq!(exec_count(&sshd), 2, "{}", sshd.log_text());
    let again = credd_plan(&sshd, &leaks, &accounts);
    let before = sshd.sftp_log().len();
    let outcome = push(&leaks, &again, false);
    assert_all_delivered(&outcome);
    assert_eq!(exec_count(&sshd), 3, "one exec per host and push, none per file");
    // The second push replaces each `.top` and leaves each `.use` that is there alone.
    let second = sshd.sftp_log()[before..].to_string();
    for (f, o) in again.files.iter().zip(&outcome.files) {
        let (dir, name) = f.path.rsplit_once('/').unwrap();
        let opened = second.contains(&format!("{dir}/.{name}.tb-"));
        assert_eq!((opened, o.kept), (!f.only_if_absent, f.only_if_absent), "{name}:\n{second}");
    }
    leaks.assert_clean();
}

/// A push to a spool without the account directories creates them, looks at each before and
/// after its owner is set, and takes its canonical path, each step for all of them over the
/// second SFTP channel (which sends a step's requests together), not over the first (which
/// waits for each answer before the next request).
#[test]
fn new_account_directories_are_created_and_looked_at_over_the_second_channel() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    sshd.log_sftp_per_process(&leaks);
    let accounts: Vec<String> = (0..4).map(|i| format!("acct{i}")).collect();
    let host_plan = credd_plan(&sshd, &leaks, &accounts);
    assert_all_delivered(&push(&leaks, &host_plan, false));

    let logs = sshd.sftp_logs_by_process();
    assert_eq!(logs.len(), 2, "one sftp-server per channel: {logs:#?}");
    let spool = sshd.spool.to_str().unwrap();
    let dirs: Vec<String> = accounts.iter().map(|a| format!("\"{spool}/{a}\"")).collect();
    let (pipe, first) = if logs[0].contains("mkdir name") { (&logs[0], &logs[1]) } else { (&logs[1], &logs[0]) };
    let lines: Vec<&str> = pipe.lines().collect();
    let at = |step: &str| -> Vec<usize> { (0..lines.len()).filter(|&i| lines[i].starts_with(step) && dirs.iter().any(|d| lines[i].ends_with(d.as_str()) || lines[i].contains(&format!("{d} mode")))).collect() };
    let (mkdirs, lstats, realpaths) = (at("mkdir name "), at("lstat name "), at("realpath "));
    assert_eq!((mkdirs.len(), lstats.len(), realpaths.len()), (4, 8, 4), "each directory made once, looked at twice, resolved once:\n{pipe}");
    let (before, after) = lstats.split_at(4);
    for (earlier, later) in [(&mkdirs[..], before), (before, after), (after, &realpaths[..])] {
        assert!(earlier.iter().max() < later.iter().min(), "a step for all directories, then the next:\n{pipe}");
    }
    for d in &dirs {
        assert!(!first.lines().any(|l| l.ends_with(d.as_str()) || l.contains(&format!("{d} mode"))), "{d} looked at over the first channel:\n{first}");
    }
    leaks.assert_clean();
}

/// A second SFTP channel that breaks the protocol at its first answer (an answer to a request
/// never sent, a packet past any limit, a count past its packet, a packet type no server sends)
/// is given up at once. Where its first request only looks (listing the account directories),
/// the push goes on one request at a time over the first channel and every file lands with its
/// bytes. Where it was a mkdir, which may have been carried out, the session is given up: those
/// files fail naming their directory, and nothing is written.
#[test]
fn a_second_channel_breaking_the_protocol_is_given_up_and_nothing_is_taken_from_it() {
    for mode in ["foreign", "oversize", "names", "type"] {
        let tmp = tempfile::tempdir().unwrap();
        let leaks = Leaks::default();
        let sshd = Sshd::start(tmp.path(), &leaks);
        let accounts: Vec<String> = (0..3).map(|i| format!("acct{i}")).collect();
        assert_all_delivered(&push(&leaks, &credd_plan(&sshd, &leaks, &accounts), false));

        // New tokens for directories that are there: the second channel's first request lists them.
        let said = sshd.hostile_second_sftp(mode);
        let host_plan = credd_plan(&sshd, &leaks, &accounts);
        let outcome = push(&leaks, &host_plan, false);
        assert_all_delivered(&outcome);
        let told = std::fs::read_to_string(&said).unwrap_or_default();
        assert!(told.starts_with(&format!("{mode}: answered request 0 of type 11")), "{mode}: the listing did not go to the second channel: {told:?}");
        for f in host_plan.files.iter().filter(|f| !f.only_if_absent) {
            assert_eq!(std::fs::read(&f.path).unwrap(), f.content.expose().as_bytes(), "{mode}: {}", f.path);
        }

        // New directories: the second channel's first request is a mkdir.
        std::fs::remove_file(&said).unwrap();
        let said = sshd.hostile_second_sftp(mode);
        let new: Vec<String> = (0..3).map(|i| format!("new{i}")).collect();
        let outcome = push(&leaks, &credd_plan(&sshd, &leaks, &new), false);
        let told = std::fs::read_to_string(&said).unwrap_or_default();
        assert!(told.starts_with(&format!("{mode}: answered request 0 of type 14")), "{mode}: the mkdirs did not go to the second channel: {told:?}");
        let failed = errors(&outcome);
        assert_eq!(failed.len(), 6, "{mode}: {failed:?}");
        assert!(failed.iter().all(|e| e.contains("is missing and cannot be created")), "{mode}: {failed:?}");
        assert!(new.iter().all(|a| !sshd.spool.join(a).exists()), "{mode}: a directory was made");
        assert!(temp_files(&sshd.spool).is_empty(), "{mode}: {:?}", temp_files(&sshd.spool));
        leaks.assert_clean();
    }
}

/// A push whose files are all there already reads each directory once (the listing's lstat
/// attributes say which files are there and what they are, and which stale temps lie beside
/// them) instead of looking at every file by name.
#[test]
fn a_push_lists_each_directory_once_instead_of_looking_at_each_file() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let spool = sshd.spool.to_str().unwrap().to_string();
    let accounts: Vec<String> = (0..3).map(|i| format!("acct{i}")).collect();
    let mut host_plan = credd_plan(&sshd, &leaks, &accounts);
    assert_all_delivered(&push(&leaks, &host_plan, false));
    // The credmon probe looks at the same `.top` and `.use` files before the push.
    keep_and_probe(&mut host_plan, &spool);
    let before = sshd.sftp_log().len();
    let outcome = push(&leaks, &host_plan, false);
    assert_all_delivered(&outcome);
    assert!(outcome.files.iter().all(|f| f.kept), "everything was there: {:?}", outcome.files);
    let seen = &outcome.credmon[0].files;
    assert_eq!(seen.len(), accounts.len());
    for (f, pair) in seen.iter().zip(host_plan.files.chunks(2)) {
        let mtime = |path: &str| Ok(Some(std::fs::symlink_metadata(path).unwrap().mtime()));
        assert_eq!((f.top.clone(), f.use_file.clone()), (mtime(&pair[0].path), mtime(&pair[1].path)), "{}", f.id);
    }
    let log = sshd.sftp_log()[before..].to_string();
    for f in &host_plan.files {
        assert!(!log.contains(&format!("lstat name \"{}\"", f.path)), "{} looked at by name:\n{log}", f.path);
        // A kept `.top` is compared in one read: its open handle showed its whole size.
        let reads = if f.keep_if_same { 1 } else { 0 };
        assert_eq!(log.matches(&format!("read \"{}\"", f.path)).count(), reads, "{}:\n{log}", f.path);
    }
    // One listing of each account directory serves the probe and the push; one listing of the
    // spool judges the account directories and shows their `.mark`s.
    for account in &accounts {
        let dir = format!("{spool}/{account}");
        assert_eq!(log.matches(&format!("opendir \"{dir}\"")).count(), 1, "{dir}:\n{log}");
        for looked_at in [dir.clone(), format!("{dir}.mark")] {
            assert!(!log.contains(&format!("lstat name \"{looked_at}\"")), "{looked_at} looked at by name:\n{log}");
        }
    }
    assert_eq!(log.matches(&format!("opendir \"{spool}\"")).count(), 1, "{log}");
    // Many requests at a time: every account directory is opened before the first is read, and
    // every kept `.top` before the first of them is read.
    let at = |needle: String| log.find(&needle).unwrap_or_else(|| panic!("{needle}:\n{log}"));
    let last_opendir = accounts.iter().map(|a| at(format!("opendir \"{spool}/{a}\""))).max().unwrap();
    let first_readdir = accounts.iter().map(|a| at(format!("readdir \"{spool}/{a}\""))).min().unwrap();
    assert!(last_opendir < first_readdir, "directories listed one after another:\n{log}");
    let kept: Vec<&str> = host_plan.files.iter().filter(|f| f.keep_if_same).map(|f| f.path.as_str()).collect();
    let last_open = kept.iter().map(|p| at(format!("open \"{p}\" flags READ"))).max().unwrap();
    let first_read = kept.iter().map(|p| at(format!("read \"{p}\""))).min().unwrap();
    assert!(last_open < first_read, "kept files compared one after another:\n{log}");
    // Nothing is written, so no directory's canonical path is needed.
    assert!(!log.contains("realpath"), "{log}");
    leaks.assert_clean();
}

/// A server that allows only two channels at once (sshd's `MaxSessions 2`) cannot have the
/// second SFTP channel open beside SFTP and a command: the second channel makes way, and the
/// host gets every file delivered, looked at and compared one request at a time.
#[test]
fn a_server_allowing_two_channels_gets_its_files_one_request_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let mut sshd = Sshd::start(tmp.path(), &leaks);
    sshd.limit_sessions(2);
    let spool = sshd.spool.to_str().unwrap().to_string();
    let accounts: Vec<String> = (0..3).map(|i| format!("acct{i}")).collect();
    let mut host_plan = credd_plan(&sshd, &leaks, &accounts);
    assert_all_delivered(&push(&leaks, &host_plan, false));
    // The probe's listing starts the second channel before the account ids are looked up.
    keep_and_probe(&mut host_plan, &spool);
    let outcome = push(&leaks, &host_plan, false);
    assert_all_delivered(&outcome);
    assert!(outcome.files.iter().all(|f| f.kept), "everything was there: {:?}", outcome.files);
    assert_eq!(outcome.credmon[0].files.len(), accounts.len());
    // A changed `.top` is written again, without the second channel.
    let top = host_plan.files.iter().position(|f| !f.only_if_absent).unwrap();
    std::fs::write(&host_plan.files[top].path, "changed").unwrap();
    let outcome = push(&leaks, &host_plan, false);
    assert_all_delivered(&outcome);
    assert!(!outcome.files[top].kept, "{:?}", outcome.files[top]);
    assert_eq!(std::fs::read(&host_plan.files[top].path).unwrap(), host_plan.files[top].content.expose().as_bytes());
    leaks.assert_clean();
}

/// A `.top` asked to be kept when it already holds its content is left alone, down to the
/// byte: one whose bytes, mode or owner differ is replaced as usual, and the credmon is woken
/// only for what was written.
#[test]
fn a_file_already_holding_its_content_is_left_alone_and_anything_else_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let accounts: Vec<String> = (0..3).map(|i| format!("acct{i}")).collect();
    let mut host_plan = credd_plan(&sshd, &leaks, &accounts);
    host_plan.signal_credmon = vec![Credmon { spool: sshd.spool.to_str().unwrap().into(), user: "root".into() }];
    assert_all_delivered(&push(&leaks, &host_plan, false));
    let tops: Vec<usize> = (0..host_plan.files.len()).filter(|&i| !host_plan.files[i].only_if_absent).collect();
    for &i in &tops {
        host_plan.files[i].keep_if_same = true;
    }
    let pushed_again = |plan: &HostPlan| {
        let before = sshd.sftp_log().len();
        let outcome = push(&leaks, plan, false);
        assert_all_delivered(&outcome);
        let log = sshd.sftp_log()[before..].to_string();
        let written: Vec<bool> = plan
            .files
            .iter()
            .map(|f| {
                let (dir, name) = f.path.rsplit_once('/').unwrap();
                log.contains(&format!("{dir}/.{name}.tb-"))
            })
            .collect();
        // The credmon is looked for (its pid file read) only when something was written.
        let woke = log.contains(&format!("{}/pid\"", sshd.spool.to_str().unwrap()));
        (outcome, written, woke)
    };

    // Unchanged: nothing written, nothing renamed, no credmon woken.
    let (outcome, written, woke) = pushed_again(&host_plan);
    assert_eq!(written, vec![false; host_plan.files.len()], "nothing is rewritten");
    assert!(outcome.files.iter().all(|o| o.kept && o.landed_mtime.is_none()), "{:?}", outcome.files);
    assert!(!woke, "no credmon is woken when nothing was written");

    // Same size, other bytes; the right bytes with another mode; with another owner.
    let path = |i: usize| std::path::PathBuf::from(&host_plan.files[tops[i]].path);
    let mut altered = std::fs::read(path(0)).unwrap();
    let last = altered.len() - 2;
    altered[last] ^= 1;
    std::fs::write(path(0), &altered).unwrap();
    std::fs::set_permissions(path(1), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(path(2), Some(0), Some(0)).unwrap();
    let (outcome, written, woke) = pushed_again(&host_plan);
    for (i, f) in host_plan.files.iter().enumerate() {
        let rewritten = tops.contains(&i);
        assert_eq!(written[i], rewritten, "{}: {:?}", f.path, outcome.files[i]);
        assert_eq!(outcome.files[i].kept, !rewritten, "{}", f.path);
        if rewritten {
            assert_eq!(std::fs::read(&f.path).unwrap(), f.content.expose().as_bytes());
            assert_eq!(mode_of(Path::new(&f.path)), f.mode);
        }
    }
    assert!(woke, "the credmon is woken for what changed");
    leaks.assert_clean();
}

#[test]
fn six_hundred_files_for_three_hundred_credd_destinations_land_in_one_push() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let (uid, gid) = test_user();
    let accounts: Vec<String> = (0..300).map(|i| format!("user{i:03}")).collect();
    let host_plan = credd_plan(&sshd, &leaks, &accounts);
    assert_eq!(host_plan.files.len(), 600);

    let outcome = push(&leaks, &host_plan, false);
    assert_all_delivered(&outcome);
    for f in &host_plan.files {
        let p = Path::new(&f.path);
        let meta = std::fs::symlink_metadata(p).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!((meta.uid(), meta.gid(), mode_of(p)), (uid, gid, f.mode), "{}", f.path);
        assert_eq!(std::fs::read(p).unwrap(), f.content.expose().as_bytes());
    }
    // The id lookup and the owners of 300 new directories (split to stay under the packet limit).
    assert!(exec_count(&sshd) <= 4, "{} exec requests", exec_count(&sshd));
    assert!(temp_files(&sshd.spool).is_empty());
    leaks.assert_clean();
}

#[test]
fn the_credd_mark_is_removed_and_stale_temp_files_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let account_dir = sshd.spool.join("cmsprod");
    std::fs::create_dir(&account_dir).unwrap();
    std::fs::set_permissions(&account_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mark = sshd.spool.join("cmsprod.mark");
    std::fs::write(&mark, "").unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "victim").unwrap();
    // What a killed run leaves, and look-alikes that are not ours to remove.
    let stale = account_dir.join(".cms_wmagent.top.tb-0123456789abcdef");
    let stale_use = account_dir.join(".cms_wmagent.use.tb-fedcba9876543210");
    std::fs::write(&stale, "old token").unwrap();
    std::fs::write(&stale_use, "old token").unwrap();
    let link = account_dir.join(".cms_wmagent.top.tb-aaaaaaaaaaaaaaaa");
    symlink(&victim, &link).unwrap();
    let keep = [account_dir.join(".other.top.tb-0123456789abcdef"), account_dir.join(".cms_wmagent.top.tb-0123456789ABCDEF")];
    for k in &keep {
        std::fs::write(k, "not ours").unwrap();
    }

    let host_plan = credd_plan(&sshd, &leaks, &["cmsprod".to_string()]);
    assert_all_delivered(&push(&leaks, &host_plan, false));
    assert!(!mark.exists(), "the credd's sweep mark must go when a credential is stored");
    assert!(!stale.exists() && !stale_use.exists(), "stale temp files must be removed");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "a link is not a temp file");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
    for k in &keep {
        assert!(k.exists(), "{} is not one of ours", k.display());
    }

    // A mark that is not a regular file is left alone, and the delivery still lands.
    std::fs::create_dir(&mark).unwrap();
    assert_all_delivered(&push(&leaks, &credd_plan(&sshd, &leaks, &["cmsprod".to_string()]), false));
    assert!(mark.is_dir());
    leaks.assert_clean();
}

/// The condor group the spool layout names, created on this machine when missing.
fn condor_gid() -> u32 {
    let gid = || {
        let out = std::process::Command::new("getent").args(["group", "condor"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split(':').nth(2).and_then(|g| g.trim().parse().ok())
    };
    if let Some(g) = gid() {
        return g;
    }
    let out = std::process::Command::new("groupadd").args(["-r", "condor"]).output().expect("run groupadd");
    // 9: created meanwhile by another test.
    assert!(out.status.success() || out.status.code() == Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    gid().expect("condor group")
}

#[test]
fn the_remote_write_rule_on_real_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let (uid, gid) = test_user();
    let token = minted(&leaks, "hvs.RULE");
    let spool = sshd.spool.to_str().unwrap().to_string();
    let file = |account: &str| RemoteFile { root: spool.clone(), ..plain_file("f", &sshd.spool.join(account).join("svc.top"), &token, 0o600, Some(test_owner())) };
    let victims = tmp.path().join("victims");
    std::fs::create_dir(&victims).unwrap();
    std::fs::write(victims.join("svc.top"), "victim").unwrap();

    // HTCondor's layout: spool 2770 root:condor, account directory owned by the credd's user.
    std::fs::set_permissions(&sshd.spool, std::fs::Permissions::from_mode(0o2770)).unwrap();
    std::os::unix::fs::chown(&sshd.spool, Some(0), Some(condor_gid())).unwrap();
    let layout = |account: &str, make: &dyn Fn(&Path)| {
        let dir = sshd.spool.join(account);
        make(&dir);
        let (d, _) = credd_layout(&spool, account, "svc", &CreddContents::new(&top_file(&leaks), &token), &test_owner());
        push(&leaks, &plan(&sshd, "root", vec![d], vec![file(account)], vec![]), false)
    };
    let owned_by_credd_user = layout("good", &|d| {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    });
    assert_all_delivered(&owned_by_credd_user);
    let linked = layout("linked", &|d| symlink(&victims, d).unwrap());
    let group_writable = layout("groupw", &|d| {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o770)).unwrap();
    });
    let someone_elses = layout("other", &|d| {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    });
    for (outcome, account, why) in [
        (&linked, "linked", "is a symbolic link"),
        (&group_writable, "groupw", "is writable by others than"),
        (&someone_elses, "other", "is owned by uid 65534"),
    ] {
        match &outcome.files[0].result {
            Err(e @ DeliverError::UnsafeDirectory { dir, reason, .. }) => {
                assert_eq!(dir, &format!("{spool}/{account}"));
                assert!(reason.contains(why), "{reason}");
                assert!(e.to_string().contains("remote-write rule"), "{e}");
            }
            other => panic!("{account}: expected the rule to refuse, got {other:?}"),
        }
    }
    assert_eq!(std::fs::read_to_string(victims.join("svc.top")).unwrap(), "victim");
    assert_eq!(std::fs::read_dir(&victims).unwrap().count(), 1, "nothing is written through a link");

    // All four in one push: judged from one listing of the spool, with the same verdicts.
    let accounts = ["good", "linked", "groupw", "other"];
    let dirs = accounts.iter().map(|a| credd_layout(&spool, a, "svc", &CreddContents::new(&top_file(&leaks), &token), &test_owner()).0).collect();
    let before = sshd.sftp_log().len();
    let together = push(&leaks, &plan(&sshd, "root", dirs, accounts.iter().map(|a| file(a)).collect(), vec![]), false);
    let log = sshd.sftp_log()[before..].to_string();
    assert_eq!(log.matches(&format!("opendir \"{spool}\"")).count(), 1, "{log}");
    for (i, account) in accounts.iter().enumerate() {
        assert!(!log.contains(&format!("lstat name \"{spool}/{account}\"")), "{account} looked at by name:\n{log}");
        let expected = match &together.files[i].result {
            Ok(()) => "delivered".to_string(),
            Err(DeliverError::UnsafeDirectory { dir, reason, .. }) if dir == &format!("{spool}/{account}") => reason.clone(),
            Err(e) => e.to_string(),
        };
        let alone = match &[&owned_by_credd_user, &linked, &group_writable, &someone_elses][i].files[0].result {
            Ok(()) => "delivered".to_string(),
            Err(DeliverError::UnsafeDirectory { reason, .. }) => reason.clone(),
            Err(e) => e.to_string(),
        };
        assert_eq!(expected, alone, "{account}");
    }
    assert_eq!(std::fs::read_dir(&victims).unwrap().count(), 1, "nothing is written through a link");

    // A spool writable by a group that is not condor is refused as a whole.
    std::os::unix::fs::chown(&sshd.spool, Some(0), Some(gid)).unwrap();
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], vec![file("good")], vec![]), false);
    assert!(matches!(&outcome.files[0].result, Err(DeliverError::UnsafeDirectory { dir, .. }) if dir == &spool), "{:?}", errors(&outcome));
    leaks.assert_clean();
}

#[test]
fn read_back_hashes_what_is_there_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let held = sshd.spool.join("held.top");
    let old = minted(&leaks, "hvs.OLD");
    std::fs::write(&held, old.expose()).unwrap();
    let big = sshd.spool.join("big");
    std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).unwrap();
    let link = sshd.spool.join("link.top");
    symlink(&held, &link).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let asked = vec![path(&held), path(&sshd.spool.join("none.top")), path(&big), path(&link), path(&sshd.spool)];

    let new = minted(&leaks, "hvs.NEW");
    let mut host_plan = plan(&sshd, "root", vec![], vec![plain_file("f", &held, &new, 0o600, None)], vec![]);
    host_plan.read_back = asked.clone();
    let outcome = push(&leaks, &host_plan, false);
    assert_all_delivered(&outcome);
    assert_eq!(std::fs::read_to_string(&held).unwrap(), new.expose());
    let got: Vec<(String, Result<Option<String>, String>)> =
        outcome.read_back.iter().map(|(p, r)| (p.clone(), r.as_ref().map_err(|e| e.to_string()).cloned())).collect();
    assert_eq!(got[0], (asked[0].clone(), Ok(Some(old.short_hash()))), "the digest from before the write");
    assert_eq!(got[1], (asked[1].clone(), Ok(None)));
    for (i, why) in [(2, "larger than"), (3, "not a regular file"), (4, "not a regular file")] {
        let err = got[i].1.as_ref().unwrap_err();
        assert!(err.contains(why) && err.contains(&asked[i]) && err.contains("schedd-test"), "{err}");
    }

    let standalone = read_back(&sshd.target("schedd-test", "root"), &asked[..2]).unwrap();
    assert_eq!(standalone[0].1.as_ref().unwrap(), &Some(new.short_hash()));
    assert_eq!(standalone[0].1.as_ref().unwrap(), &Some(short_hash_bytes(new.expose().as_bytes())));
    leaks.assert_clean();
}

#[test]
fn revoke_removes_only_regular_files_in_directories_that_pass_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let sshd = Sshd::start(tmp.path(), &leaks);
    let (uid, gid) = test_user();
    let spool = sshd.spool.to_str().unwrap().to_string();
    let victims = tmp.path().join("victims");
    std::fs::create_dir(&victims).unwrap();
    std::fs::write(victims.join("svc.top"), "victim").unwrap();
    std::fs::write(victims.join("x.top"), "victim").unwrap();
    let account = sshd.spool.join("acct");
    std::fs::create_dir(&account).unwrap();
    std::os::unix::fs::chown(&account, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&account, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(account.join("svc.top"), "token").unwrap();
    std::fs::write(account.join(".svc.top.tb-0123456789abcdef"), "stale").unwrap();
    symlink(victims.join("x.top"), account.join("x.top")).unwrap();
    symlink(&victims, sshd.spool.join("linked")).unwrap();

    let removal = |p: &str, owner: Option<Owner>| Removal { path: format!("{spool}/{p}"), root: spool.clone(), dir_owner: owner };
    let removals = vec![
        removal("acct/svc.top", Some(test_owner())),
        removal("acct/x.top", Some(test_owner())),
        removal("linked/svc.top", None),
        removal("acct/gone.top", Some(test_owner())),
        // The account directory belongs to the test user: without saying so, it is refused.
        removal("acct/svc.use", None),
    ];
    let out = remove_from_host(&sshd.target("schedd-test", "root"), &removals).unwrap();
    let results: Vec<Result<(), String>> = out.iter().map(|(_, r)| r.as_ref().map(|_| ()).map_err(|e| e.to_string())).collect();
    assert_eq!(results[0], Ok(()));
    assert!(!account.join("svc.top").exists());
    assert!(!account.join(".svc.top.tb-0123456789abcdef").exists(), "stale temp files go too");
    assert!(results[1].as_ref().unwrap_err().contains("not a regular file"), "{:?}", results[1]);
    assert!(results[2].as_ref().unwrap_err().contains("is a symbolic link"), "{:?}", results[2]);
    assert_eq!(results[3], Ok(()), "already gone counts as removed");
    assert!(results[4].as_ref().unwrap_err().contains("is owned by uid"), "{:?}", results[4]);
    assert_eq!(std::fs::read_to_string(victims.join("svc.top")).unwrap(), "victim");
    assert_eq!(std::fs::read_to_string(victims.join("x.top")).unwrap(), "victim");
    assert!(std::fs::symlink_metadata(account.join("x.top")).is_ok());
    leaks.assert_clean();
}

#[test]
fn a_server_without_posix_rename_gets_batched_mv_under_the_packet_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let leaks = Leaks::default();
    let mut sshd = Sshd::start(tmp.path(), &leaks);
    sshd.hide_posix_rename();
    let (uid, gid) = test_user();
    let dir = sshd.spool.join("d".repeat(100));
    std::fs::create_dir(&dir).unwrap();
    let token = minted(&leaks, "hvs.NOPOSIXRENAME");
    // Long names: 200 `mv` commands are far beyond one exec request's limit.
    let files: Vec<RemoteFile> = (0..200)
        .map(|i| RemoteFile { root: sshd.spool.to_str().unwrap().into(), ..plain_file("f", &dir.join(format!("{i:03}{}.top", "x".repeat(100))), &token, 0o600, Some(test_owner())) })
        .collect();
    std::fs::write(&files[0].path, "old").unwrap();
    let execs_before = exec_count(&sshd);
    let outcome = push(&leaks, &plan(&sshd, "root", vec![], files.clone(), vec![]), false);
    assert_all_delivered(&outcome);
    for f in &files {
        let meta = std::fs::symlink_metadata(&f.path).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (uid, gid, 0o600));
        assert_eq!(std::fs::read_to_string(&f.path).unwrap(), token.expose());
    }
    let log = sshd.sftp_log();
    assert!(!log.contains("posix-rename old"), "the extension was hidden, so never used");
    let execs = exec_count(&sshd) - execs_before;
    assert!(execs >= 3, "the id lookup and the mv batches, split: {execs}");
    assert!(temp_files(&sshd.spool).is_empty());
    leaks.assert_clean();
}
