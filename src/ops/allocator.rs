//! Memory returned to the system: mimalloc (keyward's global allocator)
//! tuned at start so RSS follows what the verdict cache holds.
//!
//! Measured with `cargo bench --bench memory` (1M-key snapshot, 100,000
//! warm keys, 6 full reloads; RSS after the reloads / peak):
//!
//! | allocator settings                       | after reloads | peak    |
//! |------------------------------------------|---------------|---------|
//! | mimalloc defaults (purge after 1 s, THP) | 155 MiB       | 158 MiB |
//! | no THP                                   | 137 MiB       | 143 MiB |
//! | no THP, purge after 10 ms                | 121 MiB       | 131 MiB |
//!
//! Why: with transparent huge pages, a 2 MiB page stays resident while any
//! of its 4 KiB holds a live entry, and freed pages are purged only in 2 MiB
//! pieces; a full swap frees and re-allocates every cached verdict, which
//! scatters live entries over many huge pages. mimalloc 3 purges freed pages
//! after 1 s by default, and lazily, so refills on short-lived threads left
//! their freed pages resident.

/// mimalloc 3's `mi_option_purge_delay` (mimalloc.h `mi_option_e`; the
/// crate exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Purge freed memory after this many milliseconds (mimalloc's own default
/// in version 2).
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Apply keyward's allocator settings; call first thing in `main`.
pub fn tune() {
    // SAFETY: mi_option_set only stores the option's value; purge decisions
    // read it on every purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    // No transparent huge pages for this process (and the children it never
    // has): applies to every later page fault, including in mappings made
    // before this call.
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "cannot disable transparent huge pages");
    }
}
