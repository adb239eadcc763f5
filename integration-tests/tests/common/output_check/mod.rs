//! An independent check of a pushed stream's renditions against its source file, with the
//! `ffmpeg`/`ffprobe` CLI only (never Castwork's media code). For every rung, video and
//! audio apart: decoder errors (the concatenated playlist, each segment on its own, and each
//! stored source segment on its own); contiguity across segments (no overlap, no gap past
//! one frame); each segment's first picture and audio against its source segment's, and its
//! picture count against the source's after the rung's frame-rate cap; each `EXTINF`
//! against what the segment holds; durations against the source file (audio kept in full,
//! the last picture held to its end); and SSIM against the source at matching timestamps
//! over the whole stream, per segment.

mod probe;
mod verdict;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ffprobe;
use probe::{decoder_errors, decoder_errors_each, ssim_frames};
pub use probe::{spans, spans_of_files, Span, Spans};

/// What a stream's renditions must meet.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// The lowest mean SSIM of any one segment against the source.
    pub min_segment_ssim: f64,
    /// The lowest SSIM of any one picture against the source picture at its time.
    pub min_frame_ssim: f64,
}

impl Default for Thresholds {
    /// Measured here (FFmpeg 5.1, the test ladders' bitrates): right renditions of
    /// generated clips score 0.992-0.998 per segment (pictures 0.983 and up), camera
    /// footage (`bikes.mp4`) 0.976 at 256x108 (pictures 0.972). Wrong ones, made on
    /// purpose with the CLI: every picture one frame late 0.920 (pictures 0.884), a
    /// segment left out 0.894 (0.735), 20 scrambled transport packets 0.876 (0.698). 0.95
    /// per segment and 0.90 per picture sit between the two with room for encoding loss.
    fn default() -> Self {
        Thresholds {
            min_segment_ssim: 0.95,
            min_frame_ssim: 0.90,
        }
    }
}

/// One rendition segment.
#[derive(Clone, Debug)]
pub struct SegmentReport {
    pub seq: u64,
    pub file: PathBuf,
    /// The duration its playlist gives it (`EXTINF`).
    pub extinf: f64,
    pub spans: Spans,
    /// The source segment's first picture time, when the source segment is stored.
    pub source_first_picture: Option<f64>,
    /// The source segment's first audio time.
    pub source_first_audio: Option<f64>,
    /// The source segment's pictures.
    pub source_video: Option<Span>,
    /// Decoder errors decoding this segment on its own.
    pub decode_errors: String,
    /// Mean and lowest SSIM of this segment's pictures, and how many were compared.
    pub ssim_mean: f64,
    pub ssim_min: f64,
    pub ssim_frames: usize,
}

/// Gaps and overlaps between consecutive segments of one stream kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Contiguity {
    /// The largest gap: a segment starting after the previous one ended (seconds).
    pub max_gap: f64,
    /// The largest overlap: a segment starting before the previous one ended (seconds).
    pub max_overlap: f64,
    /// The sequence number of the segment after the largest gap and overlap.
    pub gap_at: Option<u64>,
    pub overlap_at: Option<u64>,
}

/// One rung of a stream.
#[derive(Clone, Debug)]
pub struct RungReport {
    pub name: String,
    pub width: u64,
    pub height: u64,
    /// The frame rate both sides were sampled at for SSIM.
    pub fps: f64,
    pub segments: Vec<SegmentReport>,
    /// Decoder errors decoding the concatenated playlist.
    pub playlist_errors: String,
    pub video: Contiguity,
    pub audio: Contiguity,
    /// The largest difference between a segment's first picture and its source segment's.
    pub first_picture_offset: f64,
    pub first_picture_offset_at: Option<u64>,
    /// The largest difference between a segment's first audio and its source segment's.
    pub first_audio_offset: f64,
    /// First to last picture's end, and the same for audio.
    pub video_duration: f64,
    pub audio_duration: Option<f64>,
    pub video_frame: f64,
    pub audio_frame: f64,
    /// The lowest segment mean SSIM and where, and the lowest picture's.
    pub min_ssim: f64,
    pub min_ssim_at: Option<u64>,
    pub min_frame_ssim: f64,
    pub ssim_frames: usize,
}

