//! The inventory: `services.yaml` parsed once into a validated [`Inventory`].
//!
//! YAML goes into private raw structs ([`raw`]: `deny_unknown_fields`, locations kept with
//! `serde_saphyr::Spanned`), then one pass ([`validate`]) applies defaults, resolves overrides and
//! references, and checks every rule the rest of the program relies on, producing the validated
//! model ([`model`]). Every problem is reported as a [`Diagnostic`] `file:line:col: field:
//! message`, all of them at once, not just the first.
//!
//! Parsing does no IO besides reading the file; [`check_local_files`] ([`files`]) is the separate
//! step that looks at the key, keytab and secret files the inventory names. Nothing after this
//! module looks a setting up by string.

use std::fmt;
use std::path::{Path, PathBuf};

mod files;
mod model;
mod raw;
mod validate;

pub use files::check_local_files;
pub use model::*;

/// One problem found in the inventory, with the place it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub col: u64,
    /// Dotted path of the field, e.g. `services.wmagent.required[1]`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}: {}", self.file.display(), self.line, self.col, self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, #[source] source: std::io::Error },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
}

/// The JSON Schema of `services.yaml`, generated from the raw structs so that it cannot drift
/// from what the parser accepts (`deny_unknown_fields` becomes `additionalProperties: false`).
/// Shipped as `schema/services.schema.json` for editors; the rules that need more than shape
/// (scope syntax, host references, the credmon's `vault_url`) stay with the validator.
pub fn json_schema() -> serde_json::Value {
    raw::json_schema()
}

/// Reads and validates the inventory at `path`.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read { path: path.into(), source })?;
    parse(path, &text)
}

/// Validates inventory text; `path` is only used to name the file in diagnostics.
pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let raw: raw::RawInventory =
        serde_saphyr::from_str(text).map_err(|e| InventoryError::Invalid(vec![syntax_diagnostic(path, text, &e)]))?;
    validate::validate(path, raw).map_err(InventoryError::Invalid)
}

fn syntax_diagnostic(path: &Path, text: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
    let mut message = e.without_snippet().to_string();
    // The library appends the position in prose; the diagnostic carries it already.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    Diagnostic { file: path.into(), line, col, field: yaml_path_at(text, line), message }
}

/// The dotted key path leading to `line` (1-based), read off the indentation of the lines above
/// it: enough to name the field of a syntax or type error that the parser only places by line.
fn yaml_path_at(text: &str, line: u64) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = usize::try_from(line).ok().and_then(|l| l.checked_sub(1)).filter(|l| *l < lines.len()) else {
        return "(document)".into();
    };
    let indent_of = |s: &str| s.len() - s.trim_start_matches([' ', '-']).len();
    let key_of = |s: &str| {
        let t = s.trim_start_matches([' ', '-']).trim_start();
        let (k, _) = t.split_once(':')?;
        let k = k.trim().trim_matches(['"', '\'']);
        (!k.is_empty() && !k.contains(' ') && !k.starts_with('#')).then(|| k.to_string())
    };
    let mut parts = Vec::new();
    let mut limit = usize::MAX;
    for l in lines[..=start].iter().rev() {
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let ind = indent_of(l);
        if ind < limit {
            if let Some(k) = key_of(l) {
                parts.push(k);
            }
            limit = ind;
            if ind == 0 {
                break;
            }
        }
    }
    if parts.is_empty() {
        return "(document)".into();
    }
    parts.reverse();
    parts.join(".")
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod schema_tests;
