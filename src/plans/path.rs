//! One normalization for every path a class is matched against, whatever the
//! door: a gRPC `resource`, an Envoy plan domain's `resource` entry, forward
//! auth's `X-Forwarded-Uri`/`X-Original-URI`, `/v1/*` and `WatchQuota`.
//!
//! A class is only as good as the path it is matched on: the app behind the
//! gateway decodes and normalizes its path before routing, so a gated class
//! must be judged on the path the app will route, not on the client's
//! spelling of it. [`normalize`] follows RFC 3986 (§6.2.2, §5.2.4), the same
//! steps as Envoy's `normalize_path` followed by `merge_slashes`:
//!
//! - an absolute URI (`http://host/p`) is reduced to its path;
//! - the query (`?…`) and the fragment (`#…`) are dropped;
//! - percent-encoded unreserved characters (`A–Z a–z 0–9 - . _ ~`) are
//!   decoded, and every other escape is written in upper case;
//! - a segment's parameters (`;…`, RFC 3986 §3.3) are dropped, as servlet
//!   containers and others drop them before routing (`/admin;x=1/users` is
//!   `/admin/users`);
//! - dot segments are removed (`/a/./b/../c` is `/a/c`);
//! - repeated slashes are merged (`//a///b` is `/a/b`).
//!
//! What cannot be normalized without guessing how the app reads it is
//! [`Unsafe`], and [`UnsafePaths`] (the configuration's `paths.unsafe`) says
//! what happens to it: an encoded slash or backslash (`%2F`, `%5C`, or a raw
//! `\`), an invalid escape (`%zz`), a NUL, a `..` that climbs above the root,
//! and a `..` right after an empty segment (`/a//../b`: `/a/b` or `/b`,
//! depending on whether slashes are merged before or after).
//!
//! The result never contains `//`, `/./`, `/../`, a query, parameters or an
//! encoded unreserved character, so normalizing twice is normalizing once.
//! A path that is already normal (the common case) is returned borrowed,
//! after one scan.

use std::borrow::Cow;

/// What to do with a path that cannot be normalized safely (`paths.unsafe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsafePaths {
    /// Refuse the request: `INVALID_ARGUMENT` naming the resource, 400 over
    /// HTTP. Nothing is counted. The only choice that can never judge a
    /// different path than the app routes.
    #[default]
    Refuse,
    /// Judge it as spelled: `%2F` and `%5C` stay encoded inside their
    /// segment, `%00` stays, a `%` that starts no escape is written `%25`,
    /// a `..` above the
    /// root is dropped (RFC 3986 §5.2.4) and `/a//../b` is `/a/b` (Envoy's
    /// order). Risk: an app (or a proxy before it) that decodes `%2F` routes
    /// `/admin%2Fusers` to `/admin/users`, a class tollgate did not judge.
    Keep,
    /// Decode `%2F`, `%5C` and `\` into path separators, then normalize; the
    /// rest as `keep`. Risk: an app that keeps them encoded routes a
    /// different path than the one judged.
    Decode,
}

/// Why a path cannot be normalized safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    /// `%2F` or `%5C` (or a raw `\`): a separator the app may or may not see.
    #[error("an encoded slash or backslash (%2F, %5C, \\) is ambiguous")]
    EncodedSlash,
    /// `%` not followed by two hexadecimal digits.
    #[error("an invalid percent escape")]
    BadEscape,
    /// A NUL byte, raw or `%00`.
    #[error("a NUL character")]
    Nul,
    /// A `..` with nothing left to remove.
    #[error("a '..' segment climbs above the root")]
    AboveRoot,
    /// A `..` right after an empty segment: its meaning depends on whether
    /// slashes are merged first.
    #[error("a '..' segment after an empty segment is ambiguous")]
    Ambiguous,
}

// === normalize ===

/// `path` normalized (see the module docs): borrowed when already normal.
/// A `[METHOD ]` prefix is not part of `path`; split it off first.
///
/// ```
/// use tollgate::plans::path::{normalize, UnsafePaths};
/// let n = |p| normalize(p, UnsafePaths::Refuse).map(|p| p.into_owned());
/// assert_eq!(n("/%61dmin//users/./x/../?page=2").as_deref(), Ok("/admin/users/"));
/// assert_eq!(n("/api/v1/fetch/search;x=1").as_deref(), Ok("/api/v1/fetch/search"));
/// assert!(n("/admin%2Fusers").is_err());
/// ```
pub fn normalize(path: &str, policy: UnsafePaths) -> Result<Cow<'_, str>, Unsafe> {
    let path = strip_authority(path);
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    slow(path, policy).map(Cow::Owned)
}

