//! Which credd file names a schedd's Vault credmon would act on (HTCondor 25.13+), from the
//! credmon settings read on that schedd with `condor_config_val`.
//!
//! The credmon matches a `<name>.top` to a provider: the part before the *first* `_` (the rest is
//! a handle), unless `CREDMON_ALLOW_SPECIAL_CHAR_NAMES` is true, which makes the whole name the
//! provider and disables handles. A name ending in `_` is skipped. Provider names may hold only
//! letters, digits and hyphens unless that knob is true (a provider list breaking the rule makes
//! the credmon exit at start). The provider must be listed in `VAULT_CREDMON_PROVIDER_NAMES`
//! unless the list holds `*` or is empty (unset means `*`); under `*`, `scitokens` is left to
//! the local credmon. `CREDMON_OAUTH_TOKEN_REFRESH` (default: half of
//! `CREDMON_OAUTH_TOKEN_MINIMUM`, itself 40 min) is how often it rewrites a `.use`.
//!
//! Pure: parses what the host printed and judges names; no IO. Must never accept a value it
//! does not understand (the output comes from a remote host): garbage is an error naming the
//! host and the knob, never a guess.

use std::time::Duration;

pub const ALLOW_SPECIAL: &str = "CREDMON_ALLOW_SPECIAL_CHAR_NAMES";
pub const PROVIDER_NAMES: &str = "VAULT_CREDMON_PROVIDER_NAMES";
pub const TOKEN_REFRESH: &str = "CREDMON_OAUTH_TOKEN_REFRESH";
pub const TOKEN_MINIMUM: &str = "CREDMON_OAUTH_TOKEN_MINIMUM";
pub const SPOOL: &str = "SEC_CREDENTIAL_DIRECTORY_OAUTH";

/// Every knob read from a schedd, in the order they are asked for.
pub const KNOBS: [&str; 5] = [ALLOW_SPECIAL, PROVIDER_NAMES, TOKEN_REFRESH, TOKEN_MINIMUM, SPOOL];

/// Longest value taken from the host (characters); anything longer is refused.
pub const MAX_VALUE: usize = 300;
/// Largest interval taken for the two time knobs (seconds): 30 days.
const MAX_SECONDS: u64 = 30 * 24 * 3600;
/// `CREDMON_OAUTH_TOKEN_MINIMUM` when unset.
const DEFAULT_MINIMUM: u64 = 40 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamesError {
    #[error("host {host}: {knob}: {detail}")]
    Garbage { host: String, knob: &'static str, detail: String },
}

/// The credmon settings of one schedd. [`Default`] is what a schedd with none of them set does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheddSettings {
    pub allow_special_chars: bool,
    /// `VAULT_CREDMON_PROVIDER_NAMES` split on commas and white space; `None` when unset.
    pub providers: Option<Vec<String>>,
    /// `CREDMON_OAUTH_TOKEN_REFRESH` in seconds, when set.
    pub refresh: Option<u64>,
    /// `CREDMON_OAUTH_TOKEN_MINIMUM` in seconds, when set.
    pub minimum: Option<u64>,
    /// `SEC_CREDENTIAL_DIRECTORY_OAUTH`, when set.
    pub spool: Option<String>,
}

impl ScheddSettings {
    /// How old a `.use` may get before the credmon rewrites it.
    pub fn refresh_interval(&self) -> Duration {
        match self.refresh {
            Some(secs) => Duration::from_secs(secs),
            // The credmon takes half the minimum, as a float.
            None => Duration::from_millis(self.minimum.unwrap_or(DEFAULT_MINIMUM) * 500),
        }
    }

    /// The spool the schedd names, when it differs from `spool` (trailing `/` ignored).
    pub fn other_spool(&self, spool: &str) -> Option<&str> {
        self.spool.as_deref().filter(|s| s.trim_end_matches('/') != spool.trim_end_matches('/'))
    }
}

/// What `condor_config_val <knob>` gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KnobOutput {
    /// Exit 0: the value (one line).
    Value(String),
    /// Exit 1 with `Not defined: <knob>`.
    Undefined,
    /// The command is not installed on the host.
    NoTool,
    /// Anything else: why.
    Failed(String),
}

