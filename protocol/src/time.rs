//! Exact rational numbers for frame rates, aspect ratios and time bases.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A rational number such as a frame rate (30000/1001) or a sample aspect ratio (4/3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rational {
    pub num: i32,
    pub den: i32,
}

impl Rational {
    pub const ONE: Rational = Rational { num: 1, den: 1 };

    pub const fn new(num: i32, den: i32) -> Self {
        Rational { num, den }
    }

    /// The value as a float; 0 when the denominator or numerator is 0 (FFmpeg's "unknown").
    pub fn as_f64(self) -> f64 {
        if self.den == 0 || self.num == 0 {
            0.0
        } else {
            f64::from(self.num) / f64::from(self.den)
        }
    }

    /// Whether the value is known and positive.
    pub fn is_valid(self) -> bool {
        self.num > 0 && self.den > 0
    }

    /// This value if valid, the fallback otherwise.
    pub fn or(self, fallback: Rational) -> Rational {
        if self.is_valid() {
            self
        } else {
            fallback
        }
    }
}

impl Default for Rational {
    fn default() -> Self {
        Rational::ONE
    }
}

impl std::fmt::Display for Rational {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

/// Microseconds per second: stream timestamps on the wire are in microseconds.
pub const US_PER_SEC: i64 = 1_000_000;

/// Seconds as a float from microseconds.
pub fn us_to_secs(us: i64) -> f64 {
    us as f64 / US_PER_SEC as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_rationals_fall_back() {
        assert_eq!(
            Rational::new(0, 1).or(Rational::new(25, 1)),
            Rational::new(25, 1)
        );
        assert_eq!(
            Rational::new(30000, 1001).or(Rational::ONE),
            Rational::new(30000, 1001)
        );
        assert!((Rational::new(30000, 1001).as_f64() - 29.97).abs() < 0.001);
        assert_eq!(Rational::new(1, 0).as_f64(), 0.0);
    }
}
