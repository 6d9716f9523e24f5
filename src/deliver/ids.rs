//! Numeric ids of the accounts and groups a host plan names, resolved on the host itself (its
//! NSS: local files, LDAP, SSSD): one `getent passwd` for all of a host's accounts and one
//! `getent group` for its groups (a process each, not one per name), in one exec request per
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
        let plain = |names: &BTreeSet<String>, bad: &mut dyn FnMut(&String, String)| -> Vec<String> {
            names.iter().filter(|n| plain_name(n).map_err(|e| bad(n, e)).is_ok()).cloned().collect()
        };
        let user_names = plain(users, &mut |n, e| {
            ids.users.insert(n.clone(), Err(e));
        });
        let group_names = plain(groups, &mut |n, e| {
            ids.groups.insert(n.clone(), Err(e));
        });
        let user_chunks = chunks(&user_names);
        let group_chunks = chunks(&group_names);
        if user_chunks.is_empty() && group_chunks.is_empty() && extra.is_empty() {
            return (ids, Vec::new());
        }
        let mut commands: Vec<String> = user_chunks.iter().map(|c| getent("passwd", c)).collect();
        commands.extend(group_chunks.iter().map(|c| getent("group", c)));
        commands.extend(extra);
        let mut results = batch::run(remote, purpose, commands).into_iter();
        for (chunk, result) in user_chunks.iter().zip(results.by_ref()) {
            let found = entries(result, 7, |f| Some((f[2].parse().ok()?, f[3].parse().ok()?)));
            for name in chunk {
                ids.users.insert(name.clone(), lookup(&found, name, "user"));
            }
        }
        for (chunk, result) in group_chunks.iter().zip(results.by_ref()) {
            let found = entries(result, 4, |f| f[2].parse().ok());
            for name in chunk {
                ids.groups.insert(name.clone(), lookup(&found, name, "group"));
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

/// A name `getent` takes as a name: not empty, no option look-alike, nothing a shell
/// or a colon-separated database could split.
fn plain_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with('-') || name.contains(|c: char| c == ':' || c.is_whitespace() || c.is_control()) {
        return Err("is not a plain account name".into());
    }
    Ok(())
}

/// Names per `getent` command: one process resolves a host's accounts, however many there
/// are, within the batch runner's script size.
const NAMES_PER_COMMAND: usize = 256;

fn chunks(names: &[String]) -> Vec<Vec<String>> {
    names.chunks(NAMES_PER_COMMAND).map(<[String]>::to_vec).collect()
}

/// `getent <database> <name>…`: one line per name found, in the host's NSS order of sources.
fn getent(database: &str, names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| sh_quote(n)).collect();
    format!("getent {database} {}", quoted.join(" "))
}

/// What one `getent` printed, by entry name: each line of at least `fields` colon-separated
/// fields, its value taken by `value`; the first line for a name wins, as NSS answers. Exit
/// status 2 means some names were not found and the others printed; anything else that is
/// not 0 is an error for every name asked.
fn entries<T>(
    result: Result<String, ItemError>,
    fields: usize,
    value: impl Fn(&[&str]) -> Option<T>,
) -> Result<BTreeMap<String, Result<T, String>>, String> {
    let out = match result {
        Ok(out) | Err(ItemError::Exited { status: 2, output: out }) => out,
        Err(e) => return Err(format!("getent: {e}")),
    };
    let mut found = BTreeMap::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < fields {
            continue;
        }
        let parsed = value(&f).ok_or_else(|| format!("getent printed no ids: {}", one_line(line)));
        found.entry(f[0].to_string()).or_insert(parsed);
    }
    Ok(found)
}

/// A name's entry. A name printed under another name (`getent` reads a number as an id) is
/// not found.
fn lookup<T: Clone>(found: &Result<BTreeMap<String, Result<T, String>>, String>, name: &str, kind: &str) -> Result<T, String> {
    match found {
        Err(e) => Err(e.clone()),
        Ok(map) => map.get(name).cloned().unwrap_or_else(|| Err(format!("no such {kind}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs() {
        let users = |r| entries(r, 7, |f| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)));
        let printed = "cmsprod:x:1000:1001:CMS production:/home/cmsprod:/bin/bash\n\
                       crab:x:notanumber:5::/home/crab:/bin/sh\n\
                       cmsprod:x:9:9::/nis/cmsprod:/bin/sh\n\
                       daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
        let found = users(Err(ItemError::Exited { status: 2, output: printed.into() }));
        assert_eq!(lookup(&found, "cmsprod", "user"), Ok((1000, 1001)), "the first source's entry wins");
        assert!(lookup(&found, "crab", "user").unwrap_err().contains("no ids"));
        assert_eq!(lookup(&found, "tier0", "user"), Err("no such user".into()));
        // `getent passwd 1` prints daemon's entry: not an account named "1".
        assert_eq!(lookup(&found, "1", "user"), Err("no such user".into()));
        let broken = users(Err(ItemError::Exited { status: 3, output: "Enumeration not supported".into() }));
        assert!(lookup(&broken, "cmsprod", "user").unwrap_err().contains("exit status 3"));
        let groups = entries(Ok("condor:x:64:\nwheel:x:10:alice,bob\n".into()), 4, |f| f[2].parse::<u32>().ok());
        assert_eq!(lookup(&groups, "condor", "group"), Ok(64));
        assert_eq!(lookup(&groups, "wheel", "group"), Ok(10));
        assert_eq!(lookup(&groups, "nobody", "group"), Err("no such group".into()));
        assert_eq!(getent("group", &["a".into(), "b c".into()]), "getent group 'a' 'b c'");
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