/// What a schedd's settings came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheddRead {
    Read(ScheddSettings),
    /// Not known (no `condor_config_val`, or it could not be run): the strict defaults apply.
    Unknown(String),
    /// The host printed something not understood.
    Refused(NamesError),
}

impl ScheddRead {
    /// The settings names are judged by: what was read, or the defaults when unknown.
    pub fn settings(&self) -> Result<ScheddSettings, &NamesError> {
        match self {
            ScheddRead::Read(s) => Ok(s.clone()),
            ScheddRead::Unknown(_) => Ok(ScheddSettings::default()),
            ScheddRead::Refused(e) => Err(e),
        }
    }
}

/// Turns what each knob printed into settings. `outputs` pairs each of [`KNOBS`] with its output.
pub fn from_outputs(host: &str, outputs: &[(&'static str, KnobOutput)]) -> ScheddRead {
    if outputs.iter().any(|(_, o)| *o == KnobOutput::NoTool) {
        return ScheddRead::Unknown("condor_config_val is not installed".into());
    }
    let mut settings = ScheddSettings::default();
    for (knob, output) in outputs {
        let value = match output {
            KnobOutput::Value(v) => Some(v.as_str()),
            KnobOutput::Undefined => None,
            KnobOutput::NoTool => unreachable!("handled above"),
            KnobOutput::Failed(detail) => return ScheddRead::Unknown(format!("condor_config_val {knob}: {detail}")),
        };
        if let Err(e) = apply(host, knob, value, &mut settings) {
            return ScheddRead::Refused(e);
        }
    }
    ScheddRead::Read(settings)
}

/// Parses one knob's value (`None`: not defined) into `settings`.
pub fn apply(host: &str, knob: &'static str, value: Option<&str>, settings: &mut ScheddSettings) -> Result<(), NamesError> {
    let garbage = |detail: String| NamesError::Garbage { host: host.to_string(), knob, detail };
    let Some(value) = value else { return Ok(()) };
    if value.chars().count() > MAX_VALUE {
        return Err(garbage(format!("value longer than {MAX_VALUE} characters")));
    }
    if value.chars().any(|c| c.is_control() || c == '|') {
        return Err(garbage("value is not one line of text".into()));
    }
    let value = value.trim();
    match knob {
        ALLOW_SPECIAL => {
            settings.allow_special_chars = match value.to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(garbage(format!("{} is not true or false", shown(value)))),
            }
        }
        PROVIDER_NAMES => {
            settings.providers = Some(value.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).map(str::to_string).collect());
        }
        TOKEN_REFRESH | TOKEN_MINIMUM => {
            let secs = value
                .parse::<u64>()
                .ok()
                .filter(|s| value.bytes().all(|b| b.is_ascii_digit()) && *s <= MAX_SECONDS)
                .ok_or_else(|| garbage(format!("{} is not a number of seconds up to {MAX_SECONDS}", shown(value))))?;
            if knob == TOKEN_REFRESH { settings.refresh = Some(secs) } else { settings.minimum = Some(secs) }
        }
        SPOOL => {
            if !value.starts_with('/') {
                return Err(garbage(format!("{} is not an absolute path", shown(value))));
            }
            settings.spool = Some(value.to_string());
        }
        _ => return Err(garbage("is not a knob this reads".into())),
    }
    Ok(())
}

/// A value quoted for an error, already bounded by [`MAX_VALUE`].
fn shown(value: &str) -> String {
    format!("{value:?}")
}

/// A name the schedd's credmon would not act on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The file stem (`<name>.top`).
    pub name: String,
    /// The knob whose value rules it out.
    pub knob: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the schedd's credmon would ignore {}.top: {} ({})", self.name, self.reason, self.knob)
    }
}

