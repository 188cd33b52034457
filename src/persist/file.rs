//! The counter files' format, checked on every read.
//!
//! A file is a header, then records:
//!
//! - header, 20 bytes: `TGJ2`, the kind (`J` journal, `S` snapshot), three
//!   zero bytes, the epoch (u64), and the CRC-32 of those 16 bytes;
//! - record: the payload's length (u32), its CRC-32 (u32), the payload (a
//!   row, [`super::record`]);
//! - a snapshot ends with an end record, whose payload is [`END`] and the
//!   number of rows (u64): a snapshot without one is damaged.
//!
//! Integers are little-endian. Reading tells a torn tail (the last record
//! cut short or not matching its checksum: a crash mid-append) from damage
//! (anything else: a bad header, a bad record followed by more bytes),
//! without holding the file in memory. The files of the previous format
//! (`TGC1`, unchecked rows) are read once, to carry counters over an
//! upgrade.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::PersistError;
use super::record;
use crate::storage::memory::Row;

/// The magic of this format.
const MAGIC: &[u8; 4] = b"TGJ2";

/// The magic of the previous, unchecked format.
pub(super) const LEGACY_MAGIC: &[u8; 4] = b"TGC1";

/// The header's size.
pub(super) const HEADER: u64 = 20;

/// A record's framing: length and checksum.
const FRAME: usize = 8;

/// The payload of a snapshot's end record, before the row count.
const END: &[u8; 4] = b"\xffEND";

/// The largest payload a record may have: two strings of at most 64 KiB
/// and five words.
const MAX_PAYLOAD: usize = 2 * (2 + u16::MAX as usize) + 40;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Appended to as counters change; its first records are every live
    /// counter when it was (re)written.
    Journal,
    /// Every live counter at a graceful stop.
    Snapshot,
}

/// A file being read.
pub(super) struct Reader {
    path: PathBuf,
    file: BufReader<File>,
    /// The file's length.
    len: u64,
    /// Where the next record starts.
    offset: u64,
    buf: Vec<u8>,
    /// The previous, unchecked format: rows with no framing.
    legacy: bool,
}

/// What the next read found.
#[derive(Debug)]
pub(super) enum Next<'a> {
    /// A row.
    Row(Row<'a>),
    /// A reservation's record.
    Entry(record::Entry<'a>),
    /// A snapshot's end, with its row count.
    End(u64),
    /// The end of the file.
    Eof,
    /// The last record is cut short or does not match its checksum: where
    /// it starts.
    Torn(u64),
}

/// A file being written: records gather in a buffer, [`Writer::write`]
/// hands them to the file.
pub(super) struct Writer {
    path: PathBuf,
    file: File,
    /// Bytes in the file that were written whole.
    len: u64,
    buf: Vec<u8>,
    rows: u64,
}

// === impl Kind ===

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Self::Journal => b'J',
            Self::Snapshot => b'S',
        }
    }
}

// === impl Reader ===

