//! Cutting a source into keyframe-aligned source segments without re-encoding the video.

use std::path::{Path, PathBuf};

use castwork_protocol::cut::{CutDecision, CutPlanner};
use ffmpeg_next::{codec, encoder, format, Packet, Rational};

use crate::audio::AacEncoder;
use crate::clean_start::StartCheck;
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
    /// A fixed shift added to every timestamp, instead of the one that makes the first
    /// frame start at [`MIN_START_US`]: pieces of one live stream cut one by one must all
    /// get the same shift.
    pub offset_us: Option<i64>,
    /// Only these demuxers may open the input (e.g. `mpegts` for segments pushed over HTTP).
    pub formats: Option<&'static str>,
}

impl SegmentOptions {
    /// Cuts every `target_us`, with the default shift and any demuxer.
    pub fn new(target_us: i64, dir: PathBuf) -> Self {
        SegmentOptions {
            target_us,
            dir,
            offset_us: None,
            formats: None,
        }
    }
}

/// A finished source segment on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct CutSegment {
    pub seq: u64,
    pub path: PathBuf,
    pub start_us: i64,
    pub duration_us: i64,
    pub frames: u64,
    /// Presentation time of the last-shown video frame.
    pub last_pts_us: i64,
    /// Audio packets in the segment (0: this stretch of the source has no audio).
    pub audio_packets: u64,
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
    /// Video frames before the first clean random access point (a keyframe where a
    /// decoder can start: see [`crate::check_clean_start`]), which were dropped.
    pub dropped_frames: u64,
    /// Keyframes refused as cut points because a segment starting there does not decode
    /// cleanly on its own; each one's pictures stayed in the segment before it.
    pub refused_cuts: u64,
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
    last_pts_us: i64,
    frames: u64,
    audio_packets: u64,
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
        last_pts_us: i64::MIN,
        frames: 0,
        audio_packets: 0,
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

/// Whether a video keyframe starts a closed GOP, as far as its own bytes tell: always for
/// H.264 IDR and HEVC IDR/BLA pictures, by the GOP header's flag for MPEG-1/2 and MPEG-4
/// part 2, and `None` (ask the next frame) otherwise.
fn closed_gop(id: codec::Id, packet: &Packet) -> Option<bool> {
    if !packet.is_key() {
        return Some(false);
    }
    let data = packet.data()?;
    match id {
        codec::Id::H264 => Some(nal::h264_is_idr(data)),
        codec::Id::HEVC => Some(nal::hevc_is_closed_irap(data)),
        codec::Id::MPEG1VIDEO | codec::Id::MPEG2VIDEO => nal::mpeg2_gop_closed(data).filter(|c| *c),
        codec::Id::MPEG4 => nal::mpeg4_gov_closed(data).filter(|c| *c),
        _ => None,
    }
}

/// A packet read after a cut whose trial decode has no verdict yet.
enum Held {
    Video { pkt: Packet, cut_point: bool },
    Audio { pkt: Packet, tb: Rational },
}

/// A cut on trial: a segment may start here only if a decoder can start here
/// ([`StartCheck`]). Packets read meanwhile wait for the verdict.
struct PendingCut {
    check: StartCheck,
    /// The planner as it was before this cut, to go back to when the cut is refused.
    planner: CutPlanner,
    /// Source presentation time of the cut's frame.
    pts_us: i64,
    held: Vec<Held>,
}

/// The state of one cut in progress.
struct Cutter<'a, F> {
    opts: &'a SegmentOptions,
    probed: &'a ProbedInput,
    vtb: Rational,
    vparams: codec::Parameters,
    audio_params: Option<codec::Parameters>,
    frame_us: i64,
    planner: CutPlanner,
    offset_us: i64,
    current: Option<OpenSegment>,
    pending: Option<PendingCut>,
    next_seq: u64,
    /// End of the latest video frame written (shifted), the end of the last segment.
    end_us: i64,
    /// End of the latest audio packet written (shifted): see [`last_segment_end`].
    audio_end_us: i64,
    dropped: u64,
    refused: u64,
    on_segment: F,
}

