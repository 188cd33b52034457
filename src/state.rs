//! Runtime state made through the admin API: plan assignments and overrides,
//! durable in a local redb file, and the counters' snapshot across a graceful
//! restart.
//!
//! Reads come from an in-memory copy swapped whole on every change
//! (copy-on-write behind an `ArcSwap`): the decision path never takes a lock
//! here. Writes go to the file first and are committed (fsynced) before the
//! in-memory copy changes and before the admin call returns. Admin changes
//! are rare, so copying the maps is cheap next to the fsync.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::plans::overrides::Override;

const ASSIGNMENTS: TableDefinition<&str, &str> = TableDefinition::new("assignments");
const OVERRIDES: TableDefinition<&str, &[u8]> = TableDefinition::new("overrides");
const COUNTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("counters");

/// The runtime state.
pub struct RuntimeState {
    path: PathBuf,
    db: Database,
    maps: ArcSwap<Maps>,
    /// Serializes writers, so no change is lost between copy and swap.
    write: Mutex<()>,
}

/// The in-memory copy.
#[derive(Debug, Default, Clone)]
pub struct Maps {
    /// Account → plan name.
    pub assignments: HashMap<String, String>,
    /// Account → its overrides.
    pub overrides: HashMap<String, Vec<Override>>,
}

/// A state file problem.
#[derive(Debug, thiserror::Error)]
#[error("state file {}: {source}", path.display())]
pub struct Error {
    path: PathBuf,
    #[source]
    source: redb::Error,
}

// === impl RuntimeState ===

