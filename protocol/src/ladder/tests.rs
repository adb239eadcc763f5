//! Tests of ladder fitting and of the explanations of bad `transcodingOptions` JSON.

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

fn explained(json: &str) -> String {
    match crate::profile::parse_transcoding_options(json) {
        Err(crate::ProfileError::Json(m)) => m,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bad_ladder_says_which_profile_and_field() {
    let m = explained(
        r#"[{"name":"P360p","width":640,"height":360,"bitrate":1000000},
            {"name":"P720p","width":1280,"height":720,"bitrate":"3000k"}]"#,
    );
    assert_eq!(
        m,
        "profile 2 (\"P720p\"): field `bitrate`: expected a whole number of bits per \
         second like 3000000, found the string \"3000k\""
    );
    let m = explained(r#"{"profiles":[{"width":640,"height":360}]}"#);
    assert!(m.starts_with("profile 1: missing field `bitrate`"), "{m}");
    let m = explained(r#"[{"width":640,"height":360,"bitrate":1,"fps_den":1}]"#);
    assert!(
        m.contains("unknown field `fps_den` (did you mean `fpsDen`?)"),
        "{m}"
    );
    let m = explained(r#"[{"width":640.5,"height":360,"bitrate":1}]"#);
    assert!(
        m.contains(
            "field `width`: expected a whole number of pixels like 1280, found the number 640.5"
        ),
        "{m}"
    );
    let m = explained(r#"[{"width":640,"height":360,"bitrate":1,"gop":2}]"#);
    assert!(
        m.contains("field `gop`: expected a string of seconds"),
        "{m}"
    );
    let m = explained(r#"[{"width":640,"height":360,"bitrate":1,"fps":null}]"#);
    assert!(m.contains("field `fps`"), "{m}");
}

#[test]
fn a_bad_ladder_shape_is_named() {
    let m = explained(r#"{"width":640,"height":360,"bitrate":1}"#);
    assert!(
        m.starts_with("one profile on its own: expected a list"),
        "{m}"
    );
    let m = explained(r#"{"profiles":{"width":640}}"#);
    assert!(
        m.contains("field `profiles`: expected a list of profiles, found an object"),
        "{m}"
    );
    let m = explained(r#"{"ladder":[]}"#);
    assert!(m.contains("an object without `profiles`"), "{m}");
    assert!(explained("7").ends_with("found the number 7"));
    assert!(explained(r#"["P720p"]"#).contains("profile 1: expected an object"));
    let m = explained("[{\"width\": 1,\n \"height\" 2}]");
    assert!(
        m.starts_with("not valid JSON: expected `:` at line 2 column"),
        "{m}"
    );
    for m in [
        explained(r#"[{"width":1,"height":2,"bitrate":3,"colour":1}]"#),
        explained("[1]"),
    ] {
        assert!(!m.contains("untagged"), "{m}");
    }
}

/// The checks agree with the parser: a profile with every field well typed parses.
#[test]
fn every_checked_field_is_one_the_parser_takes() {
    let mut profile = serde_json::Map::new();
    for f in JSON_FIELDS {
        let v = match f.name {
            "profile" => serde_json::json!("H264High"),
            "encoder" => serde_json::json!("H.264"),
            "gop" => serde_json::json!("2"),
            "fps" => serde_json::json!(30),
            "fpsDen" => serde_json::json!(1),
            "width" => serde_json::json!(640),
            "height" => serde_json::json!(360),
            "bitrate" => serde_json::json!(1_000_000),
            "colorDepth" => serde_json::json!(8),
            _ if f.max.is_some() => serde_json::json!(0),
            _ => serde_json::json!("x"),
        };
        assert!(f.takes(&v), "{}", f.name);
        profile.insert(f.name.into(), v);
    }
    let json = serde_json::Value::Array(vec![profile.into()]).to_string();
    crate::profile::parse_transcoding_options(&json).expect("every field is taken");
}