impl Reader {
    /// Opens the file at `path`, of `kind`, and reads its epoch; `None`
    /// when there is no file. A file of the previous format reads with
    /// epoch 0 ([`Reader::legacy`]).
    pub(super) fn open(path: &Path, kind: Kind) -> Result<Option<(Self, u64)>, PersistError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PersistError::io(path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| PersistError::io(path, e))?
            .len();
        let mut reader = Self {
            path: path.to_owned(),
            file: BufReader::with_capacity(256 << 10, file),
            len,
            offset: 0,
            buf: Vec::new(),
            legacy: false,
        };
        let damaged = |reason: &str| Err(PersistError::damaged(path, 0, reason));
        let mut magic = [0; 4];
        if reader.exact(&mut magic).is_err() {
            return damaged("shorter than its header");
        }
        if &magic == LEGACY_MAGIC {
            reader.legacy = true;
            reader.offset = 4;
            return Ok(Some((reader, 0)));
        }
        let mut rest = [0; HEADER as usize - 4];
        if &magic != MAGIC || reader.exact(&mut rest).is_err() {
            return damaged("not a tollgate counter file (its header is wrong)");
        }
        let mut header = [0; HEADER as usize];
        header[..4].copy_from_slice(&magic);
        header[4..].copy_from_slice(&rest);
        let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
        if crc32fast::hash(&header[..16]) != crc {
            return damaged("its header does not match its checksum");
        }
        if header[4] != kind.byte() || header[5..8] != [0; 3] {
            return damaged("its header names another kind of file");
        }
        reader.offset = HEADER;
        let epoch = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        Ok(Some((reader, epoch)))
    }

    /// Whether the file is of the previous format.
    pub(super) fn legacy(&self) -> bool {
        self.legacy
    }

    /// The file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The next record.
    pub(super) fn next(&mut self) -> Result<Next<'_>, PersistError> {
        if self.offset == self.len {
            return Ok(Next::Eof);
        }
        if self.legacy {
            return self.next_legacy();
        }
        let at = self.offset;
        let mut frame = [0; FRAME];
        if self.exact(&mut frame).is_err() {
            return Ok(Next::Torn(at));
        }
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        let end = at + (FRAME + len) as u64;
        if len > MAX_PAYLOAD {
            // No write, whole or torn, leaves a length no writer writes.
            return Err(PersistError::damaged(
                &self.path,
                at,
                "a record's length is impossible",
            ));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len, 0);
        let read = self.exact(&mut buf);
        self.buf = buf;
        if read.is_err() {
            return Ok(Next::Torn(at));
        }
        if crc32fast::hash(&self.buf) != crc {
            return self.bad(at, end, "a record does not match its checksum");
        }
        if len == 0 {
            // Checks (the checksum of nothing is 0), but nothing writes it:
            // zeros a crash left where a write was to go.
            return self.bad(at, end, "an empty record");
        }
        if let Some(count) = self.buf.strip_prefix(END.as_slice()) {
            let count = count.try_into().map(u64::from_le_bytes);
            return match count {
                Ok(n) => Ok(Next::End(n)),
                Err(_) => Err(PersistError::damaged(&self.path, at, "a bad end record")),
            };
        }
        if let Some(entry) = record::decode_entry(&self.buf) {
            return Ok(Next::Entry(entry));
        }
        match record::decode(&self.buf) {
            Some(row) => Ok(Next::Row(row)),
            None => Err(PersistError::damaged(
                &self.path,
                at,
                "a record checks but is not a counter",
            )),
        }
    }

    /// A bad record from `at` to `end`: the torn tail when it is the last
    /// thing in the file or only zeros follow it (blocks a crash left
    /// unwritten), damage when anything else follows it.
    fn bad(&mut self, at: u64, end: u64, reason: &str) -> Result<Next<'_>, PersistError> {
        let mut rest = Vec::new();
        let zeros = end >= self.len
            || (self.file.read_to_end(&mut rest).is_ok() && rest.iter().all(|b| *b == 0));
        if zeros {
            Ok(Next::Torn(at))
        } else {
            Err(PersistError::damaged(
                &self.path,
                at,
                &format!("{reason}, and records follow it"),
            ))
        }
    }

    /// A row of the previous format: no framing, so the first that does not
    /// parse ends the file (as that format's reader did).
    fn next_legacy(&mut self) -> Result<Next<'_>, PersistError> {
        if self.buf.is_empty() {
            let mut all = Vec::new();
            self.file
                .read_to_end(&mut all)
                .map_err(|e| PersistError::io(&self.path, e))?;
            self.buf = all;
            self.offset = 4;
        }
        let start = (self.offset - 4) as usize;
        let mut rest = &self.buf[start..];
        let before = rest.len();
        match record::take(&mut rest) {
            Some(_) => {
                let used = before - rest.len();
                self.offset += used as u64;
                let row = record::decode(&self.buf[start..start + used]).expect("just parsed");
                Ok(Next::Row(row))
            }
            None => {
                let at = self.offset;
                self.offset = self.len;
                Ok(Next::Torn(at))
            }
        }
    }

    fn exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact(out)?;
        self.offset += out.len() as u64;
        Ok(())
    }
}

// === impl Writer ===

