//! RFC 9162 §2.1 Merkle tree over journal entry hashes: roots, inclusion and consistency
//! proofs for any historical tree size, and their verifiers.
//!
//! The leaves are the 32-byte entry hashes in seq order; a leaf's hash is
//! SHA-256(0x00 ‖ entry hash) and an interior node's SHA-256(0x01 ‖ left ‖ right), as
//! API.md "Audit" fixes. The tree of `n` leaves splits at `k`, the largest power of two
//! below `n`, so every left subtree is perfect. [`MerkleTree`] keeps the root of every
//! perfect subtree of 64 leaves and up, which makes any historical root a fold of at most
//! log₂ n stored hashes and the hashes of one block of 64, read back from the journal.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};

/// A SHA-256 output: an entry hash, a leaf or node hash, or a root.
pub type Hash = [u8; 32];

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("tree size {size} exceeds the {len} leaves the tree holds")]
    TreeSizeOutOfRange { size: u64, len: u64 },
    #[error("leaf index {index} is not below tree size {size}")]
    LeafIndexOutOfRange { index: u64, size: u64 },
    #[error("a consistency proof needs a non-empty old tree (RFC 9162 §2.1.4)")]
    EmptyOldTree,
    #[error("old tree size {from} exceeds new tree size {to}")]
    OldTreeLarger { from: u64, to: u64 },
    /// The journal could not give back the entry hashes of a block from `start`.
    #[error("entry hashes from seq {start} cannot be read back: {reason}")]
    EntriesUnreadable { start: u64, reason: String },
}

/// SHA-256's initial state (FIPS 180-4 §5.3.3).
const SHA256_INITIAL_STATE: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Bytes of a leaf's input (prefix + entry hash) and of a node's (prefix + two hashes).
const LEAF_INPUT_BYTES: usize = 33;
const NODE_INPUT_BYTES: usize = 65;

/// SHA-256 of a message already laid out in whole 64-byte blocks with its padding
/// (FIPS 180-4 §5.1.1), through the raw compression function. A leaf is one block and a
/// node two, always, so their padding is written in place and nothing is buffered or
/// finalised per call: a node hash took 190 ns through `ring::digest::Context` and 120 ns
/// this way (SHA-NI on this machine's EPYC, 2026-12-04), and the verifier hashes one leaf
/// and about one node per entry.
pub(crate) fn sha256_of_padded(message: &[u8]) -> Hash {
    debug_assert!(message.len() % 64 == 0, "a padded message is whole blocks");
    let mut state = SHA256_INITIAL_STATE;
    for block in message.chunks_exact(64) {
        sha2::compress256(
            &mut state,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }
    let mut out = [0u8; 32];
    for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Writes SHA-256's padding after the first `length` bytes of `message`, which ends where
/// the padded message ends: the byte 0x80, zeros, and the length in bits, big-endian, in
/// the last eight bytes.
fn pad(message: &mut [u8], length: usize) {
    message[length] = 0x80;
    let bits = u64::try_from(length * 8).expect("a one- or two-block message's length fits in u64");
    let end = message.len();
    message[end - 8..].copy_from_slice(&bits.to_be_bytes());
}

/// The longest message that fits one block with its padding (the byte 0x80 and the
/// 8-byte length).
const ONE_BLOCK_MESSAGE_MAX: usize = 64 - 1 - 8;

/// `parts` one after another in one padded block, if they fit, for `sha256_of_padded`.
pub(crate) fn one_block(parts: &[&[u8]]) -> Option<[u8; 64]> {
    let length: usize = parts.iter().map(|part| part.len()).sum();
    if length > ONE_BLOCK_MESSAGE_MAX {
        return None;
    }
    let mut message = [0u8; 64];
    let mut at = 0;
    for part in parts {
        message[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    pad(&mut message, length);
    Some(message)
}

/// The hash of the leaf for one entry: SHA-256(0x00 ‖ entry hash), one block.
pub fn leaf_hash(entry_hash: &Hash) -> Hash {
    let mut message = [0u8; 64];
    message[0] = LEAF_PREFIX;
    message[1..LEAF_INPUT_BYTES].copy_from_slice(entry_hash);
    pad(&mut message, LEAF_INPUT_BYTES);
    sha256_of_padded(&message)
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right), two blocks.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut message = [0u8; 128];
    message[0] = NODE_PREFIX;
    message[1..33].copy_from_slice(left);
    message[33..NODE_INPUT_BYTES].copy_from_slice(right);
    pad(&mut message, NODE_INPUT_BYTES);
    sha256_of_padded(&message)
}

/// The root of the empty tree: SHA-256 of no bytes.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// RFC 9162 MTH over the entries in order, by the recursive definition. Linear in the number
/// of entries; the offline verifier uses it, and tests use it as the model.
pub fn root_of(entry_hashes: &[Hash]) -> Hash {
    match entry_hashes {
        [] => empty_root(),
        [entry_hash] => leaf_hash(entry_hash),
        _ => {
            let (left, right) = entry_hashes.split_at(split_point(entry_hashes.len()));
            node_hash(&root_of(left), &root_of(right))
        }
    }
}

/// The largest power of two strictly below `size`; `size` must be at least 2.
fn split_point(size: usize) -> usize {
    debug_assert!(size >= 2, "only trees of two or more leaves split");
    1 << (usize::BITS - 1 - (size - 1).leading_zeros())
}

/// Leaves per block: the perfect subtrees of this many leaves (height `BLOCK_HEIGHT`) and
/// above are kept; those below it are hashed again from the journal's entry hashes when a
/// proof or an old root needs them, except in the last, unfinished block. Memory is ~1 byte
/// per entry instead of 64; a proof reads back at most two blocks (64 entry hashes each).
const BLOCK_HEIGHT: u32 = 6;
const BLOCK_LEAVES: usize = 1 << BLOCK_HEIGHT;

/// Where a tree reads back the entry hashes of leaves it no longer keeps: the journal.
pub trait EntryHashes {
    /// The entry hashes of seqs `start..start + count`, in order.
    fn entry_hashes(&self, start: u64, count: usize) -> Result<Vec<Hash>, String>;
}

/// The entry hashes themselves, from seq 0 (for a tree of a journal held in memory).
impl EntryHashes for Vec<Hash> {
    fn entry_hashes(&self, start: u64, count: usize) -> Result<Vec<Hash>, String> {
        usize::try_from(start)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(count)?))
            .map(<[Hash]>::to_vec)
            .ok_or_else(|| format!("no entries {start}..+{count}"))
    }
}

/// For the questions a tree answers from what it keeps.
struct NothingToReadBack;

impl EntryHashes for NothingToReadBack {
    fn entry_hashes(&self, start: u64, _: usize) -> Result<Vec<Hash>, String> {
        Err(format!("nothing is read back here (seq {start})"))
    }
}

/// An append-only Merkle tree that answers for every size it has had.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    /// `upper[h][i]` is the root of the perfect subtree of height `BLOCK_HEIGHT + h` over
    /// leaves `[i·2^(BLOCK_HEIGHT+h), (i+1)·2^(BLOCK_HEIGHT+h))`. Only complete subtrees.
    upper: Vec<Vec<Hash>>,
    /// The leaf hashes of the last block, while it has fewer than `BLOCK_LEAVES`.
    tail: Vec<Hash>,
}

