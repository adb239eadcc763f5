//! Sampling: which results get the expensive picture checks. The sample is keyed with a
//! secret only the checker holds, so a redelivery of a result is sampled as before, but no
//! worker (or orchestrator, for a broadcaster's sample) can tell beforehand which of its
//! results will be checked, and do honest work only there.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Whether `key` falls in a sample of `rate` (0-1) under `secret`: the first 8 bytes of an
/// HMAC-SHA-256 of the key read as a fraction. The same secret and key always give the same
/// answer; without the secret the answer cannot be told.
pub fn in_keyed_sample(rate: f64, secret: &[u8], key: &str) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    // Apart from other uses of the same secret.
    mac.update(b"castwork sample\0");
    mac.update(key.as_bytes());
    let h = mac.finalize().into_bytes();
    let x = u64::from_be_bytes(h[..8].try_into().unwrap_or_default());
    (x as f64 / u64::MAX as f64) < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_follows_the_rate_and_is_stable_under_one_secret() {
        assert!(!in_keyed_sample(0.0, b"s", "a"));
        assert!((0..100).all(|i| in_keyed_sample(1.0, b"s", &i.to_string())));
        let n = (0..2000)
            .filter(|i| in_keyed_sample(0.1, b"s", &i.to_string()))
            .count();
        assert!((120..280).contains(&n), "{n} of 2000 at 0.1");
        assert_eq!(
            in_keyed_sample(0.5, b"s", "x/1/1"),
            in_keyed_sample(0.5, b"s", "x/1/1")
        );
    }

    #[test]
    fn another_secret_samples_other_keys() {
        // Someone who guesses with another secret (or with the key's plain hash, as the old
        // sample was) agrees with the real sample only by chance.
        let keys: Vec<String> = (0..2000).map(|i| format!("s/{i}/1")).collect();
        let real: Vec<bool> = keys
            .iter()
            .map(|k| in_keyed_sample(0.5, b"real", k))
            .collect();
        let guess: Vec<bool> = keys
            .iter()
            .map(|k| in_keyed_sample(0.5, b"guess", k))
            .collect();
        let agree = real.iter().zip(&guess).filter(|(a, b)| a == b).count();
        assert!((850..1150).contains(&agree), "{agree} of 2000 agree");
    }
}