impl RuntimeState {
    /// Opens (or creates) the state file at `path` and loads it.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let err = |source: redb::Error| Error {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(redb::Error::Io(e)))?;
        }
        let db = Database::create(path).map_err(|e| err(e.into()))?;
        let maps = load(&db).map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
            db,
            maps: ArcSwap::from_pointee(maps),
            write: Mutex::new(()),
        })
    }

    /// State kept in memory only, for embedding and tests: lost on exit.
    pub fn in_memory() -> Self {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database opens");
        let maps = load(&db).expect("an empty in-memory database loads");
        Self {
            path: PathBuf::from(":memory:"),
            db,
            maps: ArcSwap::from_pointee(maps),
            write: Mutex::new(()),
        }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current maps.
    pub fn maps(&self) -> Arc<Maps> {
        self.maps.load_full()
    }

    /// The runtime plan of `account`, if one was set.
    pub fn assignment(&self, account: &str) -> Option<String> {
        self.maps.load().assignments.get(account).cloned()
    }

    /// Whether `account` has anything here (an assignment or overrides).
    pub fn knows(&self, account: &str) -> bool {
        let maps = self.maps.load();
        maps.assignments.contains_key(account) || maps.overrides.contains_key(account)
    }

    /// The overrides of `account`.
    pub fn overrides(&self, account: &str) -> Vec<Override> {
        self.maps
            .load()
            .overrides
            .get(account)
            .cloned()
            .unwrap_or_default()
    }

    /// Sets (`Some`) or clears (`None`) the runtime plan of `account`;
    /// returns the previous one.
    pub fn set_assignment(
        &self,
        account: &str,
        plan: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let _guard = self.write.lock();
        self.commit(|tx| {
            let mut t = tx.open_table(ASSIGNMENTS)?;
            match plan {
                Some(p) => t.insert(account, p)?,
                None => t.remove(account)?,
            };
            Ok(())
        })?;
        let mut maps = (**self.maps.load()).clone();
        let previous = match plan {
            Some(p) => maps.assignments.insert(account.to_owned(), p.to_owned()),
            None => maps.assignments.remove(account),
        };
        self.maps.store(Arc::new(maps));
        Ok(previous)
    }

    /// Adds or replaces (by limit name) an override of `account`.
    pub fn set_override(&self, account: &str, o: Override) -> Result<(), Error> {
        let _guard = self.write.lock();
        let mut list = self.overrides(account);
        list.retain(|x| x.limit != o.limit);
        list.push(o);
        self.put_overrides(account, list)
    }

    /// Removes the override of `account` on `limit`; whether there was one.
    pub fn remove_override(&self, account: &str, limit: &str) -> Result<bool, Error> {
        let _guard = self.write.lock();
        let mut list = self.overrides(account);
        let before = list.len();
        list.retain(|x| x.limit != limit);
        if list.len() == before {
            return Ok(false);
        }
        self.put_overrides(account, list)?;
        Ok(true)
    }

    /// Replaces what is known of `account` with what another replica wrote
    /// (kept in memory only: the shared store holds it); whether it changed.
    pub fn replace_account(
        &self,
        account: &str,
        plan: Option<String>,
        overrides: Vec<Override>,
    ) -> bool {
        let _guard = self.write.lock();
        let mut maps = (**self.maps.load()).clone();
        let before = (
            maps.assignments.get(account).cloned(),
            maps.overrides.get(account).cloned().unwrap_or_default(),
        );
        if before == (plan.clone(), overrides.clone()) {
            return false;
        }
        match plan {
            Some(p) => maps.assignments.insert(account.to_owned(), p),
            None => maps.assignments.remove(account),
        };
        if overrides.is_empty() {
            maps.overrides.remove(account);
        } else {
            maps.overrides.insert(account.to_owned(), overrides);
        }
        self.maps.store(Arc::new(maps));
        true
    }

    /// Replaces everything with `maps` (a full read of the shared store);
    /// returns the accounts that changed.
    pub fn replace_all(&self, maps: Maps) -> Vec<String> {
        let _guard = self.write.lock();
        let old = self.maps.load_full();
        let mut changed: Vec<String> = Vec::new();
        for account in old
            .assignments
            .keys()
            .chain(old.overrides.keys())
            .chain(maps.assignments.keys())
            .chain(maps.overrides.keys())
        {
            if old.assignments.get(account) != maps.assignments.get(account)
                || old.overrides.get(account) != maps.overrides.get(account)
            {
                changed.push(account.clone());
            }
        }
        changed.sort();
        changed.dedup();
        self.maps.store(Arc::new(maps));
        changed
    }

    /// Saves a counters snapshot (replacing any previous one).
    pub fn save_counters(&self, snapshot: &[u8]) -> Result<(), Error> {
        let _guard = self.write.lock();
        self.commit(|tx| {
            let mut t = tx.open_table(COUNTERS)?;
            t.insert(0, snapshot)?;
            Ok(())
        })
    }

    /// Takes the counters snapshot, if any, leaving none behind: a snapshot
    /// is restored once, never twice.
    pub fn take_counters(&self) -> Result<Option<Vec<u8>>, Error> {
        let _guard = self.write.lock();
        let mut out = None;
        self.commit(|tx| {
            let mut t = tx.open_table(COUNTERS)?;
            out = t.remove(0)?.map(|v| v.value().to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    fn put_overrides(&self, account: &str, list: Vec<Override>) -> Result<(), Error> {
        let bytes = serde_json::to_vec(&list).expect("overrides serialize");
        self.commit(|tx| {
            let mut t = tx.open_table(OVERRIDES)?;
            if list.is_empty() {
                t.remove(account)?;
            } else {
                t.insert(account, bytes.as_slice())?;
            }
            Ok(())
        })?;
        let mut maps = (**self.maps.load()).clone();
        if list.is_empty() {
            maps.overrides.remove(account);
        } else {
            maps.overrides.insert(account.to_owned(), list);
        }
        self.maps.store(Arc::new(maps));
        Ok(())
    }

    fn commit(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), Error> {
        let err = |source: redb::Error| Error {
            path: self.path.clone(),
            source,
        };
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        f(&tx).map_err(err)?;
        tx.commit().map_err(|e| err(e.into()))
    }
}

impl std::fmt::Debug for RuntimeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeState")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn load(db: &Database) -> Result<Maps, redb::Error> {
    // Create the tables on first use, so reads never miss them.
    let tx = db.begin_write()?;
    tx.open_table(ASSIGNMENTS)?;
    tx.open_table(OVERRIDES)?;
    tx.open_table(COUNTERS)?;
    tx.commit()?;
    let tx = db.begin_read()?;
    let mut maps = Maps::default();
    for row in tx.open_table(ASSIGNMENTS)?.iter()? {
        let (k, v) = row?;
        maps.assignments
            .insert(k.value().to_owned(), v.value().to_owned());
    }
    for row in tx.open_table(OVERRIDES)?.iter()? {
        let (k, v) = row?;
        match serde_json::from_slice::<Vec<Override>>(v.value()) {
            Ok(list) => {
                maps.overrides.insert(k.value().to_owned(), list);
            }
            Err(e) => {
                tracing::warn!(account = k.value(), error = %e, "unreadable overrides skipped")
            }
        }
    }
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plans::overrides::Change;

    #[test]
    fn survives_reopening() {
        let dir = std::env::temp_dir().join(format!("tollgate-state-{}", std::process::id()));
        let path = dir.join("state.redb");
        {
            let s = RuntimeState::open(&path).expect("open");
            assert_eq!(s.set_assignment("acct", Some("pro")).expect("set"), None);
            let o = Override {
                limit: "requests/minute".into(),
                change: Change::Amount(9),
                expires_at: None,
                reason: String::new(),
            };
            s.set_override("acct", o).expect("override");
            s.save_counters(b"snapshot").expect("counters");
        }
        let s = RuntimeState::open(&path).expect("reopen");
        assert_eq!(s.assignment("acct").as_deref(), Some("pro"));
        assert_eq!(s.overrides("acct").len(), 1);
        assert_eq!(
            s.take_counters().expect("take").as_deref(),
            Some(&b"snapshot"[..])
        );
        assert_eq!(s.take_counters().expect("take"), None);
        assert!(
            s.remove_override("acct", "requests/minute")
                .expect("remove")
        );
        assert!(!s.knows("nobody"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
