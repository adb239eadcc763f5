//! Prices and fees: an orchestrator charges `price_per_unit` (wei, the ledger's unit) for
//! every `pixels_per_unit` output pixels, as go-livepeer's `-pricePerUnit` and
//! `-pixelsPerUnit` do. A segment's fee is over the pixels actually produced: width x
//! height x frames of every rendition, rounded up to a whole wei.

use serde::{Deserialize, Serialize};

use crate::ladder::Rung;

/// What an orchestrator charges; the default is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub price_per_unit: u64,
    pub pixels_per_unit: u64,
}

impl Default for Price {
    fn default() -> Self {
        Price {
            price_per_unit: 0,
            pixels_per_unit: 1,
        }
    }
}

/// A fee that does not fit the ledger (64-bit signed wei).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a fee of {pixels} pixels at {price_per_unit} wei per {pixels_per_unit} pixels does not fit the ledger")]
pub struct FeeOverflow {
    pub pixels: u64,
    pub price_per_unit: u64,
    pub pixels_per_unit: u64,
}

impl Price {
    pub fn is_free(&self) -> bool {
        self.price_per_unit == 0
    }

    /// The fee for `pixels` output pixels, rounded up, in wei.
    pub fn fee(&self, pixels: u64) -> Result<i64, FeeOverflow> {
        if self.is_free() || pixels == 0 {
            return Ok(0);
        }
        let per = u128::from(self.pixels_per_unit.max(1));
        let total = u128::from(pixels) * u128::from(self.price_per_unit);
        i64::try_from(total.div_ceil(per)).map_err(|_| FeeOverflow {
            pixels,
            price_per_unit: self.price_per_unit,
            pixels_per_unit: self.pixels_per_unit,
        })
    }

    /// Whether this price is at most `max` (both per pixel, compared exactly).
    pub fn within(&self, max: &Price) -> bool {
        u128::from(self.price_per_unit) * u128::from(max.pixels_per_unit.max(1))
            <= u128::from(max.price_per_unit) * u128::from(self.pixels_per_unit.max(1))
    }
}

/// Output pixels of a rendition: width x height x frames, saturating.
pub fn rendition_pixels(width: u32, height: u32, frames: u64) -> u64 {
    (u64::from(width) * u64::from(height)).saturating_mul(frames)
}

/// The pixels a ladder will produce from `frames` source frames at `source_fps`: each
/// rung keeps at most its own frame rate's share of them.
pub fn estimated_pixels(rungs: &[Rung], frames: u64, source_fps: f64) -> u64 {
    rungs
        .iter()
        .map(|r| {
            let fps = r.max_fps.as_f64();
            let kept = if source_fps > 0.0 && fps > 0.0 && fps < source_fps {
                (frames as f64 * fps / source_fps).ceil() as u64
            } else {
                frames
            };
            rendition_pixels(r.width, r.height, kept)
        })
        .fold(0u64, u64::saturating_add)
}

/// What a whole on-demand source will cost at most, for admitting it before any of it is
/// sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEstimate {
    /// Source frames over the whole duration.
    pub frames: u64,
    /// Output pixels of every rung over those frames, with the rounding allowance below.
    pub pixels: u64,
    /// The segments the allowance is for: one per started second of the source.
    pub segments: u64,
    /// The fee of `pixels`, plus one wei per segment (each segment's fee is rounded up on
    /// its own), in wei.
    pub fee: i64,
}

