//! What the cut-point check costs per segment: cuts a source into 2 s segments, then times
//! `check_clean_start` on each against a full decode of the same segment (the baseline,
//! measured in the same run). Both run on this thread only, so their CPU time (from
//! `/proc/thread-self/schedstat`) holds even on a busy machine, where wall time does not.
//!
//! `cargo run --release -p castwork-media --example clean_start_cost -- SOURCE [RUNS]`

use std::path::Path;
use std::time::{Duration, Instant};

use castwork_media::ffmpeg::{codec, frame, media, Packet};
use castwork_media::{check_clean_start, probe, segment_file, SegmentOptions};

/// Decodes every video picture of a file (one thread, like the check): the baseline.
fn full_decode(path: &Path) -> u64 {
    let mut ictx = castwork_media::ffmpeg::format::input(path).expect("open");
    let stream = ictx.streams().best(media::Type::Video).expect("video");
    let vi = stream.index();
    let mut dec = codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .expect("decoder");
    let mut f = frame::Video::empty();
    let mut pictures = 0;
    let mut pkt = Packet::empty();
    while pkt.read(&mut ictx).is_ok() {
        if pkt.stream() == vi && dec.send_packet(&pkt).is_ok() {
            while dec.receive_frame(&mut f).is_ok() {
                pictures += 1;
            }
        }
    }
    let _ = dec.send_eof();
    while dec.receive_frame(&mut f).is_ok() {
        pictures += 1;
    }
    pictures
}

/// CPU time this thread has run, from the kernel's scheduler statistics.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Runs `f`, returning its CPU time and wall time.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    let out = f();
    (out, thread_cpu() - cpu, wall.elapsed())
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let mut args = std::env::args().skip(1);
    let src = args.next().expect("usage: clean_start_cost SOURCE [RUNS]");
    let runs: usize = args.next().map_or(10, |r| r.parse().expect("RUNS"));
    let src = Path::new(&src);
    let dir = tempfile::tempdir().expect("temp dir");
    let probed = probe(src).expect("probe");
    let started = Instant::now();
    let mut segs = Vec::new();
    let summary = segment_file(
        src,
        &probed,
        &SegmentOptions::new(2_000_000, dir.path().to_path_buf()),
        |s| {
            segs.push(s);
            Ok(())
        },
    )
    .expect("cut");
    let cut_ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "source {}x{} {:.2} fps: {} segments cut in {cut_ms:.0} ms (checks included), {} cuts refused",
        probed.metadata.width,
        probed.metadata.height,
        probed.metadata.frame_rate.as_f64(),
        summary.segments,
        summary.refused_cuts
    );
    println!(
        "segment  frames  check_cpu_ms  open_cpu_ms  full_decode_cpu_ms  ratio  (wall: check, full)"
    );
    let (mut check_total, mut open_total, mut full_total) = (0.0, 0.0, 0.0);
    for s in &segs {
        let (mut check, mut full, mut check_wall, mut full_wall) = (vec![], vec![], vec![], vec![]);
        let mut open = vec![];
        for _ in 0..runs {
            // Opening a file probes it (decoding its first pictures): the cutter's own
            // trial decode works on packets it has read anyway and pays no open.
            let (_, cpu, _) =
                timed(|| castwork_media::ffmpeg::format::input(&s.path).expect("open"));
            open.push(cpu);
            let (c, cpu, wall) = timed(|| check_clean_start(&s.path).expect("check"));
            assert!(c.is_clean(), "segment {}: {c}", s.seq);
            check.push(cpu);
            check_wall.push(wall);
            let (pictures, cpu, wall) = timed(|| full_decode(&s.path));
            assert_eq!(pictures, s.frames);
            full.push(cpu);
            full_wall.push(wall);
        }
        let (c, o, f) = (median(check), median(open), median(full));
        check_total += c;
        open_total += o;
        full_total += f;
        println!(
            "{:>7}  {:>6}  {c:>12.1}  {o:>11.1}  {f:>18.1}  {:>5.2}  ({:.1}, {:.1})",
            s.seq,
            s.frames,
            c / f,
            median(check_wall),
            median(full_wall)
        );
    }
    let n = segs.len() as f64;
    println!(
        "mean per segment (CPU): check {:.1} ms (of which opening the file {:.1} ms), \
         full decode {:.1} ms, ratio {:.2}",
        check_total / n,
        open_total / n,
        full_total / n,
        check_total / full_total
    );
}