impl<F> Cutter<'_, F>
where
    F: FnMut(CutSegment) -> Result<(), MediaError>,
{
    fn finish(&mut self, end: i64) -> Result<(), MediaError> {
        let Some(mut seg) = self.current.take() else {
            return Ok(());
        };
        seg.octx
            .write_trailer()
            .map_err(|e| internal("finishing a segment", e))?;
        (self.on_segment)(CutSegment {
            seq: seg.seq,
            path: seg.path,
            start_us: seg.start_us,
            duration_us: (end - seg.start_us).max(1),
            frames: seg.frames,
            last_pts_us: seg.last_pts_us,
            audio_packets: seg.audio_packets,
        })
    }

    fn video(&mut self, pkt: Packet, cut_point: bool) -> Result<(), MediaError> {
        let Some(ts) = pkt.pts().or(pkt.dts()) else {
            return Ok(());
        };
        let pts_us = ts_to_us(ts, self.vtb);
        // A cut point while another cut is on trial ends that trial first (dense keyframes,
        // or a short target): the verdict comes from the pictures decoded so far.
        if cut_point
            && self.pending.is_some()
            && self.planner.clone().on_video_frame(pts_us, true) != CutDecision::Continue
        {
            self.resolve()?;
        }
        let before = self.planner.clone();
        match self.planner.on_video_frame(pts_us, cut_point) {
            CutDecision::Drop => {
                self.dropped += 1;
                return Ok(());
            }
            CutDecision::StartFirst => {
                self.offset_us = self
                    .opts
                    .offset_us
                    .unwrap_or((MIN_START_US - pts_us).max(0));
                self.begin_trial(before, pts_us)?;
            }
            CutDecision::Cut => self.begin_trial(before, pts_us)?,
            CutDecision::Continue => {}
        }
        if let Some(p) = self.pending.as_mut() {
            let verdict_known = p.check.push(&pkt);
            p.held.push(Held::Video { pkt, cut_point });
            if verdict_known {
                self.resolve()?;
            }
            return Ok(());
        }
        self.write_video(pkt, pts_us)
    }

    fn begin_trial(&mut self, planner: CutPlanner, pts_us: i64) -> Result<(), MediaError> {
        self.pending = Some(PendingCut {
            check: StartCheck::new(self.vparams.clone())?,
            planner,
            pts_us,
            held: Vec::new(),
        });
        Ok(())
    }

    /// Gives the cut on trial its verdict. A clean start closes the current segment and
    /// starts the next one there; otherwise the held pictures stay in the current segment
    /// (before the first segment: are dropped) and are read again, so a later keyframe
    /// among them can still be a cut.
    fn resolve(&mut self) -> Result<(), MediaError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let verdict = p.check.finish();
        if verdict.is_clean() {
            if self.current.is_some() {
                self.finish(p.pts_us + self.offset_us)?;
            }
            let mut seg = open_segment(
                &self.opts.dir,
                self.next_seq,
                self.probed.container,
                &self.vparams,
                self.audio_params.as_ref(),
            )?;
            seg.start_us = p.pts_us + self.offset_us;
            self.next_seq += 1;
            self.current = Some(seg);
            for h in p.held {
                match h {
                    Held::Video { pkt, .. } => {
                        let ts = pkt.pts().or(pkt.dts()).unwrap_or(0);
                        self.write_video(pkt, ts_to_us(ts, self.vtb))?;
                    }
                    Held::Audio { pkt, tb } => self.audio(pkt, tb)?,
                }
            }
            return Ok(());
        }
        self.refused += 1;
        tracing::warn!(
            at_s = p.pts_us as f64 / 1e6,
            packets = verdict.packets,
            pictures = verdict.pictures,
            errors = verdict.errors,
            first_error = verdict.first_error.as_deref().unwrap_or(""),
            merged = self.current.is_some(),
            "a keyframe is not a clean random access point: not cutting there"
        );
        self.planner = p.planner;
        let mut first = true;
        for h in p.held {
            match h {
                Held::Video { pkt, cut_point } => {
                    self.video(pkt, cut_point && !first)?;
                    first = false;
                }
                Held::Audio { pkt, tb } => self.audio(pkt, tb)?,
            }
        }
        Ok(())
    }

    /// Writes a video packet into the open segment.
    fn write_video(&mut self, pkt: Packet, pts_us: i64) -> Result<(), MediaError> {
        let dur_us = if pkt.duration() > 0 {
            ts_to_us(pkt.duration(), self.vtb)
        } else {
            self.frame_us
        };
        let (vtb, offset) = (self.vtb, self.offset_us);
        if let Some(seg) = self.current.as_mut() {
            self.end_us = self.end_us.max(pts_us + offset + dur_us);
            seg.frames += 1;
            seg.last_pts_us = seg.last_pts_us.max(pts_us + offset);
            write_packet(seg, pkt, vtb, offset, 0)?;
        }
        Ok(())
    }

    /// Writes an (AAC) audio packet into the open segment, or holds it while a cut is on
    /// trial; audio before the first segment has no segment and is dropped.
    fn audio(&mut self, pkt: Packet, tb: Rational) -> Result<(), MediaError> {
        if let Some(p) = self.pending.as_mut() {
            p.held.push(Held::Audio { pkt, tb });
            return Ok(());
        }
        let offset = self.offset_us;
        if let Some(seg) = self.current.as_mut() {
            if let Some(pts) = pkt.pts() {
                let end = ts_to_us(pts.saturating_add(pkt.duration().max(0)), tb) + offset;
                self.audio_end_us = self.audio_end_us.max(end);
            }
            seg.audio_packets += 1;
            write_packet(seg, pkt, tb, offset, 1)?;
        }
        Ok(())
    }

    /// Whether audio read now can end up in a segment.
    fn takes_audio(&self) -> bool {
        self.current.is_some() || self.pending.is_some()
    }
}

