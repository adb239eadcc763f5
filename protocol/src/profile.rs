//! Output profiles: Livepeer preset names (`P720p30fps16x9`) and the `transcodingOptions` JSON form.

use serde::{Deserialize, Serialize};

/// Highest bitrate a profile may ask for (bits per second).
pub const MAX_BITRATE: u64 = 100_000_000;
/// Largest width or height a profile may ask for.
pub const MAX_DIMENSION: u32 = 8192;
/// Highest frame rate a profile may ask for.
pub const MAX_FPS: u32 = 240;
/// Most rungs in a ladder.
pub const MAX_RUNGS: usize = 8;
/// Largest frame-rate denominator (NTSC rates use 1001).
pub const MAX_FPS_DEN: u32 = 1001;
/// Longest keyframe interval, in seconds.
pub const MAX_GOP_SECS: f64 = 60.0;
/// Most output pixels per second of a whole ladder (each rung's box at its frame rate; a
/// rung that keeps the source's rate counts as 60 fps): four 4K rungs at 60 fps.
pub const MAX_LADDER_PIXEL_RATE: u64 = 4 * 3840 * 2160 * 60;

/// The H.264 profile a rung is encoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum H264Profile {
    Baseline,
    Main,
    #[default]
    High,
    /// High profile without B-frames (Livepeer's `H264ConstrainedHigh`).
    ConstrainedHigh,
}

impl H264Profile {
    /// The name libx264 knows the profile by.
    pub fn x264_name(self) -> &'static str {
        match self {
            H264Profile::Baseline => "baseline",
            H264Profile::Main => "main",
            H264Profile::High | H264Profile::ConstrainedHigh => "high",
        }
    }

    /// Whether this profile may use B-frames.
    pub fn allows_b_frames(self) -> bool {
        matches!(self, H264Profile::Main | H264Profile::High)
    }
}

/// One rung of a requested ladder, before it is fitted to a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Rendition name, used in object keys and playlist URIs.
    pub name: String,
    /// Bounding box width.
    pub width: u32,
    /// Bounding box height.
    pub height: u32,
    /// Target bitrate in bits per second.
    pub bitrate: u64,
    /// Upper bound on the frame rate (numerator); 0 keeps the source's.
    pub fps: u32,
    /// Frame rate denominator.
    pub fps_den: u32,
    /// Keyframe interval in seconds; `None` means one keyframe per segment only ("intra" is 0).
    pub gop_secs: Option<f64>,
    pub profile: H264Profile,
}

/// Why a ladder was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "unknown profile preset {0:?} (expected a Livepeer preset name such as P720p30fps16x9)"
    )]
    UnknownPreset(String),
    #[error("the ladder is empty")]
    Empty,
    #[error("transcoding options: {0}")]
    Json(String),
    #[error("invalid profiles: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Livepeer's preset table: name, width, height, bitrate, fps.
const PRESETS: &[(&str, u32, u32, u64, u32)] = &[
    ("P144p30fps16x9", 256, 144, 400_000, 30),
    ("P144p25fps16x9", 256, 144, 400_000, 25),
    ("P240p30fps16x9", 426, 240, 600_000, 30),
    ("P240p25fps16x9", 426, 240, 600_000, 25),
    ("P240p30fps4x3", 320, 240, 600_000, 30),
    ("P360p30fps16x9", 640, 360, 1_200_000, 30),
    ("P360p25fps16x9", 640, 360, 1_000_000, 25),
    ("P360p30fps4x3", 480, 360, 1_000_000, 30),
    ("P576p30fps16x9", 1024, 576, 1_500_000, 30),
    ("P576p25fps16x9", 1024, 576, 1_500_000, 25),
    ("P720p30fps16x9", 1280, 720, 4_000_000, 30),
    ("P720p25fps16x9", 1280, 720, 3_500_000, 25),
    ("P720p60fps16x9", 1280, 720, 6_000_000, 60),
    ("P720p30fps4x3", 960, 720, 3_500_000, 30),
    ("P1080p30fps16x9", 1920, 1080, 6_500_000, 30),
    ("P1080p60fps16x9", 1920, 1080, 9_000_000, 60),
];

