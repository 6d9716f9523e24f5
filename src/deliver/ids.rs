//! Numeric ids of the accounts and groups a host plan names, resolved on the host itself (its
//! NSS: local files, LDAP, SSSD) with `id` and `getent`, all of them in one exec request per
//! host. SFTP carries owners as numbers only, so every owner change and every check of an
//! owner goes through these.
//!
//! Must never guess an id (`/etc/passwd` misses NSS accounts), nor run a command whose
//! arguments could be read as options.

use std::collections::{BTreeMap, BTreeSet};

use super::Owner;
use super::batch::{self, ItemError, one_line};
use super::session::{Remote, sh_quote};

/// The group the credmon gives the credential spool.
pub(crate) const CONDOR_GROUP: &str = "condor";
/// The account under whose privileges the credd creates account directories in the spool.
pub(crate) const CONDOR_USER: &str = "condor";

#[derive(Debug, Default)]
pub(crate) struct Ids {
    /// User name → (uid, primary gid).
    users: BTreeMap<String, Result<(u32, u32), String>>,
    groups: BTreeMap<String, Result<u32, String>>,
}

impl Ids {
    /// Resolves every name in one exec request (a few, for a very long list).
    pub fn resolve(remote: &Remote, users: &BTreeSet<String>, groups: &BTreeSet<String>) -> Ids {
        Ids::resolve_with(remote, users, groups, "resolve account ids", Vec::new()).0
    }

    /// [`Ids::resolve`], with `extra` commands run in the same exec request; their results, in
    /// order, come back beside the ids.
    pub fn resolve_with(
        remote: &Remote,
        users: &BTreeSet<String>,
        groups: &BTreeSet<String>,
        purpose: &str,
        extra: Vec<String>,
    ) -> (Ids, Vec<Result<String, ItemError>>) {
        let mut ids = Ids::default();
        let mut commands = Vec::new();
        let mut asked: Vec<(bool, String)> = Vec::new();
        for user in users {
            if let Err(e) = plain_name(user) {
                ids.users.insert(user.clone(), Err(e));
                continue;
            }
            commands.push(format!("{{ id -u {q} && id -g {q}; }}", q = sh_quote(user)));
            asked.push((true, user.clone()));
        }
        for group in groups {
            if let Err(e) = plain_name(group) {
                ids.groups.insert(group.clone(), Err(e));
                continue;
            }
            commands.push(format!("getent group {}", sh_quote(group)));
            asked.push((false, group.clone()));
        }
        if commands.is_empty() && extra.is_empty() {
            return (ids, Vec::new());
        }
        commands.extend(extra);
        let mut results = batch::run(remote, purpose, commands).into_iter();
        for ((is_user, name), result) in asked.into_iter().zip(results.by_ref()) {
            if is_user {
                ids.users.insert(name, result.map_err(|e| e.to_string()).and_then(|out| parse_id_pair(&out)));
            } else {
                ids.groups.insert(name, result.map_err(|_| "no such group".to_string()).and_then(|out| parse_group(&out)));
            }
        }
        (ids, results.collect())
    }

    pub fn user(&self, name: &str) -> Result<(u32, u32), String> {
        self.users.get(name).cloned().unwrap_or_else(|| Err("was not looked up".into()))
    }

    pub fn group(&self, name: &str) -> Result<u32, String> {
        self.groups.get(name).cloned().unwrap_or_else(|| Err("was not looked up".into()))
    }

    /// (uid, gid) of an owner: the named group, or the user's primary group when none is named.
    pub fn owner(&self, owner: &Owner) -> Result<(u32, u32), String> {
        let (uid, primary) = self.user(&owner.user).map_err(|e| format!("user {}: {e}", owner.user))?;
        if owner.group.is_empty() {
            return Ok((uid, primary));
        }
        let gid = self.group(&owner.group).map_err(|e| format!("group {}: {e}", owner.group))?;
        Ok((uid, gid))
    }

    /// Adds what `more` resolved (names already here were resolved the same way).
    pub fn extend(&mut self, more: Ids) {
        self.users.extend(more.users);
        self.groups.extend(more.groups);
    }

    /// The names of `users` and `groups` not resolved yet.
    pub fn unknown(&self, users: &BTreeSet<String>, groups: &BTreeSet<String>) -> (BTreeSet<String>, BTreeSet<String>) {
        (
            users.iter().filter(|u| !self.users.contains_key(*u)).cloned().collect(),
            groups.iter().filter(|g| !self.groups.contains_key(*g)).cloned().collect(),
        )
    }

    /// Names an owner needs looked up.
    pub fn want(owner: &Owner, users: &mut BTreeSet<String>, groups: &mut BTreeSet<String>) {
        users.insert(owner.user.clone());
        if !owner.group.is_empty() {
            groups.insert(owner.group.clone());
        }
    }
}

/// A name `id` and `getent` take as a name: not empty, no option look-alike, nothing a shell
/// or a colon-separated database could split.
fn plain_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with('-') || name.contains(|c: char| c == ':' || c.is_whitespace() || c.is_control()) {
        return Err("is not a plain account name".into());
    }
    Ok(())
}

/// `id -u` and `id -g` output: two numbers (joined with " | " by the batch runner).
fn parse_id_pair(out: &str) -> Result<(u32, u32), String> {
    let nums: Vec<&str> = out.split(|c: char| c == '|' || c.is_whitespace()).filter(|s| !s.is_empty()).collect();
    match nums.as_slice() {
        [u, g] => match (u.parse(), g.parse()) {
            (Ok(u), Ok(g)) => Ok((u, g)),
            _ => Err(format!("id printed no ids: {}", one_line(out))),
        },
        _ => Err(format!("id printed no ids: {}", one_line(out))),
    }
}

/// `getent group` output: `name:x:gid:members`.
fn parse_group(out: &str) -> Result<u32, String> {
    out.split(':').nth(2).and_then(|g| g.trim().parse().ok()).ok_or_else(|| format!("getent printed no gid: {}", one_line(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs() {
        assert_eq!(parse_id_pair("1000 | 1001"), Ok((1000, 1001)));
        assert!(parse_id_pair("1000").is_err());
        assert!(parse_id_pair("id: 'x': no such user").is_err());
        assert_eq!(parse_group("condor:x:64:"), Ok(64));
        assert_eq!(parse_group("condor:x:64:alice,bob"), Ok(64));
        assert!(parse_group("").is_err());
    }

    #[test]
    fn names() {
        assert!(plain_name("cmsprod").is_ok());
        assert!(plain_name("-n").is_err());
        assert!(plain_name("a b").is_err());
        assert!(plain_name("a:b").is_err());
        assert!(plain_name("").is_err());
    }

    #[test]
    fn owners_take_the_primary_group_when_none_is_named() {
        let mut ids = Ids::default();
        ids.users.insert("u".into(), Ok((10, 20)));
        ids.groups.insert("g".into(), Ok(30));
        let o = |u: &str, g: &str| Owner { user: u.into(), group: g.into() };
        assert_eq!(ids.owner(&o("u", "")), Ok((10, 20)));
        assert_eq!(ids.owner(&o("u", "g")), Ok((10, 30)));
        assert!(ids.owner(&o("u", "nog")).unwrap_err().contains("group nog"));
        assert!(ids.owner(&o("x", "g")).unwrap_err().contains("user x"));
    }
}
