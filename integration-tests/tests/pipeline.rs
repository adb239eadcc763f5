//! The on-demand pipeline end to end: broadcaster -> RabbitMQ -> orchestrator -> 2 worker
//! processes -> HLS, checked with ffprobe/ffmpeg and an HLS parser.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{decode_errors, ffmpeg, ffprobe, stream_name, testdata, tone_clip, Cluster};
use serde_json::Value;

/// Video packets of a file: (pts seconds, keyframe) in decode order.
fn video_packets(path: &Path) -> Vec<(f64, bool)> {
    let v = ffprobe(
        path,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
        ],
    );
    v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let pts = p["pts_time"].as_str()?.parse::<f64>().ok()?;
            Some((pts, p["flags"].as_str().unwrap_or("").contains('K')))
        })
        .collect()
}

fn has_audio(path: &Path) -> bool {
    let v = ffprobe(path, &["-show_entries", "stream=codec_type"]);
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["codec_type"] == "audio")
}

fn source_fps(path: &Path) -> f64 {
    let v = ffprobe(
        path,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=avg_frame_rate",
        ],
    );
    let r = v["streams"][0]["avg_frame_rate"].as_str().unwrap();
    let (n, d) = r.split_once('/').unwrap();
    n.parse::<f64>().unwrap() / d.parse::<f64>().unwrap()
}