/// A stream's renditions checked against its source file.
#[derive(Clone, Debug)]
pub struct StreamReport {
    pub stream: String,
    pub source: PathBuf,
    pub source_spans: Spans,
    /// Decoder errors of each stored source segment decoded on its own (every one must
    /// start at a point a decoder can start from).
    pub source_errors: Vec<(u64, String)>,
    pub rungs: Vec<RungReport>,
}

/// Checks every rung of `stream` in the local object store `storage` against `source`,
/// the file that was pushed.
pub fn check_stream(storage: &Path, stream: &str, source: &Path) -> StreamReport {
    let root = storage.join("streams").join(stream);
    let master = std::fs::read(root.join("index.m3u8"))
        .unwrap_or_else(|e| panic!("{}: {e}", root.join("index.m3u8").display()));
    let master = m3u8_rs::parse_master_playlist_res(&master).expect("master playlist parses");
    let (sources, source_errors) = source_segments(&root.join("source"));
    let source_spans = spans(source);
    let rungs = master
        .variants
        .iter()
        .map(|v| {
            let dir = root.join(v.uri.trim_end_matches("/index.m3u8"));
            check_rung(&dir, source, &sources)
        })
        .collect();
    StreamReport {
        stream: stream.to_string(),
        source: source.to_path_buf(),
        source_spans,
        source_errors,
        rungs,
    }
}

/// The stored source segments' spans by sequence number, and the decoder errors of each
/// decoded on its own.
#[allow(clippy::type_complexity)]
fn source_segments(dir: &Path) -> (BTreeMap<u64, Spans>, Vec<(u64, String)>) {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
        .collect();
    files.sort();
    let paths: Vec<PathBuf> = files.iter().map(|f| f.1.clone()).collect();
    let spans = spans_of_files(&paths);
    let errors = decoder_errors_each(&paths);
    let seqs = files.iter().map(|f| f.0);
    (
        seqs.clone().zip(spans).collect(),
        seqs.zip(errors).collect(),
    )
}

/// The rung's frame rate from its preset name (`P240p30fps16x9`), else 30.
fn rung_fps(name: &str) -> f64 {
    name.split_once("fps")
        .and_then(|(head, _)| {
            let digits: String = head
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            digits.parse().ok()
        })
        .unwrap_or(30.0)
}

