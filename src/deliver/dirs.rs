//! The remote-write rule applied to every directory a host plan writes into: each directory
//! from a file's root down to its own is lstat'ed and judged ([`super::rule`]); missing managed
//! directories are created with their final mode and given their owner with `chown -h` (one exec
//! for all); each directory a file is written in has its canonical path taken before anything is
//! written. Directories that share a parent (a spool's account directories) are judged from one
//! listing of it, not each by name. Where the server takes a second SFTP channel
//! ([`super::pipe`]), each of these steps goes out for every directory at once: the mkdirs of a
//! level, the lstats before and after the owners are set, the realpaths.
//!
//! Must never create a directory whose parent did not pass, nor set an owner or mode by name on
//! anything it did not just create.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ssh2::FileStat;

use super::ids::{CONDOR_GROUP, CONDOR_USER, Ids};
use super::session::{Remote, rpath, sh_quote};
use super::{DeliverError, HostPlan, Listings, RemoteDir, Work, batch, normalize_dir, pipe, rule, split_parent};

/// The verdict of the remote-write rule on every directory the plan touches, with the managed
/// directories it had to create, and each directory's canonical path (to see later that a temp
/// file landed where it was meant to).
pub(super) struct Dirs<'p> {
    managed: HashMap<String, &'p RemoteDir>,
    managed_owner: HashMap<String, Result<(u32, u32), String>>,
    condor_gid: Option<u32>,
    condor_uid: Option<u32>,
    /// (path, judged as the root) → verdict.
    verdicts: HashMap<(String, bool), Result<(), String>>,
    /// Directories created in this push that still need their owner set.
    created: Vec<String>,
    canonical: HashMap<String, Result<String, String>>,
}

impl<'p> Dirs<'p> {
    pub fn new(plan: &'p HostPlan, ids: &Ids) -> Self {
        let mut managed = HashMap::new();
        let mut managed_owner = HashMap::new();
        for d in &plan.dirs {
            let path = normalize_dir(&d.path).to_string();
            if let Some(o) = &d.owner {
                managed_owner.insert(path.clone(), ids.owner(o).map_err(|e| format!("cannot resolve its owner {o}: {e}")));
            }
            managed.insert(path, d);
        }
        Dirs {
            managed,
            managed_owner,
            condor_gid: ids.group(CONDOR_GROUP).ok(),
            condor_uid: ids.user(CONDOR_USER).ok().map(|(uid, _)| uid),
            verdicts: HashMap::new(),
            created: Vec::new(),
            canonical: HashMap::new(),
        }
    }

    /// Applies the rule to every pending file's directories (creating missing managed ones unless
    /// `dry_run`), then sets the owner of what it created (one exec), then fails each file whose
    /// way is not clear, naming the directory. A directory below a root with siblings to judge
    /// is judged as its parent's listing shows it (`listed` gains that listing).
    pub fn judge_all(&mut self, remote: &Remote, listed: &mut Listings, work: &mut [Work], dry_run: bool) {
        let chains: Vec<Option<Vec<String>>> = work
            .iter()
            .map(|w| if w.pending() { rule::chain(&w.root, split_parent(&w.path).0) } else { None })
            .collect();
        let below_root: BTreeSet<&str> = chains.iter().flatten().flat_map(|chain| chain.iter().skip(1).map(String::as_str)).collect();
        let mut siblings: HashMap<&str, usize> = HashMap::new();
        for dir in &below_root {
            *siblings.entry(split_parent(dir).0).or_default() += 1;
        }
        listed.add(remote, below_root.iter().copied().filter(|dir| siblings[split_parent(dir).0] > 1));
        // Each chain is walked down until a directory fails or is missing; the missing ones of
        // every chain are created together, then the walk goes on below them.
        let mut at = vec![0; chains.len()];
        loop {
            let mut missing: BTreeMap<&str, u32> = BTreeMap::new();
            for (chain, at) in chains.iter().zip(&mut at) {
                let Some(chain) = chain else { continue };
                while let Some(dir) = chain.get(*at) {
                    match self.judge(remote, listed, dir, *at == 0, dry_run) {
                        Found::Judged(Ok(())) => *at += 1,
                        Found::Judged(Err(_)) => break,
                        Found::Missing(mode) => {
                            missing.insert(dir, mode);
                            break;
                        }
                    }
                }
            }
            if missing.is_empty() {
                break;
            }
            self.create(remote, &missing);
        }
        self.own_created(remote);
        for (w, chain) in work.iter_mut().zip(&chains) {
            let Some(chain) = chain else { continue };
            for (i, dir) in chain.iter().enumerate() {
                if let Some(Err(reason)) = self.verdicts.get(&(dir.clone(), i == 0)) {
                    w.failed = Some(DeliverError::UnsafeDirectory {
                        host: remote.host.clone(),
                        path: w.path.clone(),
                        dir: dir.clone(),
                        reason: reason.clone(),
                    });
                    break;
                }
            }
        }
    }