/// The default ladder for a user who names none.
pub const DEFAULT_PRESETS: &str = "P240p30fps16x9,P360p30fps16x9,P720p30fps16x9";

/// Default keyframe interval, in seconds, for preset rungs.
pub const DEFAULT_GOP_SECS: f64 = 2.0;

/// Parses a comma-separated list of Livepeer preset names.
pub fn parse_profiles(list: &str) -> Result<Vec<Profile>, ProfileError> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let &(preset, width, height, bitrate, fps) = PRESETS
            .iter()
            .find(|p| p.0.eq_ignore_ascii_case(name))
            .ok_or_else(|| ProfileError::UnknownPreset(name.to_string()))?;
        out.push(Profile {
            name: preset.to_string(),
            width,
            height,
            bitrate,
            fps,
            fps_den: 1,
            gop_secs: Some(DEFAULT_GOP_SECS),
            profile: H264Profile::High,
        });
    }
    validate(out)
}

/// Livepeer's `transcodingOptions` JSON profile.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JsonProfile {
    name: Option<String>,
    width: u32,
    height: u32,
    bitrate: u64,
    #[serde(default)]
    fps: u32,
    #[serde(default)]
    fps_den: u32,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    gop: Option<String>,
    #[serde(default)]
    encoder: Option<String>,
    /// Accepted for compatibility; Castwork's encoder is bitrate-driven.
    #[serde(default)]
    #[allow(dead_code)]
    quality: Option<u32>,
    #[serde(default)]
    color_depth: Option<u32>,
    #[serde(default)]
    chroma_format: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonLadder {
    List(Vec<JsonProfile>),
    Wrapped { profiles: Vec<JsonProfile> },
}

/// Parses Livepeer's `transcodingOptions` JSON: a list of profiles, or `{"profiles": [...]}`.
pub fn parse_transcoding_options(json: &str) -> Result<Vec<Profile>, ProfileError> {
    let ladder: JsonLadder = serde_json::from_str(json).map_err(|e| {
        ProfileError::Json(crate::ladder::explain_json_ladder(json, &e.to_string()))
    })?;
    let list = match ladder {
        JsonLadder::List(l) | JsonLadder::Wrapped { profiles: l } => l,
    };
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (i, p) in list.into_iter().enumerate() {
        let name = p
            .name
            .clone()
            .unwrap_or_else(|| format!("{}p{}", p.height, i));
        let profile = match p.profile.as_deref().unwrap_or("H264High") {
            "H264Baseline" => H264Profile::Baseline,
            "H264Main" => H264Profile::Main,
            "H264High" | "" | "None" => H264Profile::High,
            "H264ConstrainedHigh" => H264Profile::ConstrainedHigh,
            other => {
                problems.push(format!("{name}: unknown H.264 profile {other:?}"));
                H264Profile::High
            }
        };
        match p.encoder.as_deref().unwrap_or("H.264") {
            "H.264" | "H264" | "h264" | "" => {}
            other => problems.push(format!(
                "{name}: encoder {other:?} is not supported (only H.264)"
            )),
        }
        if p.color_depth.is_some_and(|d| d != 0 && d != 8) {
            problems.push(format!("{name}: only 8-bit output is supported"));
        }
        if p.chroma_format.is_some_and(|c| c != 0) {
            problems.push(format!("{name}: only 4:2:0 output is supported"));
        }
        let gop_secs = match p.gop.as_deref().map(str::trim) {
            None | Some("") => Some(DEFAULT_GOP_SECS),
            Some("intra") => Some(0.0),
            Some(s) => match s.parse::<f64>() {
                Ok(g) if g.is_finite() && g >= 0.0 => Some(g),
                _ => {
                    problems.push(format!("{name}: gop {s:?} is not a number of seconds"));
                    None
                }
            },
        };
        out.push(Profile {
            name,
            width: p.width,
            height: p.height,
            bitrate: p.bitrate,
            fps: p.fps,
            fps_den: if p.fps_den == 0 { 1 } else { p.fps_den },
            gop_secs,
            profile,
        });
    }
    if !problems.is_empty() {
        return Err(ProfileError::Invalid(problems));
    }
    validate(out)
}