/// Cuts `input` into segments, calling `on_segment` as each one is finished (so uploads can
/// start before the whole file is cut).
///
/// A keyframe whose own bytes do not say that its GOP is closed is a cut point only if the
/// next frame in decode order is shown after it: leading B-frames of an open GOP need the
/// previous GOP and must stay in the segment before the cut.
pub fn segment_file<F>(
    input: &Path,
    probed: &ProbedInput,
    opts: &SegmentOptions,
    on_segment: F,
) -> Result<SegmentSummary, MediaError>
where
    F: FnMut(CutSegment) -> Result<(), MediaError>,
{
    crate::init();
    let ictx = match opts.formats {
        Some(f) => crate::inspect::open_restricted(input, f)?,
        None => open_source(input)?,
    };
    segment_input(ictx, input, probed, opts, true, on_segment)
}

/// Where the last segment of a whole file ends: where its video ends, or where its audio
/// ends when that is more than one frame (`frame_us`) and the rounding margin
/// ([`crate::transcode::HOLD_MARGIN_US`]) later. Audio that outlasts the video is kept and
/// counted in the segment's duration (the worker holds the last picture to its end, see
/// [`crate::transcode::held_pictures`]); a few milliseconds of trailing audio (an AAC
/// frame's padding, interleaving) do not lengthen it.
pub fn last_segment_end(video_end_us: i64, audio_end_us: i64, frame_us: i64) -> i64 {
    let margin = crate::transcode::HOLD_MARGIN_US;
    if audio_end_us > video_end_us.saturating_add(frame_us + margin) {
        audio_end_us
    } else {
        video_end_us
    }
}

/// [`segment_file`] on an input already opened (and probed into `probed`). `whole_file`:
/// the input is a whole source, whose last segment keeps audio that outlasts the video
/// ([`last_segment_end`]); a piece of a live stream ends with its video, as the next piece
/// starts there.
fn segment_input<F>(
    mut ictx: format::context::Input,
    input: &Path,
    probed: &ProbedInput,
    opts: &SegmentOptions,
    whole_file: bool,
    on_segment: F,
) -> Result<SegmentSummary, MediaError>
where
    F: FnMut(CutSegment) -> Result<(), MediaError>,
{
    let vi = probed.video_index;
    let vstream = ictx
        .stream(vi)
        .ok_or_else(|| MediaError::BadInput("video stream vanished".into()))?;
    let (vtb, vparams) = (vstream.time_base(), vstream.parameters());
    let vid = vparams.id();
    let fps = probed.metadata.frame_rate.as_f64();
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
    let mut cut = Cutter {
        opts,
        probed,
        vtb,
        vparams,
        audio_params,
        frame_us: if fps > 0.5 {
            (1e6 / fps) as i64
        } else {
            40_000
        },
        planner: CutPlanner::new(opts.target_us),
        offset_us: 0,
        current: None,
        pending: None,
        next_seq: 0,
        end_us: i64::MIN,
        audio_end_us: i64::MIN,
        dropped: 0,
        refused: 0,
        on_segment,
    };
    // A keyframe waiting for the next video frame to tell whether its GOP is closed, with
    // the audio read meanwhile.
    let mut held: Option<(Packet, Vec<Packet>)> = None;
    let mut encoded = Vec::new();
    let mut packet = Packet::empty();
    while crate::read_packet(&mut ictx, &mut packet, &input.display().to_string())? {
        let pkt = std::mem::replace(&mut packet, Packet::empty());
        if pkt.stream() == vi {
            if let Some((key, later)) = held.take() {
                let shown_after = match (pkt.pts(), key.pts()) {
                    (Some(next), Some(k)) => next > k,
                    _ => true,
                };
                cut.video(key, shown_after)?;
                for a in later {
                    route_audio(&mut cut, audio.as_mut(), a, &mut encoded)?;
                }
            }
            match closed_gop(vid, &pkt) {
                None => held = Some((pkt, Vec::new())),
                Some(cut_point) => cut.video(pkt, cut_point)?,
            }
        } else if let Some((_, later)) = held.as_mut() {
            later.push(pkt);
        } else {
            route_audio(&mut cut, audio.as_mut(), pkt, &mut encoded)?;
        }
    }
    if let Some((key, later)) = held.take() {
        cut.video(key, true)?;
        for a in later {
            route_audio(&mut cut, audio.as_mut(), a, &mut encoded)?;
        }
    }
    // Refusing a cut reads its packets again and may put a later cut on trial.
    while cut.pending.is_some() {
        cut.resolve()?;
    }
    if cut.current.is_none() {
        return Err(MediaError::BadInput(if cut.refused > 0 {
            format!(
                "{}: no decodable video frame (no keyframe where a decoder can start cleanly)",
                input.display()
            )
        } else {
            format!(
                "{}: no decodable video frame (no keyframe found)",
                input.display()
            )
        }));
    }
    if let Some(AudioPlan::Encode { enc, .. }) = audio.as_mut() {
        enc.push(None, &mut encoded)?;
        let tb = enc.time_base();
        for p in encoded.drain(..) {
            cut.audio(p, tb)?;
        }
    }
    let end_us = if whole_file {
        last_segment_end(cut.end_us, cut.audio_end_us, cut.frame_us)
    } else {
        cut.end_us
    };
    cut.planner.finish(end_us - cut.offset_us);
    cut.finish(end_us)?;
    Ok(SegmentSummary {
        segments: cut.next_seq,
        longest_us: cut.planner.longest_us(),
        sparse_keyframes: cut.planner.keyframes_sparse(),
        offset_us: cut.offset_us,
        dropped_frames: cut.dropped,
        refused_cuts: cut.refused,
    })
}

