//! Writing a finished stream's playlists to the object store, rendered from Redis so any
//! orchestrator writes the same bytes.

use castwork_cluster::Storage;
use castwork_protocol::{
    master_playlist_key, media_playlist_key,
    playlist::{render_master, MediaPlaylist, PlaylistSegment, Variant},
    StreamMode,
};

use crate::state::{SegmentRecord, StreamRecord};

/// Renders the media playlists and the master playlist: `(key, text)` pairs, master last.
pub fn render(rec: &StreamRecord, segments: &[Option<SegmentRecord>]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut variants = Vec::new();
    for rung in &rec.plan.rungs {
        let mut playlist = MediaPlaylist {
            vod: rec.mode == StreamMode::Vod,
            ended: true,
            ..Default::default()
        };
        let (mut gap, mut bits, mut secs, mut peak) = (false, 0f64, 0f64, 0f64);
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
                discontinuity: gap,
            });
            gap = false;
            bits += r.size as f64 * 8.0;
            secs += d;
            if d > 0.0 {
                peak = peak.max(r.size as f64 * 8.0 / d);
            }
            sample.get_or_insert(r);
        }
        let Some(sample) = sample else { continue };
        files.push((
            media_playlist_key(&rec.stream, &rung.name),
            playlist.render(),
        ));
        variants.push(Variant {
            uri: format!("{}/index.m3u8", rung.name),
            bandwidth: peak.ceil() as u64,
            average_bandwidth: if secs > 0.0 {
                (bits / secs).ceil() as u64
            } else {
                0
            },
            width: sample.width,
            height: sample.height,
            codecs: sample.codecs.clone(),
            frame_rate: rung.max_fps.as_f64(),
        });
    }
    // Highest quality first is what most players expect to see first.
    variants.sort_by_key(|v| std::cmp::Reverse(v.bandwidth));
    files.push((master_playlist_key(&rec.stream), render_master(&variants)));
    files
}

/// Writes the playlists; returns the master playlist's key.
pub async fn write(
    storage: &Storage,
    rec: &StreamRecord,
    segments: &[Option<SegmentRecord>],
) -> Result<String, castwork_cluster::StorageError> {
    let files = render(rec, segments);
    let master = master_playlist_key(&rec.stream);
    for (key, text) in files {
        storage.put(&key, text.into()).await?;
    }
    Ok(master)
}