fn check_rung(dir: &Path, source: &Path, sources: &BTreeMap<u64, Spans>) -> RungReport {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let playlist = dir.join("index.m3u8");
    let text = std::fs::read(&playlist).unwrap();
    let media = m3u8_rs::parse_media_playlist_res(&text).expect("media playlist parses");
    let files: Vec<(u64, PathBuf, f64)> = media
        .segments
        .iter()
        .map(|s| {
            let seq = s.uri.split('.').next().unwrap().parse().unwrap();
            (seq, dir.join(&s.uri), f64::from(s.duration))
        })
        .collect();
    assert!(!files.is_empty(), "{name}: an empty playlist");
    let paths: Vec<PathBuf> = files.iter().map(|f| f.1.clone()).collect();
    let (spans, errors) = std::thread::scope(|s| {
        let errors = s.spawn(|| decoder_errors_each(&paths));
        (
            spans_of_files(&paths),
            errors.join().expect("decode thread"),
        )
    });
    let mut segments: Vec<SegmentReport> = files
        .iter()
        .zip(spans.into_iter().zip(errors))
        .map(
            |((seq, file, extinf), (spans, decode_errors))| SegmentReport {
                seq: *seq,
                file: file.clone(),
                extinf: *extinf,
                spans,
                source_first_picture: sources.get(seq).and_then(|s| s.video).map(|v| v.start),
                source_first_audio: sources.get(seq).and_then(|s| s.audio).map(|a| a.start),
                source_video: sources.get(seq).and_then(|s| s.video),
                decode_errors,
                ssim_mean: f64::NAN,
                ssim_min: f64::NAN,
                ssim_frames: 0,
            },
        )
        .collect();
    let size = ffprobe(
        &files[0].1,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
        ],
    );
    let width = size["streams"][0]["width"].as_u64().unwrap_or(0);
    let height = size["streams"][0]["height"].as_u64().unwrap_or(0);
    let playlist_errors = decoder_errors(&playlist);

    let contiguity = |pick: fn(&Spans) -> Option<Span>| {
        let mut c = Contiguity::default();
        for w in segments.windows(2) {
            let (Some(a), Some(b)) = (pick(&w[0].spans), pick(&w[1].spans)) else {
                continue;
            };
            let d = b.start - a.end;
            if d > c.max_gap {
                c.max_gap = d;
                c.gap_at = Some(w[1].seq);
            }
            if -d > c.max_overlap {
                c.max_overlap = -d;
                c.overlap_at = Some(w[1].seq);
            }
        }
        c
    };
    let video = contiguity(|s| s.video);
    let audio = contiguity(|s| s.audio);
    let (mut first_picture_offset, mut first_picture_offset_at) = (0.0f64, None);
    let mut first_audio_offset = 0.0f64;
    for s in &segments {
        if let (Some(v), Some(src)) = (s.spans.video, s.source_first_picture) {
            if (v.start - src).abs() > first_picture_offset {
                first_picture_offset = (v.start - src).abs();
                first_picture_offset_at = Some(s.seq);
            }
        }
        if let (Some(a), Some(src)) = (s.spans.audio, s.source_first_audio) {
            first_audio_offset = first_audio_offset.max((a.start - src).abs());
        }
    }
    let total = |pick: fn(&Spans) -> Option<Span>| -> Option<(f64, f64)> {
        let all: Vec<Span> = segments.iter().filter_map(|s| pick(&s.spans)).collect();
        let first = all.first()?;
        let last = all.last()?;
        let mut frames: Vec<f64> = all.iter().map(|s| s.frame).collect();
        frames.sort_by(f64::total_cmp);
        Some((last.end - first.start, frames[frames.len() / 2]))
    };
    let (video_duration, video_frame) = total(|s| s.video).unwrap_or((0.0, 0.0));
    let audio_total = total(|s| s.audio);

    let fps = rung_fps(&name);
    let frames = ssim_frames(&playlist, source, width, height, fps);
    let first = segments[0].spans.video.map_or(0.0, |v| v.start);
    let starts: Vec<f64> = segments
        .iter()
        .map(|s| s.spans.video.map_or(f64::MAX, |v| v.start - first))
        .collect();
    for (t, ssim) in &frames {
        // The segment whose pictures start at or before `t` (half a frame's leeway for the
        // frame-rate filter's rounding).
        let i = starts
            .iter()
            .rposition(|s| *s <= t + 0.5 / fps)
            .unwrap_or(0);
        let s = &mut segments[i];
        let n = s.ssim_frames as f64;
        s.ssim_mean = if s.ssim_frames == 0 {
            *ssim
        } else {
            (s.ssim_mean * n + ssim) / (n + 1.0)
        };
        s.ssim_min = if s.ssim_frames == 0 {
            *ssim
        } else {
            s.ssim_min.min(*ssim)
        };
        s.ssim_frames += 1;
    }
    let (mut min_ssim, mut min_ssim_at) = (f64::INFINITY, None);
    for s in &segments {
        // A segment with no picture compared counts as the worst.
        let m = if s.ssim_frames == 0 { 0.0 } else { s.ssim_mean };
        if m < min_ssim {
            min_ssim = m;
            min_ssim_at = Some(s.seq);
        }
    }
    let min_frame_ssim = frames.iter().map(|f| f.1).fold(f64::INFINITY, f64::min);
    RungReport {
        name,
        width,
        height,
        fps,
        playlist_errors,
        video,
        audio,
        first_picture_offset,
        first_picture_offset_at,
        first_audio_offset,
        video_duration,
        audio_duration: audio_total.map(|a| a.0),
        video_frame,
        audio_frame: audio_total.map_or(0.0, |a| a.1),
        min_ssim,
        min_ssim_at,
        min_frame_ssim,
        ssim_frames: frames.len(),
        segments,
    }
}

/// Checks `stream` against `source` with the default thresholds, prints the report and
/// fails the test on any problem, naming each.
pub fn assert_output_ok(storage: &Path, stream: &str, source: &Path) -> StreamReport {
    let started = std::time::Instant::now();
    let report = check_stream(storage, stream, source);
    println!(
        "{}  (checked in {:.1} s)",
        report.table(),
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os("CASTWORK_OUTPUT_DETAILS").is_some() {
        println!("{}", report.details());
    }
    let problems = report.problems(&Thresholds::default());
    assert!(
        problems.is_empty(),
        "the output check of {stream} failed:\n  {}\nper segment:\n{}",
        problems.join("\n  "),
        report.details()
    );
    report
}
