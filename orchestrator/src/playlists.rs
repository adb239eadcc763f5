//! Writing a stream's playlists to the object store, rendered from Redis so any
//! orchestrator writes the same bytes.

use castwork_cluster::Storage;
use castwork_protocol::playlist::{
    render_master, start_on_middle, Bitrates, MediaPlaylist, PlaylistSegment, Variant,
};

use crate::state::{SegmentRecord, StreamRecord};

/// Name of the on-demand playlists of a live stream's whole recording, beside the live
/// `index.m3u8` ones.
pub const RECORDING: &str = "recording";

/// Which playlists to render: the file name (`index` or [`RECORDING`]) and the media
/// playlists' header (type, end, sequences, fixed target duration); its segments are
/// ignored.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: &'static str,
    pub header: MediaPlaylist,
    /// Whether each segment gets `EXT-X-PROGRAM-DATE-TIME` (live playlists), from the
    /// time it reached the broadcaster.
    pub dated: bool,
}

impl Spec {
    /// A complete on-demand stream: `index.m3u8`, `PLAYLIST-TYPE:VOD`, ended.
    pub fn vod(name: &'static str) -> Self {
        Spec {
            name,
            header: MediaPlaylist {
                vod: true,
                ended: true,
                ..Default::default()
            },
            dated: false,
        }
    }

    fn media_key(&self, stream: &str, rung: &str) -> String {
        format!("streams/{stream}/{rung}/{}.m3u8", self.name)
    }

    pub fn master_key(&self, stream: &str) -> String {
        format!("streams/{stream}/{}.m3u8", self.name)
    }
}

/// Renders the media playlists and the master playlist: `(key, text)` pairs, master last.
/// A segment with no accepted renditions is a gap: the next listed one gets a
/// discontinuity, as does a segment that follows a publisher's reconnect.
pub fn render(
    rec: &StreamRecord,
    segments: &[Option<SegmentRecord>],
    spec: &Spec,
) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut variants = Vec::new();
    for rung in &rec.plan.rungs {
        let mut playlist = spec.header.clone();
        playlist.segments.clear();
        let (mut gap, mut rates) = (false, Bitrates::default());
        let mut sample = None;
        for seg in segments {
            let accepted = seg
                .as_ref()
                .and_then(|s| s.accepted.as_ref().map(|a| (s, a)))
                .and_then(|(s, a)| a.iter().find(|r| r.rung == rung.name).map(|r| (s, r)));
            let Some((s, r)) = accepted else {
                gap = !playlist.segments.is_empty();
                continue;
            };
            let d = s.duration_us as f64 / 1e6;
            let uri = r.key.rsplit('/').next().unwrap_or(&r.key).to_string();
            playlist.segments.push(PlaylistSegment {
                uri,
                duration_secs: d,
                discontinuity: gap || s.discontinuity,
                program_date_time_ms: if spec.dated {
                    first_picture_at(s)
                } else {
                    None
                },
            });
            gap = false;
            rates.add(r.size, d);
            sample.get_or_insert(r);
        }
        let Some(sample) = sample else { continue };
        files.push((spec.media_key(&rec.stream, &rung.name), playlist.render()));
        variants.push(Variant {
            uri: format!("{}/{}.m3u8", rung.name, spec.name),
            bandwidth: rates.peak(),
            average_bandwidth: rates.average(),
            width: sample.width,
            height: sample.height,
            codecs: sample.codecs.clone(),
            frame_rate: rung.max_fps.as_f64(),
        });
    }
    start_on_middle(&mut variants);
    files.push((spec.master_key(&rec.stream), render_master(&variants)));
    files
}

/// When a segment's first picture was live: the time its last byte reached the
/// broadcaster, less its duration.
fn first_picture_at(s: &SegmentRecord) -> Option<u64> {
    let arrived = s.arrived_ms?;
    Some(arrived.saturating_sub(u64::try_from(s.duration_us / 1000).unwrap_or(0)))
}