impl Writer {
    /// A new file at `path` (replacing any) of `kind` and `epoch`; its
    /// header is buffered.
    pub(super) fn create(path: &Path, kind: Kind, epoch: u64) -> Result<Self, PersistError> {
        let file = File::create(path).map_err(|e| PersistError::io(path, e))?;
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&[kind.byte(), 0, 0, 0]);
        header.extend_from_slice(&epoch.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        Ok(Self {
            path: path.to_owned(),
            file,
            len: 0,
            buf: header,
            rows: 0,
        })
    }

    /// The journal at `path`, `len` bytes long, to append to.
    pub(super) fn append(path: &Path, len: u64) -> Result<Self, PersistError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| PersistError::io(path, e))?;
        let mut writer = Self {
            path: path.to_owned(),
            file,
            len,
            buf: Vec::new(),
            rows: 0,
        };
        // Anything past `len` (a torn tail) goes before the first append.
        writer.truncate()?;
        Ok(writer)
    }

    /// Buffers `row` as a record.
    pub(super) fn push(&mut self, row: &Row<'_>) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; FRAME]);
        record::encode(row, &mut self.buf);
        self.frame(at);
        self.rows += 1;
    }

    /// Buffers a reservation's record (not a row: rows count counters).
    pub(super) fn push_entry(&mut self, entry: &record::Entry<'_>) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; FRAME]);
        record::encode_entry(entry, &mut self.buf);
        self.frame(at);
    }

    /// Buffers a snapshot's end record, with the rows pushed so far.
    pub(super) fn end(&mut self) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; FRAME]);
        self.buf.extend_from_slice(END);
        self.buf.extend_from_slice(&self.rows.to_le_bytes());
        self.frame(at);
    }

    fn frame(&mut self, at: usize) {
        let payload = &self.buf[at + FRAME..];
        let len = u32::try_from(payload.len()).expect("a row is at most 128 KiB");
        let crc = crc32fast::hash(payload);
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[at + 4..at + FRAME].copy_from_slice(&crc.to_le_bytes());
    }

    /// Bytes buffered, not yet written.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes what is buffered. On failure, nothing of it counts: the next
    /// [`Writer::truncate`] cuts the file back to its last whole write.
    pub(super) fn write(&mut self) -> Result<(), PersistError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buf)
            .map_err(|e| PersistError::io(&self.path, e))?;
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Makes what was written durable.
    pub(super) fn sync(&self) -> Result<(), PersistError> {
        self.file
            .sync_data()
            .map_err(|e| PersistError::io(&self.path, e))
    }

    /// Cuts the file back to `len` bytes (a length it had), and forgets the
    /// buffer.
    pub(super) fn cut_to(&mut self, len: u64) -> Result<(), PersistError> {
        self.len = len.min(self.len);
        self.truncate()
    }

    /// Cuts the file back to its last whole write, and forgets the buffer.
    pub(super) fn truncate(&mut self) -> Result<(), PersistError> {
        self.buf.clear();
        self.file
            .set_len(self.len)
            .map_err(|e| PersistError::io(&self.path, e))?;
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::Start(self.len))
            .map_err(|e| PersistError::io(&self.path, e))?;
        Ok(())
    }

    /// Bytes written whole.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Rows pushed.
    pub(super) fn rows(&self) -> u64 {
        self.rows
    }
}