impl Price {
    /// The most a source of `duration_us` at `source_fps` costs through `rungs`, segment by
    /// segment: each segment is charged [`Price::fee`] of its own pixels, rounded up, and a
    /// rung with a lower frame rate keeps its share of each segment's frames rounded up. So
    /// the estimate allows, per segment, one wei and one frame of each such rung, counting
    /// a segment per started second (segments are cut at keyframes at or after
    /// `--segment-secs`, 2 s by default: shorter ones can exceed the allowance).
    pub fn stream_estimate(
        &self,
        rungs: &[Rung],
        duration_us: i64,
        source_fps: f64,
    ) -> Result<StreamEstimate, FeeOverflow> {
        let secs = duration_us.max(0) as f64 / 1e6;
        let frames = (secs * source_fps.max(0.0)).ceil() as u64;
        let segments = (secs.ceil() as u64).max(1);
        let dropped_frame: u64 = rungs
            .iter()
            .filter(|r| {
                let fps = r.max_fps.as_f64();
                source_fps > 0.0 && fps > 0.0 && fps < source_fps
            })
            .map(|r| rendition_pixels(r.width, r.height, 1))
            .fold(0u64, u64::saturating_add);
        let pixels = estimated_pixels(rungs, frames, source_fps)
            .saturating_add(dropped_frame.saturating_mul(segments));
        let rounding = if self.is_free() {
            0
        } else {
            i64::try_from(segments).unwrap_or(i64::MAX)
        };
        let fee = self.fee(pixels)?.checked_add(rounding).ok_or(FeeOverflow {
            pixels,
            price_per_unit: self.price_per_unit,
            pixels_per_unit: self.pixels_per_unit,
        })?;
        Ok(StreamEstimate {
            frames,
            pixels,
            segments,
            fee,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_costs_nothing() {
        assert_eq!(Price::default().fee(u64::MAX), Ok(0));
        assert!(Price::default().is_free());
    }

    #[test]
    fn fees_round_up_to_a_whole_wei() {
        let p = Price {
            price_per_unit: 3,
            pixels_per_unit: 1000,
        };
        assert_eq!(p.fee(1), Ok(1));
        assert_eq!(p.fee(1000), Ok(3));
        assert_eq!(p.fee(1001), Ok(4));
        // 240p, 60 frames: 426 x 240 x 60 = 6,134,400 pixels -> 18,403.2 -> 18,404 wei.
        assert_eq!(p.fee(rendition_pixels(426, 240, 60)), Ok(18_404));
    }

    #[test]
    fn fees_at_the_bounds_are_exact_or_refused() {
        let per_pixel = |price| Price {
            price_per_unit: price,
            pixels_per_unit: 1,
        };
        assert_eq!(per_pixel(1).fee(i64::MAX as u64), Ok(i64::MAX));
        assert!(per_pixel(1).fee(i64::MAX as u64 + 1).is_err());
        // u64::MAX x u64::MAX needs 128 bits: computed exactly, then refused.
        let e = per_pixel(u64::MAX).fee(u64::MAX).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        // A zero pixels-per-unit is read as 1, never a division by zero.
        let odd = Price {
            price_per_unit: 2,
            pixels_per_unit: 0,
        };
        assert_eq!(odd.fee(5), Ok(10));
        // Huge prices spread over huge units still come out exact.
        let p = Price {
            price_per_unit: u64::MAX,
            pixels_per_unit: u64::MAX,
        };
        assert_eq!(p.fee(7), Ok(7));
    }

    #[test]
    fn price_comparison_is_exact_per_pixel() {
        let offer = Price {
            price_per_unit: 1000,
            pixels_per_unit: 1_000_000,
        };
        let max = |p, u| Price {
            price_per_unit: p,
            pixels_per_unit: u,
        };
        assert!(offer.within(&max(1, 1000)));
        assert!(!offer.within(&max(999, 1_000_000)));
        assert!(offer.within(&max(u64::MAX, 1)));
        assert!(Price::default().within(&max(0, 1)));
        assert!(!max(u64::MAX, 1).within(&max(u64::MAX - 1, 1)));
    }

    fn rung(w: u32, h: u32, fps: u32) -> Rung {
        Rung {
            name: format!("{h}p"),
            width: w,
            height: h,
            bitrate: 1,
            max_fps: crate::Rational::new(fps as i32, 1),
            drop_to_fps: None,
            gop_secs: None,
            profile: crate::H264Profile::High,
        }
    }

    #[test]
    fn a_whole_stream_costs_at_least_its_segments() {
        let p = Price {
            price_per_unit: 1,
            pixels_per_unit: 1000,
        };
        let rungs = [rung(426, 240, 30)];
        // 6 s at 30 fps: 180 frames, 6 segments' rounding allowed.
        let e = p.stream_estimate(&rungs, 6_000_000, 30.0).unwrap();
        assert_eq!((e.frames, e.segments), (180, 6));
        assert_eq!(e.pixels, 426 * 240 * 180);
        assert_eq!(e.fee, 18_404 + 6);
        // Three 2 s segments, each charged on its own: 3 x 6,135 = 18,405 wei.
        let charged = 3 * p.fee(rendition_pixels(426, 240, 60)).unwrap();
        assert!(charged <= e.fee, "{charged} > {}", e.fee);
        // Half the frame rate: a frame per started second is allowed for its rounding.
        let half = [rung(426, 240, 15)];
        let e = p.stream_estimate(&half, 2_500_000, 30.0).unwrap();
        assert_eq!((e.frames, e.segments), (75, 3));
        assert_eq!(e.pixels, 426 * 240 * (38 + 3));
        // Free costs nothing; an unknown frame rate counts no frames.
        let e = Price::default()
            .stream_estimate(&rungs, 6_000_000, 30.0)
            .unwrap();
        assert_eq!(e.fee, 0);
        assert_eq!(p.stream_estimate(&rungs, 1, 0.0).unwrap().fee, 1);
        // Too dear for the ledger: refused, never wrapped.
        let dear = Price {
            price_per_unit: u64::MAX,
            pixels_per_unit: 1,
        };
        assert!(dear.stream_estimate(&rungs, 6_000_000, 30.0).is_err());
    }

    #[test]
    fn estimates_follow_each_rungs_frame_rate() {
        let rungs = [rung(426, 240, 30), rung(640, 360, 15)];
        // 60 frames at 30 fps: all of them at 240p, half at 360p.
        assert_eq!(
            estimated_pixels(&rungs, 60, 30.0),
            426 * 240 * 60 + 640 * 360 * 30
        );
    }
}