impl MerkleTree {
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    /// Appends one entry hash. Amortised O(1): a finished block's root is hashed from its
    /// leaves, then completes one perfect subtree per trailing one bit of the blocks' count.
    pub fn push(&mut self, entry_hash: Hash) {
        self.tail.push(leaf_hash(&entry_hash));
        if self.tail.len() < BLOCK_LEAVES {
            return;
        }
        let mut node = root_of_leaves(&self.tail);
        self.tail.clear();
        for height in 0.. {
            if self.upper.len() == height {
                self.upper.push(Vec::new());
            }
            let level = &mut self.upper[height];
            level.push(node);
            if level.len() % 2 == 1 {
                break;
            }
            // The level's last two roots now pair up into a perfect subtree one level higher.
            node = node_hash(&level[level.len() - 2], &node);
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        u64::try_from(self.leaf_count()).expect("a usize fits in u64 on every target Rust supports")
    }

    pub fn is_empty(&self) -> bool {
        self.leaf_count() == 0
    }

    /// Every finished block's root is the first kept level; the tail is the rest.
    fn leaf_count(&self) -> usize {
        self.finished_leaves() + self.tail.len()
    }

    fn finished_leaves(&self) -> usize {
        self.upper.first().map_or(0, Vec::len) * BLOCK_LEAVES
    }

    /// Root of the whole tree, from what the tree keeps (no entry is read back).
    pub fn root(&self) -> Hash {
        Query::new(self, &NothingToReadBack)
            .root_of_prefix(self.leaf_count())
            .expect("the last block's leaves are kept, so the root reads nothing back")
    }

    /// Root of the tree as it was when it held `size` leaves.
    pub fn root_at(&self, size: u64, entries: &dyn EntryHashes) -> Result<Hash, MerkleError> {
        let size = self.checked_size(size)?;
        Query::new(self, entries).root_of_prefix(size)
    }

    /// RFC 9162 §2.1.3.1 audit path of leaf `index` in the tree of `size` leaves, leaf end
    /// first. O(log² n).
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
        entries: &dyn EntryHashes,
    ) -> Result<Vec<Hash>, MerkleError> {
        let size_leaves = self.checked_size(size)?;
        let index = usize::try_from(index)
            .ok()
            .filter(|&index| index < size_leaves)
            .ok_or(MerkleError::LeafIndexOutOfRange { index, size })?;
        let mut path = Vec::new();
        Query::new(self, entries).push_inclusion_path(index, 0, size_leaves, &mut path)?;
        Ok(path)
    }

