//! The token filter: a binary fuse filter (`xorf::BinaryFuse16`, about 2.25
//! bytes per key, false positives ≈ 2⁻¹⁶) of every token hash in the
//! snapshot (`api_keys.key_hash`, `sessions.token_hash`,
//! `service_keys.key_hash`, `mcp_tokens.token_hash`, revoked and expired rows
//! included), consulted on a verdict-cache miss before the store: a hash the
//! filter rules out is in none of those tables, so the request is answered
//! `unknown` without an SQLite lookup (a random-token flood costs
//! nanoseconds per request, not a read transaction on a worker thread).
//!
//! # Never refuse a token the store would find (fail open)
//!
//! * A filter is built off the swap path, on a background thread, after a
//!   full load has been served ([`FilterCell`] empty until then: no filter,
//!   every miss reads the store as before). The build reads the file as it
//!   is then, in short read transactions (a long one would stall an
//!   in-place writer): everything in the file when the scan reaches it is in
//!   the filter.
//! * An incremental generation (an in-place commit logged in `changes`, SPEC
//!   §2.1) shares its predecessor's cell and adds the token hashes its
//!   `changes` rows name to an exact set ([`GenFilter::added`], cumulative
//!   along the chain), so a token added in place passes even when the
//!   filter was built before the commit. A token inserted in place after the
//!   scan without a `changes` row makes an unlogged commit, which is a full
//!   load: a new, empty cell, rebuilt.
//! * Past [`ADDED_CAP`] added hashes an incremental generation starts a new
//!   cell too (bounded memory); it is rebuilt.
//! * Requests pinned to a generation before the one that applies a change
//!   may still be refused `unknown` for a token that change adds, as they
//!   would be by a negative verdict cached before it: they started before
//!   keyward served the change.
//!
//! Filter hits are never cached (the filter answers faster than the cache
//! and a flood of random tokens would only churn it).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use xorf::{BinaryFuse16, Filter};

/// Most token hashes an incremental chain adds on top of its filter before
/// a generation starts without one (and has it rebuilt): 512 KiB or so.
pub const ADDED_CAP: usize = 65_536;

/// The 64 bits of `sha256(token)` the filter knows a token by (the hash is
/// uniform: its first 8 bytes are as good a key as any mix of them).
pub fn fold(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// The key of a hex hash as stored in a snapshot row; None for a value that
/// is no 64-digit hex string (no lookup, which searches for
/// `hex(sha256(token))`, can ever match it).
pub fn fold_hex(hex_hash: &str) -> Option<u64> {
    if hex_hash.len() != 64 {
        return None;
    }
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut b).ok()?;
    Some(fold(&b))
}

/// Shards of a filter, by the top [`SHARD_BITS`] bits of a key: built one
/// after another, so the construction's scratch space (≈ 24 bytes per key
/// in xorf) is a sixteenth of the keys' at a time — at 1M keys a build in
/// one piece raised RSS by 30 MiB.
const SHARD_BITS: u32 = 4;

/// A set of token hashes with no false negatives.
pub struct TokenFilter {
    /// one per shard; None: no key in it
    shards: Vec<Option<BinaryFuse16>>,
    keys: usize,
}

impl std::fmt::Debug for TokenFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFilter")
            .field("keys", &self.keys)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl TokenFilter {
    /// A filter of `keys` (as [`fold`] makes them; duplicates allowed).
    pub fn build(mut keys: Vec<u64>) -> Result<TokenFilter, &'static str> {
        keys.sort_unstable();
        keys.dedup();
        let mut shards = Vec::with_capacity(1 << SHARD_BITS);
        let mut rest = &keys[..];
        for shard in 0..1u64 << SHARD_BITS {
            // sorted: a shard's keys are contiguous
            let n = rest.partition_point(|k| k >> (64 - SHARD_BITS) == shard);
            let (these, after) = rest.split_at(n);
            rest = after;
            shards.push(match these {
                [] => None,
                _ => Some(BinaryFuse16::try_from(these)?),
            });
        }
        Ok(TokenFilter {
            shards,
            keys: keys.len(),
        })
    }

    /// False only when `key` is certainly not in the set.
    pub fn may_contain(&self, key: u64) -> bool {
        self.shards[(key >> (64 - SHARD_BITS)) as usize]
            .as_ref()
            .is_some_and(|f| f.contains(&key))
    }

    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Heap bytes of the fingerprints.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .flatten()
            .map(|f| f.fingerprints.len() * std::mem::size_of::<u16>())
            .sum()
    }
}

/// The filter of a chain of generations (one full load and the incremental
/// ones after it): empty until the background build installs it.
#[derive(Debug, Default)]
pub struct FilterCell {
    filter: OnceLock<Arc<TokenFilter>>,
    build_claimed: AtomicBool,
}

impl FilterCell {
    /// True for the first caller only: it starts the build.
    pub fn claim_build(&self) -> bool {
        !self.build_claimed.swap(true, Ordering::AcqRel)
    }

    pub fn get(&self) -> Option<&Arc<TokenFilter>> {
        self.filter.get()
    }

    /// Install the built filter (the first one wins).
    pub fn install(&self, filter: Arc<TokenFilter>) {
        let _ = self.filter.set(filter);
    }
}