/// Source segments on the object store, by sequence number.
fn source_segments(root: &Path) -> BTreeMap<u64, PathBuf> {
    std::fs::read_dir(root.join("source"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .map(|p| (p.file_stem().unwrap().to_str().unwrap().parse().unwrap(), p))
        .collect()
}

/// What a pushed stream must look like.
struct Expect {
    rungs: Vec<(&'static str, u32, u32)>,
    skipped: Vec<&'static str>,
    audio: bool,
}

fn push_and_check(cluster: &Cluster, input: &Path, prefix: &str, expect: &Expect) {
    let stream = stream_name(prefix);
    // A completed push has had the independent check too (contiguity, durations, SSIM
    // against the source): see `Cluster::push`.
    let out = cluster.push(input, &stream, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "push failed\n{stdout}\n{stderr}\n{}",
        cluster.logs()
    );
    assert!(
        stdout.contains(&format!("/streams/{stream}/index.m3u8")),
        "{stdout}"
    );
    for s in &expect.skipped {
        assert!(
            stderr.contains(&format!("skipped {s}: would upscale")),
            "{stderr}"
        );
    }
    let root = cluster.storage_dir().join("streams").join(&stream);
    let sources = source_segments(&root);
    assert!(!sources.is_empty());
    assert_eq!(
        *sources.keys().last().unwrap() as usize,
        sources.len() - 1,
        "contiguous seqs"
    );

    // The orchestrator's view agrees.
    let status = cluster.status(&stream);
    assert_eq!(status["state"], "complete", "{status}");
    assert_eq!(status["segments"]["total"], sources.len() as u64);
    assert_eq!(status["segments"]["done"], sources.len() as u64);
    assert_eq!(status["segments"]["failed"], 0);

    // Master playlist.
    let master_text = std::fs::read(root.join("index.m3u8")).unwrap();
    let master = m3u8_rs::parse_master_playlist_res(&master_text).expect("master parses");
    let mut variants: Vec<(String, u64, u64)> = master
        .variants
        .iter()
        .map(|v| {
            let r = v.resolution.expect("RESOLUTION");
            let codecs = v.codecs.clone().expect("CODECS");
            assert!(codecs.starts_with("avc1."), "{codecs}");
            assert_eq!(codecs.contains("mp4a.40.2"), expect.audio, "{codecs}");
            assert!(
                v.bandwidth >= v.average_bandwidth.unwrap(),
                "peak >= average"
            );
            (
                v.uri.trim_end_matches("/index.m3u8").to_string(),
                r.width,
                r.height,
            )
        })
        .collect();
    variants.sort();
    let mut wanted: Vec<(String, u64, u64)> = expect
        .rungs
        .iter()
        .map(|(n, w, h)| (n.to_string(), u64::from(*w), u64::from(*h)))
        .collect();
    wanted.sort();
    assert_eq!(variants, wanted);

    let src_fps = source_fps(input);
    let frame = 1.0 / src_fps;
    let src_packets = video_packets(input);
    let src_span = {
        let first = src_packets.iter().map(|p| p.0).fold(f64::MAX, f64::min);
        let last = src_packets.iter().map(|p| p.0).fold(f64::MIN, f64::max);
        last - first + frame
    };
    let src_firsts: Vec<f64> = sources
        .values()
        .map(|p| {
            video_packets(p)
                .iter()
                .map(|x| x.0)
                .fold(f64::MAX, f64::min)
        })
        .collect();
    let src_frames: Vec<usize> = sources.values().map(|p| video_packets(p).len()).collect();

    for (name, _, _) in &expect.rungs {
        let dir = root.join(name);
        let text = std::fs::read(dir.join("index.m3u8")).unwrap();
        let media = m3u8_rs::parse_media_playlist_res(&text).expect("media playlist parses");
        assert!(media.end_list);
        assert_eq!(
            media.segments.len(),
            sources.len(),
            "{name}: one segment per source segment"
        );
        let mut first_pts = f64::MAX;
        let mut last_pts = f64::MIN;
        let mut frames = 0usize;
        for (i, seg) in media.segments.iter().enumerate() {
            assert!(
                seg.uri.starts_with(&format!("{i}.")),
                "{name}: {} in order",
                seg.uri
            );
            assert!(!seg.discontinuity, "no discontinuity within one ingest");
            let path = dir.join(&seg.uri);
            let pk = video_packets(&path);
            assert!(pk[0].1, "{}: starts with a keyframe", path.display());
            let start = pk.iter().map(|p| p.0).fold(f64::MAX, f64::min);
            assert!(
                (start - src_firsts[i]).abs() <= frame + 1e-3,
                "{}: starts at {start}, source at {}",
                path.display(),
                src_firsts[i]
            );
            assert!(
                pk.len() <= src_frames[i],
                "{}: more frames than the source",
                path.display()
            );
            assert_eq!(has_audio(&path), expect.audio, "{}: audio", path.display());
            frames += pk.len();
            first_pts = first_pts.min(start);
            last_pts = last_pts.max(pk.iter().map(|p| p.0).fold(f64::MIN, f64::max));
        }
        let span = last_pts - first_pts + frame;
        assert!(
            (span - src_span).abs() <= 2.0 * frame + 1e-3,
            "{name}: {span} s vs source {src_span} s"
        );
        let fps = frames as f64 / span;
        assert!(
            fps <= src_fps * 1.01,
            "{name}: {fps} fps from a {src_fps} fps source"
        );
        let errors = decode_errors(&dir.join("index.m3u8"));
        assert!(
            errors.trim().is_empty(),
            "{name} does not decode cleanly: {errors}"
        );
    }
}

/// A 10 s 720p30 clip in `file` with `audio_codec` audio, through the default ladder.
fn hd_clip_through_the_ladder(file: &str, audio_codec: &str, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join(file);
    tone_clip(&clip, "1280x720", 10, audio_codec);
    let cluster = Cluster::start(2);
    push_and_check(
        &cluster,
        &clip,
        prefix,
        &Expect {
            rungs: vec![
                ("P240p30fps16x9", 426, 240),
                ("P360p30fps16x9", 640, 360),
                ("P720p30fps16x9", 1280, 720),
            ],
            skipped: vec![],
            audio: true,
        },
    );
}

#[test]
fn hd_clip_with_aac_audio() {
    hd_clip_through_the_ladder("clip.mp4", "aac", "aac");
}

#[test]
fn hd_clip_with_mp3_audio_in_matroska() {
    hd_clip_through_the_ladder("clip.mkv", "libmp3lame", "mp3");
}

#[test]
fn camera_clip_keeps_its_aspect_and_skips_upscale() {
    let cluster = Cluster::start(2);
    push_and_check(
        &cluster,
        &testdata("bikes.mp4"),
        "bikes",
        &Expect {
            rungs: vec![("P240p30fps16x9", 426, 182), ("P360p30fps16x9", 640, 272)],
            skipped: vec!["P720p30fps16x9"],
            audio: false,
        },
    );
}

#[test]
fn bad_inputs_get_clear_errors_and_leave_the_cluster_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(1);

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "meeting notes, not a video\n".repeat(200)).unwrap();
    let out = cluster.push(&text, &stream_name("text"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot push") && err.contains("notes.txt"),
        "{err}"
    );

    let clip = dir.path().join("clip.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=25",
        "-t",
        "4",
        "-c:v",
        "libx264",
        "-g",
        "50",
        clip.to_str().unwrap(),
    ]);
    let data = std::fs::read(&clip).unwrap();
    let truncated = dir.path().join("truncated.mp4");
    std::fs::write(&truncated, &data[..data.len() / 3]).unwrap();
    let out = cluster.push(&truncated, &stream_name("trunc"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot push") && err.contains("truncated.mp4"),
        "{err}"
    );

    let out = cluster.push(&testdata("bikes.mp4"), "bad name/..", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stream name"));

    let out = cluster.push(
        &clip,
        &stream_name("bad-preset"),
        &["--profiles", "P240p30fps16x9,P999p"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("P999p"));

    // The cluster still works.
    let stream = stream_name("after");
    let out = cluster.push(&clip, &stream, &["--profiles", "P240p30fps16x9"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let status: Value = cluster.status(&stream);
    assert_eq!(status["segments"]["done"], 2);

    // A second push under the same name is refused with a clear message.
    let out = cluster.push(&clip, &stream, &["--profiles", "P240p30fps16x9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
