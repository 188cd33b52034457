//! A byte trie that finds, in one pass over a text, every stored key that
//! is a prefix of it: the class matcher's index of literal prefixes and
//! (over reversed bytes) suffixes.
//!
//! Edges live in one hash map keyed by (node, byte), so a node costs a few
//! bytes and a lookup one probe per byte walked.

use hashbrown::HashMap;

/// Byte strings → small ids; finds every stored key that is a prefix of a
/// text in one pass over the text.
#[derive(Debug, Clone, Default)]
pub(super) struct Trie {
    /// (node, byte) → child node; node 0 is the root.
    edges: HashMap<(u32, u8), u32>,
    /// Per node, the id of the key ending there.
    ids: Vec<Option<u32>>,
}

// === impl Trie ===

impl Trie {
    /// Stores `key` with `id` unless it is there; returns the key's id.
    pub(super) fn insert(&mut self, key: impl Iterator<Item = u8>, id: u32) -> u32 {
        if self.ids.is_empty() {
            self.ids.push(None);
        }
        let mut node = 0u32;
        for byte in key {
            let next = self.ids.len() as u32;
            node = *self.edges.entry((node, byte)).or_insert(next);
            if node == next {
                self.ids.push(None);
            }
        }
        *self.ids[node as usize].get_or_insert(id)
    }

    /// The ids of the stored keys that are prefixes of `text`, shortest first.
    pub(super) fn prefixes_of(&self, text: impl Iterator<Item = u8>) -> impl Iterator<Item = u32> {
        let mut node = (!self.ids.is_empty()).then_some(0u32);
        let mut text = text;
        std::iter::from_fn(move || {
            while let Some(n) = node {
                node = text.next().and_then(|b| self.edges.get(&(n, b)).copied());
                if let Some(id) = self.ids[n as usize] {
                    return Some(id);
                }
            }
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_stored_prefix_shortest_first() {
        let mut t = Trie::default();
        assert_eq!(t.insert("/api/".bytes(), 0), 0);
        assert_eq!(t.insert("".bytes(), 1), 1);
        assert_eq!(t.insert("/api/v1/".bytes(), 2), 2);
        assert_eq!(t.insert("/api/".bytes(), 3), 0, "a stored key keeps its id");
        let found: Vec<u32> = t.prefixes_of("/api/v1/x".bytes()).collect();
        assert_eq!(found, [1, 0, 2]);
        assert_eq!(t.prefixes_of("/ap".bytes()).collect::<Vec<_>>(), [1]);
        assert_eq!(Trie::default().prefixes_of("x".bytes()).count(), 0);
    }
}