    /// RFC 9162 §2.1.4.1 consistency proof from the tree of `from` leaves to that of `to`.
    /// Equal sizes give the empty proof. O(log² n).
    pub fn consistency_proof(
        &self,
        from: u64,
        to: u64,
        entries: &dyn EntryHashes,
    ) -> Result<Vec<Hash>, MerkleError> {
        let to_leaves = self.checked_size(to)?;
        if from == 0 {
            return Err(MerkleError::EmptyOldTree);
        }
        let from_leaves = usize::try_from(from)
            .ok()
            .filter(|&from| from <= to_leaves)
            .ok_or(MerkleError::OldTreeLarger { from, to })?;
        let mut path = Vec::new();
        Query::new(self, entries).push_subproof(from_leaves, 0, to_leaves, true, &mut path)?;
        Ok(path)
    }

    fn checked_size(&self, size: u64) -> Result<usize, MerkleError> {
        usize::try_from(size)
            .ok()
            .filter(|&size| size <= self.leaf_count())
            .ok_or(MerkleError::TreeSizeOutOfRange {
                size,
                len: self.len(),
            })
    }
}

/// One question to a tree: its kept hashes, where to read entry hashes back, and the last
/// block read back (a proof's low nodes all sit in one or two blocks).
struct Query<'t> {
    tree: &'t MerkleTree,
    entries: &'t dyn EntryHashes,
    block: Option<(usize, Vec<Hash>)>,
}

impl<'t> Query<'t> {
    fn new(tree: &'t MerkleTree, entries: &'t dyn EntryHashes) -> Query<'t> {
        Query {
            tree,
            entries,
            block: None,
        }
    }

    fn root_of_prefix(&mut self, size: usize) -> Result<Hash, MerkleError> {
        if size == 0 {
            Ok(empty_root())
        } else {
            self.subtree_root(0, size)
        }
    }

    /// MTH of leaves `[start, start + size)`, a subtree the RFC recursion visits: `size >= 1`
    /// and `start` a multiple of `size` rounded up to a power of two. From `BLOCK_LEAVES`
    /// up, that range is a chain of perfect subtrees, one per set bit of `size`, all kept;
    /// below, it lies inside one block, whose leaves are at hand or read back.
    fn subtree_root(&mut self, start: usize, size: usize) -> Result<Hash, MerkleError> {
        if size < BLOCK_LEAVES {
            let leaves = self.block_leaves(start)?;
            let offset = start % BLOCK_LEAVES;
            return Ok(root_of_leaves(&leaves[offset..offset + size]));
        }
        if size.is_power_of_two() {
            let height = size.trailing_zeros();
            let level = usize::try_from(height - BLOCK_HEIGHT).expect("a bit position fits");
            return Ok(self.tree.upper[level][start >> height]);
        }
        let split = split_point(size);
        Ok(node_hash(
            &self.subtree_root(start, split)?,
            &self.subtree_root(start + split, size - split)?,
        ))
    }

    /// The leaf hashes of the block holding leaf `leaf`: the tree's own for the last,
    /// unfinished block; read back (and kept for this query) for any other. What is read
    /// back must hash to the block's root, which the tree keeps: a journal that gives back
    /// other, shifted or reordered hashes is refused, not turned into a wrong proof.
    fn block_leaves(&mut self, leaf: usize) -> Result<&[Hash], MerkleError> {
        let block_start = leaf - leaf % BLOCK_LEAVES;
        if block_start == self.tree.finished_leaves() {
            return Ok(&self.tree.tail);
        }
        if self.block.as_ref().map(|(start, _)| *start) != Some(block_start) {
            let start = u64::try_from(block_start).expect("a usize fits in u64");
            let leaves: Vec<Hash> = self
                .entries
                .entry_hashes(start, BLOCK_LEAVES)
                .and_then(|hashes| {
                    if hashes.len() != BLOCK_LEAVES {
                        return Err(format!("{} entry hashes came back", hashes.len()));
                    }
                    let leaves: Vec<Hash> = hashes.iter().map(leaf_hash).collect();
                    let kept = self.tree.upper[0][block_start / BLOCK_LEAVES];
                    if root_of_leaves(&leaves) == kept {
                        Ok(leaves)
                    } else {
                        Err("the entry hashes read back are not the block's".into())
                    }
                })
                .map_err(|reason| MerkleError::EntriesUnreadable { start, reason })?;
            self.block = Some((block_start, leaves));
        }
        Ok(&self.block.as_ref().expect("just read").1)
    }

    /// PATH(index, D[start : start + size]) of RFC 9162 §2.1.3.1, appended to `path`.
    fn push_inclusion_path(
        &mut self,
        index: usize,
        start: usize,
        size: usize,
        path: &mut Vec<Hash>,
    ) -> Result<(), MerkleError> {
        if size <= 1 {
            return Ok(());
        }
        let split = split_point(size);
        if index < split {
            self.push_inclusion_path(index, start, split, path)?;
            path.push(self.subtree_root(start + split, size - split)?);
        } else {
            self.push_inclusion_path(index - split, start + split, size - split, path)?;
            path.push(self.subtree_root(start, split)?);
        }
        Ok(())
    }

    /// SUBPROOF(old_size, D[start : start + size], old_root_known) of RFC 9162 §2.1.4.1,
    /// appended to `path`. `old_root_known` is the RFC's `b`: true while the old tree's
    /// root is the current subtree's, which the verifier already holds.
    fn push_subproof(
        &mut self,
        old_size: usize,
        start: usize,
        size: usize,
        old_root_known: bool,
        path: &mut Vec<Hash>,
    ) -> Result<(), MerkleError> {
        if old_size == size {
            if !old_root_known {
                path.push(self.subtree_root(start, size)?);
            }
            return Ok(());
        }
        let split = split_point(size);
        if old_size <= split {
            self.push_subproof(old_size, start, split, old_root_known, path)?;
            path.push(self.subtree_root(start + split, size - split)?);
        } else {
            self.push_subproof(old_size - split, start + split, size - split, false, path)?;
            path.push(self.subtree_root(start, split)?);
        }
        Ok(())
    }
}