/// Writes the playlists (media playlists first, master last); returns the master's key.
pub async fn write(
    storage: &Storage,
    rec: &StreamRecord,
    segments: &[Option<SegmentRecord>],
    spec: &Spec,
) -> Result<String, castwork_cluster::StorageError> {
    let files = render(rec, segments, spec);
    let master = spec.master_key(&rec.stream);
    for (key, text) in files {
        storage.put(&key, text.into()).await?;
    }
    Ok(master)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AcceptedRendition;
    use castwork_protocol::{
        plan_ladder, profile::parse_profiles, ObjectRef, Rational, SourceMetadata, StreamMode,
    };

    fn record() -> StreamRecord {
        let source = SourceMetadata {
            width: 640,
            height: 272,
            sample_aspect_ratio: Rational::ONE,
            rotation: 0,
            frame_rate: Rational::new(25, 1),
            video_codec: "h264".into(),
            pixel_format: "yuv420p".into(),
            color: Default::default(),
            has_audio: false,
            duration_us: None,
        };
        let plan = plan_ladder(
            &parse_profiles("P240p30fps16x9,P360p30fps16x9").unwrap(),
            &source,
        );
        StreamRecord {
            stream: "s".into(),
            session: "x".into(),
            mode: StreamMode::Vod,
            plan,
            source,
            state: "active".into(),
            total: Some(3),
            received: 3,
            done: 2,
            failed: 1,
            master_playlist: None,
            announced: false,
            skipped: 0,
            target_duration_secs: None,
            broadcaster: None,
            pixels: 0,
            fee: 0,
            secret_hash: String::new(),
            reason: None,
        }
    }

    fn segment(seq: u64, attempt: u32, duration_us: i64, sizes: [u64; 2]) -> Option<SegmentRecord> {
        let rungs = [
            ("P240p30fps16x9", 426, 182, "avc1.640015"),
            ("P360p30fps16x9", 640, 272, "avc1.64001e"),
        ];
        Some(SegmentRecord {
            seq,
            start_us: 1_000_000 + seq as i64 * 2_000_000,
            duration_us,
            frames: 50,
            has_audio: false,
            last_pts_us: 0,
            source: ObjectRef {
                key: format!("streams/s/source/{seq}.ts"),
                size: 1,
                sha256: String::new(),
            },
            attempt,
            state: "done".into(),
            accepted: Some(
                rungs
                    .iter()
                    .zip(sizes)
                    .map(|((name, w, h, codecs), size)| AcceptedRendition {
                        rung: name.to_string(),
                        key: format!("streams/s/{name}/{seq}.{attempt}.ts"),
                        size,
                        width: *w,
                        height: *h,
                        frames: 50,
                        codecs: codecs.to_string(),
                    })
                    .collect(),
            ),
            discontinuity: false,
            arrived_ms: None,
            started_ms: None,
            listed_ms: None,
            transcode_ms: None,
            deadline_ms: None,
            ready_ms: None,
            result_ms: None,
            bad_workers: Vec::new(),
        })
    }

    #[test]
    fn renders_accepted_attempts_with_a_gap_for_a_failed_segment() {
        let segments = vec![
            segment(0, 1, 2_000_000, [100_000, 250_000]),
            None,
            segment(2, 3, 3_040_000, [200_000, 300_000]),
        ];
        let files = render(&record(), &segments, &Spec::vod("index"));
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].0, "streams/s/P240p30fps16x9/index.m3u8");
        assert_eq!(
            files[0].1,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n#EXTINF:2.000000,\n0.1.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:3.040000,\n2.3.ts\n\
             #EXT-X-ENDLIST\n"
        );
        let (key, master) = &files[2];
        assert_eq!(key, "streams/s/index.m3u8");
        // 360p: peak 250 kB in 2 s = 1 Mbit/s, average 550 kB in 5.04 s.
        assert!(master.contains(
            "BANDWIDTH=1000000,AVERAGE-BANDWIDTH=873016,RESOLUTION=640x272,CODECS=\"avc1.64001e\",FRAME-RATE=25.000\nP360p30fps16x9/index.m3u8"
        ), "{master}");
        assert!(
            master.find("P240p").unwrap() < master.find("P360p").unwrap(),
            "a middle rung first (of two, the lower)"
        );
    }
}
