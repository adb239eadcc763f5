//! Cutting a source into keyframe-aligned source segments without re-encoding the video.

use std::path::{Path, PathBuf};

use castwork_protocol::cut::{CutDecision, CutPlanner};
use ffmpeg_next::{codec, encoder, format, Packet, Rational};

use crate::audio::AacEncoder;
use crate::probe::{open_source, ProbedInput, SegmentContainer};
use crate::{bad, ffi, internal, nal, ts_to_us, us_to_ts, MediaError};

/// The earliest a stream's first frame may start: room for encoder B-frame delay, so no
/// decode timestamp in any segment or rendition is ever negative.
pub const MIN_START_US: i64 = 1_000_000;

/// How to cut.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    /// Target duration; a segment starts at the first cut point at or after it.
    pub target_us: i64,
    /// Directory the segment files are written to.
    pub dir: PathBuf,
}

/// A finished source segment on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct CutSegment {
    pub seq: u64,
    pub path: PathBuf,
    pub start_us: i64,
    pub duration_us: i64,
    pub frames: u64,
}

/// What cutting a whole input found.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSummary {
    pub segments: u64,
    pub longest_us: i64,
    /// Segments ran well past the target because keyframes are rare.
    pub sparse_keyframes: bool,
    /// Constant shift added to every timestamp so the stream starts at or after
    /// [`MIN_START_US`] (0 for most sources that do not start at zero).
    pub offset_us: i64,
    /// Video frames before the first keyframe, which cannot be decoded and were dropped.
    pub dropped_frames: u64,
}

enum AudioPlan {
    Copy {
        index: usize,
        tb: Rational,
        params: codec::Parameters,
    },
    Encode {
        index: usize,
        enc: Box<AacEncoder>,
    },
}

struct OpenSegment {
    octx: format::context::Output,
    seq: u64,
    path: PathBuf,
    start_us: i64,
    frames: u64,
    video_tb: Rational,
    audio_tb: Option<Rational>,
}

fn open_segment(
    dir: &Path,
    seq: u64,
    container: SegmentContainer,
    video: &codec::Parameters,
    audio: Option<&codec::Parameters>,
) -> Result<OpenSegment, MediaError> {
    let path = dir.join(format!("{seq}.{}", container.extension()));
    let mut octx = format::output_as(&path, container.muxer())
        .map_err(|e| internal("creating a segment file", e))?;
    {
        let mut vs = octx
            .add_stream(encoder::find(codec::Id::None))
            .map_err(|e| internal("segment video stream", e))?;
        vs.set_parameters(video.clone());
        ffi::clear_codec_tag(&mut vs);
    }
    if let Some(a) = audio {
        let mut s = octx
            .add_stream(encoder::find(codec::Id::None))
            .map_err(|e| internal("segment audio stream", e))?;
        s.set_parameters(a.clone());
        ffi::clear_codec_tag(&mut s);
    }
    octx.write_header()
        .map_err(|e| bad("this video cannot be stored in a segment", e))?;
    let video_tb = octx
        .stream(0)
        .map(|s| s.time_base())
        .unwrap_or(Rational::new(1, 90000));
    let audio_tb = audio.and_then(|_| octx.stream(1).map(|s| s.time_base()));
    Ok(OpenSegment {
        octx,
        seq,
        path,
        start_us: 0,
        frames: 0,
        video_tb,
        audio_tb,
    })
}

/// Shifts a packet by `offset_us`, rescales it into the segment's stream and writes it.
fn write_packet(
    seg: &mut OpenSegment,
    mut packet: Packet,
    in_tb: Rational,
    offset_us: i64,
    out_index: usize,
) -> Result<(), MediaError> {
    let out_tb = if out_index == 0 {
        seg.video_tb
    } else {
        seg.audio_tb.unwrap_or(in_tb)
    };
    let shift = us_to_ts(offset_us, in_tb);
    packet.set_pts(packet.pts().map(|t| t + shift));
    packet.set_dts(packet.dts().map(|t| t + shift));
    packet.rescale_ts(in_tb, out_tb);
    packet.set_position(-1);
    packet.set_stream(out_index);
    packet
        .write_interleaved(&mut seg.octx)
        .map_err(|e| bad("writing a segment", e))
}

/// Whether a video packet starts a closed GOP, so a segment may begin with it.
fn is_cut_point(id: codec::Id, packet: &Packet) -> bool {
    if !packet.is_key() {
        return false;
    }
    match (id, packet.data()) {
        (codec::Id::H264, Some(d)) => nal::h264_is_idr(d),
        (codec::Id::HEVC, Some(d)) => nal::hevc_is_closed_irap(d),
        _ => true,
    }
}