/// Makes a rename or removal in `path`'s directory durable.
pub(super) fn sync_dir(path: &Path) -> Result<(), PersistError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PersistError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::State;

    fn row(i: u64) -> Row<'static> {
        Row::Counter {
            scope: "key",
            identity: "id",
            state: State {
                a: i,
                ..State::default()
            },
            expires_at: u64::MAX,
        }
    }

    fn written(dir: &Path, n: u64, kind: Kind) -> PathBuf {
        let path = dir.join(format!("{kind:?}-{n}"));
        let mut w = Writer::create(&path, kind, 7).expect("create");
        for i in 0..n {
            w.push(&row(i));
        }
        if kind == Kind::Snapshot {
            w.end();
        }
        w.write().expect("write");
        path
    }

    fn read_all(path: &Path, kind: Kind) -> Result<(Vec<u64>, Option<u64>), PersistError> {
        let (mut r, epoch) = Reader::open(path, kind)?.expect("exists");
        assert_eq!(epoch, 7);
        let mut got = Vec::new();
        loop {
            match r.next()? {
                Next::Row(Row::Counter { state, .. }) => got.push(state.a),
                Next::Row(Row::Reset { .. }) | Next::Entry(_) => unreachable!("none written"),
                Next::End(n) => assert_eq!(n, got.len() as u64),
                Next::Eof => return Ok((got, None)),
                Next::Torn(at) => return Ok((got, Some(at))),
            }
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tollgate-persist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_before_it_is_an_error() {
        let dir = dir("torn");
        let path = written(&dir, 3, Kind::Journal);
        let whole = std::fs::read(&path).expect("read");
        assert_eq!(
            read_all(&path, Kind::Journal).expect("whole"),
            (vec![0, 1, 2], None)
        );
        let record = (whole.len() - HEADER as usize) / 3;
        // Cut anywhere inside the last record: the first two, and where it starts.
        for cut in 1..record {
            std::fs::write(&path, &whole[..whole.len() - cut]).expect("write");
            let last = (HEADER as usize + 2 * record) as u64;
            assert_eq!(
                read_all(&path, Kind::Journal).expect("torn"),
                (vec![0, 1], Some(last))
            );
        }
        // A changed byte in the last record: torn; in the first: damage.
        let mut changed = whole.clone();
        *changed.last_mut().expect("bytes") ^= 1;
        std::fs::write(&path, &changed).expect("write");
        assert!(matches!(read_all(&path, Kind::Journal), Ok((_, Some(_)))));
        for at in [
            HEADER as usize + 3,
            HEADER as usize + FRAME + 1,
            HEADER as usize,
        ] {
            let mut changed = whole.clone();
            changed[at] ^= 0x10;
            std::fs::write(&path, &changed).expect("write");
            let e = read_all(&path, Kind::Journal).expect_err("damage");
            assert!(e.to_string().contains("damaged at byte 20"), "{e}");
        }
        // Zeros where a write was to go: a torn tail.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 100]);
        std::fs::write(&path, &zeros).expect("write");
        assert_eq!(
            read_all(&path, Kind::Journal).expect("torn"),
            (vec![0, 1, 2], Some(whole.len() as u64))
        );
        // The header: its magic, its epoch, its kind.
        for at in [0, 9, 4] {
            let mut changed = whole.clone();
            changed[at] ^= 1;
            std::fs::write(&path, &changed).expect("write");
            let e = read_all(&path, Kind::Journal).expect_err("damage");
            assert!(e.to_string().contains("damaged at byte 0"), "{e}");
        }
        std::fs::write(&path, &whole[..10]).expect("write");
        assert!(read_all(&path, Kind::Journal).is_err());
    }

    #[test]
    fn a_snapshot_is_whole_or_damaged() {
        let dir = dir("snapshot");
        let path = written(&dir, 2, Kind::Snapshot);
        assert_eq!(
            read_all(&path, Kind::Snapshot).expect("whole"),
            (vec![0, 1], None)
        );
        // The kind is checked: a snapshot is no journal.
        assert!(read_all(&path, Kind::Journal).is_err());
        assert!(matches!(
            Reader::open(&dir.join("missing"), Kind::Snapshot),
            Ok(None)
        ));
    }

    #[test]
    fn appending_after_a_failed_write_starts_from_the_last_whole_one() {
        let dir = dir("append");
        let path = written(&dir, 2, Kind::Journal);
        let len = std::fs::metadata(&path).expect("len").len();
        // A torn tail left by a crash, then reopened at the good length.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(&[9, 9, 9]);
        std::fs::write(&path, &bytes).expect("write");
        let mut w = Writer::append(&path, len).expect("append");
        w.push(&row(5));
        w.write().expect("write");
        assert_eq!(
            read_all(&path, Kind::Journal).expect("read"),
            (vec![0, 1, 5], None)
        );
    }
}
