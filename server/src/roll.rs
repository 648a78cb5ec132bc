//! Cheap numbers for traffic splits and sampling, without a shared random generator lock.

/// A number in `0..100` for picking a route: a splitmix64 sequence over a process-wide counter,
/// so that concurrent requests spread by percentage without a shared random generator lock.
pub(crate) fn percent() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % 100) as u32
}

/// A number in `0..1000`, for sampling.
pub(crate) fn permille() -> u32 {
    percent() * 10 + percent() / 10
}
