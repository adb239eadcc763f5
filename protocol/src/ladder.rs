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

/// One field of a `transcodingOptions` profile as [`explain_json_ladder`] checks it.
struct JsonField {
    name: &'static str,
    required: bool,
    /// Largest whole number it takes; `None`: a string (or null).
    max: Option<u64>,
    /// What it takes, in words, with an example.
    expected: &'static str,
}

/// The fields of Livepeer's `transcodingOptions` profile, as `profile::JsonProfile` reads
/// them (a test checks the two agree).
const JSON_FIELDS: &[JsonField] = &[
    JsonField {
        name: "name",
        required: false,
        max: None,
        expected: "a string like \"720p\"",
    },
    JsonField {
        name: "width",
        required: true,
        max: Some(u32::MAX as u64),
        expected: "a whole number of pixels like 1280",
    },
    JsonField {
        name: "height",
        required: true,
        max: Some(u32::MAX as u64),
        expected: "a whole number of pixels like 720",
    },
    JsonField {
        name: "bitrate",
        required: true,
        max: Some(u64::MAX),
        expected: "a whole number of bits per second like 3000000",
    },
    JsonField {
        name: "fps",
        required: false,
        max: Some(u32::MAX as u64),
        expected: "a whole number like 30 (0 keeps the source's rate)",
    },
    JsonField {
        name: "fpsDen",
        required: false,
        max: Some(u32::MAX as u64),
        expected: "a whole number like 1 or 1001",
    },
    JsonField {
        name: "profile",
        required: false,
        max: None,
        expected: "a string like \"H264High\"",
    },
    JsonField {
        name: "gop",
        required: false,
        max: None,
        expected: "a string of seconds like \"2\", or \"intra\"",
    },
    JsonField {
        name: "encoder",
        required: false,
        max: None,
        expected: "a string like \"H.264\"",
    },
    JsonField {
        name: "quality",
        required: false,
        max: Some(u32::MAX as u64),
        expected: "a whole number",
    },
    JsonField {
        name: "colorDepth",
        required: false,
        max: Some(u32::MAX as u64),
        expected: "a whole number like 8",
    },
    JsonField {
        name: "chromaFormat",
        required: false,
        max: Some(u32::MAX as u64),
        expected: "a whole number like 0 (4:2:0)",
    },
];

impl JsonField {
    fn takes(&self, v: &serde_json::Value) -> bool {
        match self.max {
            // An optional field may be null; a number field with a default may not.
            None => v.is_string() || v.is_null(),
            Some(max) => v.as_u64().is_some_and(|n| n <= max),
        }
    }
}

/// A JSON value in words, for error messages.
fn describe(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("the string {:?}…", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// What is wrong with one profile, if the field checks find it.
fn explain_profile(p: &serde_json::Value) -> Option<String> {
    let Some(fields) = p.as_object() else {
        return Some(format!(
            "expected an object like {{\"name\": \"720p\", \"width\": 1280, \"height\": 720, \
             \"bitrate\": 3000000}}, found {}",
            describe(p)
        ));
    };
    for (key, value) in fields {
        let Some(field) = JSON_FIELDS.iter().find(|f| f.name == key) else {
            let names: Vec<_> = JSON_FIELDS.iter().map(|f| f.name).collect();
            let simple = |s: &str| s.replace('_', "").to_ascii_lowercase();
            let hint = JSON_FIELDS
                .iter()
                .find(|f| simple(f.name) == simple(key))
                .map(|f| format!(" (did you mean `{}`?)", f.name))
                .unwrap_or_default();
            return Some(format!(
                "unknown field `{}`{hint}; a profile's fields are {}",
                key.chars().take(40).collect::<String>(),
                names.join(", ")
            ));
        };
        if !field.takes(value) {
            return Some(format!(
                "field `{key}`: expected {}, found {}",
                field.expected,
                describe(value)
            ));
        }
    }
    JSON_FIELDS
        .iter()
        .find(|f| f.required && !fields.contains_key(f.name))
        .map(|f| format!("missing field `{}` ({})", f.name, f.expected))
}

/// Says, in words, why `json` is not a `transcodingOptions` ladder (a list of profiles, or
/// `{"profiles": [...]}`): which shape it resembles and, in that shape, which profile and
/// field is wrong; `serde_error` (the parser's own message) when nothing more precise is
/// found.
pub fn explain_json_ladder(json: &str, serde_error: &str) -> String {
    use serde_json::Value;
    let value: Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => return format!("not valid JSON: {e}"),
    };
    let shape = "a list of profiles, [{...}, ...], or {\"profiles\": [...]}";
    let list = match &value {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("profiles") {
            Some(Value::Array(list)) => list,
            Some(other) => {
                return format!(
                    "field `profiles`: expected a list of profiles, found {}",
                    describe(other)
                )
            }
            None if JSON_FIELDS
                .iter()
                .any(|f| f.required && o.contains_key(f.name)) =>
            {
                return format!("one profile on its own: expected {shape}")
            }
            None => return format!("expected {shape}, found an object without `profiles`"),
        },
        other => return format!("expected {shape}, found {}", describe(other)),
    };
    for (i, p) in list.iter().enumerate() {
        if let Some(problem) = explain_profile(p) {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .map(|n| format!(" ({:?})", n.chars().take(40).collect::<String>()))
                .unwrap_or_default();
            return format!("profile {}{name}: {problem}", i + 1);
        }
    }
    serde_error.to_string()
}

#[cfg(test)]
mod tests;
