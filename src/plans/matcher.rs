//! Resource → class, most specific pattern first.
//!
//! A pattern is `[METHOD ]/path`, where `*` matches any run of characters
//! (slashes included). Exact patterns beat wildcards; among wildcards, more
//! literal characters win; at equal length a pattern naming the method wins,
//! then the pattern added first.
//!
//! Compiled so that a lookup's cost does not grow with the number of classes:
//! exact patterns are hash lookups. A wildcard with literal text only at its
//! ends (`/api/v1/*`, `*.json`, `/a/*/b`) is indexed by its literal prefix
//! (before the first `*`) and, under it, by its literal suffix (after the
//! last `*`), each in a byte trie: a lookup walks the resource once forwards
//! through the prefix trie and, at each prefix found, once backwards through
//! its suffix trie. A wildcard with literal text between stars
//! (`/*/orders/*`) is indexed by its longest literal part, found in the
//! resource by one Aho-Corasick scan over every such part. Either way only the
//! wildcards filed under what the resource contains are tested, best first,
//! and each test ([`Glob::matches`]) is linear in the resource. Adding a
//! pattern costs its length; the scanner is built once, on first use.

use std::cmp::Reverse;
use std::sync::OnceLock;

use aho_corasick::AhoCorasick;
use hashbrown::HashMap;

use super::glob::Glob;
use super::trie::Trie;

/// The compiled patterns of every class.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    exact: HashMap<String, usize>,
    exact_by_method: HashMap<String, HashMap<String, usize>>,
    /// Every wildcard, in the order added.
    wildcards: Vec<Wildcard>,
    /// (method, pattern) → index in `wildcards`, to refuse duplicates.
    seen: HashMap<(Option<String>, Box<str>), usize>,
    /// Literal prefix → index in `groups`.
    prefixes: Trie,
    groups: Vec<Group>,
    /// Wildcards with literal text between stars, by their longest part.
    anchored: Anchored,
    /// With few wildcards, all of them best first: one short scan beats
    /// walking the indexes (the common configuration has a handful).
    few: OnceLock<Option<Vec<usize>>>,
}

/// Up to this many wildcards, a lookup scans them all.
const FEW: usize = 16;

/// Wildcards indexed by a literal part found anywhere in the resource.
#[derive(Debug, Clone, Default)]
struct Anchored {
    /// Part → index in `parts` and `lists`.
    ids: HashMap<Box<str>, usize>,
    parts: Vec<Box<str>>,
    /// Indexes in `wildcards`, best rank first.
    lists: Vec<Vec<usize>>,
    /// Finds every part in a text; built on first use after a change.
    scanner: OnceLock<Option<AhoCorasick>>,
}

/// A pattern with a `*`, for one method or (`None`) any.
#[derive(Debug, Clone)]
struct Wildcard {
    method: Option<String>,
    path: Glob,
    class: usize,
    /// Lower is more specific: more literal bytes, then a method, then added
    /// earlier.
    rank: Rank,
}

type Rank = (Reverse<usize>, bool, usize);

