//! Checking a worker's result before it is accepted: the objects exist with the reported
//! size and hash, and each rendition has the rung's size, starts with a keyframe at the
//! source segment's time, has no more frames than the source, covers the whole segment, and
//! carries audio exactly when the source does.

use castwork_cluster::Storage;
use castwork_protocol::{rendition_key, LadderPlan, SegmentResult, SourceMetadata};
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
    // The transcoder rotates a rotated source; this check compares unrotated pictures.
    if let (Some(min), 0) = (min_psnr_db, source.rotation) {
        check_quality(storage, tmp.path(), seg, &accepted, min).await?;
    }
    Ok(accepted)
}

/// Decodes the first frames of every rendition (already fetched into `tmp` by the checks
/// above) and of the source segment, and refuses a rendition whose luma PSNR against the
/// scaled source is under `min_db`: black or frozen pictures, another video, garbage.
async fn check_quality(
    storage: &Storage,
    tmp: &std::path::Path,
    seg: &SegmentRecord,
    accepted: &[AcceptedRendition],
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
    for a in accepted {
        let (src, rendition) = (source.clone(), tmp.join(format!("{}.ts", a.rung)));
        let psnr = tokio::task::spawn_blocking(move || {
            castwork_media::quality::luma_psnr(&src, formats, &rendition, 3)
        })
        .await
        .map_err(|e| CheckError::Bad(format!("{}: the quality check failed: {e}", a.key)))?
        .map_err(|e| CheckError::Bad(format!("{}: {e}", a.key)))?;
        match psnr {
            Some(db) if db < min_db => {
                return Err(CheckError::Bad(format!(
                    "{}: quality check failed: luma PSNR {db:.1} dB against the source, under {min_db} dB",
                    a.key
                )))
            }
            Some(_) => {}
            None => {
                return Err(CheckError::Bad(format!(
                    "{}: quality check failed: no frame matches the source's",
                    a.key
                )))
            }
        }
    }
    Ok(())
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
    let data = match storage.get(&key).await {
        Ok(d) => d,
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
    // Frames are dropped only under a frame-rate cap: without one the rendition ends on
    // the source's last frame, with one within a frame interval of the cap before it.
    let (slack_us, min_frames) = match rung.drop_to_fps.map(|r| r.as_f64()) {
        Some(f) if f > 0.0 => ((1e6 / f) as u64 + 1_000, 1),
        _ => (1_000, (seg.frames * 9).div_ceil(10).max(1)),
    };
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
        (info.frames > seg.frames || info.frames < min_frames).then(|| {
            format!(
                "{} frames from a {}-frame source segment",
                info.frames, seg.frames
            )
        }),
        (end_gap < -1_000 || end_gap.unsigned_abs() > slack_us).then(|| {
            format!(
                "last frame at {} us, the source's at {} us",
                info.last_pts_us, seg.last_pts_us
            )
        }),
        (seg.has_audio != info.audio_codec.is_some()).then(|| {
            format!(
                "audio {:?} but the source segment has audio: {}",
                info.audio_codec, seg.has_audio
            )
        }),
    ];
    let problems: Vec<String> = problems.into_iter().flatten().collect();
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