/// Cuts `input` into segments, calling `on_segment` as each one is finished (so uploads can
/// start before the whole file is cut).
pub fn segment_file<F>(
    input: &Path,
    probed: &ProbedInput,
    opts: &SegmentOptions,
    mut on_segment: F,
) -> Result<SegmentSummary, MediaError>
where
    F: FnMut(CutSegment) -> Result<(), MediaError>,
{
    crate::init();
    let mut ictx = open_source(input)?;
    let vi = probed.video_index;
    let vstream = ictx
        .stream(vi)
        .ok_or_else(|| MediaError::BadInput("video stream vanished".into()))?;
    let (vtb, vparams) = (vstream.time_base(), vstream.parameters());
    let vid = vparams.id();
    let fps = probed.metadata.frame_rate.as_f64();
    let frame_us = if fps > 0.5 {
        (1e6 / fps) as i64
    } else {
        40_000
    };
    let mut audio = match probed.audio_index.and_then(|i| ictx.stream(i)) {
        Some(a) if a.parameters().id() == codec::Id::AAC => Some(AudioPlan::Copy {
            index: a.index(),
            tb: a.time_base(),
            params: a.parameters(),
        }),
        Some(a) => Some(AudioPlan::Encode {
            index: a.index(),
            enc: Box::new(AacEncoder::new(&a)?),
        }),
        None => None,
    };
    let audio_params = audio.as_ref().map(|a| match a {
        AudioPlan::Copy { params, .. } => params.clone(),
        AudioPlan::Encode { enc, .. } => enc.parameters(),
    });

    let mut planner = CutPlanner::new(opts.target_us);
    let mut offset_us = 0;
    let mut current: Option<OpenSegment> = None;
    let mut next_seq = 0;
    let mut end_us = i64::MIN;
    let mut dropped = 0;
    let mut encoded = Vec::new();
    let mut packet = Packet::empty();
    let finish = |seg: OpenSegment, end: i64, cb: &mut F| -> Result<(), MediaError> {
        let mut seg = seg;
        seg.octx
            .write_trailer()
            .map_err(|e| internal("finishing a segment", e))?;
        cb(CutSegment {
            seq: seg.seq,
            path: seg.path,
            start_us: seg.start_us,
            duration_us: (end - seg.start_us).max(1),
            frames: seg.frames,
        })
    };
    loop {
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg_next::Error::Eof) => break,
            Err(ffmpeg_next::Error::InvalidData) => continue,
            Err(e) => return Err(bad(&format!("{}: read error", input.display()), e)),
        }
        let pkt = std::mem::replace(&mut packet, Packet::empty());
        if pkt.stream() == vi {
            let Some(ts) = pkt.pts().or(pkt.dts()) else {
                continue;
            };
            let pts_us = ts_to_us(ts, vtb);
            match planner.on_video_frame(pts_us, is_cut_point(vid, &pkt)) {
                CutDecision::Drop => {
                    dropped += 1;
                    continue;
                }
                CutDecision::StartFirst => {
                    offset_us = (MIN_START_US - pts_us).max(0);
                }
                CutDecision::Cut => {
                    if let Some(seg) = current.take() {
                        finish(seg, pts_us + offset_us, &mut on_segment)?;
                    }
                }
                CutDecision::Continue => {}
            }
            if current.is_none() {
                let mut seg = open_segment(
                    &opts.dir,
                    next_seq,
                    probed.container,
                    &vparams,
                    audio_params.as_ref(),
                )?;
                seg.start_us = pts_us + offset_us;
                next_seq += 1;
                current = Some(seg);
            }
            let dur_us = if pkt.duration() > 0 {
                ts_to_us(pkt.duration(), vtb)
            } else {
                frame_us
            };
            end_us = end_us.max(pts_us + offset_us + dur_us);
            if let Some(seg) = current.as_mut() {
                seg.frames += 1;
                write_packet(seg, pkt, vtb, offset_us, 0)?;
            }
        } else if let (Some(seg), Some(plan)) = (current.as_mut(), audio.as_mut()) {
            match plan {
                AudioPlan::Copy { index, tb, .. } if *index == pkt.stream() => {
                    write_packet(seg, pkt, *tb, offset_us, 1)?;
                }
                AudioPlan::Encode { index, enc } if *index == pkt.stream() => {
                    enc.push(Some(&pkt), &mut encoded)?;
                    let tb = enc.time_base();
                    for p in encoded.drain(..) {
                        write_packet(seg, p, tb, offset_us, 1)?;
                    }
                }
                _ => {}
            }
        }
    }
    let Some(mut seg) = current.take() else {
        return Err(MediaError::BadInput(format!(
            "{}: no decodable video frame (no keyframe found)",
            input.display()
        )));
    };
    if let Some(AudioPlan::Encode { enc, .. }) = audio.as_mut() {
        enc.push(None, &mut encoded)?;
        let tb = enc.time_base();
        for p in encoded.drain(..) {
            write_packet(&mut seg, p, tb, offset_us, 1)?;
        }
    }
    planner.finish(end_us - offset_us);
    finish(seg, end_us, &mut on_segment)?;
    Ok(SegmentSummary {
        segments: next_seq,
        longest_us: planner.longest_us(),
        sparse_keyframes: planner.keyframes_sparse(),
        offset_us,
        dropped_frames: dropped,
    })
}
