//! HLS playlist rendering: media playlists of accepted segments and the master playlist.

use std::fmt::Write;

/// One segment line of a media playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistSegment {
    /// URI relative to the playlist.
    pub uri: String,
    pub duration_secs: f64,
    /// A gap (a failed segment) precedes this one.
    pub discontinuity: bool,
    /// Wall-clock time of the segment's first picture (Unix ms), for
    /// `EXT-X-PROGRAM-DATE-TIME` (live playlists).
    pub program_date_time_ms: Option<u64>,
}

/// A media playlist.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MediaPlaylist {
    pub segments: Vec<PlaylistSegment>,
    /// On-demand playlists say `#EXT-X-PLAYLIST-TYPE:VOD`.
    pub vod: bool,
    /// Whether `#EXT-X-ENDLIST` closes the playlist.
    pub ended: bool,
    pub media_sequence: u64,
    /// Discontinuities that slid out of a live window (`EXT-X-DISCONTINUITY-SEQUENCE`).
    pub discontinuity_sequence: u64,
    /// A fixed `EXT-X-TARGETDURATION` (live playlists must never change it); `None` derives
    /// it from the segments.
    pub fixed_target_duration: Option<u64>,
}

impl MediaPlaylist {
    /// `EXT-X-TARGETDURATION`: the longest segment rounded to the nearest second, as RFC 8216
    /// requires, and at least 1.
    pub fn target_duration(&self) -> u64 {
        if let Some(t) = self.fixed_target_duration {
            return t.max(1);
        }
        self.segments
            .iter()
            .map(|s| s.duration_secs.round() as u64)
            .max()
            .unwrap_or(0)
            .max(1)
    }

    pub fn render(&self) -> String {
        let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_duration());
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", self.media_sequence);
        if self.discontinuity_sequence > 0 {
            let _ = writeln!(
                out,
                "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
                self.discontinuity_sequence
            );
        }
        if self.vod {
            out.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
        }
        out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
        for s in &self.segments {
            if s.discontinuity {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if let Some(ms) = s.program_date_time_ms {
                let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(ms));
            }
            let _ = writeln!(out, "#EXTINF:{:.6},\n{}", s.duration_secs, s.uri);
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }
}

/// A Unix time in ms as RFC 3339 UTC with milliseconds (`2026-12-06T20:30:00.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Orders the variants for a master playlist: players start on the first one listed, so a
/// middle rung comes first (neither the sharpest, slow to start, nor the softest), then the
/// others from the highest bandwidth down.
pub fn start_on_middle(variants: &mut Vec<Variant>) {
    variants.sort_by_key(|v| std::cmp::Reverse(v.bandwidth));
    if variants.len() > 1 {
        let middle = variants.remove(variants.len() / 2);
        variants.insert(0, middle);
    }
}

/// One rendition in the master playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub uri: String,
    /// Peak segment bitrate, bits per second.
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    pub width: u32,
    pub height: u32,
    /// RFC 6381 codecs, e.g. `avc1.64001f,mp4a.40.2`.
    pub codecs: String,
    pub frame_rate: f64,
}

/// A rendition's bitrates as its segments are listed: the peak segment bitrate
/// (`BANDWIDTH`) and the average over them all (`AVERAGE-BANDWIDTH`), bits per second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bitrates {
    bits: f64,
    secs: f64,
    peak: f64,
}

impl Bitrates {
    /// Counts a segment of `bytes` lasting `secs`.
    pub fn add(&mut self, bytes: u64, secs: f64) {
        let bits = bytes as f64 * 8.0;
        self.bits += bits;
        self.secs += secs;
        if secs > 0.0 {
            self.peak = self.peak.max(bits / secs);
        }
    }

    pub fn peak(&self) -> u64 {
        self.peak.ceil() as u64
    }

    pub fn average(&self) -> u64 {
        if self.secs > 0.0 {
            (self.bits / self.secs).ceil() as u64
        } else {
            0
        }
    }
}

