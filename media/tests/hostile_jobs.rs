//! A job is input like any other: a rung name is a file name in the worker's temporary
//! directory, never a path out of it, whoever wrote the job.

use castwork_media::{transcode_segment, MediaError, TranscodeOptions};
use castwork_protocol::{parse_profiles, plan_ladder, SourceMetadata};

#[test]
fn a_rung_named_like_a_path_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A real source, so only the name can be what is refused.
    let src = dir.path().join("src.ts");
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=30",
        ])
        .args([
            "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mpegts",
        ])
        .arg(&src)
        .status()
        .unwrap();
    assert!(ok.success());
    let meta = SourceMetadata::upright(320, 180, 30);
    let plan = plan_ladder(&parse_profiles("P144p30fps16x9").unwrap(), &meta);
    for name in ["../../escaped", "/tmp/castwork-escaped", "a/b", "", "x.ts"] {
        let mut rungs = plan.rungs.clone();
        rungs[0].name = name.to_string();
        let r = transcode_segment(&src, &rungs, &meta, &out, &TranscodeOptions::default());
        match r {
            Err(MediaError::BadInput(m)) => assert!(m.contains("rung name"), "{name}: {m}"),
            other => panic!("{name:?} was not refused: {other:?}"),
        }
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    assert!(!dir.path().join("escaped.ts").exists());
    assert!(!std::path::Path::new("/tmp/castwork-escaped.ts").exists());
    // The same job with its own name goes through.
    let files =
        transcode_segment(&src, &plan.rungs, &meta, &out, &TranscodeOptions::default()).unwrap();
    assert_eq!(files.len(), 1);
}
