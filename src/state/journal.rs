//! The counter journal: an append-only file beside the state file
//! (`STATE.journal`) that the in-memory counters which changed are written
//! to every interval, so a crash (`kill -9`, OOM) loses at most one interval
//! of counting.
//!
//! The file is a counter snapshot (`MemoryStore::export`'s format) that only
//! grows: each flush appends the changed counters' records, and a scope reset
//! appends a tombstone; replaying it in order gives the latest state of each
//! counter. Appending is sequential, so a flush costs about one `write` and
//! one `fsync`, not a B-tree update per counter. When the file holds far more
//! than the live counters (old versions, expired and evicted counters), it is
//! rewritten from the live counters into a new file, fsynced, and renamed over
//! the old one, so a crash mid-rewrite keeps the old file whole.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::storage::memory::{Changes, SNAPSHOT_MAGIC};

/// An append-only journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
}

// === impl Journal ===

impl Journal {
    /// The journal of the state file at `state`: `state` + `.journal`.
    pub fn path_of(state: &Path) -> PathBuf {
        let mut name = state.as_os_str().to_owned();
        name.push(".journal");
        PathBuf::from(name)
    }

    /// What the journal at `path` holds, as one snapshot (empty when there
    /// is none); a torn last record (a crash mid-append) is ignored by the
    /// reader.
    pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.starts_with(SNAPSHOT_MAGIC) => Ok(bytes),
            Ok(_) => Ok(Vec::new()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Starts the journal at `path` afresh from `live` (every live counter),
    /// replacing any earlier one atomically.
    pub fn create(path: &Path, live: &Changes) -> std::io::Result<Self> {
        let tmp = {
            let mut name = path.as_os_str().to_owned();
            name.push(".tmp");
            PathBuf::from(name)
        };
        let mut file = File::create(&tmp)?;
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        append_to(&mut bytes, live);
        file.write_all(&bytes)?;
        file.sync_data()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename itself must survive a crash.
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            len: bytes.len() as u64,
        })
    }

    /// Appends `changes` and makes them durable.
    pub fn append(&mut self, changes: &Changes) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        append_to(&mut bytes, changes);
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file holds no record.
    pub fn is_empty(&self) -> bool {
        self.len <= SNAPSHOT_MAGIC.len() as u64
    }

    /// Removes the file: a graceful stop saved everything elsewhere.
    pub fn remove(self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// `changes` as snapshot records: tombstones for removed scopes first, then
/// the rows, so a scope reset and counted again in one interval keeps its
/// new counts.
fn append_to(out: &mut Vec<u8>, changes: &Changes) {
    for scope in &changes.removed {
        out.extend_from_slice(scope);
        crate::storage::memory::put_tombstone(out);
    }
    for (key, value) in &changes.rows {
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Algorithm, CounterKey, CounterStore, Engine, Item, Mode, Rate};
    use crate::plans::SlotRegistry;
    use crate::storage::memory::MemoryStore;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn consume(engine: &Engine<MemoryStore>, scope: &str, slots: &SlotRegistry) {
        let item = Item {
            key: CounterKey {
                scope,
                slot: slots.intern("subject||requests|60000000000|fixed_window"),
            },
            algorithm: Algorithm::FixedWindow,
            rate: Rate::new(10, 60_000_000_000).expect("rate"),
            cost: 1,
        };
        assert!(engine.decide(Mode::Consume, NOW, &[item]).counted);
    }

    #[test]
    fn replaying_the_journal_restores_counts_and_resets() {
        let dir = std::env::temp_dir().join(format!("tollgate-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = Journal::path_of(&dir.join("state.redb"));
        let slots = SlotRegistry::default();
        let engine = Engine::new(MemoryStore::new(1024));
        engine.store().track_changes();
        let mut journal =
            Journal::create(&path, &engine.store().take_changes(NOW, &slots)).expect("create");
        consume(&engine, "a", &slots);
        consume(&engine, "b", &slots);
        journal
            .append(&engine.store().take_changes(NOW, &slots))
            .expect("append");
        engine.store().reset("a");
        consume(&engine, "b", &slots);
        journal
            .append(&engine.store().take_changes(NOW, &slots))
            .expect("append");

        let restored = MemoryStore::new(1024);
        restored.import(&Journal::read(&path).expect("read"), NOW, &slots);
        assert_eq!(restored.len(), 1, "a was reset");
        let again = Engine::new(restored);
        for _ in 0..8 {
            consume(&again, "b", &slots);
        }
        let item = Item {
            key: CounterKey {
                scope: "b",
                slot: slots.intern("subject||requests|60000000000|fixed_window"),
            },
            algorithm: Algorithm::FixedWindow,
            rate: Rate::new(10, 60_000_000_000).expect("rate"),
            cost: 1,
        };
        assert!(
            !again.decide(Mode::Consume, NOW, &[item]).fits,
            "b's two counts came back: 2 + 8 = 10"
        );
        journal.remove().expect("remove");
        let _ = std::fs::remove_dir_all(dir);
    }
}
