//! The Origin allowlist: which web pages may open a WebSocket to us (RFC 6455 §10.2).
//!
//! Owns: the parsed list of allowed origins ([`OriginPolicy`]) and the decision for one
//! `Origin` header value. Pure functions over strings: no I/O, no clock, no allocation per
//! decision.
//!
//! Why it matters: a browser attaches cookies to a WebSocket handshake whatever page started
//! it, so without this check any site a user visits could open a connection in the user's name
//! (cross-site WebSocket hijacking). Browsers always send `Origin` on a WebSocket handshake
//! (RFC 6455 §4.1, item 8) and scripts cannot forge it; non-browser clients may send anything or
//! nothing, which is why a missing header is allowed — this check protects browser users, it
//! does not authenticate anyone.
//!
//! Patterns:
//! - `https://app.example.com` — exactly that origin. Scheme and host compare without regard to
//!   ASCII case (RFC 6454 §4 lowercases both); the port is the explicit one or the scheme's
//!   default (80 for `http`/`ws`, 443 for `https`/`wss`), so `https://a.example:443` and
//!   `https://a.example` are the same origin. Other schemes (an app's `tauri://localhost`) have no
//!   default port and match only with the same port or none.
//! - `https://*.example.com` — any subdomain at any depth (`a.example.com`, `a.b.example.com`),
//!   same scheme and port, but not `example.com` itself: list that separately if wanted.
//! - `null` — the opaque origin of sandboxed frames, `file:` and `data:` pages. Refused unless
//!   listed, because any page can put itself in a sandboxed frame to send it.
//! - `*` — every origin, `null` included. An empty list means the same.
//!
//! Hosts are ASCII: an internationalised name is written in its `xn--` form, as browsers send it
//! (RFC 6454 §4 step 4, via IDNA).

use std::fmt;

/// Longest pattern and longest `Origin` value considered, in bytes. A DNS name is at most 253
/// bytes; with a scheme and a port, 1 KiB is plenty. A longer header is refused unread.
pub const ORIGIN_BYTES_MAX: usize = 1024;

/// Most patterns in one policy: each decision scans the list, so it stays short.
pub const ORIGIN_PATTERNS_MAX: usize = 256;

/// Which origins may connect. Built once from the configuration; [`OriginPolicy::allows`] is
/// called for every handshake.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct OriginPolicy {
    /// `*` was listed, or nothing was.
    open: bool,
    /// `null` was listed.
    null: bool,
    patterns: Vec<Pattern>,
}

#[derive(Clone, PartialEq, Eq)]
struct Pattern {
    /// Lowercase.
    scheme: String,
    /// Lowercase; for a wildcard, the part after `*.`.
    host: String,
    subdomains: bool,
    /// The explicit port, else the scheme's default, else none.
    port: Option<u16>,
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        if self.open {
            list.entry(&"*");
        }
        if self.null {
            list.entry(&"null");
        }
        for p in &self.patterns {
            let star = if p.subdomains { "*." } else { "" };
            match p.port {
                Some(port) => list.entry(&format_args!("{}://{star}{}:{port}", p.scheme, p.host)),
                None => list.entry(&format_args!("{}://{star}{}", p.scheme, p.host)),
            };
        }
        list.finish()
    }
}

/// One origin taken apart, borrowed from the text it came from.
struct Origin<'a> {
    scheme: &'a str,
    /// ASCII, checked; may start with `*.` only when parsing a pattern.
    host: &'a str,
    port: Option<u16>,
}

