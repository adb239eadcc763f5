//! The live segment state machine against the real Redis scripts, on generated runs
//! (proptest): segments recorded in any order, with duplicates, gaps and numbers far ahead,
//! resolved in any order, listed as time passes, then ended. Whatever the run, no segment
//! is listed twice or out of order, only transcoded segments are listed, a run of missing
//! segments is one gap in the listing, numbers past the window are refused, and the stream
//! resolves exactly its segment count.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use castwork_orchestrator::state::{listed_key, Charge, Recorded, State};
use castwork_protocol::{LadderPlan, ObjectRef, SegmentReady, SourceMetadata, StreamMode};
use proptest::prelude::*;

const WINDOW: u64 = 20;
const HOLD_MS: u64 = 1_000;

/// A Redis of the test's own, on a free port, gone when dropped.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/setup.sh");
        let redis = Redis {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Record a segment (its deadline 2 s after now).
    Record(u64),
    /// Resolve a segment: transcoded or failed.
    Resolve(u64, bool),
    /// Time passes, then the listing advances.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![8 => 0u64..40, 1 => 0u64..200, 1 => Just(u64::MAX), 1 => Just(1 << 60)]
            .prop_map(Op::Record),
        3 => (0u64..40, any::<bool>()).prop_map(|(s, ok)| Op::Resolve(s, ok)),
        2 => (0u64..3_000).prop_map(Op::Advance),
    ]
}

fn segment(stream: &str, session: uuid::Uuid, seq: u64, now: u64) -> SegmentReady {
    SegmentReady {
        stream: stream.into(),
        session,
        seq,
        start_us: 0,
        duration_us: 2_000_000,
        last_pts_us: 0,
        frames: 60,
        has_audio: false,
        object: ObjectRef {
            key: format!("streams/{stream}/source/{seq}.ts"),
            size: 1,
            sha256: String::new(),
        },
        arrived_unix_ms: Some(now),
        discontinuity: false,
        payment: None,
        secret: String::new(),
    }
}

/// Runs `ops` on a fresh live stream, ends it, and checks the listing and counts.
async fn run(
    state: &State,
    redis: &redis::aio::ConnectionManager,
    n: usize,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let stream = format!("prop-{n}");
    let session = uuid::Uuid::now_v7();
    let source = SourceMetadata::upright(640, 360, 30);
    let plan = LadderPlan::default();
    let r = state
        .register_stream(
            &stream,
            &session.to_string(),
            StreamMode::Live,
            &plan,
            &source,
            Some(6),
            None,
            "h",
            0,
        )
        .await
        .unwrap();
    prop_assert_eq!(r, 1);
    let mut now = 1_000_000u64;
    let mut highest: Option<u64> = None;
    let mut recorded = BTreeSet::new();
    for op in ops {
        match op {
            Op::Record(seq) => {
                let limit = highest.map_or(WINDOW - 1, |h| h + WINDOW);
                let seg = segment(&stream, session, *seq, now);
                let got = state
                    .record_segment(&seg, Some(now + 2_000), WINDOW)
                    .await
                    .unwrap();
                match got {
                    Recorded::Refused(_) => {
                        prop_assert!(*seq > limit, "{seq} refused under {limit}")
                    }
                    Recorded::Publish(attempt, _) => {
                        prop_assert!(*seq <= limit, "{seq} recorded over {limit}");
                        // A pending segment recorded again republishes its attempt.
                        recorded.insert(*seq);
                        prop_assert_eq!(attempt, 1);
                        highest = highest.max(Some(*seq));
                    }
                    // Already resolved, or passed over by the listing.
                    Recorded::Resolved(_) => {}
                }
            }
            Op::Resolve(seq, ok) => {
                if *ok {
                    let charge = Charge::default();
                    state
                        .accept(&stream, *seq, 1, &[], 0, now, None, charge)
                        .await
                        .unwrap();
                } else {
                    state
                        .fail_attempt(&stream, *seq, 1, "bad", true, 3)
                        .await
                        .unwrap();
                }
            }
            Op::Advance(ms) => {
                now += ms;
                state.advance_live(&stream, now, HOLD_MS).await.unwrap();
            }
        }
    }
    let total = highest.map_or(0, |h| h + 1);
    prop_assert!(state
        .set_total(&stream, total, WINDOW)
        .await
        .unwrap()
        .is_ok());
    prop_assert!(state
        .set_total(&stream, total + WINDOW + 1, WINDOW)
        .await
        .unwrap()
        .is_err());
    // Time goes on: every pending segment misses its deadline and each gap is held once.
    for _ in 0..=recorded.len() + 1 {
        now += 10_000;
        state.advance_live(&stream, now, HOLD_MS).await.unwrap();
    }

    let listing: Vec<String> = redis::cmd("LRANGE")
        .arg(listed_key(&stream))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis.clone())
        .await
        .unwrap();
    let mut last: Option<u64> = None;
    for e in &listing {
        let (gap, num) = match e.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, e.split(' ').next().unwrap_or_default()),
        };
        let seq: u64 = num.parse().unwrap();
        prop_assert!(
            last.is_none_or(|l| seq > l),
            "{:?}: out of order at {}",
            listing,
            e
        );
        if !gap {
            let s = state.segment(&stream, seq).await.unwrap();
            prop_assert_eq!(
                s.map(|s| s.state),
                Some("done".to_string()),
                "{} listed",
                seq
            );
        }
        last = Some(seq);
    }
    // A run of never-recorded numbers is one gap entry: at most one entry per recorded
    // segment and one gap before each.
    prop_assert!(
        listing.len() <= 2 * recorded.len() + 1,
        "{:?} for {:?}",
        listing,
        recorded
    );
    let rec = state.stream(&stream).await.unwrap().unwrap();
    prop_assert_eq!(rec.done + rec.failed + rec.skipped, total, "{:?}", rec);
    Ok(())
}

#[test]
fn the_live_state_machine_holds_on_any_run() {
    let redis_server = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = rt
        .block_on(castwork_cluster::redis_connect(&redis_server.url))
        .unwrap();
    let state = State::new(redis.clone());
    let n = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 0..80), |ops| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(run(&state, &redis, n, &ops))
        })
        .unwrap();
}

/// The playlist writer's fence: a holder whose lock expired (and went to another) is told
/// so before it writes, and cannot release the new holder's lock.
#[test]
fn a_writer_held_up_past_its_lock_is_fenced_off() {
    let redis_server = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let redis = castwork_cluster::redis_connect(&redis_server.url)
            .await
            .unwrap();
        let state = State::new(redis);
        let wait = Duration::from_secs(1);
        let a = state.lock("playlists:s", 100, wait).await.unwrap().unwrap();
        assert!(state.renew_lock("playlists:s", &a, 100).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
        let b = state
            .lock("playlists:s", 10_000, wait)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !state.renew_lock("playlists:s", &a, 100).await.unwrap(),
            "a is fenced off"
        );
        state.unlock("playlists:s", &a).await.unwrap();
        assert!(
            state.renew_lock("playlists:s", &b, 10_000).await.unwrap(),
            "b still holds it"
        );
    });
}
