//! known_hosts with OpenSSH's semantics, decided here rather than by libssh2 (whose parser
//! ignores `@revoked` and `@cert-authority` markers and lets a bare `host` line match any port).
//!
//! Pure: parses the file's text and judges one presented host key against it. What it follows,
//! as `ssh` does: a host on port 22 is looked up as `host`, on any other port as `[host]:port`
//! (a bare `host` line never matches port 2222); patterns are comma-separated with `*`, `?` and
//! `!negation`, compared case-insensitively; hashed names (`|1|salt|hmac`) are the HMAC-SHA1 of
//! that same lookup name; an `@revoked` key is refused even if another line lists it;
//! `@cert-authority` lines cannot be used (libssh2 does not verify host certificates).
//!
//! Must never accept a key that no plain line for this host and port holds, nor one that an
//! `@revoked` line for it holds.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// What a line is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    Plain,
    Revoked,
    CertAuthority,
}

/// One usable known_hosts line.
#[derive(Clone, Debug)]
struct Entry {
    marker: Marker,
    hosts: String,
    key_type: String,
    blob: Vec<u8>,
}

/// The lines of one known_hosts file that could be parsed; others are skipped, as `ssh` does.
#[derive(Clone, Debug, Default)]
pub(crate) struct KnownHosts {
    entries: Vec<Entry>,
}

/// The verdict on a presented host key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Match,
    /// An `@revoked` line for this host holds the key.
    Revoked,
    /// Plain lines for this host exist and none holds the key.
    Mismatch,
    /// Only `@cert-authority` lines name this host: no key that can be checked.
    CertAuthorityOnly,
    NotFound,
}

impl KnownHosts {
    pub fn parse(text: &str) -> KnownHosts {
        KnownHosts { entries: text.lines().filter_map(parse_line).collect() }
    }

    /// Key types (`ssh-ed25519`, …) of the plain lines for this host, in file order: the host
    /// key algorithms worth offering.
    pub fn key_types(&self, address: &str, port: u16) -> Vec<String> {
        let name = lookup_name(address, port);
        let mut types: Vec<String> = Vec::new();
        for e in self.entries.iter().filter(|e| e.marker == Marker::Plain && hosts_match(&e.hosts, &name)) {
            if !types.contains(&e.key_type) {
                types.push(e.key_type.clone());
            }
        }
        types
    }

    pub fn check(&self, address: &str, port: u16, blob: &[u8]) -> Verdict {
        let name = lookup_name(address, port);
        let mine: Vec<&Entry> = self.entries.iter().filter(|e| hosts_match(&e.hosts, &name)).collect();
        if mine.iter().any(|e| e.marker == Marker::Revoked && e.blob == blob) {
            return Verdict::Revoked;
        }
        let plain: Vec<&&Entry> = mine.iter().filter(|e| e.marker == Marker::Plain).collect();
        if plain.iter().any(|e| e.blob == blob) {
            Verdict::Match
        } else if !plain.is_empty() {
            Verdict::Mismatch
        } else if mine.iter().any(|e| e.marker == Marker::CertAuthority) {
            Verdict::CertAuthorityOnly
        } else {
            Verdict::NotFound
        }
    }
}

/// The name `ssh` looks a host up under.
fn lookup_name(address: &str, port: u16) -> String {
    let address = address.to_ascii_lowercase();
    if port == 22 { address } else { format!("[{address}]:{port}") }
}

fn parse_line(line: &str) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        m if m.starts_with('@') => return None,
        _ => Marker::Plain,
    };
    if marker != Marker::Plain {
        first = fields.next()?;
    }
    let key_type = fields.next()?;
    let blob = base64::engine::general_purpose::STANDARD.decode(fields.next()?).ok()?;
    // The blob names its own type; a line whose type field disagrees is corrupt.
    if super::session::key_type_of_blob(&blob).as_deref() != Some(key_type) {
        return None;
    }
    Some(Entry { marker, hosts: first.to_string(), key_type: key_type.to_string(), blob })
}

/// Whether a host field names `name`: a hashed name, or a pattern list where any `!` pattern
/// that matches rules the line out.
fn hosts_match(hosts: &str, name: &str) -> bool {
    if let Some(hashed) = hosts.strip_prefix("|1|") {
        return hashed_match(hashed, name);
    }
    let mut positive = false;
    for pattern in hosts.split(',') {
        let pattern = pattern.to_ascii_lowercase();
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if wildcard_match(pattern.as_bytes(), name.as_bytes()) {
            positive = true;
        }
    }
    positive
}

/// `|1|<base64 salt>|<base64 HMAC-SHA1(salt, name)>`, the part after `|1|` given.
fn hashed_match(hashed: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, digest)) = hashed.split_once('|') else { return false };
    let (Ok(salt), Ok(digest)) = (b64.decode(salt), b64.decode(digest)) else { return false };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&salt) else { return false };
    mac.update(name.as_bytes());
    mac.verify_slice(&digest).is_ok()
}

