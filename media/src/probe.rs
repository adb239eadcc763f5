//! Probing an input: what the broadcaster must know before it cuts and enqueues a stream.

use std::path::Path;

use castwork_protocol::{ColorInfo, Rational, SourceMetadata};
use ffmpeg_next::{codec, format, media, Dictionary};

use crate::{bad, to_rational, MediaError};

/// The container source segments are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentContainer {
    /// MPEG-TS: H.264, HEVC and MPEG-1/2 video.
    Ts,
    /// Matroska: every other codec (VP9, ProRes, MPEG-4 part 2, whose headers may live only
    /// in the container's extradata, MS-MPEG4, ...).
    Mkv,
}

impl SegmentContainer {
    pub fn extension(self) -> &'static str {
        match self {
            SegmentContainer::Ts => "ts",
            SegmentContainer::Mkv => "mkv",
        }
    }

    pub fn muxer(self) -> &'static str {
        match self {
            SegmentContainer::Ts => "mpegts",
            SegmentContainer::Mkv => "matroska",
        }
    }

    fn for_codec(id: codec::Id) -> Self {
        match id {
            codec::Id::H264 | codec::Id::HEVC | codec::Id::MPEG2VIDEO | codec::Id::MPEG1VIDEO => {
                SegmentContainer::Ts
            }
            _ => SegmentContainer::Mkv,
        }
    }
}

/// What probing found.
#[derive(Debug, Clone)]
pub struct ProbedInput {
    pub metadata: SourceMetadata,
    /// Demuxer name, e.g. `mov,mp4,m4a,3gp,3g2,mj2`.
    pub format_name: String,
    pub video_index: usize,
    pub audio_index: Option<usize>,
    /// Audio codec name, e.g. `aac` or `mp3`.
    pub audio_codec: Option<String>,
    pub container: SegmentContainer,
}

/// Input options: generate missing presentation timestamps (AVI, MPEG-PS).
pub(crate) fn input_options() -> Dictionary<'static> {
    let mut d = Dictionary::new();
    d.set("fflags", "+genpts");
    d
}

/// Opens any input FFmpeg can read, with a clear error for what it cannot.
pub(crate) fn open_source(path: &Path) -> Result<format::context::Input, MediaError> {
    if !path.exists() {
        return Err(MediaError::BadInput(format!(
            "{}: no such file",
            path.display()
        )));
    }
    format::input_with_dictionary(path, input_options()).map_err(|e| {
        if let Some(why) = std::fs::File::open(path)
            .ok()
            .and_then(|f| cut_off_mp4(std::io::BufReader::new(f)))
        {
            return MediaError::BadInput(format!(
                "{}: the file ends early: {why} (truncated download?)",
                path.display()
            ));
        }
        bad(
            &format!("{}: not a media file FFmpeg can read", path.display()),
            e,
        )
    })
}

/// Why an MP4/MOV file (ISO BMFF: top-level boxes, the first `ftyp`) was cut off, if it
/// was: a box that runs past the end of the file, with no index (`moov`) before it.
fn cut_off_mp4(mut r: impl std::io::Read + std::io::Seek) -> Option<String> {
    use std::io::SeekFrom;
    let len = r.seek(SeekFrom::End(0)).ok()?;
    let mut at = 0u64;
    let mut first = true;
    while at + 8 <= len {
        r.seek(SeekFrom::Start(at)).ok()?;
        let mut head = [0u8; 16];
        r.read_exact(&mut head[..8]).ok()?;
        let kind: [u8; 4] = [head[4], head[5], head[6], head[7]];
        if first && &kind != b"ftyp" {
            return None;
        }
        first = false;
        if &kind == b"moov" {
            return None;
        }
        let size = match u32::from_be_bytes([head[0], head[1], head[2], head[3]]) {
            0 => return None,
            1 => {
                r.read_exact(&mut head[8..16]).ok()?;
                u64::from_be_bytes(head[8..16].try_into().ok()?)
            }
            n => u64::from(n),
        };
        if size < 8 {
            return None;
        }
        let end = at.checked_add(size)?;
        if end > len {
            return Some(format!(
                "its '{}' box needs {end} bytes, the file has {len}, and the index (moov) \
                 that would come after it is missing",
                String::from_utf8_lossy(&kind)
            ));
        }
        at = end;
    }
    (!first).then(|| format!("it has {len} bytes and no index (moov)"))
}

