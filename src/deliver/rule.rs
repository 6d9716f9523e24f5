//! The remote-write rule, like OpenSSH's StrictModes: which directories root may write a token
//! into. Every directory from a destination's trusted root down to the file's own directory is
//! looked at with lstat, and each must be one of:
//!
//! - owned by root and writable by nobody else (no group or other write bit);
//! - owned by root with the sticky bit (`/tmp`, `/var/tmp`);
//! - the trusted root itself in HTCondor's spool layout: owned by root, group `condor`, not
//!   writable by others (the credmon makes the spool `2770 root:condor`);
//! - a directory the delivery manages (a credd account directory `<spool>/<user>`), owned by
//!   its configured owner or by the `condor` account (the credd creates account directories
//!   under condor privileges on a standard schedd), and writable by nobody else.
//!
//! A symbolic link is never accepted, wherever it is on the way. Pure: judges `lstat` results.

use ssh2::FileStat;

/// What is known about the directory being judged besides its own `lstat`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Place {
    /// It is the destination's trusted root (the components above it are not looked at).
    pub is_root: bool,
    /// gid of the group `condor` on the host, if it has one.
    pub condor_gid: Option<u32>,
    /// uid of the account `condor` on the host, if it has one: allowed to own a managed
    /// directory, as the credd makes them.
    pub condor_uid: Option<u32>,
    /// uid allowed to own it besides root: the configured owner of a directory the delivery
    /// manages.
    pub managed_owner: Option<u32>,
}

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;
const STICKY: u32 = 0o1000;
const GROUP_WRITE: u32 = 0o020;
const OTHER_WRITE: u32 = 0o002;

/// `Ok` if root may write below a directory with this `lstat`, else why not.
pub(crate) fn judge(st: &FileStat, place: Place) -> Result<(), String> {
    let (Some(perm), Some(uid)) = (st.perm, st.uid) else {
        return Err("the server did not report its owner and mode".into());
    };
    match perm & S_IFMT {
        S_IFDIR => {}
        S_IFLNK => return Err("is a symbolic link".into()),
        _ => return Err("is not a directory".into()),
    }
    let mode = perm & 0o7777;
    let writable_by_others = mode & (GROUP_WRITE | OTHER_WRITE) != 0;
    if uid == 0 {
        if !writable_by_others || mode & STICKY != 0 {
            return Ok(());
        }
        if place.is_root && mode & OTHER_WRITE == 0 && place.condor_gid.is_some() && st.gid == place.condor_gid {
            return Ok(());
        }
        return Err(format!("is writable by others than root (mode {mode:04o}, group {})", st.gid.unwrap_or(u32::MAX)));
    }
    if place.managed_owner.is_some() && (place.managed_owner == Some(uid) || place.condor_uid == Some(uid)) {
        if writable_by_others {
            return Err(format!("is writable by others than its owner (mode {mode:04o})"));
        }
        return Ok(());
    }
    Err(format!("is owned by uid {uid}, not by root{}", place.managed_owner.map(|u| format!(" or uid {u}")).unwrap_or_default()))
}

