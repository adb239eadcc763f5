//! The operator guides in docs/ run as written: every `sh` block of each guide, in the
//! order the guides say, as one bash script from the repository root, against the
//! machine's RabbitMQ (the guides import `infra/rabbitmq/definitions.json`, so the
//! `castwork` vhost and its users, which this test removes before and after) and a
//! password-protected Redis of the test's own. Two substitutions only: the debug build in
//! place of the release build, and the test's own directory and addresses through the
//! variables the guides read (`WORK`, `ORCH_HTTP`, `WORK_ADDR`, `REDIS_URL`, `BCAST_HTTP`,
//! `RTMP_ADDR`, `API_ADDR`, `INPUTS_ADDR`, `ETH_ADDR`). A command that fails fails the test.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The guides, in the order they build on each other.
const GUIDES: [&str; 6] = [
    "run-an-orchestrator.md",
    "scale-transcoding.md",
    "cpu-and-gpu.md",
    "run-a-broadcaster.md",
    "migrate-from-go-livepeer.md",
    "payments.md",
];

/// The broker users the guides make.
const USERS: [&str; 9] = [
    "castwork-orchestrator",
    "castwork-broadcaster",
    "castwork-admin",
    "castwork-worker",
    "box-1",
    "box-2",
    "box-3",
    "box-4",
    "gpu-1",
];

/// How long all the guides may take.
const BUDGET: Duration = Duration::from_secs(660);

/// The `sh` blocks of a Markdown text, indented ones (in a list) included, unindented.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        match &mut open {
            None if line.trim_start() == "```sh" => open = Some((indent, String::new())),
            None => {}
            Some((_, block)) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(block));
                open = None;
            }
            Some((at, block)) => {
                block.push_str(line.get(*at..).unwrap_or(line.trim_start()));
                block.push('\n');
            }
        }
    }
    assert!(open.is_none(), "an sh block is not closed");
    blocks
}

/// Removes the `castwork` vhost and the users the guides make (what a failed run left).
fn clean_broker() {
    let _ = Command::new("rabbitmqctl")
        .args(["-q", "delete_vhost", "castwork"])
        .output();
    for user in USERS {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_user", user])
            .output();
    }
}

#[test]
fn the_operator_guides_run_as_written() {
    let mut script = String::from(
        "set -euo pipefail\n\
         trap 'jobs -p | xargs -r kill -TERM 2> /dev/null; sleep 2; \
         jobs -p | xargs -r kill -KILL 2> /dev/null' EXIT\n",
    );
    let mut blocks = 0;
    for guide in GUIDES {
        let text = std::fs::read_to_string(workspace().join("docs").join(guide)).unwrap();
        script.push_str(&format!("echo '### {guide}' >&2\n"));
        for block in sh_blocks(&text) {
            blocks += 1;
            script.push_str(
                &block
                    .replace("cargo build --release --bins", "cargo build --bins --quiet")
                    .replace("target/release", "target/debug"),
            );
        }
    }
    assert!(blocks >= 12, "the guides have {blocks} command blocks");

    clean_broker();
    let redis = RedisNode::start_auth("castwork", "guide-secret");
    let work = tempfile::tempdir().unwrap();
    // Below the kernel's ephemeral range (32768 and up), so no process the guides start
    // with port 0 (the workers' metrics) can take one before the guides bind it.
    let mut next = 20_000 + (std::process::id() % 5_000) as u16;
    let mut addr = || loop {
        next += 1;
        if std::net::TcpListener::bind(("127.0.0.1", next)).is_ok() {
            break format!("127.0.0.1:{next}");
        }
    };
    let mut child = Command::new("setsid")
        .args(["bash", "-c", &script])
        .current_dir(workspace())
        .env("WORK", work.path())
        .env("ORCH_HTTP", addr())
        .env("WORK_ADDR", addr())
        .env("BCAST_HTTP", addr())
        .env("RTMP_ADDR", addr())
        .env("API_ADDR", addr())
        .env("INPUTS_ADDR", addr())
        .env("ETH_ADDR", addr())
        .env("REDIS_URL", redis.url())
        .env_remove("AMQP_URL")
        .env_remove("STORAGE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    let deadline = Instant::now() + BUDGET;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut logs = String::new();
    for entry in std::fs::read_dir(work.path()).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            logs.push_str(&format!("--- {}\n", path.display()));
            for l in tail.iter().rev() {
                logs.push_str(l);
                logs.push('\n');
            }
        }
    }
    clean_broker();
    assert!(
        status.is_some_and(|s| s.success()),
        "the guides failed ({status:?}, budget {BUDGET:?})\nstdout:\n{out}\nstderr:\n{err}\n{logs}"
    );
    // What the guides show is there: seven pushes done (first, over HTTP, combined, split,
    // priced, on-chain, found on-chain), a live stream's master playlist, a retired worker banned, the ledger's
    // account charged, winning tickets redeemed, no slash proposal.
    assert_eq!(
        out.matches("every rendition transcoded").count(),
        7,
        "{out}"
    );
    assert!(
        out.contains("/copy/streams/over-http/index.m3u8"),
        "the push over HTTP names its copy: {out}"
    );
    assert!(
        out.contains("\"completed\": 1"),
        "the history counts the push: {out}"
    );
    assert!(out.contains("alice: "), "{out}");
    assert!(out.contains("no slash proposal against"), "{out}");
    assert!(out.contains("#EXT-X-STREAM-INF"), "{out}");
    assert!(out.contains("worker box-3 banned: retired"), "{out}");
}
