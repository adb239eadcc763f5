//! Properties of the parsers of outside bytes, on generated input (proptest): wire messages,
//! `transcodingOptions` JSON and the ladders planned from it, and the playlist renderer.
//! Each case that ever failed is kept under `proptest-regressions/` and runs first.

use castwork_protocol::ladder::validate_source;
use castwork_protocol::playlist::{render_master, MediaPlaylist, PlaylistSegment, Variant};
use castwork_protocol::profile::{validate, MAX_DIMENSION, MAX_RUNGS};
use castwork_protocol::{
    decode, encode, parse_transcoding_options, plan_ladder, IngestMessage, Rational, SegmentJob,
    SourceMetadata, StreamEnded, StreamEvent, WorkerReport,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

/// Bytes that look like a wire message: valid JSON messages cut, spliced and bit-flipped.
fn message_like() -> impl Strategy<Value = Vec<u8>> {
    let seed = prop_oneof![
        Just(r#"{"version":1,"type":"stream_ended","stream":"s","session":"00000000-0000-0000-0000-000000000000","segments":3}"#.to_string()),
        Just(r#"{"version":1,"type":"segment_ready","stream":"s","session":"00000000-0000-0000-0000-000000000000","seq":18446744073709551615,"start_us":-9223372036854775808,"duration_us":1,"last_pts_us":0,"frames":1,"has_audio":true,"object":{"key":"k","size":1,"sha256":"x"}}"#.to_string()),
        Just(r#"{"version":1,"type":"stream_started","stream":"s","session":"00000000-0000-0000-0000-000000000000","mode":"live","ladder":[],"source":{"width":1,"height":1,"sample_aspect_ratio":{"num":1,"den":0},"rotation":7,"frame_rate":{"num":-1,"den":0},"video_codec":"","pixel_format":"","color":{},"has_audio":false}}"#.to_string()),
    ];
    (seed, any::<Vec<(usize, u8)>>(), 0usize..400).prop_map(|(s, flips, cut)| {
        let mut b = s.into_bytes();
        for (i, v) in flips {
            if !b.is_empty() {
                let n = b.len();
                b[i % n] = v;
            }
        }
        b.truncate(cut.max(1));
        b
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_any_bytes_never_panics(bytes in prop_oneof![any::<Vec<u8>>(), message_like()]) {
        let _ = decode::<IngestMessage>(&bytes);
        let _ = decode::<WorkerReport>(&bytes);
        let _ = decode::<SegmentJob>(&bytes);
        let _ = decode::<StreamEvent>(&bytes);
    }

    #[test]
    fn a_decoded_message_encodes_back_to_itself(bytes in message_like()) {
        if let Ok(m) = decode::<IngestMessage>(&bytes) {
            let again: IngestMessage = decode(&encode(&m)).unwrap();
            prop_assert_eq!(again, m);
        }
    }

    #[test]
    fn stream_ends_round_trip(stream in "[a-z0-9._-]{1,40}", segments in any::<u64>(), secret in "[a-f0-9]{0,40}") {
        let m = IngestMessage::StreamEnded(StreamEnded {
            stream, session: uuid::Uuid::now_v7(), segments, secret,
        });
        prop_assert_eq!(decode::<IngestMessage>(&encode(&m)).unwrap(), m);
    }
}

/// A JSON value a hostile `transcodingOptions` might hold in a field.
fn field() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        any::<i64>().prop_map(|v| json!(v)),
        any::<u64>().prop_map(|v| json!(v)),
        (0u32..10_000).prop_map(|v| json!(v)),
        any::<f64>().prop_map(|v| json!(v)),
        "[a-zA-Z0-9 .]{0,12}".prop_map(|v| json!(v)),
        Just(json!(null)),
        Just(json!("intra")),
        Just(json!("H264ConstrainedHigh")),
    ]
}

/// A `u32` field: mostly in range (edges included), sometimes anything.
fn number() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        4 => prop_oneof![Just(0u32), Just(1), Just(2), Just(1001), Just(8192), Just(8193), Just(u32::MAX), 16u32..4000]
            .prop_map(|v| json!(v)),
        1 => field(),
    ]
}

fn gop() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        4 => prop_oneof![
            Just("2"), Just("0.5"), Just("intra"), Just("0"), Just("60"), Just("61"),
            Just("1e300"), Just("NaN"), Just("inf"), Just("-1"), Just(""),
        ].prop_map(|v| json!(v)),
        1 => field(),
    ]
}

