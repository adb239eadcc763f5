//! A worker is who its broker user says (issue 15): the orchestrator takes a worker's
//! identity from the AMQP `user-id` the broker checked, never from the message; bans key on
//! that identity, so a restart under another `--worker-id` does not escape one; a report
//! must name a job the orchestrator issued; and a worker needs no Redis (its heartbeats and
//! its ban travel over the broker).

mod common;

use std::time::Duration;

use castwork_protocol::*;
use common::*;
use serde_json::Value;

const RUNG: &str = "P144p30fps16x9";
const PATIENCE: Duration = Duration::from_secs(30);
/// The worker's exit status when the orchestrator banned it (`castwork_worker::EXIT_BANNED`).
const EXIT_BANNED: i32 = 4;

/// Starts a worker on `url` claiming `claimed`, with no Redis or object-store settings
/// but the local directory it shares with the orchestrator in this one-machine test.
fn add_worker(cluster: &mut Cluster, url: &str, claimed: &str) -> u32 {
    let before = cluster.pids("worker");
    cluster.add_without(
        "worker",
        &["--amqp-url", url, "--worker-id", claimed],
        &["REDIS_URL"],
    );
    cluster
        .pids("worker")
        .into_iter()
        .find(|p| !before.contains(p))
        .expect("the new worker runs")
}

fn exits_banned(cluster: &mut Cluster, pid: u32) {
    let status = cluster.wait_exit(pid, PATIENCE);
    assert_eq!(status.code(), Some(EXIT_BANNED), "{}", cluster.logs());
}

#[test]
fn a_worker_is_its_broker_user_and_a_restart_under_another_name_keeps_its_ban() {
    let help = std::process::Command::new(bin("worker"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_lowercase();
    assert!(!help.contains("redis"), "a worker takes no Redis: {help}");

    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let mut cluster = Cluster::start(0);
    let url = cluster.add_broker_user("w7", "worker");
    let user = format!("{}-w7", cluster.vhost);
    // It claims another worker's name: the orchestrator knows it by its user.
    let pid = add_worker(&mut cluster, &url, "worker-3");
    wait_until("its heartbeat to be recorded", PATIENCE, || {
        cluster.worker_record(&user).is_some()
    });
    let rec = cluster.worker_record(&user).unwrap();
    assert_eq!(rec["process"], "worker-3", "{rec}");
    assert_eq!(rec["id"], format!("{user}/worker-3"), "{rec}");
    assert!(
        cluster
            .workers()
            .iter()
            .all(|w| w["identity"] != "worker-3"),
        "{:?}",
        cluster.workers()
    );
    assert!(cluster
        .logs_of("worker")
        .contains(&format!("identity=\"{user}\"")));

    let stream = stream_name("identity");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Banning the name it claimed does nothing; banning its user stops it.
    cluster.orchestrator_cli(&["workers", "ban", "worker-3"]);
    std::thread::sleep(Duration::from_secs(2 * BEAT_INTERVAL_SECS));
    assert!(cluster.exit_status(pid).is_none(), "{}", cluster.logs());
    cluster.orchestrator_cli(&["workers", "unban", "worker-3"]);
    cluster.orchestrator_cli(&["workers", "ban", &user, "--reason", "bad output"]);
    exits_banned(&mut cluster, pid);
    // Restarted under a new name, it is still its user, and still banned.
    let pid = add_worker(&mut cluster, &url, "a-fresh-name");
    exits_banned(&mut cluster, pid);
    assert!(cluster.logs_of("worker").contains("bad output"));

    // Lifted, it works again.
    let out = cluster.orchestrator_cli(&["workers", "unban", &user]);
    assert!(out.contains("may take jobs again"), "{out}");
    let pid = add_worker(&mut cluster, &url, "a-fresh-name");
    let stream = stream_name("identity-back");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cluster.exit_status(pid).is_none());
}

/// Publishes `body` to `exchange` (with `key`) as `url`'s user, naming `user_id` as its
/// sender; the broker's answer (an error when it closed the channel).
fn publish_to(url: &str, user_id: &str, target: (&str, &str), body: &[u8]) -> Result<(), String> {
    publish_with(url, user_id, target, body, Default::default())
}

/// [`publish_to`] with headers.
fn publish_with(
    url: &str,
    user_id: &str,
    (exchange, key): (&str, &str),
    body: &[u8],
    headers: lapin::types::FieldTable,
) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| e.to_string())?;
        let ch = c.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let confirm = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                Default::default(),
                body,
                lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_user_id(user_id.into())
                    .with_headers(headers),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let _ = c.close(200, "bye".into()).await;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err("nacked".into())
        }
    })
}