/// Renders a master playlist listing the variants in the given order.
pub fn render_master(variants: &[Variant]) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        let _ = writeln!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{},CODECS=\"{}\",FRAME-RATE={:.3}\n{}",
            v.bandwidth.max(1),
            v.average_bandwidth.max(1),
            v.width,
            v.height,
            v.codecs,
            v.frame_rate,
            v.uri
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(uri: &str, d: f64, disc: bool) -> PlaylistSegment {
        PlaylistSegment {
            uri: uri.into(),
            duration_secs: d,
            discontinuity: disc,
            program_date_time_ms: None,
        }
    }

    #[test]
    fn program_date_time_is_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_796_588_999_007), "2026-12-06T20:29:59.007Z");
        let mut s = seg("7.1.ts", 2.0, true);
        s.program_date_time_ms = Some(1_796_588_999_007);
        let p = MediaPlaylist {
            segments: vec![s],
            fixed_target_duration: Some(2),
            ..Default::default()
        };
        assert!(p.render().contains(
            "#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2026-12-06T20:29:59.007Z\n#EXTINF:2.000000,\n7.1.ts\n"
        ));
    }

    #[test]
    fn players_start_on_a_middle_rung() {
        let v = |bandwidth| Variant {
            uri: format!("{bandwidth}.m3u8"),
            bandwidth,
            average_bandwidth: bandwidth,
            width: 1,
            height: 1,
            codecs: String::new(),
            frame_rate: 30.0,
        };
        let order = |bws: &[u64]| {
            let mut vs: Vec<Variant> = bws.iter().map(|b| v(*b)).collect();
            start_on_middle(&mut vs);
            vs.iter().map(|x| x.bandwidth).collect::<Vec<_>>()
        };
        assert_eq!(order(&[400, 6000, 1200]), vec![1200, 6000, 400]);
        assert_eq!(order(&[400, 6000, 1200, 3000]), vec![1200, 6000, 3000, 400]);
        assert_eq!(order(&[400, 6000]), vec![400, 6000]);
        assert_eq!(order(&[400]), vec![400]);
    }

    #[test]
    fn vod_media_playlist() {
        let p = MediaPlaylist {
            segments: vec![
                seg("0.1.ts", 2.0, false),
                seg("1.2.ts", 2.52, false),
                seg("3.1.ts", 1.2, true),
            ],
            vod: true,
            ended: true,
            ..Default::default()
        };
        let text = p.render();
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXTINF:2.000000,\n0.1.ts\n#EXTINF:2.520000,\n1.2.ts\n\
             #EXT-X-DISCONTINUITY\n#EXTINF:1.200000,\n3.1.ts\n#EXT-X-ENDLIST\n"
        );
    }

    #[test]
    fn target_duration_rounds_and_is_at_least_one() {
        let mut p = MediaPlaylist::default();
        assert_eq!(p.target_duration(), 1);
        p.segments.push(seg("a", 2.4, false));
        assert_eq!(p.target_duration(), 2);
        p.segments.push(seg("b", 5.5, false));
        assert_eq!(p.target_duration(), 6);
        assert!(!p.render().contains("ENDLIST"));
    }

    #[test]
    fn live_window_with_fixed_target_and_sequences() {
        let p = MediaPlaylist {
            segments: vec![seg("7.1.aa.ts", 2.0, false), seg("9.1.bb.ts", 1.9, true)],
            vod: false,
            ended: false,
            media_sequence: 7,
            discontinuity_sequence: 2,
            fixed_target_duration: Some(6),
        };
        assert_eq!(
            p.render(),
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:7\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:2\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXTINF:2.000000,\n7.1.aa.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:1.900000,\n9.1.bb.ts\n"
        );
        let parsed = m3u8_rs::parse_media_playlist_res(p.render().as_bytes()).unwrap();
        assert_eq!(parsed.media_sequence, 7);
        assert_eq!(parsed.discontinuity_sequence, 2);
        assert_eq!(parsed.target_duration, 6);
    }

    #[test]
    fn master_lists_variants() {
        let text = render_master(&[Variant {
            uri: "P360p30fps16x9/index.m3u8".into(),
            bandwidth: 1_300_000,
            average_bandwidth: 1_100_000,
            width: 640,
            height: 272,
            codecs: "avc1.64001e,mp4a.40.2".into(),
            frame_rate: 25.0,
        }]);
        assert!(text.starts_with("#EXTM3U\n"));
        assert!(text.contains(
            "#EXT-X-STREAM-INF:BANDWIDTH=1300000,AVERAGE-BANDWIDTH=1100000,RESOLUTION=640x272,\
             CODECS=\"avc1.64001e,mp4a.40.2\",FRAME-RATE=25.000\nP360p30fps16x9/index.m3u8\n"
        ));
    }
}
