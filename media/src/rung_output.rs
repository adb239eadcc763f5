//! One rung's output: its encoder (libx264, or `h264_nvenc` on a device), the muxer of
//! its rendition file, and which pictures it keeps and makes keyframes.

use std::path::{Path, PathBuf};

use castwork_protocol::Rung;
use ffmpeg_next::{codec, encoder, format, frame, Dictionary, Packet, Rational};

use crate::transcode::TranscodeOptions;
use crate::{bad, ffi, internal, MediaError};

/// Encoder, muxer and frame-selection state of one rung.
pub(crate) struct RungOutput {
    pub(crate) rung: Rung,
    pub(crate) path: PathBuf,
    pub(crate) encoder: encoder::Video,
    pub(crate) octx: format::context::Output,
    pub(crate) enc_tb: Rational,
    pub(crate) video_tb: Rational,
    pub(crate) audio_tb: Option<Rational>,
    pub(crate) interval_us: f64,
    pub(crate) next_slot: i64,
    pub(crate) next_key_us: i64,
    pub(crate) frames: u64,
    pub(crate) first_us: Option<i64>,
    pub(crate) busy: std::time::Duration,
}

/// libx264's settings for a rung: IDR where the ladder puts keyframes and nowhere else, no
/// open GOPs, a VBV cap of 1.2 times the rung's bitrate.
fn x264_options(rung: &Rung, opts: &TranscodeOptions) -> Dictionary<'static> {
    let mut dict = Dictionary::new();
    dict.set("preset", &opts.preset);
    dict.set("profile", rung.profile.x264_name());
    dict.set("forced-idr", "1");
    dict.set(
        "x264-params",
        &format!(
            "scenecut=0:open-gop=0:vbv-maxrate={}:vbv-bufsize={}",
            rung.bitrate * 6 / 5000,
            rung.bitrate * 2 / 1000
        ),
    );
    if opts.threads > 0 {
        dict.set("threads", &opts.threads.to_string());
    }
    dict
}

/// `h264_nvenc`'s settings for a rung, the same contract as [`x264_options`]: forced
/// pictures become IDR, no scene-cut keyframes, a strict GOP, the same rate cap.
fn nvenc_options(rung: &Rung, gpu: &str) -> Dictionary<'static> {
    let mut dict = Dictionary::new();
    dict.set("gpu", gpu);
    dict.set("preset", "p4");
    dict.set("profile", rung.profile.x264_name());
    dict.set("rc", "vbr");
    dict.set("forced-idr", "1");
    dict.set("no-scenecut", "1");
    dict.set("strict_gop", "1");
    dict.set("bufsize", &(rung.bitrate * 2).to_string());
    dict
}

impl RungOutput {
    pub(crate) fn new(
        rung: &Rung,
        dir: &Path,
        tb: Rational,
        audio: Option<&codec::Parameters>,
        opts: &TranscodeOptions,
    ) -> Result<Self, MediaError> {
        let nvenc = opts.gpu.as_ref().filter(|g| g.nvenc);
        let name = if nvenc.is_some() {
            "h264_nvenc"
        } else {
            "libx264"
        };
        let codec = encoder::find_by_name(name)
            .ok_or_else(|| MediaError::Internal(format!("FFmpeg has no {name} encoder")))?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| internal("x264 context", e))?;
        enc.set_width(rung.width);
        enc.set_height(rung.height);
        enc.set_format(format::Pixel::YUV420P);
        enc.set_time_base(tb);
        enc.set_frame_rate(Some(Rational::new(rung.max_fps.num, rung.max_fps.den)));
        enc.set_bit_rate(rung.bitrate as usize);
        enc.set_max_bit_rate((rung.bitrate * 6 / 5) as usize);
        match rung.gop_secs {
            Some(g) if g <= 0.0 => enc.set_gop(1),
            _ => enc.set_gop(100_000),
        }
        // No B-frames from NVENC: FFmpeg 5.1's h264_nvenc derives decode times from the
        // encoder's time base as if it were the frame rate, and in the source's 1/90000 its
        // B-frames come out decoded after they are shown, which no muxer takes.
        if !rung.profile.allows_b_frames() || nvenc.is_some() {
            enc.set_max_b_frames(0);
        }
        if let Some(gpu) = nvenc {
            gpu.device.attach_encoder(&mut enc)?;
        }
        let dict = match nvenc {
            Some(gpu) => nvenc_options(rung, &gpu.device.nvenc_gpu()),
            None => x264_options(rung, opts),
        };
        // What NVENC says when it cannot open is watched: every encoder session of the card
        // in use (consumer cards cap them) is a busy device, not a broken one.
        let watch = nvenc.map(|_| ffi::capture_errors(&mut enc));
        let mut encoder = enc.open_as_with(codec, dict).map_err(|e| {
            let said = watch.as_ref().and_then(|w| w.logged().first);
            match said {
                Some(s)
                    if s.contains("OpenEncodeSessionEx failed") && s.contains("out of memory") =>
                {
                    MediaError::NotForGpu(format!("no free NVENC session for {}: {s}", rung.name))
                }
                _ => internal(&format!("opening {name} for {}", rung.name), e),
            }
        })?;
        if watch.is_some() {
            ffi::untag(&mut encoder);
        }

