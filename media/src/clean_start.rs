//! Whether a source segment decodes cleanly from its first packet: the cut-point check, and
//! the strict decoding that counts decoder errors instead of concealing them.
//!
//! A keyframe flag, even an IDR NAL type, does not prove that a decoder can start there:
//! leading pictures of an open GOP, parameter sets sent only when they change, or an encoder
//! that keeps references across an IDR all make a segment that decodes with errors on its
//! own although the whole source decodes without any. Only decoding tells.

use std::path::Path;

use ffmpeg_next::{codec, decoder, frame, media, util::error::EAGAIN, Error, Packet};

use crate::{bad, ffi, MediaError};

/// Pictures (in decode order) a trial decode covers. Leading pictures of an open GOP come
/// right after the cut in decode order, and a reference from before the cut is used within
/// the decoded picture buffer's depth (at most 16 frames) of it unless it is a long-term
/// one: twice that covers both. Damage further on is still found by the worker, which
/// counts every decoder error of the whole segment.
pub const CHECK_PICTURES: u64 = 32;

/// What a trial decode of a segment's first pictures found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanStart {
    /// Video packets fed to the decoder.
    pub packets: u64,
    /// Pictures the decoder returned.
    pub pictures: u64,
    /// Decoder errors: packets it refused and pictures it flagged corrupt or concealed, or
    /// the error lines it logged, whichever are more.
    pub errors: u64,
    /// The first error, in words.
    pub first_error: Option<String>,
}

impl CleanStart {
    /// Whether a decoder can start at the segment's first packet: pictures and no errors.
    pub fn is_clean(&self) -> bool {
        self.errors == 0 && self.pictures > 0
    }
}

impl std::fmt::Display for CleanStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.first_error {
            Some(first) => write!(
                f,
                "{} decoder errors in its first {} packets (first: {first})",
                self.errors, self.packets
            ),
            None if self.pictures == 0 => {
                write!(f, "no picture from its first {} packets", self.packets)
            }
            None => write!(
                f,
                "{} pictures from its first {} packets, no decoder error",
                self.pictures, self.packets
            ),
        }
    }
}

/// Decoder errors counted while decoding: packets refused, pictures flagged, and the error
/// lines the decoder logged, with the first one in words (the decoder's own when it said
/// something).
pub(crate) struct DecodeErrors {
    count: u64,
    first: Option<String>,
    log: ffi::LogCapture,
}

impl DecodeErrors {
    fn note(&mut self, what: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(what());
        }
    }

    /// How many errors so far, and the first one.
    pub(crate) fn total(&self) -> (u64, Option<String>) {
        let logged = self.log.logged();
        (
            self.count.max(logged.lines),
            logged.first.or_else(|| self.first.clone()),
        )
    }

    /// Whether the hardware decoder refused the stream, and if so whether it said the
    /// stream is beyond what the hardware decodes (see [`crate::cuda::on_device`]).
    pub(crate) fn hw_refused(&self) -> Option<(bool, Option<String>)> {
        let logged = self.log.logged();
        logged
            .hw_refused
            .then_some((logged.hw_unsupported, logged.first))
    }

    /// Whether there was any error so far.
    pub(crate) fn any(&self) -> bool {
        self.count > 0 || self.log.logged().lines > 0
    }

    /// Notes the outcome of sending video packet number `n` (from 1).
    pub(crate) fn sent(&mut self, r: Result<(), Error>, n: u64) {
        match r {
            Ok(()) | Err(Error::Eof) => {}
            Err(Error::Other { errno }) if errno == EAGAIN => {}
            Err(e) => self.note(|| format!("video packet {n}: {e}")),
        }
    }

    /// Receives the next picture: `true` when one came. An error is counted and ends this
    /// round of receiving; a picture the decoder flags as corrupt or concealed is counted.
    pub(crate) fn receive(
        &mut self,
        dec: &mut decoder::Video,
        frame: &mut frame::Video,
        pictures: &mut u64,
    ) -> bool {
        match dec.receive_frame(frame) {
            Ok(()) => {
                *pictures += 1;
                let flags = frame.decode_error_flags();
                if frame.is_corrupt() || !flags.is_empty() {
                    let n = *pictures;
                    self.note(|| format!("picture {n} is damaged ({})", describe(frame)));
                }
                true
            }
            Err(Error::Eof) => false,
            Err(Error::Other { errno }) if errno == EAGAIN => false,
            Err(e) => {
                let n = *pictures + 1;
                self.note(|| format!("picture {n}: {e}"));
                false
            }
        }
    }
}