/// The wildcards sharing one literal prefix, by literal suffix.
#[derive(Debug, Clone, Default)]
struct Group {
    /// Reversed literal suffix → index in `lists`.
    suffixes: Trie,
    /// Indexes in `wildcards`, best rank first.
    lists: Vec<Vec<usize>>,
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
        self.few = OnceLock::new();
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
        let index = self.wildcards.len();
        match self.seen.entry((method.clone(), path.into())) {
            hashbrown::hash_map::Entry::Occupied(e) => {
                return Err(duplicate(self.wildcards[*e.get()].class));
            }
            hashbrown::hash_map::Entry::Vacant(e) => {
                e.insert(index);
            }
        }
        let glob = Glob::new(path);
        let rank = (Reverse(glob.literal_len()), method.is_none(), index);
        let list = match anchor(path) {
            Some(part) => self.anchored.list(part),
            None => {
                let (first, last) = literal_ends(path);
                let groups = self.groups.len();
                let g = self.prefixes.insert(first.bytes(), groups as u32) as usize;
                if g == groups {
                    self.groups.push(Group::default());
                }
                let group = &mut self.groups[g];
                let lists = group.lists.len();
                let l = group.suffixes.insert(last.bytes().rev(), lists as u32) as usize;
                if l == lists {
                    group.lists.push(Vec::new());
                }
                &mut group.lists[l]
            }
        };
        // Added last, so its rank sorts after every equal-specificity entry.
        let wildcards = &self.wildcards;
        let at = list.partition_point(|&w| wildcards[w].rank < rank);
        list.insert(at, index);
        self.wildcards.push(Wildcard {
            method,
            path: glob,
            class,
            rank,
        });
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
        if let Some(all) = self.few() {
            return all
                .iter()
                .map(|&w| &self.wildcards[w])
                .find(|w| {
                    w.method.as_deref().is_none_or(|wm| Some(wm) == method) && w.path.matches(path)
                })
                .map(|w| w.class);
        }
        let mut best: Option<&Wildcard> = None;
        let mut try_list = |list: &[usize]| {
            for w in list.iter().map(|&w| &self.wildcards[w]) {
                if best.is_some_and(|b| b.rank < w.rank) {
                    // The list is best first: nothing further beats it.
                    return;
                }
                if w.method.as_deref().is_none_or(|wm| Some(wm) == method) && w.path.matches(path) {
                    best = Some(w);
                    return;
                }
            }
        };
        for g in self.prefixes.prefixes_of(path.bytes()) {
            let group = &self.groups[g as usize];
            for l in group.suffixes.prefixes_of(path.bytes().rev()) {
                try_list(&group.lists[l as usize]);
            }
        }
        self.anchored.found_in(path, try_list);
        best.map(|w| w.class)
    }

    /// Builds what the first lookup would otherwise build, so a compiled
    /// catalog answers its first decision as fast as the rest.
    pub fn prepare(&self) {
        self.few();
        self.anchored.scanner();
    }

    /// Every wildcard, best first, when there are at most [`FEW`].
    fn few(&self) -> Option<&[usize]> {
        self.few
            .get_or_init(|| {
                (self.wildcards.len() <= FEW).then(|| {
                    let mut all: Vec<usize> = (0..self.wildcards.len()).collect();
                    all.sort_by_key(|&w| self.wildcards[w].rank);
                    all
                })
            })
            .as_deref()
    }
}

/// The longest literal part of `pattern` when it has literal text between
/// two stars; `None` when its literal text is only at its ends.
fn anchor(pattern: &str) -> Option<&str> {
    let parts: Vec<&str> = pattern.split('*').collect();
    let middle = &parts[1..parts.len() - 1];
    if middle.iter().all(|p| p.is_empty()) {
        return None;
    }
    // The first of the longest, so equal patterns share one anchor.
    parts.into_iter().rev().max_by_key(|p| p.len())
}

// === impl Anchored ===

impl Anchored {
    /// The list of wildcards anchored at `part`, created if new.
    fn list(&mut self, part: &str) -> &mut Vec<usize> {
        let next = self.parts.len();
        let id = *self.ids.entry_ref(part).or_insert(next);
        if id == next {
            self.parts.push(part.into());
            self.lists.push(Vec::new());
            self.scanner = OnceLock::new();
        }
        &mut self.lists[id]
    }

    fn scanner(&self) -> Option<&AhoCorasick> {
        self.scanner
            .get_or_init(|| {
                if self.parts.is_empty() {
                    return None;
                }
                let built = AhoCorasick::new(self.parts.iter().map(|p| p.as_bytes()));
                // Building fails only past the automaton's size limits; then
                // every anchored wildcard is a candidate (slower, still right).
                built
                    .inspect_err(|e| tracing::warn!(error = %e, "class patterns not indexed"))
                    .ok()
            })
            .as_ref()
    }

    /// Calls `f` with the list of every part found in `text`, once each.
    fn found_in(&self, text: &str, mut f: impl FnMut(&[usize])) {
        if self.parts.is_empty() {
            return;
        }
        let Some(scanner) = self.scanner() else {
            self.lists.iter().for_each(|l| f(l));
            return;
        };
        let mut seen = hashbrown::HashSet::new();
        for m in scanner.find_overlapping_iter(text) {
            let id = m.pattern().as_usize();
            if seen.insert(id) {
                f(&self.lists[id]);
            }
        }
    }
}

