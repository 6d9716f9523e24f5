//! The one redaction point: every secret the process holds, and what may be shown of any text.
//!
//! Owns a process-wide registry of secret values. Every [`crate::secret::Secret`] registers its
//! value when it is made (a token from a broker reply, a secret_id, password or passphrase read
//! from a file, a kept Vault token); when its last copy is dropped it stays registered among the
//! last [`RETIRED_KEPT`] dropped values, because text built while it was alive (an error, a
//! mail) may reach a sink later. [`scrub`] replaces every registered
//! value in a text with `[redacted]`, whatever the text's source: a broker or proxy echoing a
//! request header, a library's error message, a template. Every sink calls it on the way out:
//! the log writer, the state DB (error texts, mail in the outbox) and the run report.
//!
//! Owns too how untrusted text is shown ([`excerpt`]): control characters escaped (a value cannot
//! forge a second log or diagnostic line) and length bounded (a 50 MB value is not echoed whole).
//!
//! It must never store a secret anywhere but this process's memory, never print the registry,
//! and never scrub so little that a registered value comes out whole. Matching is one
//! Aho-Corasick pass over the text, rebuilt only when the registry changes.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// What a scrubbed secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not registered: scrubbing every `abc` in every log line would
/// shred the logs and protect nothing a guess would not find.
pub const MIN_SECRET_LEN: usize = 6;

/// How many dropped secrets stay registered: text is scrubbed when it is written, within the
/// cycle that made it, so a few cycles' worth is plenty.
pub const RETIRED_KEPT: usize = 256;

#[derive(Default)]
struct Registry {
    /// Registered values and how many live secrets hold each.
    live: HashMap<String, usize>,
    /// Values whose last holder is gone, oldest first.
    retired: VecDeque<String>,
    /// Built on the first scrub after a change.
    automaton: Option<Option<Arc<AhoCorasick>>>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    // A panic elsewhere while the lock was held leaves the registry itself intact.
    REGISTRY.get_or_init(Mutex::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Registers `value` as a secret (see [`MIN_SECRET_LEN`]). Called by `Secret::new`.
pub(crate) fn register(value: &str) {
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut r = registry();
    let count = r.live.entry(value.to_string()).or_insert(0);
    *count += 1;
    // The matcher changes only when a value it does not know yet arrives.
    if *count == 1 && !r.retired.iter().any(|v| v == value) {
        r.automaton = None;
    }
}

/// One holder of `value` is gone; the last one retires it. Called when a `Secret`'s last copy drops.
pub(crate) fn release(value: &str) {
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut r = registry();
    let Some(count) = r.live.get_mut(value) else { return };
    *count -= 1;
    if *count > 0 {
        return;
    }
    r.live.remove(value);
    // Live or retired, the value stays matched: only an eviction changes the matcher.
    if !r.retired.iter().any(|v| v == value) {
        r.retired.push_back(value.to_string());
        if r.retired.len() > RETIRED_KEPT {
            r.retired.pop_front();
            r.automaton = None;
        }
    }
}

/// The matcher over every registered value, also in its JSON-escaped form (what a JSON log line
/// holds); `None` when nothing is registered.
fn automaton() -> Option<Arc<AhoCorasick>> {
    let mut r = registry();
    if let Some(built) = &r.automaton {
        return built.clone();
    }
    let mut patterns = BTreeSet::new();
    for value in r.live.keys().chain(r.retired.iter()) {
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped.trim_start_matches('"').trim_end_matches('"');
        if escaped != value {
            patterns.insert(escaped.to_string());
        }
        patterns.insert(value.clone());
    }
    let built = if patterns.is_empty() {
        None
    } else {
        // Leftmost-longest: a secret that contains another is replaced whole. The plain NFA is
        // the quickest to build, and it is rebuilt whenever a new secret arrives.
        AhoCorasick::builder()
            .kind(Some(AhoCorasickKind::NoncontiguousNFA))
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok()
            .map(Arc::new)
    };
    r.automaton = Some(built.clone());
    built
}

/// `text` with every registered secret replaced by `[redacted]`; borrowed when nothing matched.
pub fn scrub(text: &str) -> Cow<'_, str> {
    match automaton() {
        Some(ac) if ac.is_match(text) => Cow::Owned(ac.replace_all(text, &vec![REDACTED; ac.patterns_len()])),
        _ => Cow::Borrowed(text),
    }
}

/// [`scrub`] for bytes on their way to a writer (a log line).
pub fn scrub_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    match automaton() {
        Some(ac) if ac.is_match(bytes) => {
            Cow::Owned(ac.replace_all_bytes(bytes, &vec![REDACTED.as_bytes(); ac.patterns_len()]))
        }
        _ => Cow::Borrowed(bytes),
    }
}

