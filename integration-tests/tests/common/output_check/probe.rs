//! What the `ffmpeg`/`ffprobe` CLI says about files: packet spans per stream, decoder
//! errors, and SSIM against a source at matching timestamps.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::ffprobe;

/// One stream (video or audio) of one file, from its packets: seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Span {
    /// The lowest presentation time.
    pub start: f64,
    /// The end of the last packet: its presentation time plus its duration.
    pub end: f64,
    /// The typical packet (frame) duration.
    pub frame: f64,
    pub packets: usize,
}

impl Span {
    pub fn duration(&self) -> f64 {
        self.end - self.start
    }
}

/// The video and audio spans of a file (its first stream of each kind).
#[derive(Clone, Copy, Debug, Default)]
pub struct Spans {
    pub video: Option<Span>,
    pub audio: Option<Span>,
}

/// Reads a file's packets with `ffprobe`; packets flagged discard (encoder priming that an
/// edit list hides) do not count.
pub fn spans(path: &Path) -> Spans {
    spans_of_files(&[path.to_path_buf()])[0]
}

/// [`spans`] of each file, in order. MPEG-TS files are read by one `ffprobe` over the
/// files joined (`concat:`), each packet counting for the file its byte position falls in:
/// starting `ffprobe` costs more than reading a short segment.
pub fn spans_of_files(files: &[PathBuf]) -> Vec<Spans> {
    let all_ts = files.len() > 1
        && files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "ts"));
    if !all_ts {
        return files
            .iter()
            .map(|f| {
                let v = ffprobe(f, &["-show_entries", PACKETS]);
                group_packets(&v, &[u64::MAX]).remove(0)
            })
            .collect();
    }
    let mut ends = Vec::with_capacity(files.len());
    let mut at = 0u64;
    for f in files {
        at += std::fs::metadata(f).map_or(0, |m| m.len());
        ends.push(at);
    }
    let joined: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let joined = PathBuf::from(format!("concat:{}", joined.join("|")));
    let v = ffprobe(&joined, &["-show_entries", PACKETS]);
    group_packets(&v, &ends)
}

const PACKETS: &str =
    "stream=index,codec_type:packet=stream_index,pts_time,duration_time,flags,pos";

/// Spans per file from `ffprobe`'s packets, a packet going to the first file whose end
/// (a byte offset in `ends`) lies past its position.
fn group_packets(v: &serde_json::Value, ends: &[u64]) -> Vec<Spans> {
    let first_of = |kind: &str| {
        v["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["codec_type"] == kind)
            .and_then(|s| s["index"].as_u64())
    };
    let (video, audio) = (first_of("video"), first_of("audio"));
    // (pts, duration) per file and kind.
    let mut pk: Vec<[Vec<(f64, f64)>; 2]> = vec![Default::default(); ends.len()];
    let mut last_pos = [0u64; 2];
    for p in v["packets"].as_array().into_iter().flatten() {
        if p["flags"].as_str().unwrap_or("").contains('D') {
            continue;
        }
        let index = p["stream_index"].as_u64();
        let kind = if index.is_some() && index == video {
            0
        } else if index.is_some() && index == audio {
            1
        } else {
            continue;
        };
        let Some(pts) = p["pts_time"].as_str().and_then(|t| t.parse::<f64>().ok()) else {
            continue;
        };
        let dur = p["duration_time"]
            .as_str()
            .and_then(|d| d.parse::<f64>().ok())
            .unwrap_or(0.0);
        // A packet the parser split off a PES packet has no position of its own: it comes
        // from the same PES packet as the one before it.
        let pos = p["pos"]
            .as_str()
            .and_then(|x| x.parse::<u64>().ok())
            .or_else(|| p["pos"].as_u64())
            .unwrap_or(last_pos[kind]);
        last_pos[kind] = pos;
        let file = ends.iter().position(|e| pos < *e).unwrap_or(ends.len() - 1);
        pk[file][kind].push((pts, dur));
    }
    pk.into_iter()
        .map(|[v, a]| Spans {
            video: span_of(v),
            audio: span_of(a),
        })
        .collect()
}

fn span_of(mut pk: Vec<(f64, f64)>) -> Option<Span> {
    if pk.is_empty() {
        return None;
    }
    pk.sort_by(|a, b| a.0.total_cmp(&b.0));
    let frame = typical_frame(&pk);
    let start = pk[0].0;
    let end = pk
        .iter()
        .map(|(p, d)| p + if *d > 0.0 { *d } else { frame })
        .fold(f64::MIN, f64::max);
    Some(Span {
        start,
        end,
        frame,
        packets: pk.len(),
    })
}

/// The median packet duration, or the median step between presentation times where the
/// packets carry none.
fn typical_frame(sorted: &[(f64, f64)]) -> f64 {
    let mut d: Vec<f64> = sorted.iter().map(|p| p.1).filter(|d| *d > 0.0).collect();
    if d.len() * 2 < sorted.len() {
        d = sorted
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .filter(|d| *d > 0.0)
            .collect();
    }
    if d.is_empty() {
        return 0.0;
    }
    d.sort_by(f64::total_cmp);
    d[d.len() / 2]
}

/// FFmpeg's complaints decoding every stream of a file or playlist (empty when clean).
pub(super) fn decoder_errors(path: &Path) -> String {
    decode(&[path.to_path_buf()])
}

/// FFmpeg's complaints decoding every video and audio stream of `files`, each with
/// decoders of its own, in one process.
fn decode(files: &[PathBuf]) -> String {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error"]);
    for f in files {
        cmd.arg("-i").arg(f);
    }
    if files.len() > 1 {
        for i in 0..files.len() {
            cmd.args(["-map", &format!("{i}:v?"), "-map", &format!("{i}:a?")]);
        }
    }
    let out = cmd.args(["-f", "null", "-"]).output().expect("ffmpeg runs");
    let mut s = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        s.push_str(&format!("\nexit status {}", out.status));
    }
    s
}

