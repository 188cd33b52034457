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
pub use error::{Error, Problem};
pub(crate) use rate::{check_amount, parse_rate, parse_window};

use crate::plans::{Catalog, SlotRegistry};

/// The built-in configuration (`examples/saas.yaml`), used when none is given.
pub const DEFAULT: &str = include_str!("../../examples/saas.yaml");

/// The name errors give the built-in configuration.
pub const DEFAULT_NAME: &str = "examples/saas.yaml (built in)";

/// Reads and compiles the file at `path`.
pub fn load(path: &Path, slots: &SlotRegistry) -> Result<Catalog, Error> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(&path.display().to_string(), &text, slots)
}

/// Compiles `text`; `file` names it in errors.
pub fn parse(file: &str, text: &str, slots: &SlotRegistry) -> Result<Catalog, Error> {
    let raw: raw::RawConfig = deserialize(file, text)?;
    compile::compile(file, raw, slots).map_err(Error::Invalid)
}

/// Deserializes YAML `text` into `T`; a problem names `file`, the line and the field.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, Error> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let line = e.location().map_or(0, |l| l.line());
        let message = message_of(&e);
        Error::Invalid(vec![Problem {
            file: file.to_owned(),
            line,
            field: without_spans(&path),
            message,
        }])
    })
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