        let path = dir.join(format!("{}.ts", rung.name));
        let mut octx =
            format::output_as(&path, "mpegts").map_err(|e| internal("creating a rendition", e))?;
        {
            let mut vs = octx
                .add_stream(codec)
                .map_err(|e| internal("rendition video stream", e))?;
            vs.set_parameters(&encoder);
        }
        if let Some(a) = audio {
            let mut s = octx
                .add_stream(encoder::find(codec::Id::None))
                .map_err(|e| internal("rendition audio stream", e))?;
            s.set_parameters(a.clone());
            ffi::clear_codec_tag(&mut s);
        }
        octx.write_header()
            .map_err(|e| internal("writing a rendition header", e))?;
        let video_tb = octx.stream(0).map_or(tb, |s| s.time_base());
        let audio_tb = audio.and_then(|_| octx.stream(1).map(|s| s.time_base()));
        let fps = rung.drop_to_fps.map_or(0.0, |r| r.as_f64());
        Ok(RungOutput {
            rung: rung.clone(),
            path,
            encoder,
            octx,
            enc_tb: tb,
            video_tb,
            audio_tb,
            interval_us: if fps > 0.0 { 1e6 / fps } else { 0.0 },
            next_slot: 0,
            next_key_us: i64::MIN,
            frames: 0,
            first_us: None,
            busy: std::time::Duration::ZERO,
        })
    }

    /// Decides whether a frame at `pts_us` is kept (frame rate cap) and whether it is a
    /// keyframe; every rung uses the same anchor, so keyframes line up across the ladder.
    pub(crate) fn select(&mut self, pts_us: i64, anchor_us: i64) -> Option<bool> {
        if self.interval_us > 0.0 {
            let slot = (pts_us.saturating_sub(anchor_us).saturating_add(1_000) as f64
                / self.interval_us)
                .floor() as i64;
            if self.first_us.is_some() && slot < self.next_slot {
                return None;
            }
            self.next_slot = slot + 1;
        }
        let key = match self.rung.gop_secs {
            _ if self.first_us.is_none() => true,
            Some(g) if g <= 0.0 => true,
            Some(_) if pts_us >= self.next_key_us => true,
            _ => false,
        };
        if key {
            let gop_us = self
                .rung
                .gop_secs
                .map_or(i64::MAX / 4, |g| (g * 1e6) as i64);
            let k = pts_us.saturating_sub(anchor_us) / gop_us.max(1) + 1;
            self.next_key_us = anchor_us
                .saturating_add(k.saturating_mul(gop_us.max(1)))
                .saturating_sub(1_000);
        }
        Some(key)
    }

    pub(crate) fn encode(&mut self, frame: Option<&frame::Video>) -> Result<(), MediaError> {
        let started = std::time::Instant::now();
        let r = self.encode_timed(frame);
        self.busy += started.elapsed();
        r
    }

    fn encode_timed(&mut self, frame: Option<&frame::Video>) -> Result<(), MediaError> {
        match frame {
            Some(f) => self.encoder.send_frame(f),
            None => self.encoder.send_eof(),
        }
        .map_err(|e| internal(&format!("encoding {}", self.rung.name), e))?;
        let mut pkt = Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut pkt) {
                Ok(()) => {}
                Err(ffmpeg_next::Error::Eof) => return Ok(()),
                Err(ffmpeg_next::Error::Other { errno })
                    if errno == ffmpeg_next::util::error::EAGAIN =>
                {
                    return Ok(())
                }
                Err(e) => return Err(internal(&format!("encoding {}", self.rung.name), e)),
            }
            pkt.set_stream(0);
            pkt.rescale_ts(self.enc_tb, self.video_tb);
            pkt.write_interleaved(&mut self.octx)
                .map_err(|e| internal("writing a rendition", e))?;
        }
    }

    pub(crate) fn write_audio(&mut self, pkt: &Packet, in_tb: Rational) -> Result<(), MediaError> {
        let Some(tb) = self.audio_tb else {
            return Ok(());
        };
        let mut p = pkt.clone();
        p.rescale_ts(in_tb, tb);
        p.set_stream(1);
        p.set_position(-1);
        p.write_interleaved(&mut self.octx)
            .map_err(|e| bad("the segment's audio cannot be muxed", e))
    }
}
