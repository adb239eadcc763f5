//! Fitting a requested ladder to a source: display aspect ratio, rotation, no upscaling,
//! merging rungs that land on the same size, and frame rates that are never raised.

use serde::{Deserialize, Serialize};

use crate::messages::SourceMetadata;
use crate::profile::{H264Profile, Profile};
use crate::time::Rational;

/// A rung fitted to a particular source: what a worker encodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    pub name: String,
    /// Output size in square pixels, both even.
    pub width: u32,
    pub height: u32,
    pub bitrate: u64,
    /// Output frame rate: the profile's, or the source's when that is lower (never raised).
    pub max_fps: Rational,
    /// When the source is faster than the profile, the rate frames are dropped to (never
    /// duplicated). `None` passes every source frame through, variable rates included.
    #[serde(default)]
    pub drop_to_fps: Option<Rational>,
    /// Keyframe interval in seconds (0: every frame); `None`: only at the segment start.
    pub gop_secs: Option<f64>,
    pub profile: H264Profile,
}

impl Rung {
    /// A profile at a fitted size for a source.
    fn new(p: &Profile, width: u32, height: u32, src: &SourceMetadata) -> Rung {
        Rung {
            name: p.name.clone(),
            width,
            height,
            bitrate: p.bitrate,
            max_fps: max_fps(p, src.frame_rate),
            drop_to_fps: drop_to_fps(p, src.frame_rate),
            gop_secs: p.gop_secs,
            profile: p.profile,
        }
    }
}

/// A requested rung that will not be produced, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRung {
    pub name: String,
    pub reason: String,
}

/// The ladder a stream is actually transcoded into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LadderPlan {
    pub rungs: Vec<Rung>,
    pub skipped: Vec<SkippedRung>,
}