/// The path of an absolute URI (`scheme://authority/path`), else `s`.
fn strip_authority(s: &str) -> &str {
    let Some(colon) = s.find("://") else {
        return s;
    };
    let scheme = &s[..colon];
    let valid = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !valid {
        return s;
    }
    let rest = &s[colon + 3..];
    match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        _ => "/",
    }
}

/// Whether `path` is already normal: nothing to decode, drop or remove,
/// every escape in upper case and none of them unsafe.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' | b';' | b'?' | b'#' | 0 => return false,
            b'%' => {
                let upper = |j: usize| {
                    bytes
                        .get(j)
                        .is_some_and(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
                };
                if !(upper(i + 1) && upper(i + 2)) {
                    return false;
                }
                let c =
                    hex(bytes.get(i + 1)).unwrap_or(0) << 4 | hex(bytes.get(i + 2)).unwrap_or(0);
                if is_unreserved(c) || matches!(c, b'/' | b'\\' | 0) {
                    return false;
                }
            }
            _ => {}
        }
    }
    let body = path.strip_prefix('/').unwrap_or(path);
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." | ".." => return false,
            // Empty but last is a trailing slash; anywhere else a `//`.
            "" if segments.peek().is_some() => return false,
            _ => {}
        }
    }
    true
}

/// The full normalization, into a new string.
fn slow(path: &str, policy: UnsafePaths) -> Result<String, Unsafe> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let decoded = decode(path, policy)?;
    let absolute = decoded.starts_with('/');
    let body = if absolute {
        &decoded[1..]
    } else {
        &decoded[..]
    };
    let segments: Vec<&str> = body
        .split('/')
        .map(|s| s.split(';').next().unwrap_or_default())
        .collect();
    // Envoy's order: dot segments first (a `..` may remove an empty
    // segment), then slashes merged.
    let strict = policy == UnsafePaths::Refuse;
    let dots_first = resolve(&segments, absolute, strict)?;
    if strict {
        // Slashes merged first: an app that does so must route the same path.
        let last = segments.len() - 1;
        let merged: Vec<&str> = segments
            .iter()
            .enumerate()
            .filter(|(i, s)| !s.is_empty() || *i == last)
            .map(|(_, s)| *s)
            .collect();
        if resolve(&merged, absolute, strict)? != dots_first {
            return Err(Unsafe::Ambiguous);
        }
    }
    Ok(dots_first)
}

/// RFC 3986 §5.2.4 over `segments` (the path after its leading `/`, split
/// on `/`), then empty segments merged away but for a trailing slash. A `..`
/// above the root is an error when `strict`, else dropped.
fn resolve(segments: &[&str], absolute: bool, strict: bool) -> Result<String, Unsafe> {
    let mut stack: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                if stack.pop().is_none() && strict {
                    return Err(Unsafe::AboveRoot);
                }
            }
            s => {
                stack.push(s);
                continue;
            }
        }
        if last {
            // `/a/.` and `/a/b/..` end in a slash.
            stack.push("");
        }
    }
    let mut out = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum());
    if absolute {
        out.push('/');
    }
    let last = stack.len().saturating_sub(1);
    let mut first = true;
    for (i, s) in stack.iter().enumerate() {
        if s.is_empty() && i != last {
            continue;
        }
        if !first {
            out.push('/');
        }
        out.push_str(s);
        first = false;
    }
    Ok(out)
}

/// `path` with unreserved escapes decoded and every other escape in upper
/// case; the unsafe bytes handled as `policy` says. `%2F` decoded (policy
/// `decode`) becomes `/`, so it separates segments like any other.
fn decode(path: &str, policy: UnsafePaths) -> Result<String, Unsafe> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    let c = hi << 4 | lo;
                    match c {
                        c if is_unreserved(c) => out.push(c),
                        b'/' | b'\\' => match policy {
                            UnsafePaths::Refuse => return Err(Unsafe::EncodedSlash),
                            UnsafePaths::Keep => push_escape(&mut out, c),
                            UnsafePaths::Decode => out.push(b'/'),
                        },
                        0 if policy == UnsafePaths::Refuse => return Err(Unsafe::Nul),
                        c => push_escape(&mut out, c),
                    }
                    i += 3;
                    continue;
                }
                _ if policy == UnsafePaths::Refuse => return Err(Unsafe::BadEscape),
                // A `%` that starts no escape is itself escaped, so that
                // normalizing again reads it the same way.
                _ => push_escape(&mut out, b'%'),
            },
            b'\\' => match policy {
                UnsafePaths::Refuse => return Err(Unsafe::EncodedSlash),
                UnsafePaths::Keep => push_escape(&mut out, b'\\'),
                UnsafePaths::Decode => out.push(b'/'),
            },
            0 => match policy {
                UnsafePaths::Refuse => return Err(Unsafe::Nul),
                _ => push_escape(&mut out, 0),
            },
            b => out.push(b),
        }
        i += 1;
    }
    // Only ASCII was decoded; every other byte came from a `&str`.
    Ok(String::from_utf8(out).expect("decoding ASCII escapes keeps UTF-8 valid"))
}