/// A provider name the credmon accepts without `CREDMON_ALLOW_SPECIAL_CHAR_NAMES`.
fn plain_provider(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Judges one `.top` name (its stem; `is_handle` when it is a handle `<provider>_<handle>`
/// meant to inherit its parent's Vault token) against a schedd's settings.
pub fn judge(settings: &ScheddSettings, stem: &str, is_handle: bool) -> Option<Ignored> {
    let ignored = |knob: &'static str, reason: String| Some(Ignored { name: stem.to_string(), knob, reason });
    let listed: Vec<&str> = settings.providers.iter().flatten().map(String::as_str).collect();
    if !settings.allow_special_chars
        && let Some(bad) = listed.iter().find(|p| **p != "*" && !plain_provider(p))
    {
        return ignored(PROVIDER_NAMES, format!("it lists {bad:?}, which is not letters, digits and hyphens, so the credmon refuses to start while {ALLOW_SPECIAL} is false"));
    }
    let provider = if settings.allow_special_chars {
        if is_handle {
            return ignored(ALLOW_SPECIAL, "it is true, which disables handles: the name is taken whole as a provider with no Vault token of its own".into());
        }
        stem
    } else {
        if stem.ends_with('_') {
            return ignored(ALLOW_SPECIAL, "the credmon skips a name ending in _ while this is false".into());
        }
        let provider = stem.split_once('_').map_or(stem, |(p, _)| p);
        if !plain_provider(provider) {
            return ignored(ALLOW_SPECIAL, format!("provider {provider:?} (the part before the first _) may hold only letters, digits and hyphens while this is false"));
        }
        provider
    };
    if listed.contains(&provider) {
        return None;
    }
    if !listed.is_empty() && !listed.contains(&"*") {
        return ignored(PROVIDER_NAMES, format!("provider {provider:?} is not listed"));
    }
    if provider == "scitokens" {
        return ignored(PROVIDER_NAMES, "under * the Vault credmon leaves provider \"scitokens\" to the local credmon; list it explicitly".into());
    }
    None
}

/// Every name of `names` (stem, is-handle) the schedd's credmon would ignore.
pub fn ignored<'a>(settings: &ScheddSettings, names: impl IntoIterator<Item = (&'a str, bool)>) -> Vec<Ignored> {
    names.into_iter().filter_map(|(stem, is_handle)| judge(settings, stem, is_handle)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(allow: bool, providers: Option<&str>) -> ScheddSettings {
        let mut s = ScheddSettings { allow_special_chars: allow, ..Default::default() };
        if let Some(p) = providers {
            apply("h", PROVIDER_NAMES, Some(p), &mut s).unwrap();
        }
        s
    }

    fn knob_of(s: &ScheddSettings, stem: &str, handle: bool) -> Option<&'static str> {
        judge(s, stem, handle).map(|i| i.knob)
    }

    #[test]
    fn provider_is_the_part_before_the_first_underscore() {
        let s = with(false, Some("cms, dune"));
        assert_eq!(knob_of(&s, "cms", false), None);
        assert_eq!(knob_of(&s, "cms_production", false), None);
        assert_eq!(knob_of(&s, "cms_production_x", true), None);
        assert_eq!(knob_of(&s, "dune", false), None);
        assert_eq!(knob_of(&s, "atlas", false), Some(PROVIDER_NAMES));
        assert_eq!(knob_of(&s, "atlas_cms", false), Some(PROVIDER_NAMES));
        assert_eq!(knob_of(&s, "cms_", false), Some(ALLOW_SPECIAL));
    }

    #[test]
    fn special_characters_only_when_allowed() {
        let strict = with(false, None);
        assert_eq!(knob_of(&strict, "cms-prod", false), None);
        assert_eq!(knob_of(&strict, "cms.prod", false), Some(ALLOW_SPECIAL));
        assert_eq!(knob_of(&strict, "cms+x_prod", false), Some(ALLOW_SPECIAL));
        assert_eq!(knob_of(&strict, "cms_prod.x", false), None, "only the provider part is ruled");
        let allowed = with(true, Some("cms.prod cms_production"));
        assert_eq!(knob_of(&allowed, "cms.prod", false), None);
        assert_eq!(knob_of(&allowed, "cms_production", false), None);
        assert_eq!(knob_of(&allowed, "cms_other", false), Some(PROVIDER_NAMES), "the whole name is the provider");
        assert_eq!(knob_of(&allowed, "cms_production", true), Some(ALLOW_SPECIAL), "handles are disabled");
    }

    #[test]
    fn star_empty_and_unset_lists_take_every_provider_but_scitokens() {
        for s in [with(false, None), with(false, Some("*")), with(false, Some("")), with(false, Some("cms *"))] {
            assert_eq!(knob_of(&s, "anything_x", false), None, "{s:?}");
            assert_eq!(knob_of(&s, "scitokens", false), Some(PROVIDER_NAMES), "{s:?}");
        }
        assert_eq!(knob_of(&with(false, Some("scitokens")), "scitokens", false), None);
    }

    #[test]
    fn a_list_the_credmon_refuses_rules_out_every_name() {
        let s = with(false, Some("cms, cms_prod"));
        assert_eq!(knob_of(&s, "cms", false), Some(PROVIDER_NAMES));
        assert_eq!(knob_of(&with(true, Some("cms, cms_prod")), "cms", false), None);
    }

    #[test]
    fn refresh_defaults_to_half_the_minimum() {
        let mut s = ScheddSettings::default();
        assert_eq!(s.refresh_interval(), Duration::from_secs(1200));
        apply("h", TOKEN_MINIMUM, Some("601"), &mut s).unwrap();
        assert_eq!(s.refresh_interval(), Duration::from_millis(300_500));
        apply("h", TOKEN_REFRESH, Some("90"), &mut s).unwrap();
        assert_eq!(s.refresh_interval(), Duration::from_secs(90));
    }

    #[test]
    fn garbage_is_refused_naming_host_and_knob() {
        let mut s = ScheddSettings::default();
        for (knob, value) in [
            (ALLOW_SPECIAL, "maybe"),
            (ALLOW_SPECIAL, "true && false"),
            (TOKEN_REFRESH, "-5"),
            (TOKEN_REFRESH, "+5"),
            (TOKEN_REFRESH, "20m"),
            (TOKEN_MINIMUM, "99999999999999999999"),
            (TOKEN_MINIMUM, "2592001"),
            (SPOOL, "relative/path"),
            (PROVIDER_NAMES, "a | b"),
            (PROVIDER_NAMES, "a\u{1b}[2J"),
        ] {
            let e = apply("schedd1", knob, Some(value), &mut s).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with(&format!("host schedd1: {knob}: ")), "{text}");
        }
        let long = "x".repeat(MAX_VALUE + 1);
        assert!(apply("h", PROVIDER_NAMES, Some(&long), &mut s).is_err());
        assert!(apply("h", PROVIDER_NAMES, Some(&long[1..]), &mut s).is_ok());
        for (value, want) in [("True", true), ("FALSE", false), ("1", true), ("0", false), (" true ", true)] {
            apply("h", ALLOW_SPECIAL, Some(value), &mut s).unwrap();
            assert_eq!(s.allow_special_chars, want, "{value}");
        }
    }

    #[test]
    fn outputs_fold_into_settings() {
        let out = |v: &[KnobOutput]| KNOBS.iter().copied().zip(v.iter().cloned()).collect::<Vec<_>>();
        use KnobOutput::*;
        let read = from_outputs("h", &out(&[Value("false".into()), Undefined, Value("300".into()), Undefined, Value("/spool/".into())]));
        let ScheddRead::Read(s) = read else { panic!("{read:?}") };
        assert_eq!((s.providers.clone(), s.refresh, s.minimum), (None, Some(300), None));
        assert_eq!(s.other_spool("/spool"), None);
        assert_eq!(s.other_spool("/var/lib/condor/oauth_credentials"), Some("/spool/"));
        assert!(matches!(from_outputs("h", &out(&[NoTool, NoTool, NoTool, NoTool, NoTool])), ScheddRead::Unknown(_)));
        assert!(matches!(from_outputs("h", &out(&[Failed("exit status 2".into()), Undefined, Undefined, Undefined, Undefined])), ScheddRead::Unknown(_)));
        assert!(matches!(from_outputs("h", &out(&[Value("yes please".into()), Undefined, Undefined, Undefined, Undefined])), ScheddRead::Refused(_)));
        assert_eq!(ScheddRead::Unknown("x".into()).settings(), Ok(ScheddSettings::default()));
    }
}