/// What the decoder said about a damaged picture.
fn describe(f: &frame::Video) -> String {
    use ffmpeg_next::util::frame::DecodeError as D;
    let flags = f.decode_error_flags();
    let mut parts = Vec::new();
    if f.is_corrupt() {
        parts.push("decoded before a recovery point");
    }
    if flags.contains(D::MISSING_REFERENCE) {
        parts.push("a reference picture is missing");
    }
    if flags.contains(D::INVALID_BITSTREAM) {
        parts.push("invalid bitstream");
    }
    if flags.contains(D::CONCEALMENT_ACTIVE) {
        parts.push("damage concealed");
    }
    if flags.contains(D::DECODE_SLICES) {
        parts.push("slices lost");
    }
    parts.join(", ")
}

/// Opens a video decoder that reports errors instead of concealing them: damaged pictures
/// are returned flagged corrupt rather than dropped silently, any error the decoder
/// detects (including checksums the stream carries) fails the packet, and the error lines
/// it logs are collected. Stricter checks (`bitstream`, `careful`, ...) are left off: the
/// measure is what a player's decoder (FFmpeg with its defaults) reports, not spec pedantry.
pub(crate) fn strict_decoder(
    params: codec::Parameters,
    threads: usize,
) -> Result<(decoder::Video, DecodeErrors), MediaError> {
    strict_decoder_on(params, threads, None)
}

/// [`strict_decoder`], decoding onto `device` (NVDEC) when one is given.
pub(crate) fn strict_decoder_on(
    params: codec::Parameters,
    threads: usize,
    device: Option<&crate::cuda::CudaDevice>,
) -> Result<(decoder::Video, DecodeErrors), MediaError> {
    crate::init();
    let mut ctx = codec::context::Context::from_parameters(params)
        .map_err(|e| bad("unreadable video stream", e))?;
    ctx.set_flags(codec::Flags::OUTPUT_CORRUPT);
    if let Some(d) = device {
        // One thread: NVDEC does the work, and frame threads would each hold surfaces.
        d.attach_decoder(&mut ctx)?;
    } else if threads > 0 {
        ctx.set_threading(codec::threading::Config::count(threads));
    }
    let log = ffi::capture_errors(&mut ctx);
    let mut dec = ctx.decoder();
    dec.check(decoder::Check::CRC | decoder::Check::EXPLODE);
    let dec = dec
        .video()
        .map_err(|e| bad("the segment's video cannot be decoded", e))?;
    let errors = DecodeErrors {
        count: 0,
        first: None,
        log,
    };
    Ok((dec, errors))
}

/// A trial decode fed packet by packet, so the cutter can check a cut while it reads on.
pub(crate) struct StartCheck {
    decoder: decoder::Video,
    frame: frame::Video,
    packets: u64,
    pictures: u64,
    errors: DecodeErrors,
}

impl StartCheck {
    /// A fresh single-threaded decoder for a stream with these parameters.
    pub(crate) fn new(params: codec::Parameters) -> Result<Self, MediaError> {
        let (decoder, errors) = strict_decoder(params, 1)?;
        Ok(StartCheck {
            decoder,
            frame: frame::Video::empty(),
            packets: 0,
            pictures: 0,
            errors,
        })
    }

    /// Decodes the next video packet (in decode order); `true` once the verdict is known:
    /// an error, or [`CHECK_PICTURES`] packets decoded.
    pub(crate) fn push(&mut self, pkt: &Packet) -> bool {
        if self.is_done() {
            return true;
        }
        self.packets += 1;
        self.errors
            .sent(self.decoder.send_packet(pkt), self.packets);
        while self
            .errors
            .receive(&mut self.decoder, &mut self.frame, &mut self.pictures)
        {}
        self.is_done()
    }

    fn is_done(&self) -> bool {
        self.packets >= CHECK_PICTURES || self.errors.any()
    }

    /// Drains the decoder and gives the verdict.
    pub(crate) fn finish(mut self) -> CleanStart {
        let packets = self.packets;
        self.errors.sent(self.decoder.send_eof(), packets);
        while self
            .errors
            .receive(&mut self.decoder, &mut self.frame, &mut self.pictures)
        {}
        let (errors, first_error) = self.errors.total();
        CleanStart {
            packets,
            pictures: self.pictures,
            errors,
            first_error,
        }
    }
}

/// Checks that a segment file (MPEG-TS or Matroska) decodes cleanly from its first packet:
/// a trial decode of its first [`CHECK_PICTURES`] video packets with a decoder that reports
/// errors instead of concealing them. This is the check the cutter makes at every cut.
pub fn check_clean_start(path: &Path) -> Result<CleanStart, MediaError> {
    crate::init();
    let mut ictx = crate::inspect::open_restricted(path, crate::SEGMENT_FORMATS)?;
    let video = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| MediaError::BadInput("no video stream".into()))?;
    let vi = video.index();
    let mut check = StartCheck::new(video.parameters())?;
    let mut packet = Packet::empty();
    while crate::read_packet(&mut ictx, &mut packet, "reading the segment")? {
        if packet.stream() == vi && check.push(&packet) {
            break;
        }
    }
    Ok(check.finish())
}