/// Reads the display rotation (clockwise degrees, a multiple of 90) of a video stream.
fn rotation(stream: &format::stream::Stream<'_>) -> u32 {
    for sd in stream.side_data() {
        if sd.kind() == codec::packet::side_data::Type::DisplayMatrix && sd.data().len() >= 36 {
            let m: Vec<f64> = sd.data()[..36]
                .chunks_exact(4)
                .map(|c| f64::from(i32::from_ne_bytes([c[0], c[1], c[2], c[3]])) / 65536.0)
                .collect();
            let (s0, s1) = (m[0].hypot(m[3]), m[1].hypot(m[4]));
            if s0 == 0.0 || s1 == 0.0 {
                return 0;
            }
            let deg = (m[1] / s1).atan2(m[0] / s0).to_degrees();
            return normalise_rotation(deg);
        }
    }
    stream
        .metadata()
        .get("rotate")
        .and_then(|r| r.parse::<f64>().ok())
        .map_or(0, normalise_rotation)
}

/// Demuxers that "succeed" on text and still images but are no video source.
fn is_not_video_format(name: &str) -> bool {
    matches!(name, "tty" | "image2" | "lavfi" | "ffmetadata") || name.ends_with("_pipe")
}

/// Snaps an angle to 0, 90, 180 or 270.
fn normalise_rotation(deg: f64) -> u32 {
    let quarter = (deg / 90.0).round() as i64;
    (quarter.rem_euclid(4) * 90) as u32
}

/// Probes an input file.
pub fn probe(path: &Path) -> Result<ProbedInput, MediaError> {
    crate::init();
    probe_input(&open_source(path)?, path)
}

/// Probes an input file with only the given demuxers (for input from the network).
pub fn probe_restricted(path: &Path, formats: &str) -> Result<ProbedInput, MediaError> {
    crate::init();
    probe_input(&crate::inspect::open_restricted(path, formats)?, path)
}

