//! Transcoding one source segment into every rung of a ladder from a single decode.

use std::path::{Path, PathBuf};

use castwork_protocol::{Rung, SourceMetadata};
use ffmpeg_next::{codec, decoder, format, frame, media, picture, Packet, Rational, Rescale};

use crate::clean_start::{strict_decoder, strict_decoder_on, DecodeErrors};
use crate::cuda::CudaDevice;
use crate::inspect::open_restricted;
use crate::rung_output::RungOutput;
use crate::video_graph::LadderGraph;
use crate::{internal, ts_to_us, us_to_ts, MediaError, SEGMENT_FORMATS};

/// Encoder settings and input bounds of a worker.
#[derive(Debug, Clone)]
pub struct TranscodeOptions {
    /// libx264 preset (ultrafast ... veryslow).
    pub preset: String,
    /// Threads per encoder and for the decoder (0: FFmpeg decides).
    pub threads: usize,
    /// Largest source picture accepted, in pixels.
    pub max_pixels: u64,
    /// Longest segment accepted, in microseconds.
    pub max_duration_us: i64,
    /// TEST ONLY: encode black pictures instead of the video from this long after each
    /// rendition's first picture (0: all of it), as a cheating worker would, for the
    /// verification tests. Never set in production.
    pub test_only_black_after_us: Option<i64>,
    /// Decode and scale on this NVIDIA device (and encode there too, with `nvenc`); `None`
    /// does it all on the CPU.
    pub gpu: Option<GpuTarget>,
}

/// Where a GPU job runs.
#[derive(Debug, Clone)]
pub struct GpuTarget {
    pub device: std::sync::Arc<CudaDevice>,
    /// Encode with `h264_nvenc` on the device (cards with encoders); otherwise libx264 on
    /// the CPU gets the downloaded pictures.
    pub nvenc: bool,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        TranscodeOptions {
            preset: "veryfast".into(),
            threads: 0,
            max_pixels: 8192 * 4320,
            max_duration_us: 60_000_000,
            test_only_black_after_us: None,
            gpu: None,
        }
    }
}

/// One rendition written to disk.
#[derive(Debug, Clone, PartialEq)]
pub struct RenditionFile {
    pub rung: String,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub start_us: i64,
    pub duration_us: i64,
    /// Time spent in this rung's encoder and muxer (the rungs' work interleaves frame by
    /// frame, so this is busy time, not a stretch of wall time).
    pub encode_ms: u64,
}

/// The whole job's state while packets flow.
struct Ladder {
    outputs: Vec<RungOutput>,
    graph: Option<LadderGraph>,
    rotation: u32,
    video_tb: Rational,
    anchor_us: Option<i64>,
    end_us: i64,
    frame_us: i64,
    scaled: frame::Video,
    /// TEST ONLY: see [`TranscodeOptions::test_only_black_after_us`].
    black_after_us: Option<i64>,
}

impl Ladder {
    /// Feeds a decoded frame; `None` flushes.
    fn feed(&mut self, decoded: Option<&mut frame::Video>) -> Result<(), MediaError> {
        match decoded {
            Some(f) => match f.timestamp().or(f.pts()) {
                Some(ts) => self.push(f, ts),
                None => Ok(()),
            },
            None => {
                if let Some(g) = self.graph.as_mut() {
                    g.push(None)?;
                }
                self.drain()
            }
        }
    }

    /// Feeds the picture in `pending` and makes the one just decoded pending in its place
    /// (swapping buffers, not copying pictures).
    fn feed_late(
        &mut self,
        decoded: &mut frame::Video,
        pending: &mut Option<frame::Video>,
    ) -> Result<(), MediaError> {
        let latest = std::mem::replace(decoded, frame::Video::empty());
        if let Some(mut previous) = pending.replace(latest) {
            self.feed(Some(&mut previous))?;
            *decoded = previous;
        }
        Ok(())
    }

    /// Feeds a copy of the last picture, shown at `pts_us`: a held picture.
    fn hold(&mut self, f: &mut frame::Video, pts_us: i64) -> Result<(), MediaError> {
        self.push(f, us_to_ts(pts_us, self.video_tb))
    }

