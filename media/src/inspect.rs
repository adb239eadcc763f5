//! Inspecting a rendition or segment without decoding it: what the orchestrator checks.

use std::path::Path;

use ffmpeg_next::{codec, format, media, Dictionary, Packet};

use crate::{bad, nal, ts_to_us, MediaError};

/// Facts about a media file, read by demuxing only.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    pub format_name: String,
    pub video_codec: String,
    pub width: u32,
    pub height: u32,
    pub pixel_format: String,
    /// Number of video packets (frames).
    pub frames: u64,
    /// Earliest video presentation time, microseconds.
    pub start_us: i64,
    /// Latest video presentation time, microseconds.
    pub last_pts_us: i64,
    /// Whether the first video packet is a keyframe.
    pub starts_with_keyframe: bool,
    /// Presentation times of keyframes, microseconds.
    pub keyframes_us: Vec<i64>,
    /// RFC 6381 codec string of the video (`avc1.64001f`), when it is H.264.
    pub video_codecs: Option<String>,
    pub audio_codec: Option<String>,
    pub audio_packets: u64,
}

impl MediaInfo {
    /// RFC 6381 codecs of the whole file, for a master playlist.
    pub fn codecs(&self) -> String {
        let mut c = self
            .video_codecs
            .clone()
            .unwrap_or_else(|| self.video_codec.clone());
        if self.audio_codec.as_deref() == Some("aac") {
            c.push_str(",mp4a.40.2");
        }
        c
    }
}

/// Opens a file with only the given demuxers and local file access: a segment from outside
/// cannot make FFmpeg read another file or a URL (no HLS, concat or nested protocols).
pub(crate) fn open_restricted(
    path: &Path,
    formats: &str,
) -> Result<format::context::Input, MediaError> {
    let mut opts = Dictionary::new();
    opts.set("format_whitelist", formats);
    opts.set("protocol_whitelist", "file");
    opts.set("fflags", "+genpts");
    format::input_with_dictionary(path, opts)
        .map_err(|e| bad(&format!("not a readable {formats} file"), e))
}

/// Inspects a file, opening it with only the given demuxers (e.g. [`crate::SEGMENT_FORMATS`]).
pub fn inspect(path: &Path, formats: &str) -> Result<MediaInfo, MediaError> {
    crate::init();
    let mut ictx = open_restricted(path, formats)?;
    let format_name = ictx.format().name().to_string();
    let video = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| MediaError::BadInput("no video stream".into()))?;
    let (vi, vtb) = (video.index(), video.time_base());
    let vparams = video.parameters();
    let vid = vparams.id();
    let dec = codec::context::Context::from_parameters(vparams)
        .and_then(|c| c.decoder().video())
        .map_err(|e| bad("unreadable video stream", e))?;
    let audio = ictx.streams().best(media::Type::Audio).map(|a| {
        (
            a.index(),
            ffmpeg_next::decoder::find(a.parameters().id())
                .map_or_else(|| "unknown".to_string(), |c| c.name().to_string()),
        )
    });
    let mut info = MediaInfo {
        format_name,
        video_codec: ffmpeg_next::decoder::find(vid)
            .map_or_else(|| format!("{vid:?}"), |c| c.name().to_string()),
        width: dec.width(),
        height: dec.height(),
        pixel_format: dec
            .format()
            .descriptor()
            .map_or_else(|| "unknown".into(), |d| d.name().to_string()),
        frames: 0,
        start_us: i64::MAX,
        last_pts_us: i64::MIN,
        starts_with_keyframe: false,
        keyframes_us: Vec::new(),
        video_codecs: None,
        audio_codec: audio.as_ref().map(|a| a.1.clone()),
        audio_packets: 0,
    };
    let mut packet = Packet::empty();
    while crate::read_packet(&mut ictx, &mut packet, "reading the file")? {
        if packet.stream() == vi {
            let Some(pts) = packet.pts().or(packet.dts()) else {
                continue;
            };
            let pts_us = ts_to_us(pts, vtb);
            if info.frames == 0 {
                info.starts_with_keyframe = packet.is_key();
            }
            if packet.is_key() {
                info.keyframes_us.push(pts_us);
            }
            if info.video_codecs.is_none() && vid == codec::Id::H264 {
                info.video_codecs = packet.data().and_then(nal::avc_codec_string);
            }
            info.frames += 1;
            info.start_us = info.start_us.min(pts_us);
            info.last_pts_us = info.last_pts_us.max(pts_us);
        } else if audio.as_ref().is_some_and(|a| a.0 == packet.stream()) {
            info.audio_packets += 1;
        }
    }
    if info.frames == 0 {
        return Err(MediaError::BadInput("no video frames".into()));
    }
    info.keyframes_us.sort_unstable();
    Ok(info)
}