/// RFC 9162 MTH over leaf hashes (not entry hashes), by the recursive definition.
fn root_of_leaves(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            let (left, right) = leaves.split_at(split_point(leaves.len()));
            node_hash(&root_of_leaves(left), &root_of_leaves(right))
        }
    }
}

/// The right edge of a growing tree: the root of each perfect subtree that the tree of
/// `len` leaves splits into (one per set bit of `len`, largest first). Enough for the root
/// of everything pushed so far in O(log n) memory, which is all a verifier streaming the
/// journal needs; [`MerkleTree`] keeps the levels from 64 leaves up to answer proofs.
#[derive(Debug, Clone, Default)]
pub struct MerkleFrontier {
    roots: Vec<Hash>,
    len: u64,
}

impl MerkleFrontier {
    pub fn new() -> MerkleFrontier {
        MerkleFrontier::default()
    }

    /// Appends one entry hash.
    pub fn push(&mut self, entry_hash: &Hash) {
        self.push_leaf(leaf_hash(entry_hash));
    }

    /// Appends a leaf whose hash (`leaf_hash` of its entry hash) was computed elsewhere,
    /// for instance in parallel. Each trailing one bit of the old size completes a perfect
    /// subtree, which merges with its left neighbour.
    pub fn push_leaf(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut size = self.len;
        while size & 1 == 1 {
            let left = self
                .roots
                .pop()
                .expect("the frontier holds one root per set bit of len");
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.roots.push(node);
        self.len += 1;
    }

    /// Number of leaves pushed.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// RFC 9162 MTH of the leaves pushed: the split at the largest power of two makes the
    /// root a right fold over the perfect subtrees, smallest (rightmost) first.
    pub fn root(&self) -> Hash {
        match self.roots.split_last() {
            None => empty_root(),
            Some((last, rest)) => rest
                .iter()
                .rev()
                .fold(*last, |right, left| node_hash(left, &right)),
        }
    }
}

/// RFC 9162 §2.1.3.2: whether `path` proves the entry at `index` is in the tree of `size`
/// leaves with root `root`. `fn`/`sn` are the RFC's names (`fn` is a Rust keyword).
pub fn verify_inclusion(
    entry_hash: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = leaf_hash(entry_hash);
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: whether `path` proves the tree of `to` leaves with root `to_root`
/// extends the tree of `from` leaves with root `from_root`. Equal sizes need an empty path
/// and equal roots; an empty old tree has no proof and is rejected.
pub fn verify_consistency(
    from: u64,
    to: u64,
    from_root: &Hash,
    to_root: &Hash,
    path: &[Hash],
) -> bool {
    if from == 0 || from > to {
        return false;
    }
    if from == to {
        return path.is_empty() && from_root == to_root;
    }
    // Step 1 fails an empty path; step 2 prepends the old root when `from` is a power of two.
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (seed, rest) = if from.is_power_of_two() {
        (from_root, path)
    } else {
        (first, rest)
    };
    let (mut fn_, mut sn) = (from - 1, to - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *from_root && sr == *to_root && sn == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const JOURNAL: &str = include_str!("../../../shared/vectors/journal.jsonl");
    const VECTORS: &str = include_str!("../../../shared/vectors/vectors.json");

    /// SHA-256 of the concatenated parts by another implementation (ring's), to hold the
    /// hand-padded leaf and node hashes to.
    fn sha256(parts: &[&[u8]]) -> Hash {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            context.update(part);
        }
        context
            .finish()
            .as_ref()
            .try_into()
            .expect("a SHA-256 digest is 32 bytes")
    }

    fn hash_from_hex(text: &str) -> Hash {
        hex::decode(text)
            .expect("vector hash is hex")
            .try_into()
            .expect("vector hash is 32 bytes")
    }

    fn hashes_from_json(value: &Value) -> Vec<Hash> {
        value
            .as_array()
            .expect("path is an array")
            .iter()
            .map(|hash| hash_from_hex(hash.as_str().expect("path element is a string")))
            .collect()
    }

    fn vectors() -> Value {
        serde_json::from_str(VECTORS).expect("vectors.json parses")
    }

    fn vector_entry_hashes() -> Vec<Hash> {
        JOURNAL
            .lines()
            .map(|line| {
                let entry: Value = serde_json::from_str(line).expect("journal line parses");
                hash_from_hex(entry["hash"].as_str().expect("entry has a hash"))
            })
            .collect()
    }

    /// A tree with its entry hashes at hand to read back, as the journal serves them.
    struct Tree {
        tree: MerkleTree,
        entries: Vec<Hash>,
    }

    impl Tree {
        fn len(&self) -> u64 {
            self.tree.len()
        }
        fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
            self.tree.root_at(size, &self.entries)
        }
        fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
            self.tree.inclusion_proof(index, size, &self.entries)
        }
        fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, MerkleError> {
            self.tree.consistency_proof(from, to, &self.entries)
        }
    }

