//! Checking a worker's result before it is accepted: the objects exist with the reported
//! size and hash, and each rendition has the rung's size, starts with a keyframe at the
//! source segment's time, has no more frames than the source (and the last picture held up
//! to the segment's end, where its audio outlasts its video), covers the whole segment, and
//! carries audio exactly when the source does.

use castwork_cluster::Storage;
use castwork_media::MediaInfo;
use castwork_protocol::{rendition_key, LadderPlan, Rung, SegmentResult, SourceMetadata};
use sha2::{Digest, Sha256};

use crate::state::{AcceptedRendition, SegmentRecord};

/// Why a result was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The worker's output is wrong: retry elsewhere.
    #[error("{0}")]
    Bad(String),
    /// We could not check (object store down): try again later.
    #[error("cannot check the result: {0}")]
    Unavailable(String),
}

/// Checks every rendition of a result against the segment and the stream's ladder; with
/// `min_psnr_db`, also the picture: each rendition's luma PSNR against the source segment.
pub async fn check_result(
    storage: &Storage,
    seg: &SegmentRecord,
    plan: &LadderPlan,
    source: &SourceMetadata,
    result: &SegmentResult,
    min_psnr_db: Option<f64>,
) -> Result<Vec<AcceptedRendition>, CheckError> {
    let bad = |m: String| Err(CheckError::Bad(m));
    let mut names: Vec<&str> = result.renditions.iter().map(|r| r.rung.as_str()).collect();
    let mut wanted: Vec<&str> = plan.rungs.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    wanted.sort_unstable();
    if names != wanted {
        return bad(format!(
            "renditions {names:?} do not match the ladder {wanted:?}"
        ));
    }
    let fps = source.frame_rate.as_f64();
    let frame_us = if fps > 0.5 {
        (1e6 / fps) as i64
    } else {
        40_000
    };
    let tmp = tempfile::tempdir().map_err(|e| CheckError::Unavailable(e.to_string()))?;
    // The renditions are checked at once: fetching and demuxing one does not wait for
    // another.
    let accepted = futures_util::future::try_join_all(
        result
            .renditions
            .iter()
            .map(|out| check_rendition(storage, tmp.path(), seg, plan, result, out, frame_us)),
    )
    .await?;
    if let Some(min) = min_psnr_db {
        check_quality(storage, tmp.path(), seg, &accepted, source.rotation, min).await?;
    }
    Ok(accepted)
}

/// Compares pictures from the whole of every rendition (already fetched into `tmp` by the
/// checks above: first, middle, last and some at random) with the source segment's, turned
/// upright by `rotation` as the transcoder turns them, and refuses a rendition with one
/// under `min_db`: black or frozen pictures, another video, garbage, anywhere in it.
async fn check_quality(
    storage: &Storage,
    tmp: &std::path::Path,
    seg: &SegmentRecord,
    accepted: &[AcceptedRendition],
    rotation: u32,
    min_db: f64,
) -> Result<(), CheckError> {
    let data = storage
        .get(&seg.source.key)
        .await
        .map_err(|e| CheckError::Unavailable(e.to_string()))?;
    let (ext, formats) = castwork_protocol::source_container(&seg.source.key);
    let source = tmp.join(format!("source.{ext}"));
    tokio::fs::write(&source, &data)
        .await
        .map_err(|e| CheckError::Unavailable(e.to_string()))?;
    let paths: Vec<_> = accepted
        .iter()
        .map(|a| tmp.join(format!("{}.ts", a.rung)))
        .collect();
    // Drawn here, at check time: the worker cannot know which pictures are compared.
    let seed = uuid::Uuid::new_v4().as_u64_pair().0;
    let scores = tokio::task::spawn_blocking(move || {
        castwork_media::quality::score(
            &source,
            formats,
            &paths,
            rotation,
            castwork_media::quality::RANDOM_PICTURES,
            seed,
        )
    })
    .await
    .map_err(|e| CheckError::Bad(format!("{}: the quality check failed: {e}", seg.source.key)))?
    .map_err(|e| CheckError::Bad(format!("{}: quality check failed: {e}", seg.source.key)))?;
    for (a, score) in accepted.iter().zip(&scores) {
        if let Some(why) = score.verdict(min_db) {
            return Err(CheckError::Bad(format!(
                "{}: quality check failed: {why}",
                a.key
            )));
        }
    }
    Ok(())
}

