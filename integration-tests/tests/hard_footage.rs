//! Footage that is hard to get right, generated with the `ffmpeg` CLI and pushed through one
//! real cluster on a small ladder: B-frames with sparse keyframes, 4:4:4 (also on camera
//! footage) and 10-bit input, open GOPs, an odd size, variable frame rate, MP3 and AC-3
//! audio, timestamps far from zero, audio longer than the video, a rotated phone clip and
//! interlaced input. Each stream's renditions are checked against the source with the CLI
//! only (`common::output_check`), and the figures are printed as a table. Set
//! `HARD_FOOTAGE_CLIPS=name,...` to run some clips only and `HARD_FOOTAGE_KEEP=DIR` to keep
//! the object store and the clips.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::output_check::{check_stream, StreamReport, Thresholds};
use common::{ffmpeg, stream_name, testdata, Cluster};

const LADDER: &str = "P144p30fps16x9,P240p30fps16x9";

/// A 440 Hz tone at 48 kHz.
const TONE: &str = "sine=frequency=440:sample_rate=48000";

/// One generated clip: its name, file name (the container follows the extension) and the
/// `ffmpeg` arguments that make it, the output path last.
struct Clip {
    name: &'static str,
    file: &'static str,
    args: Vec<String>,
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Video `size` at `rate` fps with the tone, `secs` long, then `tail` (codecs and flags).
fn lavfi(size: &str, rate: u32, secs: u32, tail: &[&str]) -> Vec<String> {
    let mut v = args(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size={size}:rate={rate}"),
        "-f",
        "lavfi",
        "-i",
        TONE,
        "-t",
        &secs.to_string(),
    ]);
    v.extend(args(tail));
    v
}

const X264: [&str; 4] = ["-c:v", "libx264", "-preset", "veryfast"];

fn x264(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = X264.to_vec();
    v.extend_from_slice(extra);
    v
}

