//! `transcodingOptions` JSON to a ladder plan: no panic; an accepted ladder is within every
//! bound, and planning it for admissible sources never grows it nor makes odd sizes.
#![no_main]

use castwork_protocol::ladder::validate_source;
use castwork_protocol::profile::{validate, MAX_DIMENSION, MAX_RUNGS};
use castwork_protocol::{parse_transcoding_options, plan_ladder, Rational, SourceMetadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ladder) = parse_transcoding_options(text) else {
        return;
    };
    assert!(validate(ladder.clone()).is_ok());
    assert!(ladder.len() <= MAX_RUNGS);
    for (w, h, sar, rot, fps) in [
        (1920, 1080, (1, 1), 0, (30, 1)),
        (720, 576, (64, 45), 90, (25, 1)),
        (8192, 4320, (1, 1), 270, (60000, 1001)),
        (2, 2, (100, 1), 180, (0, 0)),
    ] {
        let src = SourceMetadata {
            width: w,
            height: h,
            sample_aspect_ratio: Rational::new(sar.0, sar.1),
            rotation: rot,
            frame_rate: Rational::new(fps.0, fps.1),
            video_codec: "h264".into(),
            pixel_format: "yuv420p".into(),
            color: Default::default(),
            has_audio: true,
            duration_us: None,
        };
        assert!(validate_source(&src).is_ok());
        let plan = plan_ladder(&ladder, &src);
        assert!(plan.rungs.len() + plan.skipped.len() <= ladder.len());
        for r in &plan.rungs {
            assert!(r.width % 2 == 0 && r.height % 2 == 0, "{r:?}");
            assert!(
                r.width <= MAX_DIMENSION && r.height <= MAX_DIMENSION,
                "{r:?}"
            );
        }
    }
});