/// `*` (any run) and `?` (any one byte), as OpenSSH's `match_pattern`. Iterative with one
/// backtrack point, so a hostile pattern cannot make it exponential.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(name: &str, body: u8) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(name.len() as u32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&[0, 0, 0, 4, body, body, body, body]);
        b
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        format!("|1|{}|{}", b64(salt), b64(&mac.finalize().into_bytes()))
    }

    fn check(file: &str, address: &str, port: u16, key: &[u8], expected: Verdict) {
        assert_eq!(KnownHosts::parse(file).check(address, port, key), expected, "{file} for {address}:{port}");
    }

    #[test]
    fn plain_lines_and_ports() {
        let k = blob("ssh-ed25519", 1);
        let line = |hosts: &str| format!("{hosts} ssh-ed25519 {} comment\n", b64(&k));
        check(&line("[schedd]:2222"), "schedd", 2222, &k, Verdict::Match);
        check(&line("schedd"), "schedd", 22, &k, Verdict::Match);
        // A bare host is port 22 only; [host]:22 is not how ssh writes port 22.
        check(&line("schedd"), "schedd", 2222, &k, Verdict::NotFound);
        check(&line("[schedd]:2222"), "schedd", 22, &k, Verdict::NotFound);
        check(&line("[schedd]:2222"), "schedd", 2223, &k, Verdict::NotFound);
        check(&line("other,SCHEDD"), "schedd", 22, &k, Verdict::Match);
        check(&line("sched?"), "schedd", 22, &k, Verdict::Match);
        check(&line("*.cern.ch,!evil.cern.ch"), "vocms1.cern.ch", 22, &k, Verdict::Match);
        check(&line("*.cern.ch,!evil.cern.ch"), "evil.cern.ch", 22, &k, Verdict::NotFound);
        check(&line("[*]:2222"), "schedd", 2222, &k, Verdict::Match);
        check(&line("schedd"), "schedd", 22, &blob("ssh-ed25519", 2), Verdict::Mismatch);
        check("", "schedd", 22, &k, Verdict::NotFound);
    }

    #[test]
    fn hashed_names() {
        let k = blob("ssh-ed25519", 1);
        let line = |name: &str| format!("{} ssh-ed25519 {}\n", hashed(name, b"0123456789abcdefghij"), b64(&k));
        check(&line("[127.0.0.1]:2222"), "127.0.0.1", 2222, &k, Verdict::Match);
        check(&line("[127.0.0.1]:2222"), "127.0.0.1", 2223, &k, Verdict::NotFound);
        check(&line("127.0.0.1"), "127.0.0.1", 22, &k, Verdict::Match);
        check(&line("127.0.0.1"), "127.0.0.1", 2222, &k, Verdict::NotFound);
        check("|1|bm90YmFzZTY0|!!! ssh-ed25519 AAAA\n", "x", 22, &k, Verdict::NotFound);
    }

    #[test]
    fn revoked_wins_over_a_plain_line() {
        let k = blob("ssh-ed25519", 1);
        let good = blob("ssh-ed25519", 2);
        let file = format!("schedd ssh-ed25519 {k}\n@revoked schedd ssh-ed25519 {k}\nschedd ssh-ed25519 {g}\n", k = b64(&k), g = b64(&good));
        check(&file, "schedd", 22, &k, Verdict::Revoked);
        check(&file, "schedd", 22, &good, Verdict::Match);
        // A revocation for another host does not touch this one.
        let file = format!("schedd ssh-ed25519 {k}\n@revoked other ssh-ed25519 {k}\n", k = b64(&k));
        check(&file, "schedd", 22, &k, Verdict::Match);
        check(&format!("@revoked * ssh-ed25519 {}\n", b64(&k)), "schedd", 22, &k, Verdict::Revoked);
    }

    #[test]
    fn cert_authority_lines_are_not_keys() {
        let ca = blob("ssh-ed25519", 9);
        let k = blob("ssh-ed25519", 1);
        let file = format!("@cert-authority *.cern.ch ssh-ed25519 {}\n", b64(&ca));
        check(&file, "vocms1.cern.ch", 22, &k, Verdict::CertAuthorityOnly);
        // Not even the CA key itself, presented as a host key, is accepted through that line.
        check(&file, "vocms1.cern.ch", 22, &ca, Verdict::CertAuthorityOnly);
        let both = format!("{file}vocms1.cern.ch ssh-ed25519 {}\n", b64(&k));
        check(&both, "vocms1.cern.ch", 22, &k, Verdict::Match);
    }

    #[test]
    fn broken_lines_are_skipped() {
        let k = blob("ssh-ed25519", 1);
        let file = format!(
            "# comment\n\n@unknown schedd ssh-ed25519 {k}\nschedd\nschedd ssh-rsa {k}\nschedd ssh-ed25519 not-base64\n  schedd ssh-ed25519 {k}\n",
            k = b64(&k)
        );
        let known = KnownHosts::parse(&file);
        assert_eq!(known.entries.len(), 1);
        assert_eq!(known.check("schedd", 22, &k), Verdict::Match);
        assert_eq!(known.key_types("schedd", 22), vec!["ssh-ed25519"]);
        assert!(known.key_types("schedd", 23).is_empty());
    }

    #[test]
    fn wildcards() {
        let m = |p: &str, t: &str| wildcard_match(p.as_bytes(), t.as_bytes());
        assert!(m("*", ""));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("??", "ab"));
        assert!(!m("?", "ab"));
        assert!(!m(&"a*".repeat(30).replace("a*a", "a*b"), &"a".repeat(60)));
    }
}
