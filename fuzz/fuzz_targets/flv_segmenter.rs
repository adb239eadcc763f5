//! RTMP audio/video messages (decoded from the input: a kind byte, a timestamp step, a
//! length, a body) through the FLV segmenter: no panic, and every segment is a well-formed
//! FLV file within the size limit, numbered in order on a timeline that never goes back.
#![no_main]

use castwork_bitstream::flv::{check_file, FlvSegmenter, MAX_SEGMENT_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut seg = FlvSegmenter::new(2000, 6499, 1000);
    let mut out = Vec::new();
    let (mut at, mut ts) = (0usize, 0u32);
    while at + 4 <= data.len() {
        let (kind, step, len) = (
            data[at],
            data[at + 1],
            usize::from(data[at + 2]) << 4 | usize::from(data[at + 3]),
        );
        at += 4;
        let body = &data[at..(at + len).min(data.len())];
        at += body.len();
        ts = ts.wrapping_add(u32::from(step) * if kind & 0x80 != 0 { 1000 } else { 10 });
        let r = if kind & 1 == 1 {
            seg.video(ts, body)
        } else {
            seg.audio(ts, body).map(|()| None)
        };
        match r {
            Ok(Some(s)) => out.push(s),
            Ok(None) => {}
            Err(_) => break,
        }
    }
    out.extend(seg.finish());
    for (i, s) in out.iter().enumerate() {
        assert_eq!(s.seq, i as u64);
        assert!(s.bytes.len() <= MAX_SEGMENT_BYTES + 64 * 1024);
        check_file(&s.bytes).unwrap();
        if let Some(next) = out.get(i + 1) {
            assert!(next.start_ms >= s.start_ms);
            assert_eq!(s.duration_ms, Some(next.start_ms - s.start_ms));
        }
    }
});