fn clips() -> Vec<Clip> {
    vec![
        Clip {
            name: "bframes-sparse-keys",
            file: "bframes.mp4",
            // One keyframe in 8 s: a single long segment with B-frames.
            args: lavfi(
                "640x360",
                30,
                8,
                &[
                    x264(&["-bf", "3", "-g", "250", "-pix_fmt", "yuv420p"]),
                    vec!["-c:a", "aac"],
                ]
                .concat(),
            ),
        },
        Clip {
            name: "high444-bframes-mp3",
            file: "high444.mkv",
            // The class issue 23 found broken: High 4:4:4 Predictive with B-frames, IDR
            // frames 3.3 s apart, MP3 audio.
            args: lavfi(
                "640x360",
                30,
                8,
                &[
                    x264(&["-bf", "3", "-g", "100", "-pix_fmt", "yuv444p"]),
                    vec!["-c:a", "libmp3lame"],
                ]
                .concat(),
            ),
        },
        Clip {
            name: "camera-444-bframes-mp3",
            file: "camera444.mkv",
            // The same class on camera footage (real motion, scene cuts that add IDRs).
            args: {
                let mut a = args(&["-i", testdata("bikes.mp4").to_str().unwrap()]);
                a.extend(args(&["-f", "lavfi", "-i", TONE, "-t", "8"]));
                a.extend(args(&x264(&[
                    "-bf", "3", "-g", "100", "-pix_fmt", "yuv444p",
                ])));
                a.extend(args(&["-c:a", "libmp3lame"]));
                a
            },
        },
        Clip {
            name: "open-gop",
            file: "opengop.mp4",
            // Keyframes every 2 s that are not IDR frames (open GOPs), B-frames across them.
            args: lavfi(
                "640x360",
                30,
                6,
                &[
                    x264(&["-bf", "3", "-x264-params", "open-gop=1:keyint=60"]),
                    vec!["-pix_fmt", "yuv420p", "-c:a", "aac"],
                ]
                .concat(),
            ),
        },
        Clip {
            name: "high10",
            file: "high10.mp4",
            args: lavfi(
                "640x360",
                30,
                6,
                &[
                    x264(&["-g", "60", "-pix_fmt", "yuv420p10le"]),
                    vec!["-c:a", "aac"],
                ]
                .concat(),
            ),
        },
        Clip {
            name: "odd-854x481",
            file: "odd.mkv",
            // H.264 4:2:0 cannot code an odd height; VP9 can (and goes into Matroska).
            args: {
                let mut a = args(&[
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=854x482:rate=30,format=yuv444p,crop=854:481:0:0",
                    "-f",
                    "lavfi",
                    "-i",
                    TONE,
                    "-t",
                    "6",
                ]);
                a.extend(args(&[
                    "-c:v",
                    "libvpx-vp9",
                    "-deadline",
                    "realtime",
                    "-cpu-used",
                    "8",
                    "-b:v",
                    "1M",
                    "-g",
                    "60",
                    "-pix_fmt",
                    "yuv420p",
                    "-c:a",
                    "aac",
                ]));
                a
            },
        },
        Clip {
            name: "vfr",
            file: "vfr.mp4",
            // 30 fps with every 7th picture dropped for 3 s, then 15 fps.
            args: lavfi(
                "640x360",
                30,
                6,
                &[
                    vec![
                        "-vf",
                        "select='if(lt(t\\,3)\\,not(eq(mod(n\\,7)\\,3))\\,not(mod(n\\,2)))'",
                        "-fps_mode",
                        "vfr",
                    ],
                    x264(&["-g", "60", "-pix_fmt", "yuv420p"]),
                    vec!["-c:a", "aac"],
                ]
                .concat(),
            ),
        },
        Clip {
            name: "ac3",
            file: "ac3.mp4",
            args: lavfi(
                "640x360",
                30,
                6,
                &[
                    x264(&["-g", "60", "-pix_fmt", "yuv420p"]),
                    vec!["-c:a", "ac3"],
                ]
                .concat(),
            ),
        },
        Clip {
            name: "ts-offset-10000s",
            file: "far.ts",
            args: lavfi(
                "640x360",
                30,
                6,
                &[
                    x264(&["-g", "60", "-pix_fmt", "yuv420p"]),
                    vec!["-c:a", "aac", "-output_ts_offset", "10000"],
                ]
                .concat(),
            ),
        },
        Clip {
            name: "audio-longer",
            file: "longaudio.mp4",
            // 4 s of video, 7 s of audio: the audio is kept in full, the last picture held
            // to its end, and the last segment listed with its whole length.
            args: {
                let mut a = args(&[
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=640x360:rate=30:duration=4",
                    "-f",
                    "lavfi",
                    "-i",
                    &format!("{TONE}:duration=7"),
                ]);
                a.extend(args(&x264(&["-g", "60", "-pix_fmt", "yuv420p"])));
                a.extend(args(&["-c:a", "aac"]));
                a
            },
        },
        Clip {
            name: "rotated-phone",
            file: "phone.mp4",
            // Made in two steps (see `make`): FFmpeg 5.1 writes the rotation only on copy.
            args: lavfi(
                "640x360",
                30,
                6,
                &[
                    x264(&["-g", "60", "-pix_fmt", "yuv420p"]),
                    vec!["-c:a", "aac"],
                ]
                .concat(),
            ),
        },
        Clip {
            name: "interlaced",
            file: "interlaced.mp4",
            // 50 fields a second woven into 25 top-field-first frames, coded interlaced.
            args: lavfi(
                "720x576",
                50,
                6,
                &[
                    vec!["-vf", "tinterlace=interleave_top,setfield=tff"],
                    x264(&[
                        "-flags",
                        "+ilme+ildct",
                        "-x264opts",
                        "tff=1",
                        "-g",
                        "50",
                        "-pix_fmt",
                        "yuv420p",
                    ]),
                    vec!["-c:a", "aac"],
                ]
                .concat(),
            ),
        },
    ]
}