fn push_escape(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
}

fn hex(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn refuse(p: &str) -> Result<String, Unsafe> {
        normalize(p, UnsafePaths::Refuse).map(Cow::into_owned)
    }

    fn keep(p: &str) -> String {
        normalize(p, UnsafePaths::Keep)
            .expect("keep never refuses")
            .into_owned()
    }

    #[test]
    fn every_spelling_of_a_gated_path_is_that_path() {
        for spelling in [
            "/admin/users",
            "/%61dmin/users",
            "/%61%64%6D%69%6E/users",
            "//admin/users",
            "/admin//users",
            "/./admin/users",
            "/items/../admin/users",
            "/%2e/admin/users",
            "/x/%2E%2E/y/..//admin/users",
            "/x/%2e%2e/admin/users",
            "/admin/users?x=1",
            "/admin/users#top",
            "/admin/users;x=1",
            "/admin;jsessionid=1/users",
            "/admin/./users/.",
            "http://h/admin/users",
            "https://h:8443/admin/users?q",
        ] {
            let want = if spelling.ends_with('.') {
                "/admin/users/"
            } else {
                "/admin/users"
            };
            assert_eq!(refuse(spelling).as_deref(), Ok(want), "{spelling}");
        }
    }

    #[test]
    fn what_cannot_be_normalized_safely_is_refused() {
        for (spelling, why) in [
            ("/admin%2Fusers", Unsafe::EncodedSlash),
            ("/admin%2fusers", Unsafe::EncodedSlash),
            ("/admin%5Cusers", Unsafe::EncodedSlash),
            ("/admin\\users", Unsafe::EncodedSlash),
            ("/admin/users%00", Unsafe::Nul),
            ("/admin/users\0", Unsafe::Nul),
            ("/admin/%zzusers", Unsafe::BadEscape),
            ("/admin/users%", Unsafe::BadEscape),
            ("/admin/users%4", Unsafe::BadEscape),
            ("/../admin/users", Unsafe::AboveRoot),
            ("/a/../../admin", Unsafe::AboveRoot),
            ("/%2e%2e/admin", Unsafe::AboveRoot),
            ("/x//../admin/users", Unsafe::Ambiguous),
        ] {
            assert_eq!(refuse(spelling), Err(why), "{spelling}");
        }
    }

    #[test]
    fn keep_and_decode_say_what_they_do_with_the_unsafe() {
        assert_eq!(keep("/admin%2fusers"), "/admin%2Fusers");
        assert_eq!(keep("/admin\\users"), "/admin%5Cusers");
        assert_eq!(keep("/a/%zz%4"), "/a/%25zz%254");
        assert_eq!(keep("/../admin"), "/admin");
        assert_eq!(keep("/x//../admin"), "/x/admin");
        assert_eq!(keep("/a%00"), "/a%00");
        let decode = |p| {
            normalize(p, UnsafePaths::Decode)
                .expect("decodes")
                .into_owned()
        };
        assert_eq!(decode("/admin%2Fusers"), "/admin/users");
        assert_eq!(decode("/x%2F..%2Fadmin%5cusers"), "/admin/users");
        assert_eq!(decode("/x\\..\\admin"), "/admin");
    }

    #[test]
    fn normal_paths_come_back_borrowed_and_other_escapes_in_upper_case() {
        for p in [
            "/",
            "",
            "/api/v1/fetch/people",
            "/a/",
            "*",
            "relative/path",
            "/caf\u{e9}",
        ] {
            assert!(
                matches!(normalize(p, UnsafePaths::Refuse), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
        assert_eq!(
            refuse("/caf%c3%a9/%7euser").as_deref(),
            Ok("/caf%C3%A9/~user")
        );
        assert_eq!(refuse("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(refuse("/a%252Fb").as_deref(), Ok("/a%252Fb"));
        assert_eq!(refuse("http://h").as_deref(), Ok("/"));
        assert_eq!(refuse("a/./b/../c").as_deref(), Ok("a/c"));
    }

    // === the oracle: RFC 3986's own algorithm, step by step ===

    /// RFC 3986 §5.2.4, as written: an input buffer consumed from the left.
    fn remove_dot_segments(input: &str) -> String {
        let mut input = input.to_owned();
        let mut output = String::new();
        while !input.is_empty() {
            if let Some(rest) = input.strip_prefix("../") {
                input = rest.to_owned();
            } else if let Some(rest) = input.strip_prefix("./") {
                input = rest.to_owned();
            } else if input.starts_with("/./") {
                input.replace_range(..3, "/");
            } else if input == "/." {
                input = "/".to_owned();
            } else if input.starts_with("/../") || input == "/.." {
                let n = if input == "/.." { 3 } else { 4 };
                input.replace_range(..n, "/");
                let cut = output.rfind('/').unwrap_or(0);
                output.truncate(cut);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let start = usize::from(input.starts_with('/'));
                let end = input[start..].find('/').map_or(input.len(), |i| i + start);
                output.push_str(&input[..end]);
                input.replace_range(..end, "");
            }
        }
        output
    }

    fn merge_slashes(s: &str) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        out
    }

    /// Every step in its own pass, on the string: the obvious version.
    fn oracle(path: &str, policy: UnsafePaths) -> Result<String, Unsafe> {
        let path = strip_authority(path);
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let decoded = decode(path, policy)?;
        let params: String = decoded
            .split('/')
            .map(|s| s.split(';').next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("/");
        // A sentinel segment the path cannot contain (decoding escapes a
        // NUL): if it goes, a `..` climbed above the root.
        let climbs = |p: &str| !remove_dot_segments(&format!("/\0{p}")).starts_with("/\0");
        let dots_first = merge_slashes(&remove_dot_segments(&params));
        let merged_first = remove_dot_segments(&merge_slashes(&params));
        if policy == UnsafePaths::Refuse {
            if climbs(&params) || climbs(&merge_slashes(&params)) {
                return Err(Unsafe::AboveRoot);
            }
            if dots_first != merged_first {
                return Err(Unsafe::Ambiguous);
            }
        }
        Ok(dots_first)
    }

    fn paths() -> impl Strategy<Value = String> {
        let token = prop::sample::select(vec![
            "/", "/", "/", ".", "..", "a", "b", "%2e", "%2E", "%2F", "%5c", "%61", "%7E", "%zz",
            "%", "%4", ";", ";x=1", "?", "#", "%00", "\\", "%41", "%c3%a9", "\u{e9}", "http://h",
            "%25", "*", "-",
        ]);
        prop::collection::vec(token, 0..12).prop_map(|t| t.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn agrees_with_rfc_3986_step_by_step(
            // RFC 3986's algorithm is for absolute paths.
            path in paths().prop_map(|p| format!("/{p}"))
        ) {
            for policy in [UnsafePaths::Refuse, UnsafePaths::Keep, UnsafePaths::Decode] {
                let got = normalize(&path, policy).map(Cow::into_owned);
                let want = oracle(&path, policy);
                match (&got, &want) {
                    // Both refuse; which reason comes first may differ.
                    (Err(_), Err(_)) => {}
                    _ => prop_assert_eq!(&got, &want, "{:?} under {:?}", path, policy),
                }
            }
        }

        #[test]
        fn normalizing_twice_is_normalizing_once(path in paths()) {
            for policy in [UnsafePaths::Refuse, UnsafePaths::Keep, UnsafePaths::Decode] {
                if let Ok(once) = normalize(&path, policy) {
                    let twice = normalize(&once, policy).expect("a normal path stays valid");
                    // What `keep` and `decode` leave escaped takes the slow path again.
                    if policy == UnsafePaths::Refuse {
                        prop_assert!(matches!(twice, Cow::Borrowed(_)), "{:?} → {:?} is not normal", path, once);
                    }
                    prop_assert_eq!(&*twice, &*once);
                    for bad in ["//", "/./", "/../", ";", "?", "#"] {
                        prop_assert!(!once.contains(bad), "{:?} → {:?}", path, once);
                    }
                }
            }
        }
    }
}
