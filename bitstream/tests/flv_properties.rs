//! Properties of the RTMP-to-FLV segmenter on generated message sequences (proptest):
//! whatever a publisher sends, it never panics, and every segment it hands out is a
//! well-formed FLV file (each tag's sizes agree, the file ends on a tag boundary) within the
//! size limit, numbered in order, on a timeline that never goes back.

use castwork_bitstream::flv::{check_file, FlvSegmenter, MAX_SEGMENT_BYTES};
use proptest::prelude::*;

/// One RTMP message: video or audio, a timestamp step, a body.
#[derive(Debug, Clone)]
struct Msg {
    video: bool,
    step_ms: u32,
    body: Vec<u8>,
}

fn body(video: bool) -> impl Strategy<Value = Vec<u8>> {
    let payload = proptest::collection::vec(any::<u8>(), 0..64);
    if video {
        prop_oneof![
            // AVC sequence header, keyframe, inter frame; then anything at all.
            3 => payload.clone().prop_map(|p| [vec![0x17, 0, 0, 0, 0], p].concat()),
            3 => payload.clone().prop_map(|p| [vec![0x17, 1, 0, 0, 0], p].concat()),
            6 => payload.clone().prop_map(|p| [vec![0x27, 1, 0, 0, 0], p].concat()),
            1 => payload,
        ]
        .boxed()
    } else {
        prop_oneof![
            1 => Just(vec![0xAF, 0, 0x12, 0x10]),
            4 => payload.clone().prop_map(|p| [vec![0xAF, 1], p].concat()),
            1 => payload,
        ]
        .boxed()
    }
}

fn msg() -> impl Strategy<Value = Msg> {
    any::<bool>().prop_flat_map(|video| {
        (
            prop_oneof![8 => 0u32..100, 1 => 0u32..5000, 1 => any::<u32>()],
            body(video),
        )
            .prop_map(move |(step_ms, body)| Msg {
                video,
                step_ms,
                body,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_message_sequence_gives_well_formed_segments(msgs in proptest::collection::vec(msg(), 0..300)) {
        let mut seg = FlvSegmenter::new(2000, 6499, 1000);
        let mut ts: u32 = 0;
        let mut out = Vec::new();
        for m in &msgs {
            ts = ts.wrapping_add(m.step_ms);
            let r = if m.video {
                seg.video(ts, &m.body)
            } else {
                seg.audio(ts, &m.body).map(|()| None)
            };
            match r {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                // The publisher is cut off: nothing more is fed.
                Err(_) => break,
            }
        }
        out.extend(seg.finish());
        for (i, s) in out.iter().enumerate() {
            prop_assert_eq!(s.seq, i as u64);
            prop_assert!(s.bytes.len() <= MAX_SEGMENT_BYTES + 64 * 1024);
            check_file(&s.bytes).map_err(TestCaseError::fail)?;
            if let Some(next) = out.get(i + 1) {
                prop_assert!(next.start_ms >= s.start_ms, "{} then {}", s.start_ms, next.start_ms);
                prop_assert_eq!(s.duration_ms, Some(next.start_ms - s.start_ms));
            }
        }
    }
}