/// Writes the clip into `dir`; returns its path.
fn make(dir: &Path, clip: &Clip) -> PathBuf {
    let path = dir.join(clip.file);
    let mut a = clip.args.clone();
    if clip.name == "rotated-phone" {
        let plain = dir.join("phone-plain.mp4");
        a.push(plain.display().to_string());
        ffmpeg(&a.iter().map(String::as_str).collect::<Vec<_>>());
        ffmpeg(&[
            "-i",
            plain.to_str().unwrap(),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            path.to_str().unwrap(),
        ]);
    } else {
        a.push(path.display().to_string());
        ffmpeg(&a.iter().map(String::as_str).collect::<Vec<_>>());
    }
    path
}

/// Pushes each clip through one cluster and checks its output; prints the figures as a
/// table and returns each clip's problems.
fn push_and_check(clips: &[Clip]) -> Vec<(String, Vec<String>)> {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Every result's pictures are compared with the source (the whole segment, turned as
    // the transcoder turns it): an honest worker's output of hard footage must pass them
    // all, so a refusal below is a false alarm of the check, not of the worker.
    let cluster = Cluster::start_with(
        2,
        &["--quality-sample-rate", "1", "--max-bad-results", "1000"],
        Vec::new(),
    );
    let mut reports: Vec<(String, StreamReport, Vec<String>)> = Vec::new();
    for clip in clips {
        let input = make(dir.path(), clip);
        let stream = stream_name(clip.name);
        let t = Instant::now();
        let out = cluster.push(&input, &stream, &["--profiles", LADDER]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            reports.push((
                clip.name.to_string(),
                empty_report(&stream, &input),
                vec![format!("push failed ({}):\n{stdout}\n{stderr}", out.status)],
            ));
            continue;
        }
        let report = check_stream(&cluster.storage_dir(), &stream, &input);
        let problems = report.problems(&Thresholds::default());
        println!(
            "{} pushed in {:.1} s{}\n{}",
            clip.name,
            t.elapsed().as_secs_f64(),
            if stderr.trim().is_empty() {
                String::new()
            } else {
                format!(" (push said: {})", stderr.trim())
            },
            report.table()
        );
        if !problems.is_empty() || std::env::var_os("CASTWORK_OUTPUT_DETAILS").is_some() {
            println!(
                "{} problems:\n  {}\n{}",
                clip.name,
                problems.join("\n  "),
                report.details()
            );
        }
        let mut problems = problems;
        problems.extend(
            cluster
                .logs()
                .lines()
                .filter(|l| l.contains("quality check failed") && l.contains(&stream))
                .map(|l| format!("an honest result was refused: {l}")),
        );
        reports.push((clip.name.to_string(), report, problems));
    }
    if let Some(keep) = std::env::var_os("HARD_FOOTAGE_KEEP") {
        // For diagnosis: keep the object store and the clips.
        let ok = std::process::Command::new("cp")
            .arg("-r")
            .arg(cluster.storage_dir())
            .arg(dir.path())
            .arg(&keep)
            .status()
            .is_ok_and(|s| s.success());
        println!("kept the object store and clips in {keep:?}: {ok}");
    }
    println!("{}", summary(&reports));
    println!(
        "{} clips in {:.0} s",
        clips.len(),
        started.elapsed().as_secs_f64()
    );
    reports.into_iter().map(|(n, _, p)| (n, p)).collect()
}

fn empty_report(stream: &str, input: &Path) -> StreamReport {
    StreamReport {
        stream: stream.to_string(),
        source: input.to_path_buf(),
        source_spans: Default::default(),
        source_errors: Vec::new(),
        rungs: Vec::new(),
    }
}

