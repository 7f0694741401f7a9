//! The id a request is known by in the logs of every hop: the client's `x-request-id`
//! when it gives a usable one, else one made here (a per-process random prefix and a
//! counter, unique without coordination).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rand::Rng;
use tonic::metadata::MetadataMap;

pub const HEADER: &str = "x-request-id";
/// Longer ids are not taken: they would bloat every log line and batch item.
pub const MAX_LEN: usize = 128;

/// The client's id when it is short, printable ASCII; a new one otherwise.
pub fn of(metadata: &MetadataMap) -> String {
    metadata
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| usable(id))
        .map_or_else(generate, str::to_string)
}

fn usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| (b' '..=b'~').contains(&b))
}

pub fn generate() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| rand::rng().random());
    format!("{prefix:08x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(id: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(HEADER, id.parse().expect("ascii"));
        m
    }

    #[test]
    fn a_usable_client_id_is_kept() {
        assert_eq!(of(&with("req 42/a")), "req 42/a");
    }

    #[test]
    fn a_missing_or_unusable_id_is_replaced_by_a_fresh_one() {
        let long = "x".repeat(MAX_LEN + 1);
        let made = [of(&MetadataMap::new()), of(&with(&long)), of(&with(""))];
        for id in &made {
            assert!(usable(id) && id.contains('-'), "{id}");
            assert_ne!(id, &long);
        }
        assert_ne!(made[0], made[1], "fresh ids differ");
        assert!(!usable("tab\there"));
    }
}