/// The directories from `root` down to `dir` (both included), or `None` if `dir` is not `root`
/// or below it. Both are normalized absolute paths.
pub(crate) fn chain(root: &str, dir: &str) -> Option<Vec<String>> {
    let rest = if root == "/" {
        dir.strip_prefix('/')?
    } else if dir == root {
        ""
    } else {
        dir.strip_prefix(root)?.strip_prefix('/')?
    };
    let mut out = vec![root.to_string()];
    let mut current = root.to_string();
    for part in rest.split('/').filter(|p| !p.is_empty()) {
        if !current.ends_with('/') {
            current.push('/');
        }
        current.push_str(part);
        out.push(current.clone());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(kind: u32, mode: u32, uid: u32, gid: u32) -> FileStat {
        FileStat { size: Some(4096), uid: Some(uid), gid: Some(gid), perm: Some(kind | mode), atime: None, mtime: None }
    }

    fn check(stat: FileStat, place: Place, expected: Result<(), &str>) {
        assert_eq!(judge(&stat, place).map_err(|e| e.split(" (").next().unwrap().to_string()), expected.map_err(str::to_string), "{place:?}");
    }

    const ROOT: Place = Place { is_root: true, condor_gid: Some(64), condor_uid: Some(64), managed_owner: None };
    const BELOW: Place = Place { is_root: false, condor_gid: Some(64), condor_uid: Some(64), managed_owner: None };

    #[test]
    fn root_owned_directories() {
        check(st(S_IFDIR, 0o755, 0, 0), BELOW, Ok(()));
        check(st(S_IFDIR, 0o700, 0, 0), BELOW, Ok(()));
        check(st(S_IFDIR, 0o1777, 0, 0), BELOW, Ok(()));
        check(st(S_IFDIR, 0o775, 0, 0), BELOW, Err("is writable by others than root"));
        check(st(S_IFDIR, 0o757, 0, 0), ROOT, Err("is writable by others than root"));
    }

    #[test]
    fn htcondor_spool_layout_only_as_the_root() {
        check(st(S_IFDIR, 0o2770, 0, 64), ROOT, Ok(()));
        check(st(S_IFDIR, 0o2770, 0, 64), BELOW, Err("is writable by others than root"));
        check(st(S_IFDIR, 0o2770, 0, 65), ROOT, Err("is writable by others than root"));
        check(st(S_IFDIR, 0o2772, 0, 64), ROOT, Err("is writable by others than root"));
        check(st(S_IFDIR, 0o2770, 0, 64), Place { condor_gid: None, ..ROOT }, Err("is writable by others than root"));
    }

    #[test]
    fn managed_directories_may_belong_to_their_owner() {
        let managed = Place { managed_owner: Some(1000), ..BELOW };
        check(st(S_IFDIR, 0o700, 1000, 1000), managed, Ok(()));
        check(st(S_IFDIR, 0o770, 1000, 1000), managed, Err("is writable by others than its owner"));
        check(st(S_IFDIR, 0o700, 1000, 1000), BELOW, Err("is owned by uid 1000, not by root"));
        check(st(S_IFDIR, 0o700, 1001, 1000), managed, Err("is owned by uid 1001, not by root or uid 1000"));
        // The credd makes account directories as `condor`; only managed ones may be its.
        check(st(S_IFDIR, 0o700, 64, 64), managed, Ok(()));
        check(st(S_IFDIR, 0o770, 64, 64), managed, Err("is writable by others than its owner"));
        check(st(S_IFDIR, 0o700, 64, 64), BELOW, Err("is owned by uid 64, not by root"));
    }

    #[test]
    fn links_and_files_are_refused() {
        check(st(S_IFLNK, 0o777, 0, 0), BELOW, Err("is a symbolic link"));
        check(st(S_IFLNK, 0o777, 0, 0), ROOT, Err("is a symbolic link"));
        check(st(0o100_000, 0o600, 0, 0), BELOW, Err("is not a directory"));
        let unknown = FileStat { size: None, uid: None, gid: None, perm: None, atime: None, mtime: None };
        check(unknown, BELOW, Err("the server did not report its owner and mode"));
    }

    #[test]
    fn chains() {
        let c = |r: &str, d: &str| chain(r, d).map(|v| v.join(" "));
        assert_eq!(c("/spool", "/spool/u").as_deref(), Some("/spool /spool/u"));
        assert_eq!(c("/tmp", "/tmp").as_deref(), Some("/tmp"));
        assert_eq!(c("/", "/a/b").as_deref(), Some("/ /a /a/b"));
        assert_eq!(c("/data", "/data/tier0/tokens").as_deref(), Some("/data /data/tier0 /data/tier0/tokens"));
        assert_eq!(c("/data", "/datax/y"), None);
        assert_eq!(c("/data/x", "/data"), None);
    }
}