/// A report to the results exchange.
fn publish_as(url: &str, user_id: &str, body: &[u8]) -> Result<(), String> {
    publish_to(url, user_id, (RESULTS_EXCHANGE, "result"), body)
}

#[test]
fn reports_for_jobs_it_was_not_given_or_in_another_users_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let mut cluster = Cluster::start(0);
    let url = cluster.add_broker_user("w8", "worker");
    let user = format!("{}-w8", cluster.vhost);
    let stream = stream_name("not-given");
    let push = cluster.push_in_background(&input, &stream, &["--profiles", RUNG]);
    wait_until("a segment waiting for a worker", PATIENCE, || {
        http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}"))
            .and_then(|(c, b)| (c == 200).then_some(b))
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .is_some_and(|v| v["segments"]["pending"].as_u64() > Some(0))
    });

    // A worker's user fails a segment it was never given: the job id is made up.
    let forged = |job_id: uuid::Uuid, worker: &str| {
        encode(&WorkerReport::SegmentFailed(SegmentFailed {
            job_id,
            stream: stream.clone(),
            seq: 0,
            attempt: 1,
            worker_id: worker.into(),
            disposition: Disposition::Permanent,
            message: "forged".into(),
        }))
    };
    let jobs = |cluster: &Cluster| cluster.queue_depth(&job_queue(StreamMode::Vod, "cpu"));
    wait_until("both jobs queued", PATIENCE, || jobs(&cluster) == 2);
    publish_as(&url, &user, &forged(uuid::Uuid::now_v7(), "worker-1")).unwrap();
    let mut letter = None;
    wait_until("the forged report to be dead-lettered", PATIENCE, || {
        letter = cluster
            .dead_letters()
            .into_iter()
            .find(|d| d["stream"] == stream.as_str());
        letter.is_some()
    });
    let letter = letter.unwrap();
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("no such job was issued"), "{letter}");
    assert!(reason.contains(&format!("worker {user}")), "{letter}");
    // An id of the unkeyed kind older orchestrators issued (a UUIDv7) gets its attempt
    // published once more, so an upgrade with jobs in flight loses nothing; once only.
    wait_until("the attempt published again", PATIENCE, || {
        jobs(&cluster) == 3
    });
    publish_as(&url, &user, &forged(uuid::Uuid::now_v7(), "worker-1")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(jobs(&cluster), 3);

    // In another user's name (the orchestrator's own), the broker itself refuses it.
    let err = publish_as(&url, "guest", &forged(cluster.job_id(&stream, 0, 1), "w"))
        .expect_err("the broker refuses a user-id that is not the sender's");
    assert!(
        err.contains("PRECONDITION_FAILED") || err.contains("user_id"),
        "{err}"
    );

    // Nor may a worker publish a job: jobs come from the orchestrator alone.
    let job_queue = job_queue(StreamMode::Vod, "cpu");
    let err = publish_to(&url, &user, (JOBS_EXCHANGE, &job_queue), b"{}")
        .expect_err("a worker's user may not publish jobs");
    assert!(err.contains("ACCESS_REFUSED"), "{err}");

    // Nor may it fake the broker: a real job it takes (and puts back), published to the
    // dead-letter exchange as if the broker had given it up ("expired", which would skip
    // the segment), but for another segment. The job id does not match: refused.
    let real = peek_message(&url, &job_queue);
    let mut job: Value = serde_json::from_slice(&real).unwrap();
    let other = 1 - job["seq"].as_u64().unwrap();
    job["seq"] = other.into();
    let headers = forged_death(&job_queue);
    publish_with(
        &url,
        &user,
        (DEAD_LETTER_EXCHANGE, ""),
        &serde_json::to_vec(&job).unwrap(),
        headers,
    )
    .unwrap();
    let mut letter = None;
    wait_until("the forged dead letter to be refused", PATIENCE, || {
        letter = cluster
            .dead_letters()
            .into_iter()
            .find(|d| d["kind"] == "job" && d["seq"] == other);
        letter.is_some()
    });
    let letter = letter.unwrap();
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("no such job was issued"),
        "{letter}"
    );

    // Nothing of this changed the stream: a real worker completes it.
    cluster.add("worker", &[]);
    let out = push.wait_with_output();
    let status = cluster.wait_complete(&stream, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "{status} {out:?}");
    assert_eq!(status["segments"]["failed"], 0, "{status}");
    assert_eq!(status["segments"]["skipped"], 0, "{status}");
}