/// One line per clip and rung: contiguity (the largest gap and overlap between segments,
/// video and audio) and the lowest segment SSIM.
fn summary(reports: &[(String, StreamReport, Vec<String>)]) -> String {
    let mut s = format!(
        "{:<22} {:<15} {:>8} {:>4} {:>13} {:>13} {:>9} {:>8} {:>8} {:>6}  {}\n",
        "clip",
        "rung",
        "size",
        "segs",
        "v gap/ovl ms",
        "a gap/ovl ms",
        "1st pic ms",
        "min SSIM",
        "min pic",
        "errors",
        "verdict"
    );
    for (name, r, problems) in reports {
        if r.rungs.is_empty() {
            s.push_str(&format!("{name:<22} {}\n", problems.join("; ")));
        }
        for g in &r.rungs {
            let errors = g.playlist_errors.lines().count()
                + g.segments
                    .iter()
                    .map(|x| x.decode_errors.lines().count())
                    .sum::<usize>();
            // This rung's problems, and the stream's own (its source segments).
            let ours = problems
                .iter()
                .filter(|p| {
                    p.starts_with(&format!("{}:", g.name))
                        || !r
                            .rungs
                            .iter()
                            .any(|x| p.starts_with(&format!("{}:", x.name)))
                })
                .count();
            s.push_str(&format!(
                "{name:<22} {:<15} {:>8} {:>4} {:>13} {:>13} {:>9.1} {:>8.4} {:>8.4} {:>6}  {}\n",
                g.name,
                format!("{}x{}", g.width, g.height),
                g.segments.len(),
                format!(
                    "{:.1}/{:.1}",
                    g.video.max_gap * 1e3,
                    g.video.max_overlap * 1e3
                ),
                g.audio_duration.map_or("-".to_string(), |_| format!(
                    "{:.1}/{:.1}",
                    g.audio.max_gap * 1e3,
                    g.audio.max_overlap * 1e3
                )),
                g.first_picture_offset * 1e3,
                g.min_ssim,
                g.min_frame_ssim,
                errors,
                if ours == 0 {
                    "ok".to_string()
                } else {
                    format!("{ours} problems")
                }
            ));
        }
    }
    s
}

fn assert_no_problems(results: &[(String, Vec<String>)]) {
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(n, p)| format!("{n}:\n    {}", p.join("\n    ")))
        .collect();
    assert!(
        failed.is_empty(),
        "clips whose output is wrong:\n  {}",
        failed.join("\n  ")
    );
}

/// The clips to run: all, or those named in `HARD_FOOTAGE_CLIPS` (comma-separated).
fn chosen(clips: Vec<Clip>) -> Vec<Clip> {
    match std::env::var("HARD_FOOTAGE_CLIPS") {
        Ok(names) => clips
            .into_iter()
            .filter(|c| names.split(',').any(|n| n.trim() == c.name))
            .collect(),
        Err(_) => clips,
    }
}

#[test]
fn hard_footage_comes_out_right() {
    let results = push_and_check(&chosen(clips()));
    assert_no_problems(&results);
}

/// A stream laid out as the cluster stores it, made with the `ffmpeg` CLI from `src`: 2 s
/// source segments (copied) and one 256x144 rung whose pictures go through `vf` first.
fn fake_stream(storage: &Path, name: &str, src: &Path, vf: &str) -> PathBuf {
    let root = storage.join("streams").join(name);
    let rung = root.join("P144p30fps16x9");
    std::fs::create_dir_all(root.join("source")).unwrap();
    std::fs::create_dir_all(&rung).unwrap();
    let p = |p: PathBuf| p.display().to_string();
    ffmpeg(&[
        "-i",
        &p(src.to_path_buf()),
        "-c",
        "copy",
        "-f",
        "segment",
        "-segment_time",
        "2",
        "-segment_format",
        "mpegts",
        &p(root.join("source/%d.ts")),
    ]);
    ffmpeg(&[
        "-i",
        &p(src.to_path_buf()),
        "-vf",
        &format!("{vf}scale=256:144"),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "60",
        "-sc_threshold",
        "0",
        "-c:a",
        "copy",
        "-f",
        "hls",
        "-hls_time",
        "2",
        "-hls_playlist_type",
        "vod",
        "-hls_segment_filename",
        &p(rung.join("%d.0.x.ts")),
        &p(rung.join("index.m3u8")),
    ]);
    std::fs::write(
        root.join("index.m3u8"),
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=400000,RESOLUTION=256x144\nP144p30fps16x9/index.m3u8\n",
    )
    .unwrap();
    rung
}