impl OriginPolicy {
    /// Builds a policy from the configured patterns; refuses a malformed one with a message
    /// that names it and says how to write it.
    pub fn parse(patterns: &[String]) -> Result<OriginPolicy, String> {
        if patterns.len() > ORIGIN_PATTERNS_MAX {
            return Err(format!(
                "{} allowed origins listed; at most {ORIGIN_PATTERNS_MAX} are supported (use a \
                 `https://*.example.com` pattern to cover many subdomains)",
                patterns.len()
            ));
        }
        let mut policy = OriginPolicy {
            open: patterns.is_empty(),
            ..OriginPolicy::default()
        };
        for text in patterns {
            let pattern = text.trim();
            if pattern == "*" {
                policy.open = true;
            } else if pattern.eq_ignore_ascii_case("null") {
                policy.null = true;
            } else {
                let origin = parse_origin(pattern, true).map_err(|why| {
                    format!(
                        "allowed origin `{}`: {why}; write it as `https://app.example.com`, \
                         `https://*.example.com`, `null` or `*`",
                        text.escape_debug()
                    )
                })?;
                let (host, subdomains) = match origin.host.strip_prefix("*.") {
                    Some(base) => (base, true),
                    None => (origin.host, false),
                };
                policy.patterns.push(Pattern {
                    scheme: origin.scheme.to_ascii_lowercase(),
                    host: host.to_ascii_lowercase(),
                    subdomains,
                    port: origin.port,
                });
            }
        }
        Ok(policy)
    }

    /// Whether a handshake with this `Origin` header value (or none) may go on.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        if self.open {
            return true;
        }
        let Some(origin) = origin else {
            // Not a browser: see the module docs.
            return true;
        };
        if origin.len() > ORIGIN_BYTES_MAX {
            return false;
        }
        if origin == "null" {
            return self.null;
        }
        let Ok(origin) = parse_origin(origin, false) else {
            return false;
        };
        self.patterns.iter().any(|p| p.matches(&origin))
    }

    /// Whether every origin is allowed (`*` listed, or an empty list).
    pub fn is_open(&self) -> bool {
        self.open
    }
}

impl Pattern {
    fn matches(&self, origin: &Origin<'_>) -> bool {
        if self.port != origin.port || !self.scheme.eq_ignore_ascii_case(origin.scheme) {
            return false;
        }
        if !self.subdomains {
            return self.host.eq_ignore_ascii_case(origin.host);
        }
        // `a.example.com` for `example.com`: a longer host, ending in `.` + the base. Both are
        // checked ASCII, so the byte index is a character boundary.
        let (host, base) = (origin.host.as_bytes(), self.host.as_bytes());
        host.len() > base.len() + 1
            && host[host.len() - base.len()..].eq_ignore_ascii_case(base)
            && host[host.len() - base.len() - 1] == b'.'
    }
}

/// Takes `scheme://host[:port]` apart (RFC 6454 §6.1's serialisation), checking each piece.
/// `wildcard` allows a leading `*.` label, for patterns.
fn parse_origin(text: &str, wildcard: bool) -> Result<Origin<'_>, &'static str> {
    if text.len() > ORIGIN_BYTES_MAX {
        return Err("longer than 1024 bytes");
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("no `scheme://`");
    };
    let mut scheme_chars = scheme.bytes();
    // RFC 3986 §3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    if !scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
    {
        return Err("the scheme is not a URL scheme");
    }
    if rest.ends_with('/') {
        return Err("an origin has no path: remove the trailing `/`");
    }
    if rest.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or fragment");
    }
    if rest.contains('@') {
        return Err("an origin has no user name or password");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((address, after)) = v6.split_once(']') else {
            return Err("an IPv6 address must end with `]`");
        };
        if address.is_empty()
            || !address
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return Err("not an IPv6 address in brackets");
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("text after the `]`")?),
        };
        (&rest[..address.len() + 2], port)
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let port = match port {
        None => default_port(scheme),
        Some(port) => Some(parse_port(port)?),
    };
    if !host.starts_with('[') {
        check_host(host, wildcard)?;
    }
    Ok(Origin { scheme, host, port })
}

fn parse_port(text: &str) -> Result<u16, &'static str> {
    if text == "*" {
        return Err("a wildcard port is not supported: list each port");
    }
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|c| c.is_ascii_digit()) {
        return Err("the port is not a number from 1 to 65535");
    }
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err("the port is not a number from 1 to 65535"),
    }
}

/// The default port of the schemes a browser can open a WebSocket from (RFC 6454 §4 step 6
/// takes the scheme's default when the URI has none).
fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
        Some(80)
    } else {
        None
    }
}

