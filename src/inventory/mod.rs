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
mod idtoken;
mod model;
mod raw;
mod rules;
mod services;
mod validate;

pub use files::check_local_files;
pub use model::*;
pub use rules::{DEFAULT_FILE_ROOTS, SCHEDULE_FLOOR, SCHEDULE_FLOOR_ENV};

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
    #[error("{}: larger than the {} an inventory may hold ({MAX_INVENTORY_BYTES} bytes); not read", path.display(), crate::http::show_bytes(MAX_INVENTORY_BYTES))]
    TooLarge { path: PathBuf },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

/// The largest `services.yaml` read: a few hundred services take a few hundred kilobytes.
pub const MAX_INVENTORY_BYTES: u64 = 4 * 1024 * 1024;

/// The YAML node budget: at most this many nodes (mappings, sequences, scalars), counting every
/// node an alias (`*name`) repeats, so that an alias bomb (aliases of aliases, each doubling the
/// document) is refused after a bounded amount of work. A service takes 15 to 40 nodes, so
/// this leaves room for some ten thousand services.
pub const NODE_BUDGET: usize = 500_000;
/// At most this many aliases and as many anchors in one inventory.
pub const ALIAS_BUDGET: usize = 1_000;
/// At most this deep a nesting of mappings and sequences.
pub const DEPTH_BUDGET: usize = 32;

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

/// Reads and validates the inventory at `path`, reading at most [`MAX_INVENTORY_BYTES`]. The
/// schedule floor is [`SCHEDULE_FLOOR`] unless the environment lowers it ([`SCHEDULE_FLOOR_ENV`]).
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    use std::io::Read as _;
    let read_error = |source| InventoryError::Read { path: path.into(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_INVENTORY_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_INVENTORY_BYTES {
        return Err(InventoryError::TooLarge { path: path.into() });
    }
    parse_bytes(path, &bytes, rules::schedule_floor_from_env())
}

/// Validates inventory bytes, which must be UTF-8, with schedules at least `schedule_floor`
/// apart; `path` only names the file in diagnostics.
pub fn parse_bytes(path: &Path, bytes: &[u8], schedule_floor: std::time::Duration) -> Result<Inventory, InventoryError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_with(path, text, schedule_floor),
        Err(e) => {
            // Everything before the first bad byte is text; name its place like any other error.
            let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
            let (line, col) = position_after(good);
            let message = format!("byte 0x{:02x} is not UTF-8 (the file must be UTF-8 text)", bytes[e.valid_up_to()]);
            Err(InventoryError::Invalid(vec![Diagnostic { file: path.into(), line, col, field: yaml_path_at(good, line), message }]))
        }
    }
}

/// Validates inventory text; `path` is only used to name the file in diagnostics.
pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
    parse_with(path, text, SCHEDULE_FLOOR)
}

fn parse_with(path: &Path, text: &str, schedule_floor: std::time::Duration) -> Result<Inventory, InventoryError> {
    let raw: raw::RawInventory = serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| InventoryError::Invalid(vec![syntax_diagnostic(path, text, &e)]))?;
    validate::validate(path, raw, schedule_floor).map_err(InventoryError::Invalid)
}

/// The parser's limits: see [`NODE_BUDGET`], [`ALIAS_BUDGET`], [`DEPTH_BUDGET`].
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = NODE_BUDGET;
    budget.max_events = 4 * NODE_BUDGET;
    budget.max_aliases = ALIAS_BUDGET;
    budget.max_anchors = ALIAS_BUDGET;
    budget.max_depth = DEPTH_BUDGET;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_INVENTORY_BYTES as usize;
    budget.max_recorded_anchor_events = NODE_BUDGET;
    budget.max_recorded_anchor_bytes = MAX_INVENTORY_BYTES as usize;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = NODE_BUDGET;
    options
}

/// 1-based line and column of the character just after `text`.
fn position_after(text: &str) -> (u64, u64) {
    let line = text.matches('\n').count() as u64 + 1;
    let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
    (line, col)
}

/// The longest part of a parser message shown: a message may quote a value.
const MAX_SHOWN_MESSAGE: usize = 200;

fn syntax_diagnostic(path: &Path, text: &str, e: &serde_saphyr::Error) -> Diagnostic {
    use serde_saphyr::budget::BudgetBreach as B;
    use serde_saphyr::Error as E;
    let mut cause = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = cause {
        cause = error;
    }
    let budget = |what: String| format!("the inventory exceeds its {what} (an alias bomb, or far more than an inventory needs)");
    let nodes = || budget(format!("node budget of {NODE_BUDGET} YAML nodes, counting every node an alias repeats"));
    let message = match cause {
        E::Budget { breach: B::Aliases { .. }, .. } => budget(format!("alias budget of {ALIAS_BUDGET} aliases")),
        E::Budget { breach: B::Anchors { .. }, .. } => budget(format!("anchor budget of {ALIAS_BUDGET} anchors")),
        E::Budget { breach: B::Depth { .. }, .. } => budget(format!("depth budget of {DEPTH_BUDGET} levels")),
        E::Budget { breach: B::ScalarBytes { .. }, .. } => budget(format!(
            "text budget of {}, counting text an alias repeats",
            crate::http::show_bytes(MAX_INVENTORY_BYTES)
        )),
        E::Budget { breach: B::Documents { .. }, .. } => "an inventory is one YAML document (no `---` separators)".into(),
        E::Budget { .. } | E::AliasReplayLimitExceeded { .. } | E::AliasReplayStackDepthExceeded { .. } | E::AliasReplayCounterOverflow { .. } => nodes(),
        _ => {
            let mut message = e.without_snippet().to_string();
            // The library appends positions in prose; the diagnostic carries the place already.
            for marker in [" at line ", " (defined at line "] {
                if let Some(i) = message.find(marker) {
                    message.truncate(i);
                }
            }
            crate::redact::excerpt(&message, MAX_SHOWN_MESSAGE).into_owned()
        }
    };
    let (line, col) = match e.location().map(|l| (l.line(), l.column())) {
        Some((line, col)) if line > 0 => (line, col),
        // A budget is counted over the whole stream: blame the first alias, where repetition starts.
        _ => first_alias(text).unwrap_or((1, 1)),
    };
    let field = match cause {
        E::Budget { breach: B::Documents { .. }, .. } => "(document)".into(),
        _ => yaml_path_at(text, line),
    };
    Diagnostic { file: path.into(), line, col, field, message }
}

/// Line and column of the first alias (`*name`) outside a comment or quotes, roughly: enough to
/// point a budget breach at where the repetition starts.
fn first_alias(text: &str) -> Option<(u64, u64)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let code = l.split(" #").next().unwrap_or(l);
        let at = code.char_indices().find(|&(j, c)| {
            c == '*' && code[j + 1..].starts_with(|n: char| n.is_alphanumeric()) && (j == 0 || code[..j].ends_with([' ', '[', ',', '-']))
        })?;
        Some((i as u64 + 1, code[..at.0].chars().count() as u64 + 1))
    })
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