    /// Takes the canonical path of each directory a pending file is about to be written in,
    /// once it passed the rule: a link swapped in later would send the temp file elsewhere,
    /// which `write_temp` then sees.
    pub fn take_canonical(&mut self, remote: &Remote, work: &[Work]) {
        let parents: BTreeSet<&str> =
            work.iter().filter(|w| w.pending()).map(|w| split_parent(&w.path).0).filter(|p| !self.canonical.contains_key(*p)).collect();
        let parents: Vec<&str> = parents.into_iter().collect();
        let canonical = remote
            .pipelined_for(parents.len(), |p| p.realpath_each(&parents))
            .unwrap_or_else(|| parents.iter().map(|p| realpath(remote, p)).collect());
        for (parent, canonical) in parents.into_iter().zip(canonical) {
            self.canonical.insert(parent.to_string(), canonical);
        }
    }

    fn place(&self, dir: &str, is_root: bool) -> rule::Place {
        let managed_owner = match self.managed_owner.get(dir) {
            Some(Ok((uid, _))) => Some(*uid),
            _ => None,
        };
        rule::Place { is_root, condor_gid: self.condor_gid, condor_uid: self.condor_uid, managed_owner }
    }

    /// The verdict on `dir`, or the mode to create it with: a managed directory that is missing
    /// below a root (unless `dry_run`, where it passes), once its parent passed.
    fn judge(&mut self, remote: &Remote, listed: &Listings, dir: &str, is_root: bool, dry_run: bool) -> Found {
        let key = (dir.to_string(), is_root);
        if let Some(v) = self.verdicts.get(&key) {
            return Found::Judged(v.clone());
        }
        let verdict = match listed.lstat(remote, dir) {
            Ok(Some(st)) => rule::judge(&st, self.place(dir, is_root)),
            Ok(None) => match self.managed.get(dir) {
                Some(_) if is_root => Err("does not exist".into()),
                Some(_) if dry_run => Ok(()),
                Some(d) => return Found::Missing(d.mode),
                None => Err("does not exist".into()),
            },
            Err(e) => Err(format!("cannot lstat: {e}")),
        };
        self.record(remote, dir, is_root, verdict.clone());
        Found::Judged(verdict)
    }

    fn record(&mut self, remote: &Remote, dir: &str, is_root: bool, verdict: Result<(), String>) {
        if let Err(reason) = &verdict {
            tracing::debug!(host = %remote.host, path = %dir, %reason, "directory refused");
        }
        self.verdicts.insert((dir.to_string(), is_root), verdict);
    }

    /// mkdir of every missing directory with its final mode (never more open than asked, even
    /// for a moment), all at once where the server allows. Each one's parent was judged just
    /// before. A mkdir left unanswered may have happened: that directory is refused, and the
    /// session is over.
    fn create(&mut self, remote: &Remote, missing: &BTreeMap<&str, u32>) {
        let dirs: Vec<(&str, u32)> = missing.iter().map(|(d, m)| (*d, *m)).collect();
        let outcomes: Vec<Result<(), String>> = match remote.mkdir_each(&dirs) {
            Some(statuses) => statuses
                .into_iter()
                .map(|status| match status {
                    Some(pipe::FX_OK) => Ok(()),
                    Some(code) => Err(pipe::status_text(code)),
                    None => Err("the connection broke before the answer came".into()),
                })
                .collect(),
            None => dirs
                .iter()
                .map(|&(dir, mode)| {
                    let sftp = remote.sftp().map_err(|e| e.to_string())?;
                    sftp.mkdir(rpath(dir), mode as i32).map_err(|e| {
                        remote.note(&e);
                        e.to_string()
                    })
                })
                .collect(),
        };
        for ((dir, mode), outcome) in dirs.into_iter().zip(outcomes) {
            let verdict = outcome.map_err(|e| format!("is missing and cannot be created: {e}"));
            if verdict.is_ok() {
                tracing::info!(host = %remote.host, path = %dir, mode = format!("{mode:o}"), "directory created");
                self.created.push(dir.to_string());
            }
            self.record(remote, dir, false, verdict);
        }
    }

