//! Local file checks: the key, keytab, CA and secret files the inventory names, looked at on
//! this host. The only part of the inventory that touches the file system besides reading
//! `services.yaml` itself.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use super::model::{FileKind, Inventory};
use super::Diagnostic;


/// Looks at every local file the inventory names. Errors: a secret file (key, passphrase,
/// secret_id, token, password) that group or others may read, or a path that is not a file.
/// Warnings: a file that does not exist (fatal only when `strict`, as on the bastion host
/// itself; the example inventory names files that exist only there).
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
            Err(e) => errors.push(diag(format!("{}: {e}", f.path.display()))),
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o7777;
                if f.kind == FileKind::Secret {
                    if !meta.is_file() {
                        errors.push(diag(format!("{} is not a regular file", f.path.display())));
                    } else if mode & 0o077 != 0 {
                        errors.push(diag(format!(
                            "{} holds a secret but has mode {mode:04o}; group and others must have no access (chmod 600)",
                            f.path.display()
                        )));
                    }
                }
            }
        }
    }
    (errors, warnings)
}