/// The most bytes a rendition of a segment may have: eight times the rung's bitrate over
/// the segment (x264's VBV keeps it near 1.2 times), and at least 1 MiB for short ones.
pub fn rendition_cap(bitrate: u64, duration_us: i64) -> u64 {
    let secs = duration_us.max(0) as u64 / 1_000_000 + 1;
    (bitrate / 8)
        .saturating_mul(secs)
        .saturating_mul(8)
        .max(1 << 20)
}

/// Checks one rendition of a result.
async fn check_rendition(
    storage: &Storage,
    tmp: &std::path::Path,
    seg: &SegmentRecord,
    plan: &LadderPlan,
    result: &SegmentResult,
    out: &castwork_protocol::RenditionOutput,
    frame_us: i64,
) -> Result<AcceptedRendition, CheckError> {
    let bad = |m: String| Err(CheckError::Bad(m));
    let Some(rung) = plan.rungs.iter().find(|r| r.name == out.rung) else {
        return bad(format!("unknown rung {}", out.rung));
    };
    let key = rendition_key(
        &result.stream,
        &out.rung,
        result.seq,
        result.attempt,
        &out.object.sha256,
    );
    if out.object.key != key {
        return bad(format!(
            "{} is not this attempt's key {key}",
            out.object.key
        ));
    }
    // Bounded before anything is read: the reported size under the rung's cap, and the
    // stored object's size the reported one.
    let cap = rendition_cap(rung.bitrate, seg.duration_us);
    if out.object.size > cap {
        return bad(format!(
            "{key}: {} bytes is over this rung's cap of {cap} bytes",
            out.object.size
        ));
    }
    if out.object.size == 0 {
        return bad(format!("{key} is reported empty"));
    }
    // One read of at most the reported size, which also tells the stored object's size.
    let whole = castwork_cluster::storage::ByteRange::Within(0, out.object.size - 1);
    let data = match storage.get_range(&key, whole).await {
        Ok(castwork_cluster::storage::Ranged::Part { data, total, .. })
            if total == out.object.size =>
        {
            data
        }
        Ok(
            castwork_cluster::storage::Ranged::Part { total, .. }
            | castwork_cluster::storage::Ranged::Unsatisfiable { total },
        ) => {
            return bad(format!(
                "{key} holds {total} bytes, not the {} reported",
                out.object.size
            ))
        }
        Err(castwork_cluster::StorageError::NotFound(k)) => {
            return bad(format!("rendition {k} was not uploaded"))
        }
        Err(e) => return Err(CheckError::Unavailable(e.to_string())),
    };
    if data.len() as u64 != out.object.size
        || hex::encode(Sha256::digest(&data)) != out.object.sha256
    {
        return bad(format!("{key} does not match its reported size and sha256"));
    }
    let path = tmp.join(format!("{}.ts", out.rung));
    tokio::fs::write(&path, &data)
        .await
        .map_err(|e| CheckError::Unavailable(e.to_string()))?;
    let info = tokio::task::spawn_blocking(move || castwork_media::inspect(&path, "mpegts"))
        .await
        // A panic while reading the rendition is the rendition's fault.
        .map_err(|e| CheckError::Bad(format!("{key}: inspecting it failed: {e}")))?
        .map_err(|e| CheckError::Bad(format!("{key}: {e}")))?;
    let problems = rendition_problems(seg, rung, &info, frame_us);
    if !problems.is_empty() {
        return bad(format!("{key}: {}", problems.join(", ")));
    }
    Ok(AcceptedRendition {
        rung: out.rung.clone(),
        key,
        size: out.object.size,
        width: info.width,
        height: info.height,
        frames: info.frames,
        codecs: info.codecs(),
    })
}

