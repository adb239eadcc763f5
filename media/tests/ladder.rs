//! Cuts real clips into source segments and transcodes them into a ladder, checking the
//! outputs by demuxing them and by decoding them with the `ffmpeg` CLI.

use std::path::Path;
use std::process::Command;

use castwork_media::{
    inspect, probe, transcode_segment, CutSegment, TranscodeOptions, SEGMENT_FORMATS,
};
use castwork_protocol::{parse_profiles, plan_ladder};

mod common;
use common::{cut, ffmpeg, testdata};

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

#[test]
fn hd_clip_with_mp3_audio_cuts_and_transcodes() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip_mp3.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        "10",
        "-c:v",
        "libx264",
        "-g",
        "60",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "libmp3lame",
        clip.to_str().unwrap(),
    ]);
    let (probed, segs) = cut(&clip, dir.path());
    assert!(probed.metadata.has_audio);
    assert_eq!(segs.len(), 5, "{segs:?}");
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s.seq, i as u64);
        assert_eq!(s.frames, 60);
        assert!((s.duration_us - 2_000_000).abs() < 1_000, "{s:?}");
        if i > 0 {
            assert_eq!(s.start_us, segs[i - 1].start_us + segs[i - 1].duration_us);
        }
        let info = inspect(&s.path, SEGMENT_FORMATS).unwrap();
        assert_eq!(
            info.audio_codec.as_deref(),
            Some("aac"),
            "audio normalised to AAC"
        );
        assert!(info.starts_with_keyframe);
        assert!(
            (info.start_us - s.start_us).abs() < 1_000,
            "{info:?} vs {s:?}"
        );
        decodes_cleanly(&s.path);
    }
    let ladder = parse_profiles("P240p30fps16x9,P360p30fps16x9,P720p30fps16x9").unwrap();
    let plan = plan_ladder(&ladder, &probed.metadata);
    let out = tempfile::tempdir().unwrap();
    let seg = &segs[2];
    let files = transcode_segment(
        &seg.path,
        &plan.rungs,
        &probed.metadata,
        out.path(),
        &TranscodeOptions::default(),
    )
    .unwrap();
    assert_eq!(files.len(), 3);
    for f in &files {
        let info = inspect(&f.path, "mpegts").unwrap();
        assert_eq!((info.width, info.height), (f.width, f.height));
        assert_eq!(info.frames, 60, "{f:?}");
        assert!(info.starts_with_keyframe);
        assert!(
            (info.start_us - seg.start_us).abs() < 34_000,
            "{info:?} vs {seg:?}"
        );
        assert_eq!(info.keyframes_us, vec![info.start_us], "one GOP of 2 s");
        assert_eq!(info.audio_codec.as_deref(), Some("aac"));
        assert_eq!(info.pixel_format, "yuv420p");
        assert!(info.video_codecs.as_deref().unwrap().starts_with("avc1.64"));
        decodes_cleanly(&f.path);
    }
}

#[test]
fn wide_camera_clip_without_audio() {
    let dir = tempfile::tempdir().unwrap();
    let (probed, segs) = cut(&testdata("bikes.mp4"), dir.path());
    assert!(!probed.metadata.has_audio);
    // IDRs at 0 / 1.2 / 3.04 / 5.48 / 7.48 / 9.68 s: cuts at 3.04, 5.48, 7.48, 9.68.
    let starts: Vec<i64> = segs
        .iter()
        .map(|s| (s.start_us - segs[0].start_us + 20_000) / 40_000)
        .collect();
    assert_eq!(starts, vec![0, 76, 137, 187, 242], "{segs:?}");
    let total: u64 = segs.iter().map(|s| s.frames).sum();
    assert_eq!(total, 250);
    let plan = plan_ladder(
        &parse_profiles("P240p30fps16x9,P360p30fps16x9,P720p30fps16x9").unwrap(),
        &probed.metadata,
    );
    assert_eq!(plan.rungs.len(), 2);
    let out = tempfile::tempdir().unwrap();
    let files = transcode_segment(
        &segs[0].path,
        &plan.rungs,
        &probed.metadata,
        out.path(),
        &TranscodeOptions::default(),
    )
    .unwrap();
    for f in &files {
        let info = inspect(&f.path, "mpegts").unwrap();
        assert_eq!(
            info.frames, segs[0].frames,
            "25 fps stays 25 fps under a 30 fps cap"
        );
        assert!(info.audio_codec.is_none());
        decodes_cleanly(&f.path);
    }
    assert_eq!((files[1].width, files[1].height), (640, 272));
}