/// Headers that say the broker dead-lettered a message from `queue` because it expired.
fn forged_death(queue: &str) -> lapin::types::FieldTable {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let mut death = FieldTable::default();
    death.insert(
        "reason".into(),
        AMQPValue::LongString(LongString::from("expired")),
    );
    death.insert(
        "queue".into(),
        AMQPValue::LongString(LongString::from(queue)),
    );
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    headers
}

/// Empties `queue` as `url`'s user; how many messages it held.
fn purge(url: &str, queue: &str) -> Result<u32, String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| e.to_string())?;
        let ch = c.create_channel().await.map_err(|e| e.to_string())?;
        let n = ch
            .queue_purge(queue.into(), Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let _ = c.close(200, "bye".into()).await;
        Ok(n)
    })
}

#[test]
fn jobs_a_worker_purges_from_the_queue_are_retried_and_no_segment_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let mut cluster = Cluster::start_with(0, &["--lost-job-secs", "3"], Vec::new());
    let url = cluster.add_broker_user("purger", "worker");
    let stream = stream_name("purged");
    let push = cluster.push_in_background(&input, &stream, &["--profiles", RUNG]);
    let queue = job_queue(StreamMode::Vod, "cpu");
    let jobs = |cluster: &Cluster| cluster.queue_depth(&queue);
    // Both jobs wait in the queue when it is purged: RabbitMQ lets whoever may read a queue
    // purge it, so a worker's user can.
    wait_until("both jobs queued", PATIENCE, || jobs(&cluster) == 2);
    assert_eq!(purge(&url, &queue), Ok(2));
    wait_until("the queue empty", PATIENCE, || jobs(&cluster) == 0);
    // The orchestrator finds them gone (the queue is empty, and no worker started them)
    // and retries each as a new attempt, which an honest worker does.
    cluster.add("worker", &[]);
    let out = push.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", cluster.logs());
    let status = cluster.wait_complete(&stream, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "{status}");
    assert_eq!(status["segments"]["done"], 2, "{status}");
    assert_eq!(cluster.playlist_seqs(&stream, RUNG), [0, 1]);
    let (_, metrics) = http_get(&cluster.orchestrator_addr, "/metrics").unwrap();
    assert_eq!(
        metric_total(
            &metrics,
            "castwork_orchestrator_segments_total",
            &["event=\"lost\""]
        ),
        2,
        "{metrics}"
    );
}

#[test]
fn workers_add_makes_the_one_url_a_worker_needs_and_remove_takes_it_away() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let mut cluster = Cluster::start(0);
    let name = format!("{}-box", cluster.vhost);
    let amqp_url = cluster.amqp_url.clone();
    let cli = |args: &[&str]| {
        std::process::Command::new(bin("orchestrator"))
            .args(["--amqp-url", &amqp_url, "workers"])
            .args(args)
            .output()
            .expect("orchestrator runs")
    };
    let out = cli(&["add", &name]);
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(url.starts_with(&format!("amqp://{name}:")), "{url}");
    assert!(
        url.ends_with(&format!("@127.0.0.1:5672/{}", cluster.vhost)),
        "{url}"
    );
    // A second add of the same name is refused: the first worker's secret stays valid.
    let again = cli(&["add", &name]);
    assert!(!again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    // With that URL alone (no Redis, no object store), a worker does the stream, and is
    // known by its user.
    add_worker(&mut cluster, &url, "anything");
    let out = cluster.push(&input, &stream_name("added"), &["--profiles", RUNG]);
    assert!(out.status.success(), "{out:?}\n{}", cluster.logs());
    assert!(
        cluster.worker_record(&name).is_some(),
        "{:?}",
        cluster.workers()
    );

    // Removed, its connection is closed and it cannot log in again.
    let out = cli(&["remove", &name]);
    assert!(out.status.success(), "{out:?}");
    wait_until("the worker's login refused", PATIENCE, || {
        cluster.logs_of("worker").contains("ACCESS_REFUSED")
            || cluster.logs_of("worker").contains("access refused")
    });
}