/// Checks bounds and names of a ladder, reporting every problem at once.
/// A rung's name, which names its files and playlists: 1-64 letters, digits, `_` or `-`
/// (never a path).
pub fn validate_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {n:?} must be 1-64 characters of letters, digits, '_' or '-'"
        ))
    }
}

pub fn validate(profiles: Vec<Profile>) -> Result<Vec<Profile>, ProfileError> {
    if profiles.is_empty() {
        return Err(ProfileError::Empty);
    }
    let mut problems = Vec::new();
    if profiles.len() > MAX_RUNGS {
        // Nothing else is looked at: the list may be huge.
        return Err(ProfileError::Invalid(vec![format!(
            "{} rungs: a ladder has at most {MAX_RUNGS}",
            profiles.len()
        )]));
    }
    let mut pixel_rate = 0u64;
    for (i, p) in profiles.iter().enumerate() {
        let n = &p.name;
        if let Err(e) = validate_name(n) {
            problems.push(e);
        }
        if profiles[..i].iter().any(|q| q.name == *n) {
            problems.push(format!("name {n:?} is used twice"));
        }
        if !(16..=MAX_DIMENSION).contains(&p.width) || !(16..=MAX_DIMENSION).contains(&p.height) {
            problems.push(format!(
                "{n}: size {}x{} is outside 16..{MAX_DIMENSION}",
                p.width, p.height
            ));
        }
        if p.bitrate < 16_000 || p.bitrate > MAX_BITRATE {
            problems.push(format!(
                "{n}: bitrate {} is outside 16000..{MAX_BITRATE} bits/s",
                p.bitrate
            ));
        }
        if !(1..=MAX_FPS_DEN).contains(&p.fps_den)
            || u64::from(p.fps) > u64::from(MAX_FPS) * u64::from(p.fps_den)
        {
            problems.push(format!(
                "{n}: frame rate {}/{} is not allowed (at most {MAX_FPS} fps, denominator \
                 1..{MAX_FPS_DEN})",
                p.fps, p.fps_den
            ));
        }
        if p.gop_secs
            .is_some_and(|g| !g.is_finite() || !(0.0..=MAX_GOP_SECS).contains(&g))
        {
            problems.push(format!(
                "{n}: keyframe interval {:?} s is outside 0..{MAX_GOP_SECS}",
                p.gop_secs.unwrap_or_default()
            ));
        }
        let fps = if p.fps == 0 {
            60
        } else {
            u64::from(p.fps).div_ceil(u64::from(p.fps_den.max(1)))
        };
        pixel_rate = pixel_rate.saturating_add(
            u64::from(p.width.min(MAX_DIMENSION))
                * u64::from(p.height.min(MAX_DIMENSION))
                * fps.min(u64::from(MAX_FPS)),
        );
    }
    if pixel_rate > MAX_LADDER_PIXEL_RATE {
        problems.push(format!(
            "the ladder asks for {pixel_rate} output pixels per second, more than \
             {MAX_LADDER_PIXEL_RATE} (four 4K rungs at 60 fps)"
        ));
    }
    if problems.is_empty() {
        Ok(profiles)
    } else {
        Err(ProfileError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_in_order() {
        let l = parse_profiles("P240p30fps16x9, P720p30fps16x9").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].width, l[0].height, l[0].bitrate, l[0].fps),
            (426, 240, 600_000, 30)
        );
        assert_eq!(l[1].name, "P720p30fps16x9");
        assert_eq!(l[1].gop_secs, Some(2.0));
    }

    #[test]
    fn unknown_preset_is_named() {
        let e = parse_profiles("P240p30fps16x9,P999p").unwrap_err();
        assert_eq!(e, ProfileError::UnknownPreset("P999p".into()));
        assert!(e.to_string().contains("P999p"));
        assert_eq!(parse_profiles(" , ").unwrap_err(), ProfileError::Empty);
    }

    #[test]
    fn transcoding_options_json_forms() {
        let json = r#"[{"name":"low","width":640,"height":360,"bitrate":900000,"fps":30,"fpsDen":1,
            "profile":"H264ConstrainedHigh","gop":"1.5","encoder":"H.264"},
            {"name":"src","width":1280,"height":720,"bitrate":3000000}]"#;
        let l = parse_transcoding_options(json).unwrap();
        assert_eq!(l[0].profile, H264Profile::ConstrainedHigh);
        assert_eq!(l[0].gop_secs, Some(1.5));
        assert_eq!(l[1].fps, 0, "fps 0 keeps the source's");
        let wrapped = format!(r#"{{"profiles": {json}}}"#);
        assert_eq!(parse_transcoding_options(&wrapped).unwrap(), l);
        let intra = r#"[{"name":"i","width":640,"height":360,"bitrate":900000,"gop":"intra"}]"#;
        assert_eq!(
            parse_transcoding_options(intra).unwrap()[0].gop_secs,
            Some(0.0)
        );
    }

    #[test]
    fn bad_json_reports_every_problem() {
        let json = r#"[{"name":"a b","width":4,"height":360,"bitrate":1,"encoder":"VP9",
            "profile":"H264Extreme","gop":"soon"}]"#;
        let ProfileError::Invalid(problems) = parse_transcoding_options(json).unwrap_err() else {
            panic!("expected Invalid");
        };
        let all = problems.join("\n");
        for needle in ["VP9", "H264Extreme", "soon"] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        let ProfileError::Invalid(problems) =
            parse_transcoding_options(r#"[{"name":"a b","width":4,"height":360,"bitrate":1}]"#)
                .unwrap_err()
        else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(matches!(
            parse_transcoding_options("{not json"),
            Err(ProfileError::Json(_))
        ));
        assert!(matches!(
            parse_transcoding_options(r#"[{"width":1,"height":2,"bitrate":3,"colour":1}]"#),
            Err(ProfileError::Json(_))
        ));
        assert_eq!(
            parse_transcoding_options("[]").unwrap_err(),
            ProfileError::Empty
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let e = parse_profiles("P240p30fps16x9,P240p30fps16x9").unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
    }

    fn rung(name: &str, w: u32, h: u32, fps: u32, den: u32, gop: Option<f64>) -> Profile {
        Profile {
            name: name.into(),
            width: w,
            height: h,
            bitrate: 1_000_000,
            fps,
            fps_den: den,
            gop_secs: gop,
            profile: H264Profile::High,
        }
    }

    #[test]
    fn hostile_ladders_are_refused_with_a_reason() {
        let many: Vec<Profile> = (0..5000)
            .map(|i| rung(&format!("r{i}"), 64, 64, 30, 1, None))
            .collect();
        let e = validate(many).unwrap_err().to_string();
        assert!(e.contains("at most 8"), "{e}");
        let huge: Vec<Profile> = (0..4)
            .map(|i| rung(&format!("r{i}"), 8192, 8192, 240, 1, None))
            .collect();
        let e = validate(huge).unwrap_err().to_string();
        assert!(e.contains("output pixels per second"), "{e}");
        for bad in [
            rung("a", 640, 360, u32::MAX, 1, None),
            rung("a", 640, 360, 30, 0, None),
            rung("a", 640, 360, 30, u32::MAX, None),
            rung("a", 640, 360, 30, 1, Some(f64::NAN)),
            rung("a", 640, 360, 30, 1, Some(1e9)),
            rung("a", 640, 360, 30, 1, Some(-1.0)),
        ] {
            assert!(validate(vec![bad.clone()]).is_err(), "{bad:?}");
        }
        let ok = vec![
            rung("a", 1920, 1080, 60000, 1001, Some(2.0)),
            rung("b", 1280, 720, 0, 1, Some(0.0)),
        ];
        assert_eq!(validate(ok.clone()).unwrap(), ok);
    }
}