#[test]
fn frame_rate_is_capped_and_rotation_applied() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain60.mp4");
    let src = dir.path().join("rot60.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=60",
        "-t",
        "2",
        "-c:v",
        "libx264",
        "-g",
        "60",
        "-pix_fmt",
        "yuv444p",
        plain.to_str().unwrap(),
    ]);
    // FFmpeg 5.1 writes the display matrix for a `rotate` tag only when remuxing.
    ffmpeg(&[
        "-i",
        plain.to_str().unwrap(),
        "-c",
        "copy",
        "-metadata:s:v:0",
        "rotate=90",
        src.to_str().unwrap(),
    ]);
    let segdir = tempfile::tempdir().unwrap();
    let (probed, segs) = cut(&src, segdir.path());
    // ffprobe shows this matrix as "rotation=90"; the ffmpeg CLI turns it upright with
    // transpose=cclock, i.e. 270 degrees clockwise, and so do we.
    assert_eq!(probed.metadata.rotation, 270, "{:?}", probed.metadata);
    let plan = plan_ladder(&parse_profiles("P360p30fps16x9").unwrap(), &probed.metadata);
    assert_eq!((plan.rungs[0].width, plan.rungs[0].height), (360, 640));
    let out = tempfile::tempdir().unwrap();
    let files = transcode_segment(
        &segs[0].path,
        &plan.rungs,
        &probed.metadata,
        out.path(),
        &TranscodeOptions::default(),
    )
    .unwrap();
    let info = inspect(&files[0].path, "mpegts").unwrap();
    assert_eq!((info.width, info.height), (360, 640));
    assert_eq!(info.pixel_format, "yuv420p", "4:4:4 source becomes 4:2:0");
    assert_eq!(info.frames, segs[0].frames / 2, "60 fps capped to 30");
    decodes_cleanly(&files[0].path);
}

#[test]
fn sparse_keyframes_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (_, segs) = cut(&testdata("bigbuckbunny.mp4"), dir.path());
    assert_eq!(segs.len(), 1, "a single keyframe makes one segment");
    assert_eq!(segs[0].frames, 132);
    let junk = dir.path().join("junk.ts");
    std::fs::write(&junk, vec![0x47u8; 1000]).unwrap();
    let e = transcode_segment(
        &junk,
        &[],
        &probe(&testdata("bikes.mp4")).unwrap().metadata,
        dir.path(),
        &TranscodeOptions::default(),
    )
    .unwrap_err();
    assert!(e.is_permanent());
    let playlist = dir.path().join("evil.ts");
    std::fs::write(&playlist, "#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n").unwrap();
    let plan = plan_ladder(
        &parse_profiles("P240p30fps16x9").unwrap(),
        &probe(&testdata("bikes.mp4")).unwrap().metadata,
    );
    let e = transcode_segment(
        &playlist,
        &plan.rungs,
        &probe(&testdata("bikes.mp4")).unwrap().metadata,
        dir.path(),
        &TranscodeOptions::default(),
    )
    .unwrap_err();
    assert!(e.is_permanent(), "{e}");
}