    fn tree_of(entry_hashes: &[Hash]) -> Tree {
        let mut tree = MerkleTree::new();
        for entry_hash in entry_hashes {
            tree.push(*entry_hash);
        }
        Tree {
            tree,
            entries: entry_hashes.to_vec(),
        }
    }

    fn vector_u64(value: &Value, name: &str) -> u64 {
        value[name].as_u64().expect("vector field is an integer")
    }

    /// Flips of every `bit_step`-th bit of each path element, plus the path cut short and
    /// extended.
    fn mutated_paths(path: &[Hash], bit_step: usize) -> Vec<Vec<Hash>> {
        let mut mutated = Vec::new();
        for element in 0..path.len() {
            for bit in (0..256).step_by(bit_step) {
                let mut copy = path.to_vec();
                copy[element][bit / 8] ^= 1 << (bit % 8);
                mutated.push(copy);
            }
        }
        if let Some((_, shorter)) = path.split_last() {
            mutated.push(shorter.to_vec());
        }
        let mut longer = path.to_vec();
        longer.push(empty_root());
        mutated.push(longer);
        mutated
    }

    fn flip_first_bit(hash: &Hash) -> Hash {
        let mut copy = *hash;
        copy[0] ^= 1;
        copy
    }

    fn check_hash(actual: Hash, expected_hex: &str) {
        assert_eq!(hex::encode(actual), expected_hex);
    }