pub(crate) fn probe_input(
    ictx: &format::context::Input,
    path: &Path,
) -> Result<ProbedInput, MediaError> {
    let format_name = ictx.format().name().to_string();
    if is_not_video_format(&format_name) {
        return Err(MediaError::BadInput(format!(
            "{}: not a video file (FFmpeg reads it as {format_name})",
            path.display()
        )));
    }
    let video = ictx
        .streams()
        .filter(|s| s.parameters().medium() == media::Type::Video)
        .find(|s| {
            !s.disposition()
                .contains(format::stream::Disposition::ATTACHED_PIC)
        })
        .ok_or_else(|| {
            MediaError::BadInput(format!(
                "{}: no video stream (a {format_name} file)",
                path.display()
            ))
        })?;
    let params = video.parameters();
    let codec_id = params.id();
    if ffmpeg_next::decoder::find(codec_id).is_none() {
        return Err(MediaError::BadInput(format!(
            "{}: video codec {codec_id:?} cannot be decoded",
            path.display()
        )));
    }
    let dec = codec::context::Context::from_parameters(params)
        .and_then(|c| c.decoder().video())
        .map_err(|e| bad(&format!("{}: unreadable video stream", path.display()), e))?;
    if dec.width() == 0 || dec.height() == 0 {
        return Err(MediaError::BadInput(format!(
            "{}: the video stream has no picture size",
            path.display()
        )));
    }
    let frame_rate = to_rational(video.avg_frame_rate()).or(to_rational(video.rate()));
    let name = |s: String| (s != "Unspecified").then_some(s);
    let metadata = SourceMetadata {
        width: dec.width(),
        height: dec.height(),
        sample_aspect_ratio: to_rational(dec.aspect_ratio()).or(Rational::ONE),
        rotation: rotation(&video),
        frame_rate,
        video_codec: ffmpeg_next::decoder::find(codec_id)
            .map_or_else(|| format!("{codec_id:?}"), |c| c.name().to_string()),
        pixel_format: dec
            .format()
            .descriptor()
            .map_or_else(|| "unknown".into(), |d| d.name().to_string()),
        color: ColorInfo {
            range: name(format!("{:?}", dec.color_range())),
            space: name(format!("{:?}", dec.color_space())),
            primaries: name(format!("{:?}", dec.color_primaries())),
            transfer: name(format!("{:?}", dec.color_transfer_characteristic())),
        },
        has_audio: false,
        duration_us: (ictx.duration() > 0).then_some(ictx.duration()),
    };
    let video_index = video.index();
    let audio = ictx
        .streams()
        .best(media::Type::Audio)
        .filter(|a| ffmpeg_next::decoder::find(a.parameters().id()).is_some());
    let (audio_index, audio_codec) = match audio {
        Some(a) => (
            Some(a.index()),
            ffmpeg_next::decoder::find(a.parameters().id()).map(|c| c.name().to_string()),
        ),
        None => (None, None),
    };
    Ok(ProbedInput {
        metadata: SourceMetadata {
            has_audio: audio_index.is_some(),
            ..metadata
        },
        format_name,
        video_index,
        audio_index,
        audio_codec,
        container: SegmentContainer::for_codec(codec_id),
    })
}

#[cfg(test)]
mod tests {
    use super::cut_off_mp4;

    fn boxed(size: u32, kind: &[u8; 4], body: usize) -> Vec<u8> {
        let mut b = size.to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend(std::iter::repeat_n(0u8, body));
        b
    }

    #[test]
    fn an_mp4_cut_off_before_its_index_is_told_apart() {
        let cut = |bytes: Vec<u8>| cut_off_mp4(std::io::Cursor::new(bytes));
        // ftyp, then an mdat of 1000 bytes of which 100 arrived: no moov.
        let mut f = boxed(16, b"ftyp", 8);
        f.extend(boxed(1000, b"mdat", 92));
        let why = cut(f).unwrap();
        assert!(
            why.contains("'mdat' box needs 1016 bytes, the file has 116"),
            "{why}"
        );
        // The index first (faststart): whatever follows, FFmpeg's own error stands.
        let mut f = boxed(16, b"ftyp", 8);
        f.extend(boxed(20, b"moov", 12));
        f.extend(boxed(1000, b"mdat", 10));
        assert_eq!(cut(f), None);
        // Whole boxes but no index at all.
        let mut f = boxed(16, b"ftyp", 8);
        f.extend(boxed(16, b"free", 8));
        assert!(cut(f).unwrap().contains("no index"));
        // Not an MP4.
        assert_eq!(cut(b"\x47garbage".to_vec()), None);
        assert_eq!(cut(Vec::new()), None);
    }

    use super::*;

    #[test]
    fn rotation_snaps_to_quarters() {
        assert_eq!(normalise_rotation(0.0), 0);
        assert_eq!(normalise_rotation(89.9), 90);
        assert_eq!(normalise_rotation(-90.0), 270);
        assert_eq!(normalise_rotation(180.0), 180);
        assert_eq!(normalise_rotation(-180.0), 180);
        assert_eq!(normalise_rotation(450.0), 90);
    }

    #[test]
    fn missing_and_garbage_files_are_bad_input() {
        let e = probe(Path::new("/nonexistent/clip.mp4")).unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains("no such file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, "this is not a video, just some text\n".repeat(100)).unwrap();
        let e = probe(&p).unwrap_err();
        assert!(e.is_permanent(), "{e}");
    }
}