/// [`decoder_errors`] of each file decoded on its own (each with decoders of its own),
/// batched into few processes; a batch that complains is decoded again a file at a time
/// to say which.
pub(super) fn decoder_errors_each(files: &[PathBuf]) -> Vec<String> {
    const BATCH: usize = 40;
    let batches: Vec<&[PathBuf]> = files.chunks(BATCH).collect();
    parallel(&batches, |b| {
        if decode(b).is_empty() {
            vec![String::new(); b.len()]
        } else {
            b.iter().map(|f| decoder_errors(f)).collect()
        }
    })
    .into_iter()
    .flatten()
    .collect()
}

/// `f` over `items` on as many threads as there are cores, results in order.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("check thread"))
            .collect()
    })
}

/// SSIM of each rendition picture against the source picture at the same time: both start
/// at their first picture (a segment's first picture time is checked apart), both are
/// sampled at the rung's frame rate, so frames pair up by timestamp; the source is turned
/// as a player shows it (FFmpeg's autorotate) and scaled to the rendition's size. Returns
/// (seconds from the first picture, SSIM) per picture.
pub(super) fn ssim_frames(
    playlist: &Path,
    source: &Path,
    w: u64,
    h: u64,
    fps: f64,
) -> Vec<(f64, f64)> {
    let stats = tempfile::NamedTempFile::new().unwrap();
    let graph = format!(
        "[0:v]setpts=PTS-STARTPTS,fps={fps},format=yuv420p[m];\
         [1:v]setpts=PTS-STARTPTS,fps={fps},scale={w}:{h},format=yuv420p[r];\
         [m][r]ssim,metadata=mode=print:key=lavfi.ssim.All:file={}",
        stats.path().display()
    );
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(playlist)
        .arg("-i")
        .arg(source)
        .args(["-lavfi", &graph, "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ssim of {}: {}",
        playlist.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(stats.path()).unwrap();
    let mut frames = Vec::new();
    let mut t = None;
    for line in text.lines() {
        if let Some(rest) = line.split("pts_time:").nth(1) {
            t = rest.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("lavfi.ssim.All=") {
            if let (Some(t), Ok(v)) = (t.take(), v.trim().parse::<f64>()) {
                frames.push((t, v));
            }
        }
    }
    frames
}
