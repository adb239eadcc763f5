//! Cut points: a segment may start only where a decoder can start. A keyframe flag, even an
//! IDR, does not prove it; these tests make sources where it is not so, check that the
//! cut-point check refuses such a start, that the cutter never cuts there, and that a worker
//! refuses a segment that does not decode cleanly instead of concealing the damage.

use std::path::{Path, PathBuf};
use std::process::Command;

use castwork_media::{
    check_clean_start, probe, segment_file, transcode_segment, CutSegment, MediaError,
    SegmentOptions, SegmentSummary, TranscodeOptions,
};
use castwork_protocol::{parse_profiles, plan_ladder};

mod common;
use common::ffmpeg;

/// What `ffmpeg -v error -i FILE -f null -` prints (and whether it failed): nothing for a
/// file that decodes cleanly.
fn cli_decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let mut errors = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        errors.push_str(&format!("ffmpeg failed: {}", out.status));
    }
    errors
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A 6 s x264 stream in MPEG-TS with 3 B-frames and a keyframe every 2 s, cut by FFmpeg's
/// own segment muxer at 2 s (at every keyframe, like a naive keyframe cutter).
fn ffmpeg_cut(dir: &Path, name: &str, x264_params: &str) -> Vec<PathBuf> {
    let src = dir.join(format!("{name}.ts"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30",
        "-t",
        "6",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-x264-params",
        x264_params,
        "-bf",
        "3",
        "-pix_fmt",
        "yuv420p",
        p(&src),
    ]);
    let pattern = dir.join(format!("{name}_%d.ts"));
    ffmpeg(&[
        "-i",
        p(&src),
        "-f",
        "segment",
        "-segment_time",
        "2",
        "-c",
        "copy",
        p(&pattern),
    ]);
    let segs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("{name}_{i}.ts"))).collect();
    for s in &segs {
        assert!(
            s.exists(),
            "the segment muxer did not write {}",
            s.display()
        );
    }
    segs
}

#[test]
fn check_refuses_an_open_gop_segment_and_accepts_clean_ones() {
    let dir = tempfile::tempdir().unwrap();
    let open = ffmpeg_cut(dir.path(), "open", "open-gop=1:keyint=60:scenecut=0");
    // The premise: the second segment starts at a recovery-point I picture whose leading
    // B-pictures reference the previous GOP, so it does not decode on its own.
    assert!(
        !cli_decode_errors(&open[1]).is_empty(),
        "the open-GOP segment was expected to decode with errors"
    );

    let first = check_clean_start(&open[0]).unwrap();
    assert!(first.is_clean(), "first segment: {first}");
    assert_eq!(first.errors, 0);
    assert!(first.pictures > 0);

    let second = check_clean_start(&open[1]).unwrap();
    assert!(!second.is_clean(), "open-GOP segment accepted: {second}");
    assert!(second.errors > 0, "{second}");
    assert!(second.first_error.is_some(), "{second}");

    let closed = ffmpeg_cut(dir.path(), "closed", "open-gop=0:keyint=60:scenecut=0");
    for s in &closed {
        assert_eq!(cli_decode_errors(s), "", "{}", s.display());
        let c = check_clean_start(s).unwrap();
        assert!(
            c.is_clean(),
            "closed-GOP segment {} refused: {c}",
            s.display()
        );
        assert_eq!(c.packets, castwork_media::clean_start::CHECK_PICTURES);
    }
}

/// NAL units of an Annex B stream, each with its start code.
fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            let s = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push(s);
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| &data[s..starts.get(k + 1).copied().unwrap_or(data.len())])
        .collect()
}

fn nal_type(nal: &[u8]) -> u8 {
    let hdr = if nal[2] == 1 { nal[3] } else { nal[4] };
    hdr & 0x1f
}

/// Rewrites an H.264 Annex B stream (one slice per picture), keeping the SPS and PPS that
/// precede IDR number `k` (from 0) only where `keep(k)`: how encoders that send parameter
/// sets only when they change write their streams.
fn keep_parameter_sets(data: &[u8], keep: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut idrs = 0;
    for nal in nal_units(data) {
        match nal_type(nal) {
            7 | 8 if !keep(idrs) => continue,
            5 => idrs += 1,
            _ => {}
        }
        out.extend_from_slice(nal);
    }
    out
}