/// Untrusted text as it may be shown in one line: control characters escaped (`\n`, `\u{1b}`),
/// and cut after `max_chars` characters with a note of the whole length.
pub fn excerpt(text: &str, max_chars: usize) -> Cow<'_, str> {
    let cut = text.char_indices().nth(max_chars).map(|(i, _)| i);
    let head = &text[..cut.unwrap_or(text.len())];
    if cut.is_none() && !head.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out: String = head.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect();
    if cut.is_some() {
        out.push_str(&format!("… ({} bytes in all)", text.len()));
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn a_registered_secret_is_scrubbed_from_any_text() {
        let s = Secret::new("hvs.REDACT-test-0001");
        let text = "X-Vault-Token: hvs.REDACT-test-0001 was refused; again hvs.REDACT-test-0001.";
        assert_eq!(scrub(text), "X-Vault-Token: [redacted] was refused; again [redacted].");
        assert_eq!(&*scrub_bytes(text.as_bytes()), scrub(text).as_bytes());
        assert!(matches!(scrub("nothing secret here"), Cow::Borrowed(_)));
        drop(s);
    }

    #[test]
    fn the_json_escaped_form_is_scrubbed_too() {
        let _s = Secret::new(r#"pa"ss\word-REDACT-0002"#);
        let json = serde_json::json!({ "msg": r#"login with pa"ss\word-REDACT-0002"# }).to_string();
        assert!(!scrub(&json).contains("word-REDACT-0002"), "{}", scrub(&json));
    }

    #[test]
    fn a_secret_containing_another_is_replaced_whole() {
        let _short = Secret::new("REDACT-0003");
        let _long = Secret::new("prefix-REDACT-0003-suffix");
        assert_eq!(scrub("a prefix-REDACT-0003-suffix b REDACT-0003"), "a [redacted] b [redacted]");
    }

    #[test]
    fn a_dropped_secret_stays_registered_a_while() {
        let s = Secret::new("hvs.REDACT-dropped-0004");
        let copy = s.clone();
        drop(s);
        drop(copy);
        assert_eq!(scrub("late error: hvs.REDACT-dropped-0004"), "late error: [redacted]");
        for i in 0..RETIRED_KEPT {
            drop(Secret::new(format!("REDACT-filler-{i:06}")));
        }
        assert_eq!(scrub("hvs.REDACT-dropped-0004"), "hvs.REDACT-dropped-0004", "retired values are bounded");
    }

    #[test]
    fn very_short_values_are_not_registered() {
        let _s = Secret::new("abc");
        assert_eq!(scrub("abc abc"), "abc abc");
    }

    #[test]
    fn excerpts_are_one_bounded_line() {
        fn check(text: &str, max: usize, expected: &str) {
            assert_eq!(excerpt(text, max), expected, "{text:?}");
        }
        check("plain", 10, "plain");
        check("two\nlines\u{1b}[31m", 40, "two\\nlines\\u{1b}[31m");
        check("abcdefghij", 4, "abcd… (10 bytes in all)");
        check("ééééé", 2, "éé… (10 bytes in all)");
        let huge = "x".repeat(50 * 1024 * 1024);
        assert_eq!(excerpt(&huge, 80).len(), 80 + "… (52428800 bytes in all)".len());
    }
}
