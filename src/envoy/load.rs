//! Rule files → a [`RuleSet`]: each file is deserialized, its domain
//! checked, and its descriptors filed into the domain's tree by key and
//! value (exact, wildcard in file order, or any); the [`Compiler`] makes
//! each descriptor's rule.
//!
//! Problems of every file are collected in file order and reported
//! together, so one run names them all; a set with any problem is refused
//! whole, so a reload never half-applies.

use serde_saphyr::Spanned;

use super::compile::Compiler;
use super::files;
use super::raw::{RawDescriptor, RawFile};
use super::rules::{KeyRules, Level, Node, RuleSet};
use crate::config::{self, ConfigError};
use crate::plans::SlotRegistry;
use crate::plans::glob::Glob;

// === impl RuleSet ===

impl RuleSet {
    /// Loads the rule files of `dir` ([`files::rule_files`]), in name order.
    /// With `merge`, files may add to one domain; otherwise a domain in two
    /// files is an error, as in the reference.
    pub fn load_dir(
        dir: &std::path::Path,
        merge: bool,
        slots: &SlotRegistry,
    ) -> Result<Self, ConfigError> {
        Self::parse(&files::read(dir)?, merge, slots)
    }

    /// Compiles rule files given as (name, text).
    pub fn parse(
        files: &[(String, String)],
        merge: bool,
        slots: &SlotRegistry,
    ) -> Result<Self, ConfigError> {
        let mut set = Self::empty(slots);
        let mut problems = Vec::new();
        for (file, text) in files {
            // Unknown keys are problems; the rest of the file is still checked.
            let (raw, mut list) = config::deserialize_all::<RawFile>(file, text);
            problems.append(&mut list);
            let Some(raw) = raw else { continue };
            let mut c = Compiler {
                file,
                slots,
                problems: &mut problems,
            };
            set.add_file(&raw, merge, &mut c);
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Adds one file's descriptors to its domain. A file without a domain,
    /// or naming one already loaded when not merging, adds nothing: its
    /// rules would land in the wrong place.
    fn add_file(&mut self, raw: &RawFile, merge: bool, c: &mut Compiler<'_>) {
        let domain = match &raw.domain {
            Some(d) if !d.value.trim().is_empty() => d,
            d => {
                let line = d.as_ref().map_or(1, |d| d.referenced.line());
                c.push(
                    line,
                    "domain",
                    "config file cannot have empty domain".into(),
                );
                return;
            }
        };
        if self.domains.contains_key(&domain.value) && !merge {
            c.push(
                domain.referenced.line(),
                "domain",
                format!(
                    "duplicate domain '{}' in config file (set --envoy-merge-domains to merge files of one domain)",
                    domain.value
                ),
            );
            return;
        }
        let tree = self.domains.entry(domain.value.clone()).or_default();
        descriptors(
            c,
            tree,
            raw.descriptors.as_deref().unwrap_or_default(),
            "descriptors",
        );
    }
}

/// Compiles `descriptors`, found at `field`, into `level`.
fn descriptors(
    c: &mut Compiler<'_>,
    level: &mut Level,
    descriptors: &[Spanned<RawDescriptor>],
    field: &str,
) {
    for (i, d) in descriptors.iter().enumerate() {
        let field = format!("{field}[{i}]");
        descriptor(c, level, &d.value, d.referenced.line(), &field);
    }
}

/// One descriptor: its rule and the level below, filed under its key and
/// value.
fn descriptor(c: &mut Compiler<'_>, level: &mut Level, d: &RawDescriptor, line: u64, field: &str) {
    let Some(key) = d.key.as_ref().filter(|k| !k.value.is_empty()) else {
        c.push(line, field, "descriptor has empty key".into());
        return;
    };
    let value = d
        .value
        .as_ref()
        .map(|v| v.value.as_str())
        .filter(|v| !v.is_empty());
    let is_wildcard = value.is_some_and(|v| v.contains('*'));
    if d.share_threshold && !is_wildcard {
        c.push(
            line,
            &format!("{field}.share_threshold"),
            "share_threshold can only be used with wildcard values (containing '*')".into(),
        );
    }
    let mut node = Node {
        rule: c.rule(d, field, line),
        share: d.share_threshold && is_wildcard,
        children: Level::default(),
    };
    if let Some(children) = &d.descriptors {
        descriptors(
            c,
            &mut node.children,
            children,
            &format!("{field}.descriptors"),
        );
    }
    let rules = level.keys.entry(key.value.clone()).or_default();
    if !insert(rules, value, node) {
        let composite = value.map_or_else(|| key.value.clone(), |v| format!("{}={v}", key.value));
        c.push(
            line,
            field,
            format!("duplicate descriptor composite key '{composite}'"),
        );
    }
}

/// Files `node` under `value`: `None` for any value, a wildcard (tried in
/// file order) when it has a `*`, an exact value otherwise. `false` when
/// that place is already taken.
fn insert(rules: &mut KeyRules, value: Option<&str>, node: Node) -> bool {
    match value {
        None if rules.any.is_some() => false,
        None => {
            rules.any = Some(Box::new(node));
            true
        }
        Some(v) if v.contains('*') => {
            if rules.wildcards.iter().any(|(w, _)| w.as_str() == v) {
                false
            } else {
                rules.wildcards.push((Glob::new(v), node));
                true
            }
        }
        Some(v) => rules.exact.insert(v.to_owned(), node).is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> RuleSet {
        RuleSet::parse(
            &[("t.yaml".into(), yaml.into())],
            false,
            &SlotRegistry::default(),
        )
        .expect("valid rules")
    }

    fn err(yaml: &str) -> String {
        RuleSet::parse(
            &[("t.yaml".into(), yaml.into())],
            false,
            &SlotRegistry::default(),
        )
        .expect_err("invalid rules")
        .to_string()
    }

    #[test]
    fn several_limits_as_a_list_in_rate_limit_or_rate_limits() {
        for key in ["rate_limit", "rate_limits"] {
            let s = set(&format!(
                "domain: d\ndescriptors:\n  - key: k\n    {key}:\n      - {{ unit: second, requests_per_unit: 10 }}\n      - {{ unit: day, requests_per_unit: 1000, algorithm: sliding_window }}\n"
            ));
            let m = s.find("d", &[("k", "v")]).expect("matched");
            let amounts: Vec<u32> = m.rule.limits.iter().map(|l| l.amount).collect();
            assert_eq!(amounts, [10, 1000], "{key}");
        }
        let e = err(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      - { unit: second, requests_per_unit: 10 }\n      - { unit: eon, requests_per_unit: 1 }\n",
        );
        assert_eq!(
            e,
            "t.yaml:6: descriptors[0].rate_limit[1].unit: invalid rate limit unit 'eon'"
        );
        let e = err(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      - { unit: second, requests_per_unit: 10, colour: red }\n",
        );
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn problems_name_file_line_and_field() {
        let e = err(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 5\n",
        );
        assert_eq!(
            e,
            "t.yaml:5: descriptors[0].rate_limit.unit: invalid rate limit unit 'fortnight'"
        );
        assert!(err("descriptors: []\n").contains("empty domain"));
        assert!(
            err("domain: d\ndescriptors:\n  - key: k\n    unit: second\n")
                .contains("unknown field"),
            "keys at the wrong level are refused"
        );
        assert!(
            err("domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n")
                .contains("duplicate descriptor composite key 'k=v'")
        );
        assert!(err("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}\n").contains("should not specify rate limit unit when unlimited"));
        assert!(err("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {name: a, replaces: [{name: a}], unit: second, requests_per_unit: 1}\n").contains("same descriptor"));
        assert!(
            err("domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n")
                .contains("wildcard")
        );
    }
}