fn profile_json() -> impl Strategy<Value = serde_json::Value> {
    (
        "[a-zA-Z0-9_-]{0,10}",
        number(),
        number(),
        prop_oneof![
            (0u64..200_000_000).prop_map(|v| serde_json::json!(v)),
            field()
        ],
        number(),
        number(),
        gop(),
        prop_oneof![Just(serde_json::json!("H264High")), field()],
    )
        .prop_map(|(name, w, h, bitrate, fps, den, gop, profile)| {
            serde_json::json!({
                "name": name, "width": w, "height": h, "bitrate": bitrate, "fps": fps,
                "fpsDen": den, "gop": gop, "profile": profile,
            })
        })
}

fn source() -> impl Strategy<Value = SourceMetadata> {
    (
        0u32..10_000,
        0u32..10_000,
        (-5i32..200, -5i32..200),
        prop_oneof![Just(0u32), Just(90), Just(180), Just(270), any::<u32>()],
        (-5i32..200_000, -5i32..2000),
    )
        .prop_map(
            |(width, height, (sn, sd), rotation, (fnum, fden))| SourceMetadata {
                width,
                height,
                sample_aspect_ratio: Rational::new(sn, sd),
                rotation,
                frame_rate: Rational::new(fnum, fden),
                video_codec: "h264".into(),
                pixel_format: "yuv420p".into(),
                color: Default::default(),
                has_audio: true,
                duration_us: None,
            },
        )
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the JSON, parsing never panics; an accepted ladder is within every bound,
    /// and planning it for any source the orchestrator admits never panics and never
    /// upscales or grows the ladder.
    #[test]
    fn transcoding_options_make_bounded_ladders(
        profiles in proptest::collection::vec(profile_json(), 0..12),
        src in source(),
    ) {
        let text = serde_json::Value::Array(profiles).to_string();
        let Ok(ladder) = parse_transcoding_options(&text) else { return Ok(()) };
        prop_assert!(validate(ladder.clone()).is_ok());
        prop_assert!(ladder.len() <= MAX_RUNGS);
        for p in &ladder {
            prop_assert!(p.width <= MAX_DIMENSION && p.height <= MAX_DIMENSION);
            prop_assert!(p.fps_den >= 1);
        }
        if validate_source(&src).is_err() {
            return Ok(());
        }
        let plan = plan_ladder(&ladder, &src);
        prop_assert!(plan.rungs.len() + plan.skipped.len() <= ladder.len());
        for r in &plan.rungs {
            prop_assert!(r.width % 2 == 0 && r.height % 2 == 0, "{r:?}");
            prop_assert!(r.width <= MAX_DIMENSION && r.height <= MAX_DIMENSION, "{r:?}");
        }
    }

    /// Rendered playlists always parse, with every segment once, in order.
    #[test]
    fn rendered_playlists_parse_with_every_segment(
        segs in proptest::collection::vec((0.001f64..60.0, any::<bool>()), 0..50),
        media_sequence in any::<u32>(),
        vod in any::<bool>(),
        ended in any::<bool>(),
    ) {
        let playlist = MediaPlaylist {
            segments: segs
                .iter()
                .enumerate()
                .map(|(i, (d, disc))| PlaylistSegment {
                    uri: format!("{i}.1.abc.ts"),
                    duration_secs: *d,
                    discontinuity: *disc && i > 0,
                    program_date_time_ms: (!vod).then_some(1_700_000_000_000 + i as u64 * 2000),
                })
                .collect(),
            vod,
            ended,
            media_sequence: u64::from(media_sequence),
            ..Default::default()
        };
        let text = playlist.render();
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e:?}\n{text}")))?;
        prop_assert_eq!(parsed.segments.len(), segs.len());
        for (i, s) in parsed.segments.iter().enumerate() {
            prop_assert_eq!(&s.uri, &format!("{i}.1.abc.ts"));
            // RFC 8216: no segment is longer than the target duration (rounded).
            prop_assert!((s.duration as f64).round() as u64 <= parsed.target_duration);
            prop_assert_eq!(s.program_date_time.is_some(), !vod);
        }
        prop_assert_eq!(parsed.end_list, ended);
        let master = render_master(&[Variant {
            uri: "r/index.m3u8".into(), bandwidth: 1, average_bandwidth: 1, width: 2,
            height: 2, codecs: "avc1.640015".into(), frame_rate: 30.0,
        }]);
        prop_assert!(m3u8_rs::parse_master_playlist_res(master.as_bytes()).is_ok());
    }
}