/// One generation's view of the token filter: its chain's cell and the
/// token hashes the chain's `changes` rows named since the cell was
/// started.
#[derive(Debug, Default)]
pub struct GenFilter {
    cell: Arc<FilterCell>,
    added: Arc<HashSet<u64>>,
}

impl GenFilter {
    /// A full load: a new cell, to be built.
    pub fn fresh() -> GenFilter {
        GenFilter::default()
    }

    /// An incremental generation after `self`, whose changes named the
    /// token hashes `tokens`: the same cell, those hashes added; a new cell
    /// (no filter until rebuilt) past [`ADDED_CAP`].
    pub fn with_added(&self, tokens: impl IntoIterator<Item = [u8; 32]>) -> GenFilter {
        let mut tokens = tokens.into_iter().map(|h| fold(&h)).peekable();
        if tokens.peek().is_none() {
            return GenFilter {
                cell: self.cell.clone(),
                added: self.added.clone(),
            };
        }
        let mut added = HashSet::clone(&self.added);
        added.extend(tokens);
        if added.len() > ADDED_CAP {
            return GenFilter::fresh();
        }
        GenFilter {
            cell: self.cell.clone(),
            added: Arc::new(added),
        }
    }

    pub fn cell(&self) -> &Arc<FilterCell> {
        &self.cell
    }

    /// The filter is built and says `hash` is in no token table (nor named
    /// by a change since): the store would answer `unknown`.
    pub fn rules_out(&self, hash: &[u8; 32]) -> bool {
        match self.cell.get() {
            None => false,
            Some(f) => {
                let key = fold(hash);
                !f.may_contain(key) && !self.added.contains(&key)
            }
        }
    }

    /// The filter is built for this generation.
    pub fn ready(&self) -> bool {
        self.cell.get().is_some()
    }

    pub fn added(&self) -> usize {
        self.added.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::schema::token_hash;

    fn hashes(n: usize, salt: &str) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| token_hash(format!("wvz_{salt}_{i}").as_bytes()))
            .collect()
    }

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let keys = hashes(200_000, "in");
        let f = TokenFilter::build(keys.iter().map(fold).collect()).unwrap();
        assert_eq!(f.keys(), 200_000);
        assert!(keys.iter().all(|h| f.may_contain(fold(h))));
        // ≈ 2.25 bytes per key, a little more in 16 shards
        assert!(f.bytes() < 200_000 * 3, "{} bytes", f.bytes());
        let others = hashes(200_000, "out");
        let fp = others.iter().filter(|h| f.may_contain(fold(h))).count();
        assert!(fp < 20, "{fp} false positives in 200,000");
    }

    #[test]
    fn empty_and_duplicate_keys() {
        let f = TokenFilter::build(Vec::new()).unwrap();
        assert!(!f.may_contain(1));
        let f = TokenFilter::build(vec![7, 7, 9, 9, 9, u64::MAX]).unwrap();
        assert!(f.may_contain(7) && f.may_contain(9) && f.may_contain(u64::MAX));
        assert_eq!(f.keys(), 3);
    }

    #[test]
    fn fold_hex_reads_either_case_and_rejects_junk() {
        let h = token_hash(b"wvz_x");
        let lower = hex::encode(h);
        assert_eq!(fold_hex(&lower), Some(fold(&h)));
        assert_eq!(fold_hex(&lower.to_uppercase()), Some(fold(&h)));
        assert_eq!(fold_hex("abc"), None);
        assert_eq!(fold_hex(&"zz".repeat(32)), None);
    }

    #[test]
    fn no_filter_until_installed_and_added_keys_pass() {
        let base = hashes(1000, "base");
        let g1 = GenFilter::fresh();
        let unknown = token_hash(b"wvz_unknown");
        assert!(!g1.rules_out(&unknown), "no filter yet: the store decides");
        // an incremental generation before the build finishes shares the cell
        let late = token_hash(b"wvz_added_in_place");
        let g2 = g1.with_added([late]);
        g1.cell().install(Arc::new(
            TokenFilter::build(base.iter().map(fold).collect()).unwrap(),
        ));
        assert!(g1.ready() && g2.ready());
        assert!(base.iter().all(|h| !g1.rules_out(h) && !g2.rules_out(h)));
        assert!(g1.rules_out(&unknown) && g2.rules_out(&unknown));
        assert!(g1.rules_out(&late), "not in g1's file");
        assert!(!g2.rules_out(&late), "named by g2's changes");
        // cumulative along the chain
        let g3 = g2.with_added([]);
        assert!(!g3.rules_out(&late));
        let g4 = g3.with_added([token_hash(b"wvz_other")]);
        assert!(!g4.rules_out(&late) && g4.added() == 2);
        // a full load starts over: no filter until rebuilt
        assert!(!GenFilter::fresh().rules_out(&unknown));
    }

    #[test]
    fn past_the_cap_a_chain_starts_without_a_filter() {
        let g = GenFilter::fresh();
        g.cell()
            .install(Arc::new(TokenFilter::build(vec![1, 2, 3]).unwrap()));
        let g2 = g.with_added(hashes(ADDED_CAP + 1, "many"));
        assert!(!g2.ready());
        assert!(!g2.rules_out(&token_hash(b"wvz_unknown")));
    }
}