/// The literal text before the first `*` and after the last.
fn literal_ends(pattern: &str) -> (&str, &str) {
    let first = pattern.find('*').map_or(pattern, |i| &pattern[..i]);
    let last = pattern.rfind('*').map_or("", |i| &pattern[i + 1..]);
    (first, last)
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
    fn specificity_decides_across_prefixes_and_suffixes() {
        let m = matcher(&[
            ("/*", 4),
            ("/a*", 0),
            ("*.json", 1),
            ("GET /a/*/x", 2),
            ("/a/*/x", 3),
        ]);
        // "/a/b/x": "/a/*/x" (5 literal bytes) beats "/a*" and "/*"; the
        // method breaks its tie.
        assert_eq!(m.find(Some("GET"), "/a/b/x"), Some(2));
        assert_eq!(m.find(Some("POST"), "/a/b/x"), Some(3));
        // "*.json" (5) beats "/a*" (2), though its prefix is empty.
        assert_eq!(m.find(None, "/a/b.json"), Some(1));
        assert_eq!(m.find(None, "/ab"), Some(0));
        assert_eq!(m.find(None, "/b"), Some(4));
        // At equal specificity, the pattern added first wins.
        let m = matcher(&[("/x*", 0), ("*/y", 1)]);
        assert_eq!(m.find(None, "/x/y"), Some(0));
        let m = matcher(&[("*/y", 1), ("/x*", 0)]);
        assert_eq!(m.find(None, "/x/y"), Some(1));
    }

    #[test]
    fn agrees_with_trying_every_pattern_in_order() {
        // The matcher before indexing: sort by specificity, first match wins.
        let mut patterns: Vec<String> = [
            "/a/*",
            "/a/b/*",
            "*/c",
            "/a/*/c",
            "GET /a/*",
            "*",
            "/b*c",
            "POST /*/c",
            "/a/b/c*",
            "*b*",
            "/*/b/*",
            "*a*c*",
            "/a*b*c",
            "GET *b*",
            "/**",
            "*/*",
        ]
        .map(String::from)
        .to_vec();
        // And a few hundred more, pseudo-random over a small alphabet so they
        // overlap a lot.
        let mut seed = 0x2545_f491_u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        let mut texts: Vec<String> = [
            "/a/b/c", "/a/x", "/bc", "/b/c", "/zzz", "/a/b/cd", "/ab", "",
        ]
        .map(String::from)
        .to_vec();
        for _ in 0..300 {
            let len = 1 + next(7);
            let mut p: String = (0..len)
                .map(|_| ['a', 'b', '/', '*'][next(4) as usize])
                .collect();
            p.insert(0, '/');
            let p = if next(5) == 0 { format!("GET {p}") } else { p };
            if !patterns.contains(&p) {
                patterns.push(p);
            }
            let t: String = (0..next(9))
                .map(|_| ['a', 'b', '/'][next(3) as usize])
                .collect();
            texts.push(format!("/{t}"));
        }
        let names: Vec<String> = (0..patterns.len()).map(|i| format!("c{i}")).collect();
        let mut m = Matcher::default();
        // (order, method, glob, class)
        type Naive = (
            (usize, Reverse<usize>, bool, usize),
            Option<String>,
            Glob,
            usize,
        );
        let mut naive: Vec<Naive> = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            m.add(p, i, &names).expect("valid");
            let (method, path) = split_method(p);
            let g = Glob::new(path);
            // Exact patterns first (with a method, then without), then wildcards.
            let tier = if path.contains('*') {
                2
            } else {
                usize::from(method.is_none())
            };
            naive.push((
                (tier, Reverse(g.literal_len()), method.is_none(), i),
                method.map(str::to_owned),
                g,
                i,
            ));
        }
        naive.sort_by_key(|n| n.0);
        for text in &texts {
            for method in [None, Some("GET"), Some("POST")] {
                let expected = naive
                    .iter()
                    .find(|(_, wm, g, _)| {
                        wm.as_deref().is_none_or(|wm| Some(wm) == method) && g.matches(text)
                    })
                    .map(|n| n.3);
                assert_eq!(
                    m.find(method, text),
                    expected,
                    "{method:?} {text}: {:?} vs {:?}",
                    m.find(method, text).map(|i| &patterns[i]),
                    expected.map(|i| &patterns[i])
                );
            }
        }
    }

    #[test]
    fn a_lookup_does_not_try_every_class() {
        // 10,000 classes and a crafted 1 KB resource that shares the prefix
        // of half of them: tried one by one, this took seconds in a debug
        // build; indexed, a lookup tests only the patterns filed under the
        // prefixes and suffixes it has.
        let names: Vec<String> = (0..20_000).map(|i| format!("c{i}")).collect();
        let mut m = Matcher::default();
        for i in 0..10_000 {
            m.add(&format!("/*/svc{i}/*/items"), 2 * i, &names)
                .expect("valid");
            m.add(&format!("/svc{i}/*"), 2 * i + 1, &names)
                .expect("valid");
        }
        // Every "/*/svc…/*/items" starts with "/" and ends with "/items",
        // so each would scan the whole resource for its middle part.
        let crafted = format!("/{}/items", "a/".repeat(500));
        let started = std::time::Instant::now();
        for _ in 0..200 {
            assert_eq!(m.find(Some("GET"), &crafted), None);
            assert_eq!(m.find(None, "/v1/svc42/7/items"), Some(84));
            assert_eq!(m.find(None, "/svc9999/x"), Some(19_999));
        }
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_millis(500), "{took:?}");
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
