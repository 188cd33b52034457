//! The rule directory on disk: which of its files are rule files, and their
//! text. Loading ([`super::load`]) and the reload watcher's fingerprint both
//! list files here, so a change is noticed in exactly the files that load.
//! No parsing: this module only reads.

use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// The rule files of `dir`, in name order: every file whose name does not
/// start with a dot, as the reference loads its runtime directory (editors'
/// swap files and ConfigMaps' `..data` links start with one).
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read = std::fs::read_dir(dir).map_err(|error| ConfigError::Read {
        path: dir.to_owned(),
        error,
    })?;
    let mut files: Vec<_> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.') && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every rule file of `dir` as (name, text), in name order; the name is the
/// path as problems should show it.
pub(super) fn read(dir: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let files = rule_files(dir)?;
    let mut texts = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Read {
            path: path.clone(),
            error,
        })?;
        texts.push((path.display().to_string(), text));
    }
    Ok(texts)
}
