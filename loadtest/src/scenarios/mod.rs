//! One module per scenario; each is listed in [`crate::scenario::SCENARIOS`].

pub mod blob;
pub mod clients;
pub mod image;
pub mod large;
pub mod mirror;
pub mod small;
pub mod soak;

/// Seed offsets, so each scenario's seeded content differs from every other's.
pub const SEED_SMALL: u64 = 0x5111;
pub const SEED_BLOB: u64 = 0xb10b;
pub const SEED_LARGE: u64 = 0x1a29e;
pub const SEED_PULL: u64 = 0x9011;
pub const SEED_MIRROR: u64 = 0x3177;

/// A seed no earlier run used: pushes must never find their blobs already there.
pub fn fresh_seed(base: u64, i: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    base ^ nanos.rotate_left(17)
        ^ (i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        ^ u64::from(std::process::id())
}
