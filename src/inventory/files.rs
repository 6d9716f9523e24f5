//! Local file checks: the key, keytab, CA and secret files the inventory names, looked at on
//! this host. The only part of the inventory that touches the file system besides reading
//! `services.yaml` itself.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::model::{FileKind, Inventory};
use super::Diagnostic;
use crate::http::CaSource;


/// Looks at every local file the inventory names, as the user running this process.
///
/// Errors: a file this process cannot open for reading (named with why: owner, group and
/// mode, and who is asking), a secret file (key, passphrase, secret_id, token, password) that
/// group or others may read, a path that is not the kind of file it should be, a CA or
/// certificate file holding no PEM certificate. Warnings: a file that does not exist (fatal
/// only when `strict`, as on the bastion host itself; the example inventory names files that
/// exist only there).
pub fn check_local_files(inv: &Inventory, strict: bool) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &inv.local_files {
        if !seen.insert(f.path.clone()) {
            continue;
        }
        let diag = |message: String| Diagnostic { file: inv.source.clone(), line: f.line, col: f.col, field: f.field.clone(), message };
        match std::fs::metadata(&f.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let d = diag(format!("{} does not exist", f.path.display()));
                if strict { errors.push(d) } else { warnings.push(d) }
            }
            Err(e) => errors.push(diag(format!("{} cannot be looked at by {}: {e} (a directory on the way is closed to this user)", f.path.display(), running_user()))),
            Ok(meta) => {
                if let Some(problem) = problem(&f.path, f.kind, &meta) {
                    errors.push(diag(problem));
                }
            }
        }
    }
    (errors, warnings)
}

/// What is wrong with an existing file of `kind` at `path`, if anything.
fn problem(path: &Path, kind: FileKind, meta: &std::fs::Metadata) -> Option<String> {
    let shown = path.display();
    let mode = meta.permissions().mode() & 0o7777;
    let dir = matches!(kind, FileKind::CertificateDir | FileKind::Directory);
    if dir && !meta.is_dir() {
        return Some(format!("{shown} is not a directory"));
    }
    if !dir && !meta.is_file() {
        return Some(format!("{shown} is not a regular file"));
    }
    // Open it, as `run` will: permission bits, ACLs, a read-only mount or a missing group
    // membership all decide here, not in a guess from the mode.
    let opened = if dir { std::fs::read_dir(path).map(drop) } else { std::fs::File::open(path).map(drop) };
    if let Err(e) = opened {
        let (user, group) = (name_of(meta.uid(), "/etc/passwd"), name_of(meta.gid(), "/etc/group"));
        return Some(format!("{shown} cannot be read by {}: {e} (it is {user}:{group} {mode:04o})", running_user()));
    }
    match kind {
        FileKind::Secret if mode & 0o077 != 0 => {
            Some(format!("{shown} holds a secret but has mode {mode:04o}; group and others must have no access (chmod 600)"))
        }
        FileKind::Certificates => crate::http::load_anchors(&CaSource::File(path.into())).err().map(|e| e.to_string()),
        FileKind::CertificateDir => crate::http::load_anchors(&CaSource::Dir(path.into())).err().map(|e| e.to_string()),
        _ => None,
    }
}

/// Who this process runs as, for messages: the owner of `/proc/self` is the process's
/// effective uid.
fn running_user() -> String {
    match std::fs::metadata("/proc/self") {
        Ok(m) => format!("{} (uid {}), the user this runs as", name_of(m.uid(), "/etc/passwd"), m.uid()),
        Err(_) => "the user this runs as".into(),
    }
}

/// The name of `id` in a `name:x:id:...` database (`/etc/passwd`, `/etc/group`), else the number:
/// only to make a message readable.
fn name_of(id: u32, database: &str) -> String {
    let text = std::fs::read_to_string(database).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == id.to_string()).then(|| name.to_string())
        })
        .unwrap_or_else(|| id.to_string())
}
