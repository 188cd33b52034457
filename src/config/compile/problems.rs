//! The problems found in one file, each with its line and field.

use crate::config::error::Problem;

/// Collects problems against one file.
pub(super) struct Problems<'a> {
    pub(super) file: &'a str,
    pub(super) list: Vec<Problem>,
}

// === impl Problems ===

impl Problems<'_> {
    pub(super) fn push(&mut self, line: u64, field: &str, message: String) {
        self.list.push(Problem {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message,
        });
    }

    /// Class and unit names go into counter identities and generated limit
    /// names, which `|` and `:` separate, so every name keeps to an alphabet
    /// without separators.
    pub(super) fn check_name(&mut self, line: u64, field: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            self.push(
                line,
                field,
                format!("names use letters, digits, '_', '-' and '.' (at most 64), got {name:?}"),
            );
        }
    }
}
