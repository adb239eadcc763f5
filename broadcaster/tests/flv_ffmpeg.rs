//! Feeds a real FLV made by the `ffmpeg` CLI through `FlvSegmenter` and checks with
//! `ffprobe`/`ffmpeg` that every segment decodes on its own and no frame is lost.

use std::process::Command;

use castwork_broadcaster::flv::FlvSegmenter;

mod common;
use common::{codecs, decode};

/// One tag of an FLV file.
struct Tag {
    kind: u8,
    ts: u32,
    body: Vec<u8>,
}

/// Reads the tags of a whole FLV file.
fn read_tags(file: &[u8]) -> Vec<Tag> {
    assert_eq!(&file[..3], b"FLV", "not an FLV file");
    let offset = u32::from_be_bytes(file[5..9].try_into().unwrap()) as usize;
    let mut rest = &file[offset + 4..];
    let mut tags = Vec::new();
    while rest.len() >= 11 {
        let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
        let ts = u32::from_be_bytes([rest[7], rest[4], rest[5], rest[6]]);
        tags.push(Tag {
            kind: rest[0] & 0x1F,
            ts,
            body: rest[11..11 + len].to_vec(),
        });
        rest = &rest[11 + len + 4..];
    }
    tags
}

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg is installed");
    assert!(ok.success(), "ffmpeg {args:?}");
}

#[test]
fn real_flv_is_cut_into_segments_that_decode_alone() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.flv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine",
        "-t",
        "7",
        "-c:v",
        "libx264",
        "-g",
        "30",
        "-c:a",
        "aac",
        "-f",
        "flv",
        source.to_str().unwrap(),
    ]);
    assert_eq!(decode(&source), 210);

    let mut segmenter = FlvSegmenter::new(2000, 10_000, 0);
    let mut segments = Vec::new();
    for tag in read_tags(&std::fs::read(&source).unwrap()) {
        match tag.kind {
            9 => segments.extend(segmenter.video(tag.ts, &tag.body).unwrap()),
            8 => segmenter.audio(tag.ts, &tag.body).unwrap(),
            _ => {} // script data (onMetaData) is not carried over RTMP as a tag
        }
    }
    segments.extend(segmenter.finish());

    // Keyframes every second: cuts every 2 s, the last segment 1 s long.
    let starts: Vec<i64> = segments.iter().map(|s| s.start_ms).collect();
    assert_eq!(starts, [0, 2000, 4000, 6000]);
    let durations: Vec<_> = segments.iter().map(|s| s.duration_ms).collect();
    assert_eq!(durations, [Some(2000), Some(2000), Some(2000), None]);
    // After the last video frame (6.966 s + a frame); the AAC encoder's padding runs past it.
    let end = segmenter.end_ms();
    assert!((6999..7200).contains(&end), "end_ms {end}");

    let mut frames = 0;
    for (i, seg) in segments.iter().enumerate() {
        assert_eq!(seg.seq, i as u64);
        assert!(seg.has_audio);
        let path = dir.path().join(format!("seg{i}.flv"));
        std::fs::write(&path, &seg.bytes).unwrap();
        assert_eq!(codecs(&path), ["aac", "h264"], "{}", path.display());
        frames += decode(&path);
    }
    assert_eq!(frames, 210);
}