    /// Sends a frame shown at `ts` (in the segment's video time base) through the graph.
    fn push(&mut self, f: &mut frame::Video, ts: i64) -> Result<(), MediaError> {
        f.set_pts(Some(ts));
        f.set_kind(picture::Type::None);
        let pts_us = ts_to_us(ts, self.video_tb);
        self.anchor_us.get_or_insert(pts_us);
        self.end_us = self.end_us.max(pts_us.saturating_add(self.frame_us));
        if self.graph.is_none() {
            let sizes: Vec<_> = self
                .outputs
                .iter()
                .map(|o| (o.rung.width, o.rung.height))
                .collect();
            self.graph = Some(LadderGraph::new(f, self.video_tb, self.rotation, &sizes)?);
        }
        if let Some(g) = self.graph.as_mut() {
            g.push(Some(f))?;
        }
        self.drain()
    }

    fn drain(&mut self) -> Result<(), MediaError> {
        let Some(graph) = self.graph.as_mut() else {
            return Ok(());
        };
        let anchor = self.anchor_us.unwrap_or(0);
        for (i, out) in self.outputs.iter_mut().enumerate() {
            while let Some(tb) = graph.pull(i, &mut self.scaled)? {
                let Some(pts) = self.scaled.pts() else {
                    continue;
                };
                let pts_us = ts_to_us(pts, tb);
                let Some(key) = out.select(pts_us, anchor) else {
                    continue;
                };
                self.scaled.set_pts(Some(pts.rescale(tb, out.enc_tb)));
                self.scaled.set_kind(if key {
                    picture::Type::I
                } else {
                    picture::Type::None
                });
                let first_us = *out.first_us.get_or_insert(pts_us);
                out.frames += 1;
                if self
                    .black_after_us
                    .is_some_and(|after| pts_us.saturating_sub(first_us) >= after)
                {
                    blacken(&mut self.scaled);
                }
                out.encode(Some(&self.scaled))?;
            }
        }
        Ok(())
    }
}

/// A picture to feed again: a copy, or for a picture on a GPU a new reference to it.
fn duplicate(f: &frame::Video) -> Result<frame::Video, MediaError> {
    if f.format() == format::Pixel::CUDA {
        crate::cuda::frame_ref(f)
    } else {
        Ok(f.clone())
    }
}

/// Paints a planar YUV picture black (the cheating worker of the verification tests).
fn blacken(f: &mut frame::Video) {
    for (plane, value) in [(0, 16u8), (1, 128), (2, 128)] {
        if plane < f.planes() {
            f.data_mut(plane).fill(value);
        }
    }
}

/// Timestamps round on their way through containers: what [`held_pictures`] allows for.
pub const HOLD_MARGIN_US: i64 = 1_000;

/// How many times the last picture (shown at `last_pts_us`, in a source whose frames are
/// `frame_us` apart) is repeated so that the video runs on to `end_us`: one picture every
/// `frame_us` from the video's end (`last_pts_us + frame_us`), each shown before `end_us`.
///
/// The rule: pictures are held only when `end_us` lies more than one frame (and
/// [`HOLD_MARGIN_US`]) past the video's end, so an ordinary segment whose audio ends a few
/// milliseconds after its last picture gets none, nor does one whose variable-rate last
/// picture lasts two nominal frames. Under a rung's frame-rate cap the rung keeps one held
/// picture per interval of its own, as it does with source pictures.
pub fn held_pictures(last_pts_us: i64, frame_us: i64, end_us: i64) -> u64 {
    let video_end = last_pts_us.saturating_add(frame_us);
    if frame_us <= 0 || end_us <= video_end.saturating_add(frame_us + HOLD_MARGIN_US) {
        return 0;
    }
    u64::try_from((end_us - video_end + frame_us - 1) / frame_us).unwrap_or(0)
}

/// Feeds the ladder every picture the decoder has ready (one picture late, through
/// `pending`); after the first decode error the job fails, so pictures are then only
/// counted. On the GPU path (`on_gpu`) it stops at the first sign that the device is not
/// decoding the stream.
fn receive_pictures(
    decoder: &mut decoder::Video,
    errors: &mut DecodeErrors,
    decoded: &mut frame::Video,
    pictures: &mut u64,
    ladder: &mut Ladder,
    pending: &mut Option<frame::Video>,
    on_gpu: bool,
) -> Result<(), MediaError> {
    while errors.receive(decoder, decoded, pictures) {
        crate::cuda::on_device(on_gpu, errors, Some(decoded))?;
        if !errors.any() {
            ladder.feed_late(decoded, pending)?;
        }
    }
    crate::cuda::on_device(on_gpu, errors, None)
}