/// Everything wrong with a rendition (`info`, read from it) of `seg` on `rung`, in a source
/// whose frames are `frame_us` apart; empty when it passes.
///
/// Pictures past the source's last are accepted only as the last picture held to the
/// segment's end, the way the worker holds it where the audio outlasts the video
/// ([`castwork_media::transcode::held_pictures`]): at most that many more frames than the
/// source, the last one shown before the segment's end.
fn rendition_problems(
    seg: &SegmentRecord,
    rung: &Rung,
    info: &MediaInfo,
    frame_us: i64,
) -> Vec<String> {
    // Frames are dropped only under a frame-rate cap: without one the rendition ends on
    // the source's last frame, with one within a frame interval of the cap before it.
    let (slack_us, min_frames) = match rung.drop_to_fps.map(|r| r.as_f64()) {
        Some(f) if f > 0.0 => ((1e6 / f) as u64 + 1_000, 1),
        _ => (1_000, (seg.frames * 9).div_ceil(10).max(1)),
    };
    // Timestamps round on the way through the transport stream: 1 ms either way.
    let seg_end = seg.start_us.saturating_add(seg.duration_us);
    let held = castwork_media::transcode::held_pictures(seg.last_pts_us, frame_us, seg_end + 1_000);
    let held_i64 = i64::try_from(held).unwrap_or(i64::MAX);
    let last_allowed = seg
        .last_pts_us
        .saturating_add(held_i64.saturating_mul(frame_us));
    let end_gap = seg.last_pts_us.saturating_sub(info.last_pts_us);
    let problems = [
        ((info.width, info.height) != (rung.width, rung.height)).then(|| {
            format!(
                "size {}x{} instead of {}x{}",
                info.width, info.height, rung.width, rung.height
            )
        }),
        (info.video_codec != "h264").then(|| format!("codec {} instead of h264", info.video_codec)),
        (info.pixel_format != "yuv420p").then(|| format!("pixel format {}", info.pixel_format)),
        (!info.starts_with_keyframe).then(|| "does not start with a keyframe".to_string()),
        (info.start_us.abs_diff(seg.start_us) > frame_us as u64 + 1_000).then(|| {
            format!(
                "starts at {} us instead of {} us",
                info.start_us, seg.start_us
            )
        }),
        (info.frames > seg.frames.saturating_add(held) || info.frames < min_frames).then(|| {
            format!(
                "{} frames from a {}-frame source segment{}",
                info.frames,
                seg.frames,
                if held > 0 {
                    format!(" with {held} held to its end")
                } else {
                    String::new()
                }
            )
        }),
        (info.last_pts_us > last_allowed.saturating_add(1_000) || end_gap > slack_us as i64).then(
            || {
                format!(
                    "last frame at {} us, the source's at {} us{}",
                    info.last_pts_us,
                    seg.last_pts_us,
                    if held > 0 {
                        format!(
                            " held to at most {last_allowed} us (the segment ends at {seg_end} us)"
                        )
                    } else {
                        String::new()
                    }
                )
            },
        ),
        (seg.has_audio != info.audio_codec.is_some()).then(|| {
            format!(
                "audio {:?} but the source segment has audio: {}",
                info.audio_codec, seg.has_audio
            )
        }),
    ];
    problems.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use castwork_protocol::{H264Profile, ObjectRef, Rational};

    use super::*;

    const FRAME_US: i64 = 33_333;

    #[test]
    fn a_renditions_size_is_capped_by_its_rung_and_segment() {
        // 1 Mbit/s over 2 s: eight times the nominal 250 kB (over 3 s, rounding up).
        assert_eq!(rendition_cap(1_000_000, 2_000_000), 3_000_000);
        // Short or low-rate ones get at least 1 MiB.
        assert_eq!(rendition_cap(100_000, 500_000), 1 << 20);
        // Absurd inputs do not overflow.
        assert_eq!(rendition_cap(u64::MAX, i64::MAX), u64::MAX);
        assert_eq!(rendition_cap(1_000_000, -5), 1 << 20);
    }

    /// The last segment of a 30 fps clip whose audio outlasts its video: 60 pictures from
    /// 3 s (the last at 4.967 s), and audio to 8.019 s.
    fn last_segment() -> SegmentRecord {
        SegmentRecord {
            seq: 1,
            start_us: 3_000_000,
            duration_us: 5_019_000,
            frames: 60,
            has_audio: true,
            last_pts_us: 3_000_000 + 59 * FRAME_US,
            source: ObjectRef {
                key: "streams/s/source/1.ts".into(),
                size: 1,
                sha256: String::new(),
            },
            attempt: 1,
            state: "transcoding".into(),
            accepted: None,
            discontinuity: false,
            arrived_ms: None,
            started_ms: None,
            listed_ms: None,
            transcode_ms: None,
            deadline_ms: None,
            ready_ms: None,
            result_ms: None,
            bad_workers: Vec::new(),
        }
    }

    fn rung() -> Rung {
        Rung {
            name: "P144p30fps16x9".into(),
            width: 256,
            height: 144,
            bitrate: 400_000,
            max_fps: Rational::new(30, 1),
            drop_to_fps: None,
            gop_secs: None,
            profile: H264Profile::High,
        }
    }

    /// A rendition of `seg` with `frames` pictures, the last at `last_pts_us`.
    fn rendition(seg: &SegmentRecord, frames: u64, last_pts_us: i64) -> MediaInfo {
        MediaInfo {
            format_name: "mpegts".into(),
            video_codec: "h264".into(),
            width: 256,
            height: 144,
            pixel_format: "yuv420p".into(),
            frames,
            start_us: seg.start_us,
            last_pts_us,
            starts_with_keyframe: true,
            keyframes_us: vec![seg.start_us],
            video_codecs: Some("avc1.64000c".into()),
            audio_codec: Some("aac".into()),
            audio_packets: 235,
        }
    }

    #[test]
    fn the_last_picture_held_to_the_segments_end_is_accepted() {
        let seg = last_segment();
        // 91 pictures from 5.000 s to 8.000 s: the last one before the end (8.019 s).
        let held = rendition(&seg, 60 + 91, seg.last_pts_us + 91 * FRAME_US);
        assert_eq!(
            rendition_problems(&seg, &rung(), &held, FRAME_US),
            Vec::<String>::new()
        );
        // A worker that holds nothing is not wrong either.
        let plain = rendition(&seg, 60, seg.last_pts_us);
        assert!(rendition_problems(&seg, &rung(), &plain, FRAME_US).is_empty());
    }

    #[test]
    fn pictures_past_the_segments_end_are_refused() {
        let seg = last_segment();
        // One more picture: at 8.033 s, past the segment's end.
        let late = rendition(&seg, 60 + 92, seg.last_pts_us + 92 * FRAME_US);
        let p = rendition_problems(&seg, &rung(), &late, FRAME_US);
        assert!(
            p.iter()
                .any(|x| x.contains("152 frames from a 60-frame source segment"))
                && p.iter().any(|x| x.contains("last frame at")),
            "{p:?}"
        );
        // Extra pictures that stay within the time are refused by their count.
        let crowded = rendition(&seg, 200, seg.last_pts_us + 91 * FRAME_US);
        let p = rendition_problems(&seg, &rung(), &crowded, FRAME_US);
        assert!(p.iter().any(|x| x.contains("200 frames")), "{p:?}");
    }

    #[test]
    fn without_audio_past_the_video_no_picture_may_be_added() {
        // The segment ends one frame after its last picture: nothing is held.
        let seg = SegmentRecord {
            duration_us: 60 * FRAME_US,
            ..last_segment()
        };
        let ok = rendition(&seg, 60, seg.last_pts_us);
        assert!(rendition_problems(&seg, &rung(), &ok, FRAME_US).is_empty());
        let extra = rendition(&seg, 61, seg.last_pts_us + FRAME_US);
        let p = rendition_problems(&seg, &rung(), &extra, FRAME_US);
        assert_eq!(p.len(), 2, "{p:?}");
        // A rendition that stops early is refused as before.
        let early = rendition(&seg, 59, seg.last_pts_us - FRAME_US);
        let p = rendition_problems(&seg, &rung(), &early, FRAME_US);
        assert!(p.iter().any(|x| x.contains("last frame at")), "{p:?}");
    }
}
