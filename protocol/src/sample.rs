//! Deterministic sampling: which segments get the expensive picture checks.

use sha2::Digest as _;

/// Whether `key` falls in a sample of `rate` (0-1): the first 8 bytes of its SHA-256 read as
/// a fraction, so the same key (a redelivery, a rerun) always gets the same answer.
pub fn in_sample(rate: f64, key: &str) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let h = sha2::Sha256::digest(key);
    let x = u64::from_be_bytes(h[..8].try_into().unwrap_or_default());
    (x as f64 / u64::MAX as f64) < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_follows_the_rate_and_is_stable() {
        assert!(!in_sample(0.0, "a"));
        assert!((0..100).all(|i| in_sample(1.0, &i.to_string())));
        let n = (0..2000).filter(|i| in_sample(0.1, &i.to_string())).count();
        assert!((120..280).contains(&n), "{n} of 2000 at 0.1");
        assert_eq!(in_sample(0.5, "x/1/1"), in_sample(0.5, "x/1/1"));
    }
}