/// Sends an audio packet of the chosen stream to the segment, through the AAC encoder when
/// the source's audio is not AAC.
fn route_audio<F>(
    cut: &mut Cutter<'_, F>,
    plan: Option<&mut AudioPlan>,
    pkt: Packet,
    encoded: &mut Vec<Packet>,
) -> Result<(), MediaError>
where
    F: FnMut(CutSegment) -> Result<(), MediaError>,
{
    match plan {
        Some(AudioPlan::Copy { index, tb, .. }) if *index == pkt.stream() => cut.audio(pkt, *tb),
        Some(AudioPlan::Encode { index, enc }) if *index == pkt.stream() => {
            if !cut.takes_audio() {
                return Ok(());
            }
            enc.push(Some(&pkt), encoded)?;
            let tb = enc.time_base();
            for p in encoded.drain(..) {
                cut.audio(p, tb)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// One remuxed piece of a live stream.
#[derive(Debug, Clone)]
pub struct RemuxedPiece {
    pub probed: ProbedInput,
    pub segment: CutSegment,
    /// The timestamp shift applied: pass it for every later piece of the stream.
    pub offset_us: i64,
}

/// Remuxes one piece of a live stream (a pushed segment, or the FLV of one RTMP segment)
/// into a single source segment, with only `formats` allowed to open it. `offset_us` is the
/// stream's fixed timestamp shift; `None` (the first piece) picks it.
pub fn remux_piece(
    input: &Path,
    formats: &'static str,
    dir: &Path,
    seq: u64,
    offset_us: Option<i64>,
) -> Result<RemuxedPiece, MediaError> {
    // One open serves the probe and the remux: opening reads and decodes the start.
    let ictx = crate::inspect::open_restricted(input, formats)?;
    let probed = crate::probe::probe_input(&ictx, input)?;
    let opts = SegmentOptions {
        target_us: i64::MAX / 4,
        dir: dir.to_path_buf(),
        offset_us,
        formats: Some(formats),
    };
    let mut out = None;
    let summary = segment_input(ictx, input, &probed, &opts, false, |seg| {
        out = Some(seg);
        Ok(())
    })?;
    let mut seg =
        out.ok_or_else(|| MediaError::BadInput("no video frame in the segment".into()))?;
    let path = dir.join(format!("{seq}.{}", probed.container.extension()));
    std::fs::rename(&seg.path, &path).map_err(|e| internal("renaming a segment", e))?;
    seg.path = path;
    seg.seq = seq;
    Ok(RemuxedPiece {
        probed,
        segment: seg,
        offset_us: summary.offset_us,
    })
}
