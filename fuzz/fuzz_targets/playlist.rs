//! The media playlist renderer on any segment list: the text always parses (m3u8-rs), with
//! every segment once, in order, none longer than the target duration.
#![no_main]

use castwork_protocol::playlist::{MediaPlaylist, PlaylistSegment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let segments: Vec<PlaylistSegment> = rest
        .chunks(3)
        .enumerate()
        .map(|(i, c)| PlaylistSegment {
            uri: format!("{i}.1.h.ts"),
            // 0.001 s to about 65 s.
            duration_secs: (f64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])) + 1.0)
                / 1000.0,
            discontinuity: i > 0 && c.get(2).is_some_and(|b| b & 1 == 1),
            program_date_time_ms: c
                .get(2)
                .is_some_and(|b| b & 2 == 2)
                .then_some(u64::from(c[0]) << 32),
        })
        .collect();
    let playlist = MediaPlaylist {
        segments: segments.clone(),
        vod: flags & 1 == 1,
        ended: flags & 2 == 2,
        media_sequence: u64::from(flags),
        discontinuity_sequence: u64::from(flags >> 4),
        fixed_target_duration: (flags & 4 == 4).then_some(70),
    };
    let text = playlist.render();
    let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("the playlist parses");
    assert_eq!(parsed.segments.len(), segments.len());
    for (i, s) in parsed.segments.iter().enumerate() {
        assert_eq!(s.uri, format!("{i}.1.h.ts"));
        assert!((s.duration as f64).round() as u64 <= parsed.target_duration);
    }
    assert_eq!(parsed.end_list, playlist.ended);
});
