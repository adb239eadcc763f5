//! A clip whose audio outlasts its video: the last source segment lasts until the audio
//! ends, and its renditions hold the last picture to there, checked with the `ffprobe` CLI.

use std::path::Path;
use std::process::Command;

use castwork_media::transcode::{held_pictures, transcode_segment_until};
use castwork_media::{probe, segment_file, CutSegment, SegmentOptions, TranscodeOptions};
use castwork_protocol::{parse_profiles, plan_ladder};

mod common;
use common::ffmpeg;

const FRAME_US: i64 = 33_333;
/// 1024 samples at 48 kHz.
const AAC_FRAME_US: i64 = 21_333;

/// Presentation time and duration (microseconds) of every packet of one kind of stream
/// (`v` or `a`), in presentation order, as `ffprobe` reads them.
fn packets(path: &Path, kind: &str) -> Vec<(i64, i64)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", kind])
        .args(["-show_entries", "packet=pts_time,duration_time"])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let us = |s: &str| (s.trim().parse::<f64>().unwrap_or(0.0) * 1e6).round() as i64;
    let mut v: Vec<(i64, i64)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split(',');
            (us(f.next().unwrap_or("")), us(f.next().unwrap_or("")))
        })
        .collect();
    v.sort_unstable();
    v
}

/// Where the last packet of a stream ends.
fn end_us(p: &[(i64, i64)]) -> i64 {
    p.iter().map(|(t, d)| t + d).max().unwrap()
}

fn decodes_cleanly(path: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// 4 s of 30 fps video with 7 s of audio.
fn long_audio_clip(dir: &Path) -> std::path::PathBuf {
    let clip = dir.join("longaudio.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30:duration=4",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000:duration=7",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "60",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        clip.to_str().unwrap(),
    ]);
    clip
}

#[test]
fn audio_longer_than_the_video_is_kept_with_the_last_picture_held() {
    let dir = tempfile::tempdir().unwrap();
    let clip = long_audio_clip(dir.path());
    let probed = probe(&clip).unwrap();
    let mut segs: Vec<CutSegment> = Vec::new();
    let opts = SegmentOptions::new(2_000_000, dir.path().to_path_buf());
    segment_file(&clip, &probed, &opts, |s| {
        segs.push(s);
        Ok(())
    })
    .unwrap();
    assert_eq!(segs.len(), 2, "{segs:?}");
    // The first segment is untouched: two seconds of pictures, listed as such.
    assert!((segs[0].duration_us - 2_000_000).abs() < 1_000, "{segs:?}");
    assert_eq!(segs[1].start_us, segs[0].start_us + segs[0].duration_us);

    // The last one lasts until its audio ends, 3 s after its last picture.
    let last = &segs[1];
    assert_eq!(last.frames, 60, "{last:?}");
    let seg_end = last.start_us + last.duration_us;
    // Where the source's audio ends, 7 s after its start: the transport stream's last AAC
    // frame runs on with the encoder's padding, under an AAC frame (21.3 ms) more.
    let src_audio_end = end_us(&packets(&last.path, "a"));
    assert!(
        (0..=AAC_FRAME_US + 1_000).contains(&(src_audio_end - seg_end)),
        "the segment ends at {seg_end} us, its audio at {src_audio_end} us"
    );
    assert!(last.duration_us >= 4_999_000, "{last:?}");

    let ladder = parse_profiles("P144p30fps16x9,P240p30fps16x9").unwrap();
    let plan = plan_ladder(&ladder, &probed.metadata);
    let out = tempfile::tempdir().unwrap();
    let files = transcode_segment_until(
        &last.path,
        &plan.rungs,
        &probed.metadata,
        Some(seg_end),
        out.path(),
        &TranscodeOptions::default(),
    )
    .unwrap();
    let held = held_pictures(last.last_pts_us, FRAME_US, seg_end);
    assert_eq!(
        held, 91,
        "pictures at 5.000 s ... 8.000 s (the audio ends at 8.019 s)"
    );
    assert_eq!(files.len(), 2);
    for f in &files {
        let video = packets(&f.path, "v");
        let audio = packets(&f.path, "a");
        let audio_end = end_us(&audio);
        let last_pts = video.last().unwrap().0;
        assert_eq!(video.len() as u64, 60 + held, "{}: {video:?}", f.rung);
        assert_eq!(f.frames, 60 + held);
        // The pictures run to the audio's end: the last one within a frame of it.
        assert!(
            last_pts < audio_end && audio_end - last_pts <= FRAME_US + 1_000,
            "{}: last picture at {last_pts} us, audio to {audio_end} us",
            f.rung
        );
        // All of the segment's audio is there, and the segment's duration covers it.
        assert!(
            (audio_end - src_audio_end).abs() <= 1_000,
            "{}: audio to {audio_end} us, the source's to {src_audio_end} us",
            f.rung
        );
        assert!(seg_end >= audio_end - AAC_FRAME_US - 1_000, "{}", f.rung);
        // Held pictures are one frame apart.
        for w in video[59..].windows(2) {
            assert!(
                (w[1].0 - w[0].0 - FRAME_US).abs() <= 100,
                "{}: {w:?}",
                f.rung
            );
        }
        decodes_cleanly(&f.path);
    }

    // Without the segment's end (an older caller), nothing is held.
    let out = tempfile::tempdir().unwrap();
    let files = castwork_media::transcode_segment(
        &last.path,
        &plan.rungs,
        &probed.metadata,
        out.path(),
        &TranscodeOptions::default(),
    )
    .unwrap();
    assert!(files.iter().all(|f| f.frames == 60), "{files:?}");
}

#[test]
fn a_few_ms_of_trailing_audio_holds_nothing() {
    // The last picture at 4.966667 s: the video ends at 5 s.
    let last = 5_000_000 - FRAME_US;
    // Within a frame of the video's end: no picture is held, and nothing lengthens.
    assert_eq!(held_pictures(last, FRAME_US, 5_000_000 + 21_333), 0);
    assert_eq!(held_pictures(last, FRAME_US, 5_000_000 + FRAME_US), 0);
    // Past one frame: one picture per frame interval, each shown before the end.
    assert_eq!(
        held_pictures(last, FRAME_US, 5_000_000 + FRAME_US + 1_000),
        0
    );
    assert_eq!(
        held_pictures(last, FRAME_US, 5_000_000 + FRAME_US + 2_000),
        2
    );
    assert_eq!(held_pictures(last, FRAME_US, 5_000_000 + 3 * FRAME_US), 3);
    assert_eq!(
        held_pictures(last, FRAME_US, 5_000_000 + 3 * FRAME_US + 1),
        4
    );
    assert_eq!(held_pictures(last, 0, 9_000_000), 0);
    let end = castwork_media::segment::last_segment_end;
    assert_eq!(end(5_000_000, 5_021_333, FRAME_US), 5_000_000);
    assert_eq!(end(5_000_000, 8_019_000, FRAME_US), 8_019_000);
    assert_eq!(end(5_000_000, i64::MIN, FRAME_US), 5_000_000);
}
