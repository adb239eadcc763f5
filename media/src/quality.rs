//! Quality check of a rendition against its source segment: the PSNR of the luma plane
//! over the first frames, the source picture scaled to the rendition's size as the
//! transcoder scales it. It tells a real encode (30-50 dB) from garbage, black pictures
//! or another video (under 15 dB); it is not a perceptual score.

use std::path::Path;

use ffmpeg_next::{codec, format::Pixel, frame, media, software::scaling, Packet, Rational};

use crate::inspect::open_restricted;
use crate::{bad, ts_to_us, MediaError};

/// The first `n` decoded video frames of a file, with their times in microseconds.
fn first_frames(
    path: &Path,
    formats: &str,
    n: usize,
) -> Result<Vec<(i64, frame::Video)>, MediaError> {
    let mut ictx = open_restricted(path, formats)?;
    let stream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| MediaError::BadInput(format!("{}: no video stream", path.display())))?;
    let (index, tb): (usize, Rational) = (stream.index(), stream.time_base());
    let mut decoder = codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| bad("unreadable video stream", e))?;
    let mut frames = Vec::new();
    let mut packet = Packet::empty();
    let mut decoded = frame::Video::empty();
    let what = path.display().to_string();
    let mut take = |decoder: &mut ffmpeg_next::decoder::Video, frames: &mut Vec<_>| {
        while frames.len() < n && decoder.receive_frame(&mut decoded).is_ok() {
            let ts = decoded.timestamp().or(decoded.pts()).unwrap_or(0);
            frames.push((ts_to_us(ts, tb), decoded.clone()));
        }
    };
    while frames.len() < n && crate::read_packet(&mut ictx, &mut packet, &what)? {
        if packet.stream() == index {
            let _ = decoder.send_packet(&packet);
            take(&mut decoder, &mut frames);
        }
    }
    let _ = decoder.send_eof();
    take(&mut decoder, &mut frames);
    Ok(frames)
}

/// PSNR of two luma planes of the same size, in dB (100 for identical planes).
fn luma_psnr_of(a: &frame::Video, b: &frame::Video) -> f64 {
    let (w, h) = (a.width() as usize, a.height() as usize);
    let (sa, sb) = (a.stride(0), b.stride(0));
    let (da, db) = (a.data(0), b.data(0));
    let mut sum = 0u64;
    for y in 0..h {
        let (ra, rb) = (&da[y * sa..y * sa + w], &db[y * sb..y * sb + w]);
        sum += ra
            .iter()
            .zip(rb)
            .map(|(p, q)| u64::from(p.abs_diff(*q)).pow(2))
            .sum::<u64>();
    }
    let mse = sum as f64 / (w * h).max(1) as f64;
    if mse == 0.0 {
        100.0
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Mean luma PSNR of the rendition's first `frames` frames against the source frames with
/// the same timestamps; `None` when no frame pair matched.
pub fn luma_psnr(
    source: &Path,
    source_formats: &str,
    rendition: &Path,
    frames: usize,
) -> Result<Option<f64>, MediaError> {
    crate::init();
    let out = first_frames(rendition, "mpegts", frames)?;
    let Some((_, first)) = out.first() else {
        return Ok(None);
    };
    let (w, h) = (first.width(), first.height());
    // Enough source frames to cover a rendition whose frame rate was capped.
    let src = first_frames(source, source_formats, frames * 4)?;
    let Some((_, s0)) = src.first() else {
        return Ok(None);
    };
    let mut scaler = scaling::Context::get(
        s0.format(),
        s0.width(),
        s0.height(),
        Pixel::YUV420P,
        w,
        h,
        scaling::Flags::BILINEAR,
    )
    .map_err(|e| bad("scaling the source for the quality check", e))?;
    let mut scores = Vec::new();
    for (t, r) in &out {
        let Some((st, s)) = src.iter().min_by_key(|(st, _)| st.abs_diff(*t)) else {
            continue;
        };
        // Within a millisecond: the rendition keeps the source's timestamps.
        if st.abs_diff(*t) > 1_000 || (s.width(), s.height()) != (s0.width(), s0.height()) {
            continue;
        }
        let mut scaled = frame::Video::empty();
        scaler
            .run(s, &mut scaled)
            .map_err(|e| bad("scaling the source for the quality check", e))?;
        if (r.width(), r.height()) == (w, h) {
            scores.push(luma_psnr_of(&scaled, r));
        }
    }
    Ok((!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64))
}
