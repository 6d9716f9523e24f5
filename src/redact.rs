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
//! and never scrub so little that a registered value comes out whole. A registration costs the
//! same whatever is already registered: each pattern is indexed by its last bytes, and a scrub
//! is one pass over the text with a lookup per position, so a cycle that mints thousands of
//! tokens does not rebuild a matcher over all of them for every new one.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What a scrubbed secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not registered: scrubbing every `abc` in every log line would
/// shred the logs and protect nothing a guess would not find.
pub const MIN_SECRET_LEN: usize = 6;

/// How many dropped secrets stay registered: text is scrubbed when it is written, within the
/// cycle that made it, so a few cycles' worth is plenty.
pub const RETIRED_KEPT: usize = 256;

/// Patterns at least this long are indexed by their last `LONG_TAIL` bytes (tokens end in random
/// bytes, while their starts are shared: `eyJhbGciOi…`, `hvs.CAES…`); shorter ones by their last
/// [`MIN_SECRET_LEN`].
const LONG_TAIL: usize = 16;

#[derive(Default)]
struct Registry {
    /// Registered values and how many live secrets hold each.
    live: HashMap<String, usize>,
    /// Values whose last holder is gone, oldest first.
    retired: VecDeque<String>,
    /// What is matched: every live or retired value, also in its JSON-escaped form.
    index: Index,
}

/// Patterns by the bytes they end with.
type Buckets = HashMap<Box<[u8]>, Vec<String>>;

/// Patterns by the bytes they end with, each with how many values produced it.
#[derive(Default)]
struct Index {
    count: HashMap<String, usize>,
    long: Buckets,
    short: Buckets,
}

impl Index {
    /// A value and its JSON-escaped form (what a JSON log line holds).
    fn patterns(value: &str) -> Vec<String> {
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped.trim_start_matches('"').trim_end_matches('"');
        if escaped == value { vec![value.to_string()] } else { vec![value.to_string(), escaped.to_string()] }
    }

    fn bucket(&mut self, pattern: &str) -> (&mut Buckets, Box<[u8]>) {
        let bytes = pattern.as_bytes();
        if bytes.len() >= LONG_TAIL {
            (&mut self.long, bytes[bytes.len() - LONG_TAIL..].into())
        } else {
            (&mut self.short, bytes[bytes.len() - MIN_SECRET_LEN..].into())
        }
    }

    fn add(&mut self, value: &str) {
        for pattern in Self::patterns(value) {
            let count = self.count.entry(pattern.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                let (map, tail) = self.bucket(&pattern);
                map.entry(tail).or_default().push(pattern);
            }
        }
    }

    fn remove(&mut self, value: &str) {
        for pattern in Self::patterns(value) {
            let Some(count) = self.count.get_mut(&pattern) else { continue };
            *count -= 1;
            if *count > 0 {
                continue;
            }
            self.count.remove(&pattern);
            let (map, tail) = self.bucket(&pattern);
            if let Some(list) = map.get_mut(&tail) {
                list.retain(|p| *p != pattern);
                if list.is_empty() {
                    map.remove(&tail);
                }
            }
        }
    }

    /// Byte ranges of every pattern in `text`, in order, overlapping ones joined: a secret that
    /// contains another is replaced whole.
    fn find(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let mut found: Vec<(usize, usize)> = Vec::new();
        if self.count.is_empty() {
            return found;
        }
        for end in MIN_SECRET_LEN..=text.len() {
            let mut candidates = self.short.get(&text[end - MIN_SECRET_LEN..end]).into_iter().flatten();
            let long = if end >= LONG_TAIL { self.long.get(&text[end - LONG_TAIL..end]) } else { None };
            let mut long = long.into_iter().flatten();
            for pattern in std::iter::from_fn(|| candidates.next().or_else(|| long.next())) {
                let p = pattern.as_bytes();
                if p.len() <= end && &text[end - p.len()..end] == p {
                    found.push((end - p.len(), end));
                }
            }
        }
        found.sort_unstable();
        let mut joined: Vec<(usize, usize)> = Vec::with_capacity(found.len());
        for (start, end) in found {
            match joined.last_mut() {
                Some(last) if start < last.1 => last.1 = last.1.max(end),
                _ => joined.push((start, end)),
            }
        }
        joined
    }
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
    // A retired value is still indexed.
    if *count == 1 && !r.retired.iter().any(|v| v == value) {
        r.index.add(value);
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
    // Live or retired, the value stays matched: only an eviction unindexes it.
    if !r.retired.iter().any(|v| v == value) {
        r.retired.push_back(value.to_string());
        if r.retired.len() > RETIRED_KEPT
            && let Some(evicted) = r.retired.pop_front()
            && !r.live.contains_key(&evicted)
        {
            r.index.remove(&evicted);
        }
    }
}

/// `bytes` with the given ranges replaced by `[redacted]`.
fn replace(bytes: &[u8], ranges: &[(usize, usize)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    for &(start, end) in ranges {
        out.extend_from_slice(&bytes[at..start]);
        out.extend_from_slice(REDACTED.as_bytes());
        at = end;
    }
    out.extend_from_slice(&bytes[at..]);
    out
}

/// `text` with every registered secret replaced by `[redacted]`; borrowed when nothing matched.
pub fn scrub(text: &str) -> Cow<'_, str> {
    match scrub_bytes(text.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        // Secrets are whole UTF-8 strings, so their occurrences start and end on character
        // boundaries of a UTF-8 text.
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
    }
}

/// [`scrub`] for bytes on their way to a writer (a log line).
pub fn scrub_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    let ranges = registry().index.find(bytes);
    if ranges.is_empty() { Cow::Borrowed(bytes) } else { Cow::Owned(replace(bytes, &ranges)) }
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
    fn thousands_of_tokens_with_one_prefix_are_each_found() {
        let header = "eyJhbGciOiJSUzI1NiIsImtpZCI6IlJFREFDVC0wMDA1In0.";
        let tokens: Vec<Secret> = (0..3000).map(|i| Secret::new(format!("{header}{}.sig-REDACT-0005-{i:06}", "p".repeat(600)))).collect();
        for i in [0, 1, 1499, 2999] {
            let text = format!("Authorization: Bearer {}; next", tokens[i].expose());
            assert_eq!(scrub(&text), "Authorization: Bearer [redacted]; next");
        }
        // A token cut short is not a registered value; its prefix alone is not redacted.
        let cut = &tokens[7].expose()[..200];
        assert_eq!(scrub(cut), cut);
    }

    #[test]
    fn adjacent_and_repeated_secrets_are_each_replaced() {
        let _a = Secret::new("REDACT-0006-aaaaaaaaaaaaaaaaaaaa");
        let _b = Secret::new("REDACT-0006-b");
        assert_eq!(scrub("REDACT-0006-aaaaaaaaaaaaaaaaaaaaREDACT-0006-b|REDACT-0006-b"), "[redacted][redacted]|[redacted]");
        assert_eq!(scrub("é REDACT-0006-b é"), "é [redacted] é");
    }

    #[test]
    fn a_value_registered_again_after_it_retired_stays_matched_when_evicted() {
        let first = Secret::new("hvs.REDACT-again-0007");
        drop(first);
        let again = Secret::new("hvs.REDACT-again-0007");
        for i in 0..=RETIRED_KEPT {
            drop(Secret::new(format!("REDACT-filler2-{i:06}")));
        }
        assert_eq!(scrub("hvs.REDACT-again-0007"), "[redacted]", "still held");
        drop(again);
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
