//! The verdict on a checked stream: its problems against the thresholds, and the figures
//! as a table and per segment.

use std::fmt::Write as _;

use super::{Contiguity, StreamReport, Thresholds};

/// One millisecond: timestamps round to it in Matroska.
const MS: f64 = 0.001;

/// A gap beyond one `frame` (seconds) or an overlap in one stream (`kind`) of rung `n`.
fn contiguity_problems(p: &mut Vec<String>, n: &str, kind: &str, c: &Contiguity, frame: f64) {
    if c.max_gap > frame + MS {
        p.push(format!(
            "{n}: {kind} gap of {:.1} ms before segment {:?} (one frame is {:.1} ms)",
            c.max_gap * 1e3,
            c.gap_at,
            frame * 1e3
        ));
    }
    if c.max_overlap > MS {
        p.push(format!(
            "{n}: {kind} overlap of {:.1} ms at segment {:?}",
            c.max_overlap * 1e3,
            c.overlap_at
        ));
    }
}

impl StreamReport {
    /// Every way the stream misses `t` or the rules, one line each (empty when it passes).
    pub fn problems(&self, t: &Thresholds) -> Vec<String> {
        let mut p = Vec::new();
        let src_v = self.source_spans.video;
        let src_a = self.source_spans.audio;
        for (seq, e) in &self.source_errors {
            if !e.is_empty() {
                p.push(format!(
                    "source segment {seq} decodes with {} error lines on its own: {}",
                    e.lines().count(),
                    first_lines(e)
                ));
            }
        }
        for r in &self.rungs {
            let n = &r.name;
            if !r.playlist_errors.is_empty() {
                p.push(format!(
                    "{n}: the playlist decodes with errors: {}",
                    first_lines(&r.playlist_errors)
                ));
            }
            for s in &r.segments {
                if !s.decode_errors.is_empty() {
                    p.push(format!(
                        "{n}: segment {} decodes with {} error lines on its own: {}",
                        s.seq,
                        s.decode_errors.lines().count(),
                        first_lines(&s.decode_errors)
                    ));
                }
                if s.spans.video.is_none() {
                    p.push(format!("{n}: segment {} has no video", s.seq));
                }
                if src_a.is_some() && s.spans.audio.is_none() {
                    p.push(format!("{n}: segment {} has no audio", s.seq));
                }
            }
            contiguity_problems(&mut p, n, "video", &r.video, r.video_frame);
            contiguity_problems(&mut p, n, "audio", &r.audio, r.audio_frame);
            for s in &r.segments {
                let (Some(v), Some(sv)) = (s.spans.video, s.source_video) else {
                    continue;
                };
                // Every source picture, or one per frame interval of the rung where the
                // source runs faster (a picture either way for the rounding), plus up to
                // one per frame where the rendition runs on past its source (the last
                // picture held to the audio's end).
                let (src, span) = (sv.packets, sv.duration());
                let capped = src as f64 > span * r.fps * 1.01;
                let want = if capped { span * r.fps } else { src as f64 };
                let slack = if capped { 1.0 } else { 0.0 };
                let held = if r.video_frame > 0.0 {
                    ((v.end - sv.end - MS) / r.video_frame).ceil().max(0.0)
                } else {
                    0.0
                };
                let n_pics = v.packets as f64;
                if n_pics < want - slack - 0.5 || n_pics > want + held + slack + 0.5 {
                    p.push(format!(
                        "{n}: segment {} has {} pictures where its source segment has {src} in {span:.3} s{}{}",
                        s.seq,
                        v.packets,
                        if capped {
                            format!(" ({want:.1} at {} fps)", r.fps)
                        } else {
                            String::new()
                        },
                        if held > 0.0 {
                            format!(" and {held} may be held")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            let slack = r.video_frame.max(r.audio_frame) + MS;
            for s in &r.segments {
                // A segment lasts from its first picture to the end of its last picture or
                // audio frame, whichever is later.
                let Some(v) = s.spans.video else { continue };
                let end = s.spans.audio.map_or(v.end, |a| a.end.max(v.end));
                if (s.extinf - (end - v.start)).abs() > slack {
                    p.push(format!(
                        "{n}: segment {} is listed as {:.3} s but holds {:.3} s (video {:.3} s, audio to {:.3} s past its first picture)",
                        s.seq,
                        s.extinf,
                        end - v.start,
                        v.duration(),
                        end - v.start
                    ));
                }
            }
            if let (Some(first), Some(last)) = (r.segments.first(), r.segments.last()) {
                let video_end = last.spans.video.map_or(0.0, |v| v.end);
                let audio_end = r
                    .segments
                    .iter()
                    .filter_map(|s| s.spans.audio)
                    .map(|a| a.end)
                    .fold(f64::MIN, f64::max);
                let start = first.spans.video.map_or(0.0, |v| v.start);
                if audio_end > video_end + r.video_frame + r.audio_frame + MS {
                    p.push(format!(
                        "{n}: the pictures end {:.3} s into the stream and the audio {:.3} s: the last picture is not held to the audio's end",
                        video_end - start,
                        audio_end - start
                    ));
                }
            }
            if r.first_audio_offset > MS {
                p.push(format!(
                    "{n}: a segment's audio starts {:.1} ms away from its source segment's",
                    r.first_audio_offset * 1e3
                ));
            }
            if r.first_picture_offset > MS {
                p.push(format!(
                    "{n}: segment {:?} starts {:.1} ms away from its source segment's first picture",
                    r.first_picture_offset_at,
                    r.first_picture_offset * 1e3
                ));
            }
            if let Some(v) = src_v {
                // A picture either way; more only where the source's audio runs on (the
                // last picture may be held to its end).
                let frame = v.frame.max(r.video_frame);
                let longest = src_a.map_or(v.duration(), |a| a.end.max(v.end) - v.start);
                if r.video_duration < v.duration() - frame - MS
                    || r.video_duration > longest + frame + MS
                {
                    p.push(format!(
                        "{n}: {:.3} s of video from {:.3} s of source",
                        r.video_duration,
                        v.duration()
                    ));
                }
            }
            if let (Some(a), Some(ra)) = (src_a, r.audio_duration) {
                // Audio is converted to AAC once per stream: encoder priming and the last
                // frame's padding may add up to two AAC frames; nothing may go missing
                // beyond one.
                let f = r.audio_frame.max(a.frame);
                if ra < a.duration() - f - MS || ra > a.duration() + 2.0 * f + MS {
                    p.push(format!(
                        "{n}: {ra:.3} s of audio from {:.3} s of source",
                        a.duration()
                    ));
                }
            }
            if r.min_ssim < t.min_segment_ssim {
                p.push(format!(
                    "{n}: segment {:?} has SSIM {:.4} against the source (at least {} wanted)",
                    r.min_ssim_at, r.min_ssim, t.min_segment_ssim
                ));
            }
            if r.min_frame_ssim < t.min_frame_ssim {
                p.push(format!(
                    "{n}: a picture has SSIM {:.4} against the source (at least {} wanted)",
                    r.min_frame_ssim, t.min_frame_ssim
                ));
            }
            if r.ssim_frames == 0 {
                p.push(format!("{n}: no picture could be compared"));
            }
        }
        p
    }

    /// The report as a table, one line per rung.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let sv = self.source_spans.video.map_or(0.0, |v| v.duration());
        let sa = self.source_spans.audio.map(|a| a.duration());
        let _ = writeln!(
            s,
            "output check of {} (source {}: video {:.3} s, audio {}; {} source segments, {} with decoder errors)",
            self.stream,
            self.source.display(),
            sv,
            sa.map_or("none".to_string(), |a| format!("{a:.3} s")),
            self.source_errors.len(),
            self.source_errors.iter().filter(|e| !e.1.is_empty()).count()
        );
        let _ = writeln!(
            s,
            "  {:<16} {:>9} {:>4} {:>15} {:>15} {:>8} {:>8} {:>8} {:>14} {:>7} {:>7}",
            "rung",
            "size",
            "segs",
            "v gap/ovl ms",
            "a gap/ovl ms",
            "1st v ms",
            "v dur s",
            "a dur s",
            "min SSIM (seg)",
            "min pic",
            "errors"
        );
        for r in &self.rungs {
            let errors = r.playlist_errors.lines().count()
                + r.segments
                    .iter()
                    .map(|s| s.decode_errors.lines().count())
                    .sum::<usize>();
            let _ = writeln!(
                s,
                "  {:<16} {:>9} {:>4} {:>15} {:>15} {:>8.1} {:>8.3} {:>8} {:>14} {:>7.4} {:>7}",
                r.name,
                format!("{}x{}", r.width, r.height),
                r.segments.len(),
                format!(
                    "{:.1}/{:.1}",
                    r.video.max_gap * 1e3,
                    r.video.max_overlap * 1e3
                ),
                if r.audio_duration.is_some() {
                    format!(
                        "{:.1}/{:.1}",
                        r.audio.max_gap * 1e3,
                        r.audio.max_overlap * 1e3
                    )
                } else {
                    "-".to_string()
                },
                r.first_picture_offset * 1e3,
                r.video_duration,
                r.audio_duration
                    .map_or("-".to_string(), |a| format!("{a:.3}")),
                format!(
                    "{:.4} ({})",
                    r.min_ssim,
                    r.min_ssim_at.map_or("-".to_string(), |x| x.to_string())
                ),
                r.min_frame_ssim,
                errors
            );
        }
        s
    }

    /// Per-segment figures of every rung, for diagnosis.
    pub fn details(&self) -> String {
        let mut s = String::new();
        for r in &self.rungs {
            for g in &r.segments {
                let v = g.spans.video.unwrap_or_default();
                let a = g.spans.audio.unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {} seg {} (EXTINF {:.3}): video {:.4}-{:.4} ({} pics, source first {} with {}), audio {:.4}-{:.4} (source first {}), SSIM mean {:.4} min {:.4} over {}, errors {}",
                    r.name,
                    g.seq,
                    g.extinf,
                    v.start,
                    v.end,
                    v.packets,
                    g.source_first_picture.map_or("-".into(), |x| format!("{x:.4}")),
                    g.source_video.map_or("-".into(), |x| x.packets.to_string()),
                    a.start,
                    a.end,
                    g.source_first_audio.map_or("-".into(), |x| format!("{x:.4}")),
                    g.ssim_mean,
                    g.ssim_min,
                    g.ssim_frames,
                    g.decode_errors.lines().count()
                );
            }
        }
        s
    }
}

fn first_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines
        .iter()
        .take(3)
        .copied()
        .collect::<Vec<_>>()
        .join(" | ");
    if lines.len() > 3 {
        out.push_str(&format!(" | ... ({} lines)", lines.len()));
    }
    out
}