/// Transcodes the segment at `src` into every rung, writing `<rung>.ts` files in `out_dir`,
/// holding no picture: [`transcode_segment_until`] without an end.
pub fn transcode_segment(
    src: &Path,
    rungs: &[Rung],
    meta: &SourceMetadata,
    out_dir: &Path,
    opts: &TranscodeOptions,
) -> Result<Vec<RenditionFile>, MediaError> {
    transcode_segment_until(src, rungs, meta, None, out_dir, opts)
}

/// Transcodes the segment at `src` into every rung, writing `<rung>.ts` files in `out_dir`.
///
/// `end_us` is where the source segment ends (its start plus its duration, as the job
/// gives them). Where the segment's audio runs on past its last picture, the last picture
/// is held (repeated at the source's frame rate, see [`held_pictures`]) up to the earlier
/// of `end_us` and the audio's end, so the video and the audio end together and nothing of
/// the source is lost.
///
/// The segment is opened with only the demuxers the broadcaster writes and local file access;
/// sizes and durations are bounded. Errors in the input are [`MediaError::BadInput`].
pub fn transcode_segment_until(
    src: &Path,
    rungs: &[Rung],
    meta: &SourceMetadata,
    end_us: Option<i64>,
    out_dir: &Path,
    opts: &TranscodeOptions,
) -> Result<Vec<RenditionFile>, MediaError> {
    crate::init();
    if rungs.is_empty() {
        return Err(MediaError::BadInput(
            "the job has no rungs to encode".into(),
        ));
    }
    // A rung's name becomes a file name in `out_dir`: never a path out of it, whoever
    // wrote the job.
    for r in rungs {
        castwork_protocol::profile::validate_name(&r.name)
            .map_err(|e| MediaError::BadInput(format!("the job's rung {e}")))?;
    }
    // Only the demuxer of the container the broadcaster declared (by the file's extension).
    let formats = match src.extension().and_then(|e| e.to_str()) {
        Some("ts") => "mpegts",
        Some("mkv") => "matroska",
        _ => SEGMENT_FORMATS,
    };
    let mut ictx = open_restricted(src, formats)?;
    let vstream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| MediaError::BadInput("the segment has no video stream".into()))?;
    let (vi, video_tb) = (vstream.index(), vstream.time_base());
    // Onto the GPU only what its decoders and scaler take; anything else is the CPU's.
    let device = match &opts.gpu {
        Some(g) => {
            let (id, format, full_range) = crate::cuda::stream_format(&vstream.parameters());
            crate::cuda::nvdec_can(id, format, full_range).map_err(MediaError::NotForGpu)?;
            Some(&*g.device)
        }
        None => None,
    };
    // Errors are counted, not concealed: a segment that does not decode cleanly fails.
    let (mut decoder, mut errors) = match device {
        Some(d) => strict_decoder_on(vstream.parameters(), opts.threads, Some(d))?,
        None => strict_decoder(vstream.parameters(), opts.threads)?,
    };
    let pixels = u64::from(decoder.width()) * u64::from(decoder.height());
    if pixels > opts.max_pixels {
        return Err(MediaError::BadInput(format!(
            "picture {}x{} is larger than the {} pixels this worker accepts",
            decoder.width(),
            decoder.height(),
            opts.max_pixels
        )));
    }
    // The ladder was planned from what the stream announced: a segment whose picture is
    // not that size (a forged announcement, or a publisher that changed its output size)
    // is refused rather than scaled from wrong assumptions.
    if meta.width > 0 && (decoder.width(), decoder.height()) != (meta.width, meta.height) {
        return Err(MediaError::BadInput(format!(
            "the segment's picture is {}x{} but its stream was announced as {}x{}: start a \
             new stream when the picture size changes",
            decoder.width(),
            decoder.height(),
            meta.width,
            meta.height
        )));
    }
    let audio = ictx
        .streams()
        .best(media::Type::Audio)
        .filter(|a| a.parameters().id() == codec::Id::AAC)
        .map(|a| (a.index(), a.time_base(), a.parameters()));
    let outputs = rungs
        .iter()
        .map(|r| RungOutput::new(r, out_dir, video_tb, audio.as_ref().map(|a| &a.2), opts))
        .collect::<Result<Vec<_>, _>>()?;
    let fps = meta.frame_rate.as_f64();
    let mut ladder = Ladder {
        outputs,
        graph: None,
        rotation: meta.rotation,
        video_tb,
        anchor_us: None,
        end_us: i64::MIN,
        frame_us: if fps > 0.5 {
            (1e6 / fps) as i64
        } else {
            40_000
        },
        scaled: frame::Video::empty(),
        black_after_us: opts.test_only_black_after_us,
    };
    let mut decoded = frame::Video::empty();
    // Pictures go to the ladder one picture late, so the last one is still at hand to be
    // held (the filter graph takes the data of each frame it is given).
    let mut pending = None;
    let mut audio_end_us = i64::MIN;
    let mut packet = Packet::empty();
    let (mut packets, mut pictures) = (0, 0);
    while crate::read_packet(&mut ictx, &mut packet, "reading the segment")? {
        if packet.stream() == vi {
            packets += 1;
            errors.sent(decoder.send_packet(&packet), packets);
            receive_pictures(
                &mut decoder,
                &mut errors,
                &mut decoded,
                &mut pictures,
                &mut ladder,
                &mut pending,
                device.is_some(),
            )?;
            if let (Some(a), true) = (ladder.anchor_us, ladder.end_us > i64::MIN) {
                if ladder.end_us.saturating_sub(a) > opts.max_duration_us {
                    return Err(MediaError::BadInput(format!(
                        "the segment is longer than {} s",
                        opts.max_duration_us / 1_000_000
                    )));
                }
            }
        } else if let Some((ai, atb, _)) = &audio {
            if packet.stream() == *ai {
                if let Some(pts) = packet.pts() {
                    let end = ts_to_us(pts.saturating_add(packet.duration().max(0)), *atb);
                    audio_end_us = audio_end_us.max(end);
                }
                for out in &mut ladder.outputs {
                    out.write_audio(&packet, *atb)?;
                }
            }
        }
    }
    errors.sent(decoder.send_eof(), packets);
    receive_pictures(
        &mut decoder,
        &mut errors,
        &mut decoded,
        &mut pictures,
        &mut ladder,
        &mut pending,
        device.is_some(),
    )?;
    if let (n @ 1.., first) = errors.total() {
        return Err(MediaError::Undecodable {
            errors: n,
            first: first.unwrap_or_default(),
        });
    }
    if let Some(mut last) = pending.take() {
        // Audio that outlasts the pictures (up to the segment's end) gets the last picture.
        let last_us = last
            .timestamp()
            .or(last.pts())
            .map(|t| ts_to_us(t, video_tb));
        let (hold_to, frame_us) = (
            end_us.unwrap_or(i64::MIN).min(audio_end_us),
            ladder.frame_us,
        );
        let held = last_us.map_or(0, |l| held_pictures(l, frame_us, hold_to));
        let copy = if held > 0 {
            Some(duplicate(&last)?)
        } else {
            None
        };
        ladder.feed(Some(&mut last))?;
        if let (Some(copy), Some(last_us), Some(anchor)) = (copy, last_us, ladder.anchor_us) {
            if hold_to.saturating_sub(anchor) > opts.max_duration_us {
                return Err(MediaError::BadInput(format!(
                    "the segment is longer than {} s",
                    opts.max_duration_us / 1_000_000
                )));
            }
            for k in 1..=held as i64 {
                ladder.hold(&mut duplicate(&copy)?, last_us + k * frame_us)?;
            }
        }
    }
    ladder.feed(None)?;
    let Some(anchor) = ladder.anchor_us else {
        return Err(MediaError::BadInput(
            "the segment has no decodable video frame".into(),
        ));
    };
    let end_us = ladder.end_us;
    let mut files = Vec::with_capacity(ladder.outputs.len());
    for mut out in ladder.outputs {
        out.encode(None)?;
        out.octx
            .write_trailer()
            .map_err(|e| internal("finishing a rendition", e))?;
        let start_us = out.first_us.unwrap_or(anchor);
        files.push(RenditionFile {
            rung: out.rung.name.clone(),
            path: out.path,
            width: out.rung.width,
            height: out.rung.height,
            frames: out.frames,
            start_us,
            duration_us: end_us.saturating_sub(start_us),
            encode_ms: out.busy.as_millis() as u64,
        });
    }
    Ok(files)
}
