//! Castwork's FFmpeg layer (through ffmpeg-next): probing sources, cutting them into source
//! segments, transcoding one segment into a whole ladder from one decode, and inspecting
//! renditions.

mod audio;
pub mod clean_start;
pub mod cuda;
mod ffi;
pub mod inspect;
pub mod nal;
pub mod probe;
pub mod quality;
mod rung_output;
pub mod segment;
pub mod selftest;
pub mod transcode;
mod video_graph;

use std::sync::Once;

pub use clean_start::{check_clean_start, CleanStart};
pub use cuda::CudaDevice;
pub use ffmpeg_next as ffmpeg;
pub use inspect::{inspect, MediaInfo};
pub use probe::{probe, probe_restricted, ProbedInput};
pub use segment::{
    remux_piece, segment_file, CutSegment, RemuxedPiece, SegmentOptions, SegmentSummary,
};
pub use transcode::{transcode_segment, GpuTarget, RenditionFile, TranscodeOptions};

/// Demuxers a worker may open: only what the broadcaster writes.
pub const SEGMENT_FORMATS: &str = "mpegts,matroska";

/// Demuxers an input fetched from the network may be opened with: video containers only,
/// never a playlist or a list of other files (HLS, DASH, concat), which would make FFmpeg
/// open further URLs or local files.
pub const NETWORK_INPUT_FORMATS: &str = "mov,matroska,mpegts,flv,avi,mxf,mpeg";

/// A media failure, with whether the input itself is at fault.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The input cannot be handled: retrying will not help.
    #[error("{0}")]
    BadInput(String),
    /// Something on this machine failed (disk, encoder setup): another attempt may succeed.
    #[error("{0}")]
    Internal(String),
    /// The segment's video does not decode cleanly: the decoder reported errors (a cut
    /// where no decoder can start, or damage), which a transcode would have concealed.
    #[error("the segment does not decode cleanly: {errors} decoder errors (first: {first})")]
    Undecodable { errors: u64, first: String },
    /// The GPU path cannot take this segment (a codec, pixel format or range the device
    /// does not decode or scale): the CPU path can, and the device is not at fault.
    #[error("not for the GPU: {0}")]
    NotForGpu(String),
}

impl MediaError {
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MediaError::BadInput(_) | MediaError::Undecodable { .. }
        )
    }
}

pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> MediaError {
    MediaError::Internal(format!("{what}: {e}"))
}

pub(crate) fn bad(what: &str, e: impl std::fmt::Display) -> MediaError {
    MediaError::BadInput(format!("{what}: {e}"))
}

/// Initialises FFmpeg once per process: its own logging prints fatal errors only, and
/// decoders' error lines are collected for the decoders that ask (see [`clean_start`]).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Registration cannot fail on FFmpeg >= 4; an error here would surface on first use.
        let _ = ffmpeg::init();
        ffmpeg::log::set_level(ffmpeg::log::Level::Fatal);
        ffi::install_log_callback();
    });
}

/// Corrupt packets in a row after which an input is given up.
const MAX_BAD_PACKETS: u32 = 1000;

/// Reads the next packet; `Ok(false)` at the end. Corrupt packets are skipped, as a player
/// would, up to [`MAX_BAD_PACKETS`] in a row.
pub(crate) fn read_packet(
    ictx: &mut ffmpeg::format::context::Input,
    packet: &mut ffmpeg::Packet,
    what: &str,
) -> Result<bool, MediaError> {
    let mut bad_in_a_row = 0;
    loop {
        match packet.read(ictx) {
            Ok(()) => return Ok(true),
            Err(ffmpeg::Error::Eof) => return Ok(false),
            Err(ffmpeg::Error::InvalidData) if bad_in_a_row < MAX_BAD_PACKETS => bad_in_a_row += 1,
            Err(e) => return Err(bad(&format!("{what}: read error"), e)),
        }
    }
}

/// Converts a timestamp in a stream time base to microseconds.
pub(crate) fn ts_to_us(ts: i64, tb: ffmpeg::Rational) -> i64 {
    use ffmpeg::Rescale;
    ts.rescale(tb, ffmpeg::Rational::new(1, 1_000_000))
}

/// Converts microseconds to a timestamp in a stream time base.
pub(crate) fn us_to_ts(us: i64, tb: ffmpeg::Rational) -> i64 {
    use ffmpeg::Rescale;
    us.rescale(ffmpeg::Rational::new(1, 1_000_000), tb)
}

pub(crate) fn to_rational(r: ffmpeg::Rational) -> castwork_protocol::Rational {
    castwork_protocol::Rational::new(r.numerator(), r.denominator())
}