/// The check itself is checked: renditions that FFmpeg makes right pass, and a rendition
/// one picture late, one missing a segment and one with a damaged segment each fail with
/// the problem named.
#[test]
fn the_output_check_catches_late_pictures_missing_segments_and_damage() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.mp4");
    let mut a = lavfi(
        "640x360",
        30,
        6,
        &x264(&["-g", "60", "-sc_threshold", "0", "-pix_fmt", "yuv420p"]),
    );
    a.extend(args(&["-c:a", "aac", src.to_str().unwrap()]));
    ffmpeg(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let storage = dir.path().join("data");
    let problems = |name: &str| {
        let r = check_stream(&storage, name, &src);
        println!("{}", r.table());
        r.problems(&Thresholds::default())
    };
    let has = |p: &[String], what: &str| {
        assert!(
            p.iter().any(|x| x.contains(what)),
            "no problem with {what:?} in {p:#?}"
        )
    };

    fake_stream(&storage, "good", &src, "");
    let p = problems("good");
    assert!(p.is_empty(), "{p:#?}");

    // Each picture is the next source picture, at the right time.
    fake_stream(
        &storage,
        "late",
        &src,
        "trim=start_frame=1,setpts=PTS-1/(30*TB),",
    );
    has(&problems("late"), "SSIM");

    let rung = fake_stream(&storage, "missing", &src, "");
    let playlist = rung.join("index.m3u8");
    let text = std::fs::read_to_string(&playlist).unwrap();
    std::fs::write(&playlist, text.replace("#EXTINF:2.000000,\n1.0.x.ts\n", "")).unwrap();
    let p = problems("missing");
    has(&p, "video gap");
    has(&p, "audio gap");

    // 20 transport packets in the middle of segment 1 with their payload scrambled.
    let rung = fake_stream(&storage, "damaged", &src, "");
    let seg = rung.join("1.0.x.ts");
    let mut b = std::fs::read(&seg).unwrap();
    let at = b.len() / 2 / 188 * 188;
    for pkt in b[at..at + 20 * 188].chunks_mut(188) {
        pkt[4..].iter_mut().for_each(|x| *x ^= 0x5a);
    }
    std::fs::write(&seg, b).unwrap();
    let p = problems("damaged");
    has(&p, "segment 1 decodes with");
    has(&p, "the playlist decodes with errors");
}

/// A tool, not a test: checks a stream already in a local object store, for diagnosis:
/// `OUTPUT_CHECK_STORAGE=DIR OUTPUT_CHECK_STREAM=NAME OUTPUT_CHECK_SOURCE=FILE cargo test
/// -p castwork-integration-tests --test hard_footage -- --ignored --nocapture check_a_stored_stream`.
#[test]
#[ignore = "a diagnosis tool: needs OUTPUT_CHECK_STORAGE, OUTPUT_CHECK_STREAM and OUTPUT_CHECK_SOURCE"]
fn check_a_stored_stream() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
    let storage = PathBuf::from(var("OUTPUT_CHECK_STORAGE"));
    let source = PathBuf::from(var("OUTPUT_CHECK_SOURCE"));
    let r = check_stream(&storage, &var("OUTPUT_CHECK_STREAM"), &source);
    println!("{}\n{}", r.table(), r.details());
    let p = r.problems(&Thresholds::default());
    assert!(p.is_empty(), "{p:#?}");
}
