//! Taking credentials off a host (the `revoke` drill): only regular files at recorded paths, in
//! directories that pass the remote-write rule, over SFTP; stale temp files beside them go too.
//!
//! Must never follow a link, remove anything that is not a regular file, or run a shell command
//! on a path.

use std::collections::{BTreeSet, HashMap};

use super::credmon::is_no_such_file;
use super::ids::{CONDOR_GROUP, CONDOR_USER, Ids};
use super::session::{Remote, rpath};
use super::{DeliverError, HostTarget, Listings, Owner, check_path, check_root, is_regular, normalize_dir, rule, split_parent, sweep_stale};

/// A path and what happened to it.
pub type PathOutcome = (String, Result<(), DeliverError>);

/// One recorded file to remove.
#[derive(Clone, Debug)]
pub struct Removal {
    pub path: String,
    /// As [`RemoteFile::root`].
    pub root: String,
    /// Besides root, who may own the directories below the root (a credd account directory's
    /// owner; the account whose home holds an IDToken).
    pub dir_owner: Option<Owner>,
}

/// Removes credentials from a host (the `revoke` drill), over SFTP on one session with the same
/// host-key and login rules as a delivery: each path is removed only if it is a regular file
/// (lstat) in directories that pass the remote-write rule, and stale temp files beside it go too.
/// A path that is already gone counts as removed. `Err` when the host could not be reached.
pub fn remove_from_host(target: &HostTarget, removals: &[Removal]) -> Result<Vec<PathOutcome>, DeliverError> {
    let span = tracing::info_span!("remove", host = %target.name);
    let _entered = span.enter();
    for r in removals {
        if let Err(reason) = check_path(&r.path).and_then(|()| check_root(&r.root, &r.path)) {
            return Err(DeliverError::InvalidPath { host: target.name.clone(), path: r.path.clone(), reason });
        }
    }
    if removals.is_empty() {
        return Ok(Vec::new());
    }
    let remote = Remote::connect(target)?;
    let mut users = BTreeSet::from([CONDOR_USER.to_string()]);
    let mut groups = BTreeSet::from([CONDOR_GROUP.to_string()]);
    for o in removals.iter().filter_map(|r| r.dir_owner.as_ref()) {
        Ids::want(o, &mut users, &mut groups);
    }
    let ids = Ids::resolve(&remote, &users, &groups);
    let condor_gid = ids.group(CONDOR_GROUP).ok();
    let condor_uid = ids.user(CONDOR_USER).ok().map(|(uid, _)| uid);
    let mut verdicts: HashMap<(String, bool, Option<u32>), Result<(), String>> = HashMap::new();
    let mut out = Vec::new();
    let mut cleared = Vec::new();
    for r in removals {
        let parent = split_parent(&r.path).0;
        let dir_owner = r.dir_owner.as_ref().and_then(|o| ids.owner(o).ok()).map(|(uid, _)| uid);
        let chain = rule::chain(normalize_dir(&r.root), parent).unwrap_or_default();
        let mut refused = None;
        for (i, dir) in chain.iter().enumerate() {
            let managed_owner = if i > 0 { dir_owner } else { None };
            let verdict = verdicts.entry((dir.clone(), i == 0, managed_owner)).or_insert_with(|| match remote.lstat_opt(dir) {
                Ok(Some(st)) => rule::judge(&st, rule::Place { is_root: i == 0, condor_gid, condor_uid, managed_owner }),
                Ok(None) => Err("does not exist".into()),
                Err(e) => Err(format!("cannot lstat: {e}")),
            });
            if let Err(reason) = verdict {
                refused = Some((dir.clone(), reason.clone()));
                break;
            }
        }
        let result = match refused {
            // A directory that is gone holds nothing to remove.
            Some((_, reason)) if reason == "does not exist" => Ok(()),
            Some((dir, reason)) => Err(DeliverError::UnsafeRemove { host: remote.host.clone(), path: r.path.clone(), dir, reason }),
            None => {
                cleared.push(r.path.as_str());
                remove_regular(&remote, &r.path)
                    .map_err(|detail| DeliverError::Remove { host: remote.host.clone(), path: r.path.clone(), detail })
            }
        };
        match &result {
            Ok(()) => tracing::info!(host = %remote.host, path = %r.path, "removed"),
            Err(e) => tracing::debug!(error = %e, "not removed"),
        }
        out.push((r.path.clone(), result));
    }
    let listed = Listings::read(&remote, cleared.iter().copied());
    sweep_stale(&remote, &listed, cleared.into_iter());
    Ok(out)
}

/// Unlinks `path` if it is a regular file; gone already counts as removed.
fn remove_regular(remote: &Remote, path: &str) -> Result<(), String> {
    match remote.lstat_opt(path) {
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("cannot lstat: {e}")),
        Ok(Some(st)) if is_regular(&st) => {}
        Ok(Some(_)) => return Err("is not a regular file; left alone".into()),
    }
    let sftp = remote.sftp().map_err(|e| e.to_string())?;
    match sftp.unlink(rpath(path)) {
        Ok(()) => Ok(()),
        Err(e) if is_no_such_file(&e) => Ok(()),
        Err(e) => {
            remote.note(&e);
            Err(format!("unlink failed: {e}"))
        }
    }
}

