//! A push that moves to another orchestrator mid-stream (issue 18, part 3): two
//! independent clusters (each its own vhost, Redis, store and worker) and a third priced
//! above the broadcaster's maximum. The chosen cluster's orchestrator and worker are
//! SIGKILLed with the stream half done and work in flight; the push goes on at the other,
//! and its own copy (`--output-dir`) plays as one stream with every segment exactly once.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const RUNGS: [&str; 2] = ["P240p30fps16x9", "P144p30fps16x9"];

/// `orchestrator broadcasters add NAME` on `c`'s Redis: the key it prints.
fn add_key(c: &Cluster) -> String {
    c.orchestrator_cli(&["broadcasters", "add", "studio"])
        .trim()
        .to_string()
}

/// Segments in the copy of `stream` under `out` (those of its last rung).
fn copied(out: &Path, stream: &str) -> usize {
    std::fs::read_dir(out.join(format!("streams/{stream}/{}", RUNGS[1])))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ts"))
                .count()
        })
        .unwrap_or(0)
}

/// The history file of the push that copies into `out`.
fn history(out: &Path) -> std::path::PathBuf {
    out.with_file_name("history.json")
}

/// (completed, failed) of `url` in the history beside `out`.
fn counted(out: &Path, url: &str) -> (u64, u64) {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(history(out)).unwrap()).unwrap();
    (
        v[url]["completed"].as_u64().unwrap_or(0),
        v[url]["failed"].as_u64().unwrap_or(0),
    )
}

/// Sequence numbers a media playlist of the copy lists, in order.
fn listed(out: &Path, stream: &str, rung: &str) -> Vec<u64> {
    let text = std::fs::read(out.join(format!("streams/{stream}/{rung}/index.m3u8"))).unwrap();
    let media = m3u8_rs::parse_media_playlist_res(&text).expect("media playlist parses");
    assert!(
        media.segments.iter().all(|s| !s.discontinuity),
        "no discontinuity: the timeline runs on across the move"
    );
    media
        .segments
        .iter()
        .map(|s| s.uri.split('.').next().unwrap().parse().unwrap())
        .collect()
}

