//! Glob patterns: literal parts with `*` between them, where each `*` matches
//! any run of characters (the empty run and `/` included) and the pattern is
//! anchored at both ends.
//!
//! One type serves plans' class patterns (`/api/v1/fetch/*`) and the wildcard
//! values of Envoy rule files (`/api/*/resource/*/action`). It only answers
//! whether one pattern matches; which of several patterns wins is the
//! caller's policy (plans: most literal characters first; Envoy rules: file
//! order). There is no `?`, no character class and no escape: neither format
//! has them, so a literal `*` cannot be written.

/// A pattern split once, at compile time, into its literal parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The pattern as written: Envoy keys shared counters by it.
    pattern: Box<str>,
    /// The literal runs between `*`s; one more than the number of `*`s.
    parts: Box<[Box<str>]>,
    /// The parts' total length: the shortest text that can match, and the
    /// specificity plans order their patterns by.
    literal: usize,
}

// === impl Glob ===

impl Glob {
    /// Compiles `pattern`; a pattern without `*` matches only itself.
    pub fn new(pattern: &str) -> Self {
        let parts: Box<[Box<str>]> = pattern.split('*').map(Box::from).collect();
        let literal = parts.iter().map(|p| p.len()).sum();
        Self {
            pattern: pattern.into(),
            parts,
            literal,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// The number of literal (non-`*`) bytes: more means more specific.
    pub fn literal_len(&self) -> usize {
        self.literal
    }

    /// Whether all of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        let (first, rest) = self
            .parts
            .split_first()
            .expect("split gives one part at least");
        let Some((last, middle)) = rest.split_last() else {
            return text == &**first;
        };
        // The length check keeps the prefix and the suffix from overlapping.
        if text.len() < self.literal || !text.starts_with(&**first) || !text.ends_with(&**last) {
            return false;
        }
        // Taking each middle part at its leftmost place leaves the most room
        // for the next, so a match exists if and only if this finds one.
        let mut inner = &text[first.len()..text.len() - last.len()];
        for part in middle {
            match inner.find(&**part) {
                Some(i) => inner = &inner[i + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_anywhere() {
        let w = Glob::new("/api/*/resource/*/action");
        assert!(w.matches("/api/v1/resource/123/action"));
        assert!(!w.matches("/api/v1/resource/123/other"));
        assert!(Glob::new("value*").matches("value"));
        assert!(Glob::new("*").matches(""));
        assert!(!Glob::new("ab*ba").matches("aba"));
    }

    #[test]
    fn a_star_spans_slashes_and_both_ends_are_anchored() {
        let g = Glob::new("/api/v1/fetch/*");
        assert!(g.matches("/api/v1/fetch/people/42"));
        assert!(g.matches("/api/v1/fetch/"));
        assert!(!g.matches("/api/v1/fetch"));
        assert!(!g.matches("x/api/v1/fetch/people"));
        assert!(Glob::new("/a/*/c").matches("/a/b/x/c"));
        assert!(!Glob::new("/a/*/c").matches("/a/b/c/d"));
    }

    #[test]
    fn a_pattern_without_a_star_matches_only_itself() {
        let g = Glob::new("/exact");
        assert!(g.matches("/exact"));
        assert!(!g.matches("/exact/"));
        assert!(!g.matches(""));
        assert!(Glob::new("").matches(""));
    }

    #[test]
    fn middle_parts_match_in_order_without_overlap() {
        let g = Glob::new("a*bc*c");
        assert!(!g.matches("abc"));
        assert!(g.matches("abcc"));
        assert!(g.matches("axbcyc"));
        assert!(!Glob::new("a*b*c").matches("acb"));
        assert!(Glob::new("**").matches("anything"));
        assert!(Glob::new("é*ü").matches("éaü"));
    }

    #[test]
    fn specificity_counts_literal_bytes() {
        assert_eq!(Glob::new("/api/*").literal_len(), 5);
        assert_eq!(Glob::new("*").literal_len(), 0);
        assert_eq!(Glob::new("/a/*/c").as_str(), "/a/*/c");
    }
}