    /// Gives every directory created in this push its owner with `chown -h` (SFTP v3 cannot set
    /// the owner of a directory without following a link), in one exec request, then judges it
    /// again: a created directory that ends up other than expected is refused.
    fn own_created(&mut self, remote: &Remote) {
        let created = std::mem::take(&mut self.created);
        let mut commands = Vec::new();
        let mut members = Vec::new();
        let before = lstat_all(remote, &created);
        for (dir, before) in created.iter().zip(before) {
            let wanted = match self.managed_owner.get(dir) {
                None => continue,
                Some(Err(e)) => {
                    self.verdicts.insert((dir.clone(), false), Err(e.clone()));
                    continue;
                }
                Some(Ok(pair)) => *pair,
            };
            let now = before.ok().and_then(|st| Some((st.uid?, st.gid?)));
            if now != Some(wanted) {
                commands.push(format!("chown -h {}:{} -- {}", wanted.0, wanted.1, sh_quote(dir)));
                members.push(dir.clone());
            }
        }
        let results = if commands.is_empty() { Vec::new() } else { batch::run(remote, "set owner of created directories", commands) };
        for (dir, result) in members.iter().zip(results) {
            if let Err(detail) = result {
                // A directory with the wrong owner would lock the credd out; leave things as they were.
                if let Ok(sftp) = remote.sftp() {
                    let _ = sftp.rmdir(rpath(dir));
                }
                self.verdicts.insert((dir.clone(), false), Err(format!("was created but its owner cannot be set: {detail}")));
            }
        }
        let judged: Vec<&String> = created.iter().filter(|dir| !matches!(self.verdicts.get(&((*dir).clone(), false)), Some(Err(_)))).collect();
        let after = lstat_all(remote, &judged);
        for (dir, after) in judged.into_iter().zip(after) {
            let requested = self.managed.get(dir).map(|d| d.mode).unwrap_or(0);
            let verdict = match after {
                Ok(st) => rule::judge(&st, self.place(dir, false)).and_then(|()| {
                    let mode = st.perm.unwrap_or(0) & 0o777;
                    if mode & !requested != 0 {
                        Err(format!("was created with mode {mode:04o}, more open than {requested:04o}"))
                    } else {
                        Ok(())
                    }
                }),
                Err(e) => Err(format!("cannot lstat after creating it: {e}")),
            };
            self.verdicts.insert((dir.clone(), false), verdict);
        }
    }

    /// The server's canonical path of a directory that passed the rule, as taken by
    /// [`judge_all`](Self::judge_all) before anything was written.
    pub fn canonical(&self, dir: &str) -> Result<String, String> {
        self.canonical.get(dir).cloned().unwrap_or_else(|| Err("its directory was not looked at".into()))
    }
}

/// lstat of each of `dirs`, all at once where the server allows.
fn lstat_all<S: AsRef<str>>(remote: &Remote, dirs: &[S]) -> Vec<Result<FileStat, String>> {
    let paths: Vec<&str> = dirs.iter().map(AsRef::as_ref).collect();
    match remote.pipelined_for(paths.len(), |p| p.lstat_each(&paths)) {
        Some(stats) => stats.into_iter().map(|st| st.map_err(pipe::status_text)).collect(),
        None => paths.iter().map(|p| remote.lstat(p).map_err(|e| e.to_string())).collect(),
    }
}

/// What the walk down a chain found at one directory.
enum Found {
    Judged(Result<(), String>),
    /// A managed directory to create, with this mode.
    Missing(u32),
}

pub(super) fn realpath(remote: &Remote, path: &str) -> Result<String, String> {
    let sftp = remote.sftp().map_err(|e| e.to_string())?;
    match sftp.realpath(rpath(path)) {
        Ok(p) => p.to_str().map(str::to_string).ok_or_else(|| "realpath is not UTF-8".to_string()),
        Err(e) => {
            remote.note(&e);
            Err(format!("realpath failed: {e}"))
        }
    }
}