/// Cuts and transcodes a generated clip; every segment must transcode to all its frames.
fn cut_and_transcode_all(src: &Path) -> Vec<CutSegment> {
    let segdir = tempfile::tempdir().unwrap();
    let (probed, segs) = cut(src, segdir.path());
    let plan = plan_ladder(&parse_profiles("P240p30fps16x9").unwrap(), &probed.metadata);
    for s in &segs {
        let out = tempfile::tempdir().unwrap();
        let files = transcode_segment(
            &s.path,
            &plan.rungs,
            &probed.metadata,
            out.path(),
            &TranscodeOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{}: segment {}: {e}", src.display(), s.seq));
        let info = inspect(&files[0].path, "mpegts").unwrap();
        assert_eq!(
            info.frames,
            s.frames,
            "{}: segment {} loses frames",
            src.display(),
            s.seq
        );
        assert!(info.starts_with_keyframe);
        decodes_cleanly(&files[0].path);
    }
    segs
}

#[test]
fn old_codecs_open_gops_and_odd_audio() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let video = [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        "6",
    ];
    // MPEG-2 with B-frames in a program stream: open GOPs are never cut (their leading
    // B-frames need the previous GOP), closed ones are.
    let open = p("open.mpg");
    ffmpeg(
        &[
            &video[..],
            &[
                "-c:v",
                "mpeg2video",
                "-bf",
                "2",
                "-g",
                "12",
                "-c:a",
                "mp2",
                &open,
            ],
        ]
        .concat(),
    );
    let segs = cut_and_transcode_all(Path::new(&open));
    assert_eq!(segs.len(), 1, "{segs:?}");
    let closed = p("closed.mpg");
    ffmpeg(
        &[
            &video[..],
            &[
                "-c:v",
                "mpeg2video",
                "-bf",
                "2",
                "-g",
                "12",
                "-flags",
                "+cgop",
                "-sc_threshold",
                "1000000000",
                "-c:a",
                "mp2",
                &closed,
            ],
        ]
        .concat(),
    );
    let segs = cut_and_transcode_all(Path::new(&closed));
    assert_eq!(segs.len(), 3, "{segs:?}");
    // DivX 3 with mp3 in AVI: coarse audio timestamps, re-encoded to AAC.
    let avi = p("divx.avi");
    ffmpeg(
        &[
            &video[..],
            &["-c:v", "msmpeg4v3", "-c:a", "libmp3lame", &avi],
        ]
        .concat(),
    );
    let segs = cut_and_transcode_all(Path::new(&avi));
    assert!(segs.iter().all(|s| s.audio_packets > 0));
    // MPEG-4 part 2 in MP4: its headers live in the container, so segments are Matroska.
    let m4v = p("asp.mp4");
    ffmpeg(
        &[
            &video[..],
            &["-c:v", "mpeg4", "-bf", "2", "-c:a", "aac", &m4v],
        ]
        .concat(),
    );
    let segs = cut_and_transcode_all(Path::new(&m4v));
    assert!(segs[0].path.extension().unwrap() == "mkv");
    // Variable frame rate (jittered timestamps, about 29.4 fps on average) under a 30 fps
    // rung: nothing is dropped.
    let vfr = p("vfr.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=30",
        "-t",
        "5",
        "-vf",
        "settb=1/1000,setpts=N*34+if(eq(mod(N\\,5)\\,0)\\,9\\,0)",
        "-vsync",
        "vfr",
        "-c:v",
        "libx264",
        "-g",
        "60",
        &vfr,
    ]);
    let segs = cut_and_transcode_all(Path::new(&vfr));
    assert_eq!(
        segs.iter().map(|s| s.frames).sum::<u64>(),
        147,
        "5 s of 34 ms frames"
    );
    // Audio that starts 2 s after the video.
    let late = p("late.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=25",
        "-f",
        "lavfi",
        "-itsoffset",
        "2.5",
        "-i",
        "sine=frequency=440:duration=3",
        "-t",
        "6",
        "-c:v",
        "libx264",
        "-g",
        "50",
        "-c:a",
        "aac",
        &late,
    ]);
    let segs = cut_and_transcode_all(Path::new(&late));
    assert_eq!(segs[0].audio_packets, 0, "{segs:?}");
    assert!(segs[2].audio_packets > 0, "{segs:?}");
}
