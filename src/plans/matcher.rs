//! Resource → class, most specific pattern first.
//!
//! A pattern is `[METHOD ]/path`, where `*` matches any run of characters
//! (slashes included). Exact patterns beat wildcards; among wildcards, more
//! literal characters win; at equal length a pattern naming the method wins.
//! Exact patterns are hash lookups; wildcards are [`Glob`]s tried in
//! specificity order, and the first match ends the search.

use hashbrown::HashMap;

use super::glob::Glob;

/// The compiled patterns of every class.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    exact: HashMap<String, usize>,
    exact_by_method: HashMap<String, HashMap<String, usize>>,
    wildcards: Vec<Wildcard>,
}

/// A pattern with a `*`, for one method or (`None`) any.
#[derive(Debug, Clone)]
struct Wildcard {
    method: Option<String>,
    path: Glob,
    class: usize,
}

/// A pattern that is not `[METHOD ]/path`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// Paths start with `/` (or are `*`).
    #[error("expected \"[METHOD ]/path\", got {0:?}")]
    Malformed(String),
    /// The same pattern in two classes.
    #[error("pattern {pattern:?} is also in class {other:?}")]
    Duplicate {
        /// The pattern.
        pattern: String,
        /// The class that has it first.
        other: String,
    },
}

// === impl Matcher ===

impl Matcher {
    /// Adds `pattern` for class `class`; `names` gives class names for errors.
    pub fn add(
        &mut self,
        pattern: &str,
        class: usize,
        names: &[impl AsRef<str>],
    ) -> Result<(), PatternError> {
        let (method, path) = split_method(pattern.trim());
        if !(path.starts_with('/') || path.starts_with('*')) || path.contains(char::is_whitespace) {
            return Err(PatternError::Malformed(pattern.to_owned()));
        }
        let method = method.map(str::to_ascii_uppercase);
        let duplicate = |other: usize| PatternError::Duplicate {
            pattern: pattern.to_owned(),
            other: names[other].as_ref().to_owned(),
        };
        if !path.contains('*') {
            let map = match &method {
                Some(m) => self.exact_by_method.entry(m.clone()).or_default(),
                None => &mut self.exact,
            };
            if let Some(&other) = map.get(path) {
                return Err(duplicate(other));
            }
            map.insert(path.to_owned(), class);
            return Ok(());
        }
        let path = Glob::new(path);
        if let Some(w) = self
            .wildcards
            .iter()
            .find(|w| w.method == method && w.path == path)
        {
            return Err(duplicate(w.class));
        }
        self.wildcards.push(Wildcard {
            method,
            path,
            class,
        });
        // Most literal characters first; the method breaks ties; stable otherwise.
        self.wildcards
            .sort_by_key(|w| (std::cmp::Reverse(w.path.literal_len()), w.method.is_none()));
        Ok(())
    }

    /// The class of `path` called with `method`.
    pub fn find(&self, method: Option<&str>, path: &str) -> Option<usize> {
        if let Some(&c) = method
            .and_then(|m| self.exact_by_method.get(m))
            .and_then(|paths| paths.get(path))
        {
            return Some(c);
        }
        if let Some(&c) = self.exact.get(path) {
            return Some(c);
        }
        self.wildcards
            .iter()
            .find(|w| {
                w.method.as_deref().is_none_or(|wm| Some(wm) == method) && w.path.matches(path)
            })
            .map(|w| w.class)
    }
}

/// Splits a leading HTTP method (`POST /x`) from a path.
pub fn split_method(s: &str) -> (Option<&str>, &str) {
    match s.split_once(' ') {
        Some((m, rest)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
            (Some(m), rest.trim_start())
        }
        _ => (None, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[(&str, usize)]) -> Matcher {
        let names = ["fetch", "search", "emails", "batch", "any"];
        let mut m = Matcher::default();
        for (p, c) in patterns {
            m.add(p, *c, &names).expect("valid pattern");
        }
        m
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let m = matcher(&[
            ("/api/v1/fetch/*", 0),
            ("/api/v1/fetch/search", 1),
            ("POST /api/v1/batch/emails", 2),
            ("/api/v1/batch/*", 3),
            ("/*", 4),
        ]);
        assert_eq!(m.find(None, "/api/v1/fetch/people"), Some(0));
        assert_eq!(m.find(Some("GET"), "/api/v1/fetch/search"), Some(1));
        assert_eq!(m.find(Some("POST"), "/api/v1/batch/emails"), Some(2));
        assert_eq!(m.find(Some("GET"), "/api/v1/batch/emails"), Some(3));
        assert_eq!(m.find(None, "/elsewhere"), Some(4));
        assert_eq!(m.find(None, "elsewhere"), None);
    }

    #[test]
    fn wildcards_match_anywhere() {
        let m = matcher(&[("/a/*/c", 0), ("/a/*", 1)]);
        assert_eq!(m.find(None, "/a/b/c"), Some(0));
        assert_eq!(m.find(None, "/a/b/d"), Some(1));
        assert_eq!(m.find(None, "/a/"), Some(1));
    }

    #[test]
    fn rejects_malformed_and_duplicate_patterns() {
        let mut m = matcher(&[("/x/*", 0)]);
        assert!(matches!(
            m.add("x/y", 1, &["a", "b"]),
            Err(PatternError::Malformed(_))
        ));
        assert!(matches!(
            m.add("/x/*", 1, &["a", "b"]),
            Err(PatternError::Duplicate { .. })
        ));
    }
}
