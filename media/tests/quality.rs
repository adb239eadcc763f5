//! The quality check compares pictures from the whole of a rendition with the source: a
//! rendition that is right only at its start is refused, an honest one passes at every
//! picture (also on real footage and for rotated sources), and a rotated source is
//! compared upright, as the transcoder turns it.

use std::path::{Path, PathBuf};

use castwork_media::quality::{score, QualityScore, RANDOM_PICTURES};
use castwork_media::{probe, transcode_segment, CutSegment, TranscodeOptions, SEGMENT_FORMATS};
use castwork_protocol::{parse_profiles, plan_ladder};

mod common;
use common::{cut, ffmpeg, testdata};

/// The orchestrator's default --min-psnr-db.
const MIN_DB: f64 = 20.0;

/// A 4 s clip of `video` (a lavfi source) with a keyframe every 2 s, made as every clip of
/// this file is made, so that two of them have the same timestamps.
fn clip(dir: &Path, name: &str, video: &str) -> PathBuf {
    let path = dir.join(format!("{name}.mp4"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        video,
        "-t",
        "4",
        "-c:v",
        "libx264",
        "-g",
        "60",
        "-pix_fmt",
        "yuv420p",
        path.to_str().unwrap(),
    ]);
    path
}

/// Transcodes the first segment of `input` to `profiles`; returns the segment and the
/// renditions.
fn transcode_first(input: &Path, profiles: &str, dir: &Path) -> (CutSegment, Vec<PathBuf>) {
    let segdir = dir.join(format!(
        "segs-{}",
        input.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&segdir).unwrap();
    let (probed, mut segs) = cut(input, &segdir);
    let plan = plan_ladder(&parse_profiles(profiles).unwrap(), &probed.metadata);
    let out = segdir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let seg = segs.remove(0);
    let files = transcode_segment(
        &seg.path,
        &plan.rungs,
        &probed.metadata,
        &out,
        &TranscodeOptions::default(),
    )
    .unwrap();
    (seg, files.into_iter().map(|f| f.path).collect())
}

fn scores(
    source: &Path,
    renditions: &[PathBuf],
    rotation: u32,
    random: usize,
) -> Vec<QualityScore> {
    score(source, SEGMENT_FORMATS, renditions, rotation, random, 7).unwrap()
}

const TESTSRC: &str = "testsrc2=size=640x360:rate=30";

#[test]
fn a_rendition_right_only_in_its_first_second_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = clip(dir.path(), "real", TESTSRC);
    // The same clip, the same timestamps, but another video after its first second, or
    // black pictures: what a worker that only encodes the start honestly would return.
    let other = clip(
        dir.path(),
        "other",
        &format!(
            "{TESTSRC}[a];mandelbrot=size=640x360:rate=30[b];[a][b]overlay=enable='gte(t,1)'[out0]"
        ),
    );
    let black = clip(
        dir.path(),
        "black",
        &format!("{TESTSRC},drawbox=t=fill:c=black:enable='gte(t,1)'"),
    );
    let (seg, honest) = transcode_first(&real, "P360p30fps16x9,P240p30fps16x9", dir.path());
    for s in scores(&seg.path, &honest, 0, RANDOM_PICTURES) {
        assert_eq!(s.verdict(MIN_DB), None, "{s:?}");
        assert!(s.pictures.len() >= 3, "{s:?}");
    }
    for cheat in [other, black] {
        let (_, bad) = transcode_first(&cheat, "P360p30fps16x9,P240p30fps16x9", dir.path());
        for s in scores(&seg.path, &bad, 0, RANDOM_PICTURES) {
            // Its first pictures are right: a check of the first pictures would pass it.
            let first = s.pictures[0].psnr_db.unwrap();
            assert!(first >= 30.0, "{s:?}");
            let why = s.verdict(MIN_DB).expect("refused");
            assert!(
                why.starts_with("luma PSNR") && why.contains("under 20 dB"),
                "{why}"
            );
            assert!(s.worst_db().unwrap() < 15.0, "{s:?}");
        }
    }
}

#[test]
fn pictures_with_other_timestamps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = clip(dir.path(), "real", TESTSRC);
    let (seg, honest) = transcode_first(&real, "P240p30fps16x9", dir.path());
    // The rendition's pictures 10 ms late: none of them has a source picture.
    let shifted = dir.path().join("shifted.ts");
    ffmpeg(&[
        "-copyts",
        "-itsoffset",
        "0.01",
        "-i",
        honest[0].to_str().unwrap(),
        "-c",
        "copy",
        "-muxdelay",
        "0",
        "-muxpreload",
        "0",
        shifted.to_str().unwrap(),
    ]);
    let s = &scores(&seg.path, &[shifted], 0, RANDOM_PICTURES)[0];
    let why = s.verdict(MIN_DB).expect("refused");
    assert!(why.contains("has no source picture at that time"), "{why}");
}

#[test]
fn rotated_sources_are_compared_upright() {
    let dir = tempfile::tempdir().unwrap();
    let plain = clip(dir.path(), "plain", TESTSRC);
    let mut turned = Vec::new();
    for deg in ["90", "270", "180"] {
        // FFmpeg 5.1 writes the display matrix for a `rotate` tag only when remuxing.
        let path = dir.path().join(format!("rotated-{deg}.mp4"));
        ffmpeg(&[
            "-i",
            plain.to_str().unwrap(),
            "-c",
            "copy",
            "-metadata:s:v:0",
            &format!("rotate={deg}"),
            path.to_str().unwrap(),
        ]);
        turned.push(path);
    }
    for path in &turned {
        let rotation = probe(path).unwrap().metadata.rotation;
        assert_ne!(rotation, 0);
        let (seg, renditions) = transcode_first(path, "P360p30fps16x9", dir.path());
        let s = &scores(&seg.path, &renditions, rotation, RANDOM_PICTURES)[0];
        assert_eq!(s.verdict(MIN_DB), None, "rotation {rotation}: {s:?}");
        // An upright rendition compared with the source turned the wrong way is refused:
        // the turn is what is checked.
        let wrong_way = (rotation + 180) % 360;
        let s = &scores(&seg.path, &renditions, wrong_way, RANDOM_PICTURES)[0];
        assert!(s.verdict(MIN_DB).is_some(), "rotation {rotation}: {s:?}");
    }
}

#[test]
fn honest_renditions_of_real_footage_pass_at_every_picture() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["bikes.mp4", "bigbuckbunny.mp4"] {
        let input = testdata(name);
        let (seg, renditions) = transcode_first(
            &input,
            "P720p30fps16x9,P360p30fps16x9,P240p30fps16x9",
            dir.path(),
        );
        // Far more pictures than a check compares: every rung passes at each of them.
        for s in scores(&seg.path, &renditions, 0, 60) {
            assert!(s.pictures.len() >= 20, "{name}: {s:?}");
            assert_eq!(s.verdict(MIN_DB), None, "{name}: {s:?}");
            assert!(s.worst_db().unwrap() > 25.0, "{name}: {s:?}");
        }
    }
}