/// `broadcaster push FILE --wait` over HTTP to `addrs` with `keys` (one each), at most 10
/// wei per pixel, moving on after 3 s without an answer, keeping its copy in `out` and
/// its orchestrator history beside `out` (`history.json`); stderr goes to `log`, stdout
/// beside it (`.out`). Its broker, Redis and store point nowhere.
fn push_over_http(
    input: &Path,
    stream: &str,
    (addrs, keys): (&[String], &[String]),
    out: &Path,
    log: &Path,
    extra: &[&str],
) -> std::process::Child {
    Command::new(bin("broadcaster"))
        .env("RUST_LOG", "warn")
        .env("AMQP_URL", "amqp://nobody:nothing@127.0.0.1:1/none")
        .env("REDIS_URL", "redis://127.0.0.1:1/")
        .arg("push")
        .arg(input)
        .args(["--stream", stream, "--wait", "--profiles", &RUNGS.join(",")])
        .args(["--orch-addr", &addrs.join(",")])
        .args(["--orch-key", &keys.join(",")])
        .args(["--max-price-per-unit", "10", "--failover-after", "3"])
        .arg("--output-dir")
        .arg(out)
        .arg("--orch-history")
        .arg(history(out))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn a_push_moves_to_another_orchestrator_when_its_own_is_killed_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 30);
    let mut a = Cluster::start(1);
    let mut b = Cluster::start(1);
    let dear = Cluster::start_with(0, &["--price-per-unit", "1000"], Vec::new());
    let keys = [&dear, &a, &b].map(add_key);
    let addrs = [&dear, &a, &b].map(|c| format!("http://{}", c.orchestrator_addr));
    let out = dir.path().join("copy");
    let stream = stream_name("moved");
    let log = dir.path().join("push.log");
    let mut push = push_over_http(&input, &stream, (&addrs, &keys), &out, &log, &[]);
    // Whichever of the two free clusters was drawn has the stream.
    let has = |c: &Cluster| {
        http_get(&c.orchestrator_addr, &format!("/streams/{stream}")).is_some_and(|r| r.0 == 200)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(has(&a) || has(&b)) {
        assert!(
            Instant::now() < deadline && push.try_wait().unwrap().is_none(),
            "no orchestrator has the stream: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let a_chosen = has(&a);
    let (victim, spare) = if a_chosen {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let spare_addr = format!("http://{}", spare.orchestrator_addr);

    // Work in flight when the fault hits: segments done and copied, the stream not, and
    // the worker busy with one.
    wait_until("work in flight", Duration::from_secs(120), || {
        let st = victim.status(&stream);
        st["state"] == "active"
            && st["segments"]["done"].as_u64() >= Some(2)
            && copied(&out, &stream) >= 1
            && victim
                .workers()
                .iter()
                .any(|w| w["busy_slots"].as_u64() > Some(0))
    });
    let before = victim.status(&stream);
    let killed = Instant::now();
    for pid in victim
        .pids("worker")
        .into_iter()
        .chain(victim.pids("orchestrator"))
    {
        victim.signal(pid, "KILL");
    }
    // What the push copied from there: nothing more comes from a dead orchestrator.
    let copied_before = copied(&out, &stream);
    let mut next_copy = None;
    let status = loop {
        if next_copy.is_none() && copied(&out, &stream) > copied_before {
            next_copy = Some(killed.elapsed());
        }
        if let Some(s) = push.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(240),
            "the push did not end: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    let stdout = std::fs::read_to_string(log.with_extension("out")).unwrap();
    assert!(status.success(), "{stderr}\n{stdout}\n{}", spare.logs());
    let next_copy = next_copy.unwrap_or_else(|| killed.elapsed());

    // Never the priced one; the move named, with how many segments went again.
    assert!(
        stderr.contains(&format!(
            "orchestrator {}: left out: the orchestrator charges 1000",
            addrs[0]
        )),
        "{stderr}"
    );
    let moved = stderr
        .lines()
        .find(|l| l.contains(&format!("moving the stream to {spare_addr} (")))
        .unwrap_or_else(|| panic!("no move to {spare_addr}: {stderr}"));
    let resent: u64 = moved
        .rsplit_once('(')
        .and_then(|(_, n)| n.split(' ').next()?.parse().ok())
        .unwrap();

    // Every segment exactly once in the copy, in order, the move included.
    let total: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("done: ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(total >= 14, "{stdout}");
    for rung in RUNGS {
        assert_eq!(
            listed(&out, &stream, rung),
            (0..total).collect::<Vec<_>>(),
            "{rung}"
        );
    }
    // The spare had the segments not yet copied and the rest, and nothing more.
    let done_before = before["segments"]["done"].as_u64().unwrap();
    let there = spare.wait_complete(&stream, Duration::from_secs(30));
    assert_eq!(there["state"], "complete", "{there}");
    let spare_total = there["segments"]["total"].as_u64().unwrap();
    assert!(spare_total < total, "{there}");
    assert!(spare_total >= resent, "{there}");
    assert_eq!(spare_total + copied_before as u64, total, "{there}");
    let (code, _) = http_get(&dear.orchestrator_addr, &format!("/streams/{stream}")).unwrap();
    assert_eq!(code, 404, "the priced orchestrator never had the stream");
    // The history counts the move against the killed one and the stream for the spare.
    let victim_addr = format!("http://{}", victim.orchestrator_addr);
    assert_eq!(counted(&out, &victim_addr), (0, 1));
    assert_eq!(counted(&out, &spare_addr), (1, 0));
    // The copy plays as one stream: the independent output check over its playlists.
    output_check::assert_output_ok(&out, &stream, &input);
    println!(
        "failover: killed with {done_before} segments done there and {copied_before} copied; \
         the next segment was copied {:.1} s after the kill; {resent} segments went again; \
         {total} segments, each listed once",
        next_copy.as_secs_f64()
    );
}

/// What [`to_the_spare`] found.
struct Moved {
    spare: Cluster,
    stream: String,
    out: std::path::PathBuf,
    stderr: String,
    total: u64,
}

/// Pushes `input` with `extra` flags to `first` (free, so drawn first) with a spare priced
/// within the maximum (1 wei per pixel, credited in its ledger for the key holder), and
/// checks the push moved there and completed: each segment in the copy once, the history
/// counting the move against `first` and the stream for the spare.
fn to_the_spare(first: &Cluster, dir: &Path, input: &Path, extra: &[&str]) -> Moved {
    let spare = Cluster::start_with(1, &["--price-per-unit", "1"], Vec::new());
    spare.orchestrator_cli(&["ledger", "credit", "studio", "1000000000000"]);
    let keys = [first, &spare].map(add_key);
    let addrs = [first, &spare].map(|c| format!("http://{}", c.orchestrator_addr));
    let (out, log) = (dir.join("copy"), dir.join("push.log"));
    let stream = stream_name("moved");
    let status = push_over_http(input, &stream, (&addrs, &keys), &out, &log, extra)
        .wait()
        .unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}\n{}", spare.logs());
    assert!(
        stderr.contains(&format!("chose orchestrator {}", addrs[0]))
            && stderr.contains(&format!("moving the stream to {} (", addrs[1])),
        "{stderr}"
    );
    let there = spare.wait_complete(&stream, Duration::from_secs(30));
    assert_eq!(there["state"], "complete", "{there}");
    let total = there["segments"]["total"].as_u64().unwrap();
    assert_eq!(there["segments"]["done"], total, "{there}");
    for rung in RUNGS {
        assert_eq!(
            listed(&out, &stream, rung),
            (0..total).collect::<Vec<_>>(),
            "{rung}"
        );
    }
    assert_eq!(counted(&out, &addrs[0]), (0, 1));
    assert_eq!(counted(&out, &addrs[1]), (1, 0));
    Moved {
        spare,
        stream,
        out,
        stderr,
        total,
    }
}

/// An orchestrator whose only worker says no segment can be transcoded fails the first one
/// after its own retries (alone, a worker's word is final): the push moves to the spare,
/// which it pays from the key holder's ledger account there.
#[test]
fn a_segment_failed_after_the_orchestrators_retries_goes_to_the_spare() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 10);
    let mut failing = Cluster::start(0);
    failing.add(
        "worker",
        &["--worker-id", "liar", "--test-only-lie-permanent"],
    );
    let moved = to_the_spare(&failing, dir.path(), &input, &[]);
    let first = format!("http://{}", failing.orchestrator_addr);
    assert!(
        moved
            .stderr
            .contains(&format!("orchestrator {first}: segment 0 failed there: ")),
        "{}",
        moved.stderr
    );
    // The stream at the failing one ended with nothing done there.
    wait_until(
        "the stream ended at the first",
        Duration::from_secs(30),
        || ended_undone(&failing.status(&moved.stream)),
    );
    // The spare charged the key holder for the stream.
    let account = moved.spare.orchestrator_cli(&["ledger", "show", "studio"]);
    let left: u64 = account
        .strip_prefix("studio: ")
        .and_then(|a| a.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{account}"));
    assert!(left < 1_000_000_000_000, "{account}");
    output_check::assert_output_ok(&moved.out, &moved.stream, &input);
}

/// An orchestrator that answers but whose workers are gone resolves none of the push's
/// segments: after `--stall-after` the push moves to the spare.
#[test]
fn a_push_stalled_at_an_orchestrator_without_workers_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    let idle = Cluster::start(0);
    let started = Instant::now();
    let moved = to_the_spare(&idle, dir.path(), &input, &["--stall-after", "5"]);
    assert!(
        moved
            .stderr
            .contains("segments waiting there was transcoded in 5 s"),
        "{}",
        moved.stderr
    );
    println!(
        "stalled: the push moved after 5 s without progress; {} segments done in {:.1} s",
        moved.total,
        started.elapsed().as_secs_f64()
    );
}