    #[test]
    fn primitive_hashes() {
        check_hash(
            empty_root(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        let entry_hash = [7u8; 32];
        let mut leaf_preimage = vec![0u8];
        leaf_preimage.extend_from_slice(&entry_hash);
        assert_eq!(leaf_hash(&entry_hash), sha256(&[&leaf_preimage]));
        let mut node_preimage = vec![1u8];
        node_preimage.extend_from_slice(&[1u8; 32]);
        node_preimage.extend_from_slice(&[2u8; 32]);
        assert_eq!(node_hash(&[1u8; 32], &[2u8; 32]), sha256(&[&node_preimage]));
    }

    #[test]
    fn root_of_follows_the_split_rule() {
        let e: Vec<Hash> = (0..3u8).map(|i| [i; 32]).collect();
        let expected = node_hash(
            &node_hash(&leaf_hash(&e[0]), &leaf_hash(&e[1])),
            &leaf_hash(&e[2]),
        );
        assert_eq!(root_of(&e), expected);
    }

    #[test]
    fn split_points() {
        let check = |size: usize, expected: usize| assert_eq!(split_point(size), expected);
        check(2, 1);
        check(3, 2);
        check(4, 2);
        check(5, 4);
        check(8, 4);
        check(9, 8);
        check(usize::MAX, 1 << (usize::BITS - 1));
    }

    #[test]
    fn reproduces_vector_roots_for_every_size() {
        let vectors = vectors();
        let entry_hashes = vector_entry_hashes();
        let full = tree_of(&entry_hashes);
        let mut growing = MerkleTree::new();
        for size in 0..=entry_hashes.len() {
            let expected = vectors["roots"][size.to_string()]
                .as_str()
                .expect("vector root for every size 0..8");
            let size_u64 = u64::try_from(size).expect("small");
            check_hash(root_of(&entry_hashes[..size]), expected);
            check_hash(full.root_at(size_u64).expect("in range"), expected);
            check_hash(growing.root(), expected);
            assert_eq!(growing.len(), size_u64);
            assert_eq!(growing.is_empty(), size == 0);
            if let Some(entry_hash) = entry_hashes.get(size) {
                growing.push(*entry_hash);
            }
        }
    }

    #[test]
    fn reproduces_vector_inclusion_proofs_and_rejects_mutations() {
        let vectors = vectors();
        let entry_hashes = vector_entry_hashes();
        let tree = tree_of(&entry_hashes);
        let cases = vectors["proofs"]["inclusion"].as_array().expect("list");
        assert_eq!(cases.len(), 6);
        for case in cases {
            let (index, size) = (vector_u64(case, "seq"), vector_u64(case, "tree_size"));
            let expected = hashes_from_json(&case["path"]);
            let path = tree.inclusion_proof(index, size).expect("in range");
            assert_eq!(path, expected, "inclusion of {index} in {size}");

            let entry_hash = &entry_hashes[usize::try_from(index).expect("small")];
            let root = tree.root_at(size).expect("in range");
            assert!(verify_inclusion(entry_hash, index, size, &path, &root));
            for mutated in mutated_paths(&path, 1) {
                assert!(!verify_inclusion(entry_hash, index, size, &mutated, &root));
            }
            for other_index in (0..size).filter(|&other| other != index) {
                assert!(!verify_inclusion(
                    entry_hash,
                    other_index,
                    size,
                    &path,
                    &root
                ));
            }
            assert!(!verify_inclusion(entry_hash, size, size, &path, &root));
            assert!(!verify_inclusion(
                &flip_first_bit(entry_hash),
                index,
                size,
                &path,
                &root
            ));
            assert!(!verify_inclusion(
                entry_hash,
                index,
                size,
                &path,
                &flip_first_bit(&root)
            ));
        }
    }

    #[test]
    fn reproduces_vector_consistency_proofs_and_rejects_mutations() {
        let vectors = vectors();
        let tree = tree_of(&vector_entry_hashes());
        let cases = vectors["proofs"]["consistency"].as_array().expect("list");
        assert_eq!(cases.len(), 6);
        for case in cases {
            let (from, to) = (vector_u64(case, "from"), vector_u64(case, "to"));
            let expected = hashes_from_json(&case["path"]);
            let path = tree.consistency_proof(from, to).expect("in range");
            assert_eq!(path, expected, "consistency of {from} to {to}");

            let from_root = tree.root_at(from).expect("in range");
            let to_root = tree.root_at(to).expect("in range");
            assert!(verify_consistency(from, to, &from_root, &to_root, &path));
            for mutated in mutated_paths(&path, 1) {
                assert!(!verify_consistency(
                    from, to, &from_root, &to_root, &mutated
                ));
            }
            let bad_from_root = flip_first_bit(&from_root);
            let bad_to_root = flip_first_bit(&to_root);
            assert!(!verify_consistency(
                from,
                to,
                &bad_from_root,
                &to_root,
                &path
            ));
            assert!(!verify_consistency(
                from,
                to,
                &from_root,
                &bad_to_root,
                &path
            ));
            assert!(!verify_consistency(0, to, &from_root, &to_root, &path));
        }
    }

    /// RFC 9162 hashes do not encode tree sizes: a path can verify for a second pair of sizes
    /// with the same roots. Only the signed checkpoint binds a size to a root, so callers must
    /// take both sizes from signed checkpoints, never from the proof's requester.
    #[test]
    fn sizes_are_bound_by_the_checkpoint_not_the_path() {
        let tree = tree_of(&vector_entry_hashes());
        let path = tree.consistency_proof(5, 7).expect("in range");
        let (from_root, to_root) = (tree.root_at(5).expect("5"), tree.root_at(7).expect("7"));
        assert!(verify_consistency(5, 7, &from_root, &to_root, &path));
        assert!(verify_consistency(5, 8, &from_root, &to_root, &path));
    }

    #[test]
    fn frontier_roots_match_the_model_for_every_size() {
        let leaves = distinct_entry_hashes(70, 3);
        let mut frontier = MerkleFrontier::new();
        let mut from_leaves = MerkleFrontier::new();
        for size in 0..=leaves.len() {
            assert_eq!(frontier.root(), root_of(&leaves[..size]), "size {size}");
            assert_eq!(from_leaves.root(), frontier.root(), "size {size}");
            assert_eq!(frontier.len(), to_u64(size));
            assert_eq!(frontier.is_empty(), size == 0);
            if let Some(entry_hash) = leaves.get(size) {
                frontier.push(entry_hash);
                from_leaves.push_leaf(leaf_hash(entry_hash));
            }
        }
    }

    /// The whole tree's root comes from what the tree keeps, at every size (blocks
    /// finished or not), and the tree keeps about one hash in 32 of its leaves.
    #[test]
    fn the_root_reads_nothing_back_and_memory_is_a_block_per_level() {
        let leaves = distinct_entry_hashes(5 * BLOCK_LEAVES + 9, 4);
        let mut tree = MerkleTree::new();
        for size in 0..=leaves.len() {
            assert_eq!(tree.root(), root_of(&leaves[..size]), "size {size}");
            if let Some(entry_hash) = leaves.get(size) {
                tree.push(*entry_hash);
            }
        }
        let kept: usize = tree.upper.iter().map(Vec::len).sum::<usize>() + tree.tail.len();
        assert!(
            kept <= leaves.len() / 32 + BLOCK_LEAVES,
            "{kept} hashes kept"
        );
    }

    /// Entry hashes read back from a journal that counts its reads: a proof or an old
    /// root reads at most two blocks; a journal that fails, or gives back too few, is an
    /// error naming the block.
    #[test]
    fn proofs_read_back_at_most_two_blocks_and_name_what_failed() {
        struct Counted {
            entries: Vec<Hash>,
            reads: std::cell::Cell<usize>,
            short: bool,
        }
        impl EntryHashes for Counted {
            fn entry_hashes(&self, start: u64, count: usize) -> Result<Vec<Hash>, String> {
                self.reads.set(self.reads.get() + 1);
                let mut hashes = self.entries.entry_hashes(start, count)?;
                if self.short {
                    hashes.pop();
                }
                Ok(hashes)
            }
        }
        let leaves = distinct_entry_hashes(7 * BLOCK_LEAVES + 5, 5);
        let tree = tree_of(&leaves).tree;
        let journal = Counted {
            entries: leaves.clone(),
            reads: std::cell::Cell::new(0),
            short: false,
        };
        let n = to_u64(leaves.len());
        for (index, size) in [(0, n), (100, 300), (n - 1, n), (64, 65), (130, 200)] {
            journal.reads.set(0);
            tree.inclusion_proof(index, size, &journal).unwrap();
            assert!(journal.reads.get() <= 2, "{index} in {size}");
        }
        for (from, to) in [(1, n), (65, 129), (100, 300), (200, n)] {
            journal.reads.set(0);
            tree.consistency_proof(from, to, &journal).unwrap();
            assert!(journal.reads.get() <= 2, "{from} to {to}");
            journal.reads.set(0);
            assert_eq!(
                tree.root_at(from, &journal),
                Ok(root_of(&leaves[..to_usize(from)]))
            );
            assert!(journal.reads.get() <= 1, "root at {from}");
        }
        let short = Counted {
            short: true,
            ..journal
        };
        assert!(matches!(
            tree.inclusion_proof(3, 200, &short),
            Err(MerkleError::EntriesUnreadable { start: 0, .. })
        ));
        assert!(matches!(
            tree.root_at(200, &NothingToReadBack),
            Err(MerkleError::EntriesUnreadable { start: 192, .. })
        ));
    }

    /// Trees whose length is at or next to a block boundary (the last block empty, one
    /// leaf, or one short): every root, and every proof at sizes near a boundary, match
    /// the naive definitions.
    #[test]
    fn proofs_around_block_boundaries_match_the_model() {
        let leaves = distinct_entry_hashes(2 * BLOCK_LEAVES + 1, 6);
        let near = |n: usize| n % BLOCK_LEAVES <= 1 || n % BLOCK_LEAVES == BLOCK_LEAVES - 1;
        for length in (1..=leaves.len()).filter(|&n| near(n)) {
            let tree = tree_of(&leaves[..length]);
            for size in 0..=length {
                assert_eq!(tree.root_at(to_u64(size)), Ok(root_of(&leaves[..size])));
            }
            for size in (1..=length).filter(|&n| near(n) || n == length) {
                for index in 0..size {
                    check_inclusion(&tree, &leaves, index, size);
                }
            }
            for from in 1..=length {
                check_consistency(&tree, &leaves, from, length);
            }
        }
    }

    /// A journal that gives back a full block of the wrong hashes (here shifted by one)
    /// is refused with the block named, not turned into a proof that fails to verify.
    #[test]
    fn hashes_read_back_must_hash_to_the_kept_block_root() {
        struct Shifted(Vec<Hash>);
        impl EntryHashes for Shifted {
            fn entry_hashes(&self, start: u64, count: usize) -> Result<Vec<Hash>, String> {
                self.0.entry_hashes(start + 1, count)
            }
        }
        let leaves = distinct_entry_hashes(150, 7);
        let tree = tree_of(&leaves).tree;
        let shifted = Shifted(leaves.clone());
        for result in [
            tree.inclusion_proof(3, 150, &shifted),
            tree.consistency_proof(70, 150, &shifted),
            tree.root_at(100, &shifted).map(|root| vec![root]),
        ] {
            assert!(
                matches!(result, Err(MerkleError::EntriesUnreadable { .. })),
                "{result:?}"
            );
        }
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let tree = tree_of(&vector_entry_hashes());
        assert_eq!(
            tree.root_at(9),
            Err(MerkleError::TreeSizeOutOfRange { size: 9, len: 8 })
        );
        assert_eq!(
            tree.root_at(u64::MAX),
            Err(MerkleError::TreeSizeOutOfRange {
                size: u64::MAX,
                len: 8
            })
        );
        assert_eq!(
            tree.inclusion_proof(0, 9),
            Err(MerkleError::TreeSizeOutOfRange { size: 9, len: 8 })
        );
        assert_eq!(
            tree.inclusion_proof(5, 5),
            Err(MerkleError::LeafIndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            tree.inclusion_proof(0, 0),
            Err(MerkleError::LeafIndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(tree.consistency_proof(0, 8), Err(MerkleError::EmptyOldTree));
        assert_eq!(
            tree.consistency_proof(5, 4),
            Err(MerkleError::OldTreeLarger { from: 5, to: 4 })
        );
        assert_eq!(
            tree.consistency_proof(1, 9),
            Err(MerkleError::TreeSizeOutOfRange { size: 9, len: 8 })
        );
        assert_eq!(tree.consistency_proof(3, 3), Ok(Vec::new()));
        assert_eq!(MerkleTree::new().root(), empty_root());
    }

    #[test]
    fn verifiers_reject_degenerate_sizes() {
        let root = empty_root();
        assert!(!verify_inclusion(&root, 0, 0, &[], &root));
        assert!(!verify_consistency(0, 0, &root, &root, &[]));
        assert!(!verify_consistency(3, 2, &root, &root, &[]));
        assert!(verify_consistency(3, 3, &root, &root, &[]));
        assert!(!verify_consistency(3, 3, &root, &root, &[root]));
        assert!(!verify_consistency(
            3,
            3,
            &root,
            &flip_first_bit(&root),
            &[]
        ));
        assert!(!verify_consistency(3, 4, &root, &root, &[]));
    }

    /// Naive RFC 9162 §2.1.3.1 PATH, straight from its recursive definition.
    fn naive_path(index: usize, leaves: &[Hash]) -> Vec<Hash> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let split = naive_split(leaves.len());
        let (left, right) = leaves.split_at(split);
        if index < split {
            let mut path = naive_path(index, left);
            path.push(root_of(right));
            path
        } else {
            let mut path = naive_path(index - split, right);
            path.push(root_of(left));
            path
        }
    }

    /// Naive RFC 9162 §2.1.4.1 SUBPROOF, straight from its recursive definition.
    fn naive_subproof(old_size: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        if old_size == leaves.len() {
            return if complete {
                Vec::new()
            } else {
                vec![root_of(leaves)]
            };
        }
        let split = naive_split(leaves.len());
        let (left, right) = leaves.split_at(split);
        if old_size <= split {
            let mut path = naive_subproof(old_size, left, complete);
            path.push(root_of(right));
            path
        } else {
            let mut path = naive_subproof(old_size - split, right, false);
            path.push(root_of(left));
            path
        }
    }

    fn naive_split(size: usize) -> usize {
        let mut split = 1;
        while split * 2 < size {
            split *= 2;
        }
        split
    }

    fn distinct_entry_hashes(count: usize, salt: u64) -> Vec<Hash> {
        (0..count)
            .map(|i| sha256(&[&salt.to_be_bytes(), &i.to_be_bytes()]))
            .collect()
    }

    fn to_u64(n: usize) -> u64 {
        u64::try_from(n).expect("test sizes are small")
    }

    fn to_usize(n: u64) -> usize {
        usize::try_from(n).expect("test sizes are small")
    }

    /// Checks one inclusion proof against the model and both verifier outcomes.
    fn check_inclusion(tree: &Tree, leaves: &[Hash], index: usize, size: usize) {
        let path = tree
            .inclusion_proof(to_u64(index), to_u64(size))
            .expect("in range");
        assert_eq!(
            path,
            naive_path(index, &leaves[..size]),
            "{index} in {size}"
        );
        let (leaf, root) = (&leaves[index], root_of(&leaves[..size]));
        let (index, size) = (to_u64(index), to_u64(size));
        assert!(verify_inclusion(leaf, index, size, &path, &root));
        for mutated in &mutated_paths(&path, 97) {
            assert!(!verify_inclusion(leaf, index, size, mutated, &root));
        }
        assert!(!verify_inclusion(
            leaf,
            index,
            size,
            &path,
            &flip_first_bit(&root)
        ));
    }

    /// Checks one consistency proof against the model and both verifier outcomes.
    fn check_consistency(tree: &Tree, leaves: &[Hash], from: usize, to: usize) {
        let path = tree
            .consistency_proof(to_u64(from), to_u64(to))
            .expect("in range");
        let expected = if from == to {
            Vec::new()
        } else {
            naive_subproof(from, &leaves[..to], true)
        };
        assert_eq!(path, expected, "{from} to {to}");
        let (from_root, to_root) = (root_of(&leaves[..from]), root_of(&leaves[..to]));
        let (from, to) = (to_u64(from), to_u64(to));
        assert!(verify_consistency(from, to, &from_root, &to_root, &path));
        for mutated in &mutated_paths(&path, 97) {
            assert!(!verify_consistency(from, to, &from_root, &to_root, mutated));
        }
        let bad_from_root = flip_first_bit(&from_root);
        assert!(!verify_consistency(
            from,
            to,
            &bad_from_root,
            &to_root,
            &path
        ));
        let bad_to_root = flip_first_bit(&to_root);
        assert!(!verify_consistency(
            from,
            to,
            &from_root,
            &bad_to_root,
            &path
        ));
    }

    #[test]
    fn every_proof_of_small_trees_matches_the_model() {
        let leaves = distinct_entry_hashes(33, 0);
        let tree = tree_of(&leaves);
        for size in 0..=leaves.len() {
            assert_eq!(tree.root_at(to_u64(size)), Ok(root_of(&leaves[..size])));
            for index in 0..size {
                check_inclusion(&tree, &leaves, index, size);
            }
            for from in 1..=size {
                check_consistency(&tree, &leaves, from, size);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn proofs_match_the_naive_definitions(
            count in 1usize..=300,
            salt in any::<u64>(),
            picks in proptest::collection::vec((any::<usize>(), any::<usize>()), 8),
        ) {
            let leaves = distinct_entry_hashes(count, salt);
            let tree = tree_of(&leaves);
            prop_assert_eq!(tree.len(), to_u64(count));
            for size in 0..=count {
                prop_assert_eq!(tree.root_at(to_u64(size)), Ok(root_of(&leaves[..size])));
            }
            for index in 0..count {
                check_inclusion(&tree, &leaves, index, count);
            }
            for from in 1..=count {
                check_consistency(&tree, &leaves, from, count);
            }
            for (a, b) in picks {
                let size = 1 + b % count;
                check_inclusion(&tree, &leaves, a % size, size);
                check_consistency(&tree, &leaves, 1 + a % size, size);
            }
        }
    }
}
