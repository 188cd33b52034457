//! A row's bytes: the scope and the limit identity (each a u16 length and
//! bytes), then the state's four words and the entry's expiry, little-endian.
//! A reset is the scope with the identity [`RESET`] and zero words. The
//! framing around it (length, checksum) is [`super::file`]'s.

use crate::engine::State;
use crate::storage::memory::Row;

/// The identity of a reset row.
const RESET: &str = "\u{0}reset";

/// The words after the two strings.
const WORDS: usize = 5;

/// The start of a reservation's record (a row starts with its scope's
/// length, and no scope is 65,535 bytes long): opened, with its body.
pub(super) const OPENED: &[u8] = b"\xff\xffrsv+";

/// The start of a settled (or expired) reservation's record.
pub(super) const CLOSED: &[u8] = b"\xff\xffrsv-";

/// A reservation's record: its id and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Opened (else settled or expired).
    pub opened: bool,
    /// The reservation's id.
    pub id: &'a str,
    /// What the ledger wrote for it.
    pub body: &'a [u8],
}

/// Appends `entry`'s bytes to `out`.
pub(super) fn encode_entry(entry: &Entry<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(if entry.opened { OPENED } else { CLOSED });
    put_str(out, entry.id);
    out.extend_from_slice(entry.body);
}

/// The reservation's record of `bytes`, if they are one.
pub(super) fn decode_entry(bytes: &[u8]) -> Option<Entry<'_>> {
    let (opened, mut rest) = match (bytes.strip_prefix(OPENED), bytes.strip_prefix(CLOSED)) {
        (Some(rest), _) => (true, rest),
        (_, Some(rest)) => (false, rest),
        _ => return None,
    };
    let (len, tail) = rest.split_at_checked(2)?;
    let len = usize::from(u16::from_le_bytes(len.try_into().ok()?));
    rest = tail;
    let (id, body) = rest.split_at_checked(len)?;
    Some(Entry {
        opened,
        id: std::str::from_utf8(id).ok()?,
        body,
    })
}

/// Appends `row`'s bytes to `out`. A string longer than `u16::MAX` bytes is
/// cut (scopes and identities are at most 1,024 bytes).
pub(super) fn encode(row: &Row<'_>, out: &mut Vec<u8>) {
    let (scope, identity, words) = match *row {
        Row::Counter {
            scope,
            identity,
            state,
            expires_at,
        } => (
            scope,
            identity,
            [state.a, state.b, state.c, state.d, expires_at],
        ),
        Row::Reset { scope } => (scope, RESET, [0; WORDS]),
    };
    put_str(out, scope);
    put_str(out, identity);
    for word in words {
        out.extend_from_slice(&word.to_le_bytes());
    }
}

/// The row of `bytes`, which must be exactly one row; `None` when they are
/// not.
pub(super) fn decode(mut bytes: &[u8]) -> Option<Row<'_>> {
    let row = take(&mut bytes)?;
    bytes.is_empty().then_some(row)
}

/// The next row of `rest`, advancing it; `None` when `rest` does not start
/// with a whole row.
pub(super) fn take<'a>(rest: &mut &'a [u8]) -> Option<Row<'a>> {
    fn bytes<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        *rest = tail;
        Some(head)
    }
    fn string<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
        let len = u16::from_le_bytes(bytes(rest, 2)?.try_into().ok()?);
        std::str::from_utf8(bytes(rest, usize::from(len))?).ok()
    }
    let scope = string(rest)?;
    let identity = string(rest)?;
    let mut words = [0u64; WORDS];
    for w in &mut words {
        *w = u64::from_le_bytes(bytes(rest, 8)?.try_into().ok()?);
    }
    if identity == RESET {
        return Some(Row::Reset { scope });
    }
    let [a, b, c, d, expires_at] = words;
    Some(Row::Counter {
        scope,
        identity,
        state: State { a, b, c, d },
        expires_at,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_as_written() {
        let rows = [
            Row::Counter {
                scope: "key_1",
                identity: "subject||requests|60000000000|fixed_window",
                state: State {
                    a: 1,
                    b: 2,
                    c: 3,
                    d: u64::MAX,
                },
                expires_at: 99,
            },
            Row::Reset { scope: "key_2" },
            Row::Counter {
                scope: "",
                identity: "é",
                state: State::default(),
                expires_at: 0,
            },
        ];
        let mut bytes = Vec::new();
        for row in &rows {
            let mut one = Vec::new();
            encode(row, &mut one);
            assert_eq!(decode(&one), Some(*row));
            bytes.extend_from_slice(&one);
        }
        let mut rest = &bytes[..];
        for row in &rows {
            assert_eq!(take(&mut rest), Some(*row));
        }
        assert!(rest.is_empty());
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn reservations_read_back_as_written() {
        for entry in [
            Entry {
                opened: true,
                id: "rsv_1",
                body: b"{\"a\":1}",
            },
            Entry {
                opened: false,
                id: "",
                body: b"",
            },
        ] {
            let mut bytes = Vec::new();
            encode_entry(&entry, &mut bytes);
            assert_eq!(decode_entry(&bytes), Some(entry));
            assert_eq!(decode(&bytes), None, "never read as a counter");
        }
    }
}