/// A DNS name or IPv4 address: labels of ASCII letters, digits, `-` and `_`, 1..=63 bytes each,
/// at most 253 bytes in all (RFC 1035 §2.3.4), with an optional leading `*` label for patterns.
fn check_host(host: &str, wildcard: bool) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("no host");
    }
    if !host.is_ascii() {
        return Err("the host is not ASCII: write an internationalised name in its `xn--` form");
    }
    let name = match host.strip_prefix("*.") {
        Some(base) if wildcard => base,
        _ => host,
    };
    if name.contains('*') {
        return Err("a wildcard is only allowed as the whole first label, as in `*.example.com`");
    }
    if name.len() > 253 {
        return Err("the host is longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("the host has an empty label (two dots, or a dot at an end)");
        }
        if label.len() > 63 {
            return Err("a label of the host is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        {
            return Err("the host has a character other than letters, digits, `-`, `_` and `.`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy(patterns: &[&str]) -> OriginPolicy {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        OriginPolicy::parse(&patterns).unwrap()
    }

    fn refused(pattern: &str) -> String {
        OriginPolicy::parse(&[pattern.to_string()]).unwrap_err()
    }

    #[test]
    fn exact_origin() {
        let p = policy(&["https://app.example.com"]);
        assert!(!p.is_open());
        assert!(p.allows(Some("https://app.example.com")));
        assert!(p.allows(Some("HTTPS://App.Example.COM")));
        assert!(p.allows(Some("https://app.example.com:443")));
        assert!(!p.allows(Some("http://app.example.com")));
        assert!(!p.allows(Some("https://app.example.com:8443")));
        assert!(!p.allows(Some("https://example.com")));
        assert!(!p.allows(Some("https://x.app.example.com")));
        assert!(!p.allows(Some("https://app.example.com.evil.test")));
        assert!(!p.allows(Some("https://evilapp.example.com")));
        assert!(!p.allows(Some("https://app.example.co")));
        // Not origins at all.
        assert!(!p.allows(Some("")));
        assert!(!p.allows(Some("app.example.com")));
        assert!(!p.allows(Some("https://app.example.com/")));
        assert!(!p.allows(Some("https://app.example.com/path")));
        assert!(!p.allows(Some("https://user@app.example.com")));
        assert!(!p.allows(Some("https://app.example.com https://other.test")));
    }

    #[test]
    fn explicit_and_default_ports() {
        let p = policy(&["https://a.test:443", "http://b.test", "http://c.test:8080"]);
        assert!(p.allows(Some("https://a.test")));
        assert!(p.allows(Some("http://b.test:80")));
        assert!(!p.allows(Some("http://b.test:8080")));
        assert!(p.allows(Some("http://c.test:8080")));
        assert!(!p.allows(Some("http://c.test")));
        // Schemes without a default port: only the same port, or none on both sides.
        let p = policy(&["tauri://localhost", "app://local:9"]);
        assert!(p.allows(Some("tauri://localhost")));
        assert!(!p.allows(Some("tauri://localhost:80")));
        assert!(p.allows(Some("app://local:9")));
        assert!(!p.allows(Some("app://local")));
    }

    #[test]
    fn subdomain_wildcard() {
        let p = policy(&["https://*.example.com"]);
        assert!(p.allows(Some("https://a.example.com")));
        assert!(p.allows(Some("https://a.b.c.example.com")));
        assert!(p.allows(Some("https://A.EXAMPLE.com:443")));
        assert!(!p.allows(Some("https://example.com")));
        assert!(!p.allows(Some("https://.example.com")));
        assert!(!p.allows(Some("https://evilexample.com")));
        assert!(!p.allows(Some("https://a.example.com.evil.test")));
        assert!(!p.allows(Some("http://a.example.com")));
        assert!(!p.allows(Some("https://a.example.com:8443")));
        assert!(!p.allows(Some("https://*.example.com")));
        // Together with the bare domain when both are wanted.
        let p = policy(&["https://*.example.com", "https://example.com"]);
        assert!(p.allows(Some("https://example.com")));
    }

    #[test]
    fn missing_origin_is_allowed_null_is_not() {
        let p = policy(&["https://app.example.com"]);
        assert!(p.allows(None));
        assert!(!p.allows(Some("null")));
        let p = policy(&["https://app.example.com", "null"]);
        assert!(p.allows(Some("null")));
        assert!(!p.allows(Some("https://other.test")));
    }

    #[test]
    fn open_policies() {
        for p in [
            policy(&[]),
            policy(&["*"]),
            policy(&["https://a.test", " * "]),
        ] {
            assert!(p.is_open());
            assert!(p.allows(None));
            assert!(p.allows(Some("null")));
            assert!(p.allows(Some("https://anything.test")));
            assert!(p.allows(Some("not even an origin")));
        }
    }

    #[test]
    fn ipv6_and_ipv4_hosts() {
        let p = policy(&["http://[::1]:8080", "http://127.0.0.1:3000"]);
        assert!(p.allows(Some("http://[::1]:8080")));
        assert!(!p.allows(Some("http://[::1]")));
        assert!(!p.allows(Some("http://[::2]:8080")));
        assert!(p.allows(Some("http://127.0.0.1:3000")));
        assert!(!p.allows(Some("http://127.0.0.2:3000")));
        let p = policy(&["http://[FE80::1]"]);
        assert!(p.allows(Some("http://[fe80::1]:80")));
    }

    #[test]
    fn malformed_patterns_are_refused_with_a_reason() {
        let cases = [
            ("app.example.com", "scheme://"),
            ("https://", "no host"),
            ("https://app.example.com/", "trailing `/`"),
            ("https://app.example.com/path", "no path"),
            ("https://app.example.com?q", "no path"),
            ("https://u:p@app.example.com", "user name"),
            ("https://app.example.com:0", "port"),
            ("https://app.example.com:65536", "port"),
            ("https://app.example.com:", "port"),
            ("https://app.example.com:+80", "port"),
            ("https://app.example.com:*", "wildcard port"),
            ("https://app.*.com", "wildcard"),
            ("https://*example.com", "wildcard"),
            ("https://*", "wildcard"),
            ("https://*.", "empty label"),
            ("https://a..b", "empty label"),
            ("https://example.com.", "empty label"),
            ("https://bücher.example", "xn--"),
            ("https://a b.test", "character"),
            ("1http://a.test", "scheme"),
            ("://a.test", "scheme"),
            ("http://[::1", "`]`"),
            ("http://[]", "IPv6"),
            ("http://[::1]x", "after the `]`"),
            ("http://a:b:c", "port"),
            ("", "scheme://"),
        ];
        for (pattern, why) in cases {
            let message = refused(pattern);
            assert!(message.contains(why), "{pattern:?}: {message}");
            assert!(message.contains("https://app.example.com"), "{message}");
        }
        let long = format!("https://{}.test", "a".repeat(ORIGIN_BYTES_MAX));
        assert!(refused(&long).contains("longer"));
        let label = format!("https://{}.test", "a".repeat(64));
        assert!(refused(&label).contains("63"));
        let many: Vec<String> = (0..=ORIGIN_PATTERNS_MAX)
            .map(|i| format!("https://h{i}.test"))
            .collect();
        assert!(OriginPolicy::parse(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn long_origin_headers_are_refused() {
        let p = policy(&["https://*.test"]);
        let long = format!("https://{}.test", "a.".repeat(ORIGIN_BYTES_MAX));
        assert!(!p.allows(Some(&long)));
    }

    #[test]
    fn debug_lists_the_patterns() {
        let p = policy(&["null", "https://*.Example.com:8443", "http://a.test"]);
        assert_eq!(
            format!("{p:?}"),
            r#"["null", https://*.example.com:8443, http://a.test:80]"#
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(pattern in ".{0,60}", origin in ".{0,60}") {
            if let Ok(p) = OriginPolicy::parse(&[pattern]) {
                let _ = p.allows(Some(&origin));
            }
            let p = policy(&["https://*.example.com", "http://[::1]:80", "null"]);
            let _ = p.allows(Some(&origin));
        }

        #[test]
        fn a_subdomain_pattern_never_allows_its_base(
            labels in proptest::collection::vec("[a-z0-9-]{1,10}", 1..4),
        ) {
            let base = labels.join(".");
            let p = policy(&[&format!("https://*.{base}")]);
            let bare = format!("https://{base}");
            prop_assert!(!p.allows(Some(&bare)));
            let sub = format!("https://x.{base}");
            prop_assert!(p.allows(Some(&sub)));
        }
    }
}
