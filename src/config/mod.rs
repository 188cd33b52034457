//! The configuration file: YAML, validated in full before anything uses it.
//!
//! [`parse`] turns text into a [`Catalog`] or into every problem found, each
//! naming the file, the line and the field (`tollgate.yaml:14:
//! plans.pro.limits[2].rate: expected "<amount>/<window>", got "30 per min"`).
//! Library code never reads the environment: callers pass a path or text.
//!
//! [`raw`] mirrors the YAML; `compile/` turns it into a [`Catalog`];
//! `rate.rs` and `burst.rs` read the rate and burst texts that Envoy rule
//! files and admin overrides share; [`reload`] follows the file while serving.

mod burst;
mod compile;
pub mod error;
mod rate;
pub mod raw;
pub mod reload;

use std::path::Path;

pub(crate) use burst::{burst_ceiling, burst_extra};
pub use error::{ConfigError, Problem};
pub(crate) use rate::{check_amount, parse_fixed_rate, parse_window};

use crate::plans::{Catalog, SlotRegistry};

/// The built-in configuration (`examples/saas.yaml`), used when none is given.
pub const DEFAULT: &str = include_str!("../../examples/saas.yaml");

/// The name errors give the built-in configuration.
pub const DEFAULT_NAME: &str = "examples/saas.yaml (built in)";

/// Reads and compiles the file at `path`.
pub fn load(path: &Path, slots: &SlotRegistry) -> Result<Catalog, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(&path.display().to_string(), &text, slots)
}

/// Compiles `text`; `file` names it in errors. Every problem is reported:
/// unknown keys, and then what compiling the rest finds.
pub fn parse(file: &str, text: &str, slots: &SlotRegistry) -> Result<Catalog, ConfigError> {
    let (raw, mut problems) = deserialize_all::<raw::RawConfig>(file, text);
    let Some(raw) = raw else {
        return Err(ConfigError::Invalid(problems));
    };
    match compile::compile(file, raw, slots) {
        Ok(catalog) if problems.is_empty() => Ok(catalog),
        Ok(_) => Err(ConfigError::Invalid(problems)),
        Err(more) => {
            problems.extend(more);
            problems.sort_by_key(|p| p.line);
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// The most unknown keys read past in one file.
const MAX_UNKNOWN_KEYS: usize = 100;

/// Deserializes YAML `text` into `T`; a problem names `file`, the line and
/// the field. It reads past unknown keys: each one is
/// a problem, and the file is read again without it (blanked in place, so
/// lines keep their numbers) to find the next. Any other problem ends the
/// reading. The value is what the file holds without its unknown keys.
pub(crate) fn deserialize_all<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> (Option<T>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut text = std::borrow::Cow::Borrowed(text);
    loop {
        let mut path = String::new();
        let result = serde_saphyr::with_deserializer_from_str(&text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = e.path().to_string();
                e.into_inner()
            })
        });
        let e = match result {
            Ok(value) => return (Some(value), problems),
            Err(e) => e,
        };
        let location = e.location();
        let message = message_of(&e);
        let line = location.map_or(0, |l| l.line());
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(key, _)| key.to_owned());
        problems.push(Problem {
            file: file.to_owned(),
            line,
            field: without_spans(&path),
            message,
        });
        let blanked = match (unknown, location) {
            (Some(key), Some(l)) if problems.len() < MAX_UNKNOWN_KEYS => {
                blank_key(&text, l.line(), l.column(), &key)
            }
            _ => None,
        };
        match blanked {
            Some(next) => text = std::borrow::Cow::Owned(next),
            None => return (None, problems),
        }
    }
}

/// `text` with the key `key` on line `line` (1-based, its column near
/// `column`) and its value replaced by spaces: to the next `,` or closing
/// bracket in a flow mapping, or to the end of the line and every line
/// indented under it in a block. `None` when it cannot be found or its
/// flow value spans lines.
fn blank_key(text: &str, line: u64, column: u64, key: &str) -> Option<String> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let at = usize::try_from(line).ok()?.checked_sub(1)?;
    let row = lines.get(at)?;
    let near = usize::try_from(column).unwrap_or(0).saturating_sub(1);
    let start = row
        .match_indices(key)
        .map(|(i, _)| i)
        .filter(|&i| {
            // The key, perhaps quoted, then a colon.
            let rest = row[i + key.len()..].trim_start_matches(['"', '\'']);
            rest.trim_start().starts_with(':')
        })
        .min_by_key(|&i| i.abs_diff(near))?;
    // Inside a flow mapping when a `{` before it is still open.
    let before = &row[..start];
    let open = before.matches('{').count() > before.matches('}').count();
    let start = if before.ends_with(['"', '\'']) {
        start - 1
    } else {
        start
    };
    if open {
        let mut depth = 0i32;
        let mut quote = None;
        let mut end = None;
        for (i, c) in row[start..].char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '{' | '[') => depth += 1,
                (None, '}' | ']') if depth == 0 => {
                    end = Some(start + i);
                    break;
                }
                (None, '}' | ']') => depth -= 1,
                (None, ',') if depth == 0 => {
                    end = Some(start + i + 1);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        let row = &mut lines[at];
        row.replace_range(start..end, &" ".repeat(end - start));
    } else {
        let indent = start;
        let row = &mut lines[at];
        let width = row.len() - start;
        row.replace_range(start.., &" ".repeat(width));
        for next in lines.iter_mut().skip(at + 1) {
            let trimmed = next.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if next.len() - trimmed.len() <= indent {
                break;
            }
            next.clear();
        }
    }
    Some(lines.join("\n"))
}

/// A YAML reading limit in plain words (the parser's own message is
/// `budget breached: Depth { depth: 65 }`).
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let most = serde_saphyr::Budget::default();
    match breach {
        B::Depth { .. } => format!(
            "nested too deeply: at most {} levels of lists and maps",
            most.max_depth
        ),
        B::Aliases { .. }
        | B::Anchors { .. }
        | B::AliasAnchorRatio { .. }
        | B::MergeKeys { .. } => "too many anchors, aliases or merge keys".to_owned(),
        B::Documents { .. } => "too many YAML documents in one file".to_owned(),
        _ => "the file is too large to read (too many values or too much text)".to_owned(),
    }
}

/// A serde path without the `value` steps that [`serde_saphyr::Spanned`] adds.
fn without_spans(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    path.split('.')
        .filter(|step| *step != "value")
        .collect::<Vec<_>>()
        .join(".")
}

/// The bare message of a YAML error, without the location and snippet that
/// [`Problem`] shows its own way.
fn message_of(e: &serde_saphyr::Error) -> String {
    let mut inner = e;
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    if let serde_saphyr::Error::Budget { breach, .. } = inner {
        return budget_message(breach);
    }
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or_default();
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_owned(),
        None => first.to_owned(),
    }
}