fn parameter_sets(data: &[u8]) -> Vec<u8> {
    nal_units(data)
        .into_iter()
        .take_while(|n| nal_type(n) != 5)
        .filter(|n| matches!(nal_type(n), 7 | 8))
        .flatten()
        .copied()
        .collect()
}

/// Two 4 s encodes at 30 fps with an IDR every second whose parameter sets differ (CABAC
/// with 3 references, then CAVLC with 1) under the same ids, as raw H.264.
fn two_encodes(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let enc = |name: &str, src: &str, params: &str| {
        let out = dir.join(name);
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            src,
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "30",
            "-bf",
            "0",
            "-x264-params",
            params,
            "-pix_fmt",
            "yuv420p",
            "-f",
            "h264",
            p(&out),
        ]);
        std::fs::read(&out).unwrap()
    };
    let a = enc(
        "a.h264",
        "testsrc2=size=320x240:rate=30",
        "scenecut=0:cabac=1:ref=3",
    );
    let b = enc(
        "b.h264",
        "testsrc=size=320x240:rate=30",
        "scenecut=0:cabac=0:ref=1",
    );
    (a, b)
}

/// Wraps raw H.264 at 30 fps, with 440 Hz audio of the same length, in Matroska.
fn to_mkv(dir: &Path, name: &str, h264: &[u8], secs: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.h264"));
    std::fs::write(&raw, h264).unwrap();
    let mkv = dir.join(format!("{name}.mkv"));
    ffmpeg(&[
        "-framerate",
        "30",
        "-i",
        p(&raw),
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency=440:duration={secs}"),
        "-c:v",
        "copy",
        "-c:a",
        "aac",
        p(&mkv),
    ]);
    mkv
}

fn cut(src: &Path, dir: &Path, target_us: i64) -> (SegmentSummary, Vec<CutSegment>) {
    let probed = probe(src).unwrap();
    let mut segs = Vec::new();
    let summary = segment_file(
        src,
        &probed,
        &SegmentOptions::new(target_us, dir.to_path_buf()),
        |s| {
            segs.push(s);
            Ok(())
        },
    )
    .unwrap();
    (summary, segs)
}

fn assert_every_segment_clean_and_contiguous(segs: &[CutSegment]) {
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(
            cli_decode_errors(&s.path),
            "",
            "segment {i} does not decode cleanly: {s:?}"
        );
        let c = check_clean_start(&s.path).unwrap();
        assert!(c.is_clean(), "segment {i}: {c}");
        if i > 0 {
            let prev = &segs[i - 1];
            assert_eq!(s.start_us, prev.start_us + prev.duration_us, "{segs:?}");
        }
    }
}

#[test]
fn cutter_never_cuts_at_an_idr_where_a_decoder_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_encodes(dir.path());
    // A stream spliced from two encodes, the second sending its parameter sets once: its
    // later IDRs are keyframes, but a decoder starting there has only the first encode's
    // parameter sets (the container's), and cannot decode them.
    let mut spliced = a.clone();
    spliced.extend(keep_parameter_sets(&b, |k| k == 0));
    let src = to_mkv(dir.path(), "spliced", &spliced, "8");
    assert_eq!(
        cli_decode_errors(&src),
        "",
        "the whole source decodes cleanly"
    );

    // The premise: cutting at every keyframe past 1 s, as FFmpeg's segment muxer does,
    // makes segments that do not decode.
    let naive = dir.path().join("naive_%d.ts");
    ffmpeg(&[
        "-i",
        p(&src),
        "-f",
        "segment",
        "-segment_time",
        "1",
        "-c",
        "copy",
        p(&naive),
    ]);
    let broken: Vec<PathBuf> = (0..8)
        .map(|i| dir.path().join(format!("naive_{i}.ts")))
        .filter(|s| s.exists() && !cli_decode_errors(s).is_empty())
        .collect();
    assert!(broken.len() >= 2, "expected broken naive cuts: {broken:?}");
    for s in &broken {
        let c = check_clean_start(s).unwrap();
        assert!(!c.is_clean(), "{}: {c}", s.display());
        // In the decoder's own words (what it logged), not only FFmpeg's error code.
        let first = c.first_error.unwrap();
        assert!(
            !first.starts_with("video packet ") && !first.starts_with("picture "),
            "{first}"
        );
    }

    let out = dir.path().join("segments");
    std::fs::create_dir(&out).unwrap();
    let (summary, segs) = cut(&src, &out, 1_000_000);
    // Cuts at 1, 2, 3 s (first encode) and 4 s (the second's first IDR, with its parameter
    // sets); its IDRs at 5, 6 and 7 s are refused, so the last segment runs 4 s.
    assert_eq!(summary.refused_cuts, 3, "{summary:?} {segs:?}");
    assert_eq!(summary.dropped_frames, 0);
    assert_eq!(segs.len(), 5, "{segs:?}");
    assert_eq!(
        segs.iter().map(|s| s.frames).collect::<Vec<_>>(),
        vec![30, 30, 30, 30, 120]
    );
    assert!((segs[4].duration_us - 4_000_000).abs() < 1_000, "{segs:?}");
    assert!(segs.iter().all(|s| s.audio_packets > 0), "{segs:?}");
    let audio: u64 = segs.iter().map(|s| s.audio_packets).sum();
    // 8 s of 44.1 kHz... or 48 kHz AAC: 1024 samples per packet.
    assert!(audio >= 8 * 44_100 / 1024, "audio lost: {audio} packets");
    assert_every_segment_clean_and_contiguous(&segs);
}