/// Checks what a stream says of its source before anything is planned from it: a picture
/// within the profiles' size limit, a frame rate up to the profiles' limit (or unknown), a
/// rotation in quarter turns and a sample aspect ratio between 1/100 and 100.
pub fn validate_source(src: &SourceMetadata) -> Result<(), String> {
    /// 8K: 8192 x 4320.
    const MAX_SOURCE_PIXELS: u64 = 8192 * 4320;
    use crate::profile::{MAX_DIMENSION, MAX_FPS};
    let mut problems = Vec::new();
    if !(1..=MAX_DIMENSION).contains(&src.width)
        || !(1..=MAX_DIMENSION).contains(&src.height)
        || u64::from(src.width) * u64::from(src.height) > MAX_SOURCE_PIXELS
    {
        problems.push(format!(
            "source picture {}x{} is outside 1..{MAX_DIMENSION} or over {MAX_SOURCE_PIXELS} \
             pixels (8K)",
            src.width, src.height
        ));
    }
    let fps = src.frame_rate;
    // 0 is an unknown (variable) rate.
    if fps.num != 0 && (fps.num < 0 || fps.den <= 0 || fps.as_f64() > f64::from(MAX_FPS)) {
        problems.push(format!(
            "source frame rate {}/{} is not a rate up to {MAX_FPS} fps",
            fps.num, fps.den
        ));
    }
    if !matches!(src.rotation, 0 | 90 | 180 | 270) {
        problems.push(format!(
            "source rotation {} is not 0, 90, 180 or 270",
            src.rotation
        ));
    }
    let sar = src.sample_aspect_ratio;
    if sar.num != 0 && (sar.num < 0 || sar.den <= 0 || !(0.01..=100.0).contains(&sar.as_f64())) {
        problems.push(format!(
            "source sample aspect ratio {}/{} is outside 1/100..100",
            sar.num, sar.den
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The size the source is shown at: stored size stretched by the sample aspect ratio, then
/// rotated.
pub fn display_size(src: &SourceMetadata) -> (f64, f64) {
    let sar = src.sample_aspect_ratio.or(Rational::ONE).as_f64();
    let (w, h) = (f64::from(src.width) * sar, f64::from(src.height));
    if src.rotation % 180 == 90 {
        (h, w)
    } else {
        (w, h)
    }
}

fn round_even(x: f64) -> u32 {
    ((x / 2.0).round() as u32 * 2).max(2)
}

/// Fits a box to the source's display size. A landscape box is turned for a portrait source,
/// so a "720p" rung of a phone video is 720 pixels wide. `None` when it would upscale.
pub fn fit(src: &SourceMetadata, box_w: u32, box_h: u32) -> Option<(u32, u32)> {
    let (dw, dh) = display_size(src);
    if dw < 1.0 || dh < 1.0 {
        return None;
    }
    let (bw, bh) = if (dh > dw) != (box_h > box_w) && box_w != box_h {
        (f64::from(box_h), f64::from(box_w))
    } else {
        (f64::from(box_w), f64::from(box_h))
    };
    let scale = (bw / dw).min(bh / dh);
    if scale > 1.0 + 1e-9 {
        return None;
    }
    Some((round_even(dw * scale), round_even(dh * scale)))
}

/// The output frame-rate bound of a profile against a source: the lower of the two.
pub fn max_fps(profile: &Profile, source_fps: Rational) -> Rational {
    let wanted = if profile.fps == 0 {
        None
    } else {
        Some(Rational::new(
            profile.fps as i32,
            profile.fps_den.max(1) as i32,
        ))
    };
    match (wanted, source_fps.is_valid()) {
        (Some(w), true) if w.as_f64() < source_fps.as_f64() => w,
        (Some(w), false) => w,
        (_, true) => source_fps,
        (None, false) => Rational::new(30, 1),
    }
}

/// The rate frames must be dropped to: the profile's, when the source is faster (or its
/// rate unknown).
pub fn drop_to_fps(profile: &Profile, source_fps: Rational) -> Option<Rational> {
    if profile.fps == 0 {
        return None;
    }
    let wanted = Rational::new(profile.fps as i32, profile.fps_den.max(1) as i32);
    (!source_fps.is_valid() || wanted.as_f64() < source_fps.as_f64() - 1e-6).then_some(wanted)
}

/// Fits every profile to the source; skips upscales and merges rungs of the same size.
pub fn plan_ladder(profiles: &[Profile], src: &SourceMetadata) -> LadderPlan {
    let mut plan = LadderPlan::default();
    for p in profiles {
        let Some((width, height)) = fit(src, p.width, p.height) else {
            let (dw, dh) = display_size(src);
            plan.skipped.push(SkippedRung {
                name: p.name.clone(),
                reason: format!(
                    "would upscale: the source is {dw:.0}x{dh:.0}, smaller than {}x{}",
                    p.width, p.height
                ),
            });
            continue;
        };
        let rung = Rung::new(p, width, height, src);
        match plan
            .rungs
            .iter_mut()
            .find(|r| r.width == width && r.height == height)
        {
            Some(existing) => {
                // Keep the better of the two under the first one's name.
                let (kept, dropped) = if rung.bitrate > existing.bitrate {
                    let old = std::mem::replace(existing, rung);
                    (existing.name.clone(), old.name)
                } else {
                    (existing.name.clone(), rung.name)
                };
                plan.skipped.push(SkippedRung {
                    name: dropped,
                    reason: format!("merged into {kept}: both fit to {width}x{height}"),
                });
            }
            None => plan.rungs.push(rung),
        }
    }
    if plan.rungs.is_empty() {
        // Every rung would upscale a small source: make the smallest rung at the source's
        // own size rather than nothing.
        if let Some(p) = profiles
            .iter()
            .min_by_key(|p| u64::from(p.width) * u64::from(p.height))
        {
            let (dw, dh) = display_size(src);
            let (width, height) = (round_even(dw), round_even(dh));
            plan.skipped.retain(|s| s.name != p.name);
            plan.rungs.push(Rung::new(p, width, height, src));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::parse_profiles;

    fn source(width: u32, height: u32) -> SourceMetadata {
        SourceMetadata {
            has_audio: false,
            ..SourceMetadata::upright(width, height, 25)
        }
    }

    fn ladder() -> Vec<Profile> {
        parse_profiles("P240p30fps16x9,P360p30fps16x9,P720p30fps16x9").unwrap()
    }

    #[test]
    fn wide_source_keeps_its_aspect_and_skips_upscale() {
        let plan = plan_ladder(&ladder(), &source(640, 272));
        let sizes: Vec<_> = plan.rungs.iter().map(|r| (r.width, r.height)).collect();
        assert_eq!(sizes, vec![(426, 182), (640, 272)]);
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(plan.skipped[0].name, "P720p30fps16x9");
        assert!(plan.skipped[0].reason.contains("upscale"));
        assert_eq!(
            plan.rungs[0].max_fps,
            Rational::new(25, 1),
            "fps never raised"
        );
    }

    #[test]
    fn hd_source_fills_livepeer_boxes() {
        let plan = plan_ladder(&ladder(), &source(1280, 720));
        let sizes: Vec<_> = plan.rungs.iter().map(|r| (r.width, r.height)).collect();
        assert_eq!(sizes, vec![(426, 240), (640, 360), (1280, 720)]);
        assert!(plan.skipped.is_empty());
    }

    #[test]
    fn sample_aspect_ratio_is_honoured() {
        // PAL DV widescreen: 720x576 stored, 64:45 pixels, shown at 1024x576.
        let mut src = source(720, 576);
        src.sample_aspect_ratio = Rational::new(64, 45);
        assert_eq!(fit(&src, 640, 360), Some((640, 360)));
        assert_eq!(fit(&src, 1280, 720), None);
    }

    #[test]
    fn rotation_turns_the_box() {
        let mut src = source(1920, 1080);
        src.rotation = 90;
        assert_eq!(display_size(&src), (1080.0, 1920.0));
        assert_eq!(fit(&src, 1280, 720), Some((720, 1280)));
        assert_eq!(fit(&src, 426, 240), Some((240, 426)));
    }

    #[test]
    fn same_size_rungs_merge() {
        let p = parse_profiles("P360p30fps16x9,P360p25fps16x9,P240p30fps16x9").unwrap();
        let plan = plan_ladder(&p, &source(640, 272));
        assert_eq!(plan.rungs.len(), 2);
        assert_eq!(plan.rungs[0].name, "P360p30fps16x9");
        assert_eq!(plan.rungs[0].bitrate, 1_200_000, "the better rung is kept");
        assert_eq!(plan.skipped[0].name, "P360p25fps16x9");
        assert!(plan.skipped[0].reason.contains("merged"));
    }

    #[test]
    fn fps_bound_is_the_lower_one() {
        let p = &parse_profiles("P720p30fps16x9").unwrap()[0];
        assert_eq!(max_fps(p, Rational::new(60, 1)), Rational::new(30, 1));
        assert_eq!(
            max_fps(p, Rational::new(24000, 1001)),
            Rational::new(24000, 1001)
        );
        assert_eq!(max_fps(p, Rational::new(0, 1)), Rational::new(30, 1));
        assert_eq!(
            drop_to_fps(p, Rational::new(60, 1)),
            Some(Rational::new(30, 1))
        );
        assert_eq!(drop_to_fps(p, Rational::new(30, 1)), None);
        assert_eq!(drop_to_fps(p, Rational::new(30000, 1001)), None);
        assert_eq!(
            drop_to_fps(p, Rational::new(0, 1)),
            Some(Rational::new(30, 1))
        );
        let mut keep = p.clone();
        keep.fps = 0;
        assert_eq!(max_fps(&keep, Rational::new(50, 1)), Rational::new(50, 1));
    }

    #[test]
    fn tiny_source_gets_one_rung_at_its_own_size() {
        let plan = plan_ladder(&ladder(), &source(160, 120));
        assert_eq!(plan.rungs.len(), 1);
        assert_eq!(plan.rungs[0].name, "P240p30fps16x9");
        assert_eq!((plan.rungs[0].width, plan.rungs[0].height), (160, 120));
        assert_eq!(plan.skipped.len(), 2);
    }

    #[test]
    fn odd_sizes_round_to_even() {
        let plan = plan_ladder(&ladder(), &source(853, 480));
        for r in &plan.rungs {
            assert_eq!((r.width % 2, r.height % 2), (0, 0), "{r:?}");
        }
    }
}