#[test]
fn frames_before_the_first_clean_start_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_encodes(dir.path());
    // A recording that joins a stream mid-way: its first second carries the parameter sets
    // of another encode, so only the IDR at 1 s (with its own) is a clean start.
    let mut joined = parameter_sets(&a);
    joined.extend(keep_parameter_sets(&b, |k| k != 0));
    let src = to_mkv(dir.path(), "joined", &joined, "4");
    assert!(
        !cli_decode_errors(&src).is_empty(),
        "the first second was expected not to decode"
    );

    let out = dir.path().join("segments");
    std::fs::create_dir(&out).unwrap();
    let (summary, segs) = cut(&src, &out, 1_000_000);
    assert_eq!(summary.dropped_frames, 30, "{summary:?}");
    assert_eq!(summary.refused_cuts, 1, "{summary:?}");
    assert_eq!(segs.len(), 3, "{segs:?}");
    assert_eq!(segs.iter().map(|s| s.frames).sum::<u64>(), 90);
    assert_every_segment_clean_and_contiguous(&segs);
}

#[test]
fn dense_keyframes_are_cut_at_every_target() {
    // A keyframe every 3 frames and a 0.1 s target: each cut is checked while the previous
    // one's trial decode is still running, so each trial ends early at the next cut.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("dense.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30",
        "-t",
        "2",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "3",
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
        p(&src),
    ]);
    let out = dir.path().join("segments");
    std::fs::create_dir(&out).unwrap();
    let (summary, segs) = cut(&src, &out, 100_000);
    assert_eq!(summary.refused_cuts, 0, "{summary:?}");
    assert_eq!(segs.len(), 20, "{segs:?}");
    assert!(segs.iter().all(|s| s.frames == 3), "{segs:?}");
    assert_every_segment_clean_and_contiguous(&segs);
}

#[test]
fn transcode_refuses_a_segment_that_does_not_decode_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let open = ffmpeg_cut(dir.path(), "open", "open-gop=1:keyint=60:scenecut=0");
    let probed = probe(&open[0]).unwrap();
    let plan = plan_ladder(&parse_profiles("P240p30fps16x9").unwrap(), &probed.metadata);
    let out = tempfile::tempdir().unwrap();
    let files = transcode_segment(
        &open[0],
        &plan.rungs,
        &probed.metadata,
        out.path(),
        &TranscodeOptions::default(),
    )
    .unwrap();
    assert_eq!(files[0].frames, 60);

    let e = transcode_segment(
        &open[1],
        &plan.rungs,
        &probed.metadata,
        out.path(),
        &TranscodeOptions::default(),
    )
    .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    match &e {
        MediaError::Undecodable { errors, first } => {
            assert!(*errors > 0);
            assert!(!first.is_empty());
        }
        other => panic!("expected a decoding failure, got {other:?}"),
    }
    assert!(
        e.to_string()
            .starts_with("the segment does not decode cleanly: "),
        "{e}"
    );
}
