//! A malicious worker on a host of its own (issue 15): with nothing but its own worker
//! URL, from a network namespace that reaches the cluster only over its link, it tries
//! every abuse a worker's credential might allow, and each is refused, by the broker, by
//! the orchestrator's `/work/` routes or by the orchestrator; an honest stream pushed
//! meanwhile completes on an honest worker on another host, every segment exactly once,
//! and passes the independent output check.
//!
//! The malicious worker is this test binary itself, run again inside the namespace as
//! the ignored test `rogue_worker` (so no such program is ever built into Castwork); it
//! prints one line per abuse, `abuse NAME: refused (WHY)` or `abuse NAME: ALLOWED`.

mod common;

use std::time::Duration;

use castwork_protocol::*;
use common::netns::{Forward, Network};
use common::*;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicRejectOptions};
use lapin::types::FieldTable;

const RUNGS: &str = "P144p30fps16x9,P360p30fps16x9";

/// What the rogue tries and hears the answer to: each must come out refused. (It also
/// reports another segment's failure under its job's id, which the broker takes: the
/// orchestrator's refusal is read from its dead letters.)
const ABUSES: [&str; 11] = [
    "publish a job",
    "read workers' reports",
    "read ingest",
    "delete the job queue",
    "declare a queue",
    "send as another user",
    "read a source with a forged token",
    "write outside its key",
    "write a rung its job lacks",
    "reach Redis",
    "reach the orchestrator's API",
];

/// Runs `op` on a fresh channel of `conn`: `Ok` when the broker allowed it.
async fn on_channel<F, Fut>(conn: &lapin::Connection, op: F) -> Result<(), String>
where
    F: FnOnce(lapin::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<(), lapin::Error>>,
{
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(Default::default())
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), op(ch))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())
}

/// Publishes `body` and waits for the confirm (a refusal closes the channel: an error).
async fn publish(
    ch: lapin::Channel,
    (exchange, key): (&str, &str),
    user: &str,
    body: Vec<u8>,
) -> Result<(), lapin::Error> {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        Default::default(),
        &body,
        lapin::BasicProperties::default().with_user_id(user.into()),
    )
    .await?
    .await?;
    Ok(())
}

fn say(abuse: &str, outcome: Result<(), String>) {
    match outcome {
        Ok(()) => println!("abuse {abuse}: ALLOWED"),
        Err(why) => println!("abuse {abuse}: refused ({})", why.replace('\n', " ")),
    }
}

/// An HTTP exchange with a `/work/` URL by `curl`: the status code.
fn http_status(method: &str, url: &str, body: &[u8]) -> u16 {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .args(if method == "PUT" {
            vec!["--data-binary".to_string(), format!("@{}", file.display())]
        } else {
            Vec::new()
        })
        .arg(url)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

fn refused_unless(ok: bool, detail: String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(detail)
    }
}

#[test]
#[ignore = "the malicious worker: run by a_rogue_worker_on_another_host_is_refused_everything"]
fn rogue_worker() {
    let url = std::env::var("ROGUE_AMQP_URL").expect("ROGUE_AMQP_URL");
    let user = url
        .split("://")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let closed: Vec<String> = std::env::var("ROGUE_CLOSED")
        .unwrap_or_default()
        .split(',')
        .map(String::from)
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(&url, Default::default())
            .await
            .expect("the rogue's own URL logs in");
        let queue = job_queue(StreamMode::Vod, "cpu");
        say(
            "publish a job",
            on_channel(&conn, |ch| {
                publish(ch, (JOBS_EXCHANGE, &queue), &user, b"{}".to_vec())
            })
            .await,
        );
        for (abuse, q) in [
            ("read workers' reports", RESULTS_QUEUE),
            ("read ingest", INGEST_QUEUE),
        ] {
            say(
                abuse,
                on_channel(&conn, |ch| async move {
                    ch.basic_consume(
                        q.into(),
                        "rogue".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map(|_| ())
                })
                .await,
            );
        }
        say(
            "delete the job queue",
            on_channel(&conn, |ch| {
                let queue = queue.clone();
                async move {
                    ch.queue_delete(queue.as_str().into(), Default::default())
                        .await
                        .map(|_| ())
                }
            })
            .await,
        );
        say(
            "declare a queue",
            on_channel(&conn, |ch| async move {
                ch.queue_declare("rogue".into(), Default::default(), FieldTable::default())
                    .await
                    .map(|_| ())
            })
            .await,
        );
        say(
            "send as another user",
            on_channel(&conn, |ch| {
                publish(ch, (RESULTS_EXCHANGE, "result"), "guest", b"{}".to_vec())
            })
            .await,
        );

        // A real job, taken and given back at the end.
        let ch = conn.create_channel().await.unwrap();
        let got = ch
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a job waits");
        let job: SegmentJob = decode(&got.delivery.data).expect("a job");
        let objects = job.objects.clone().expect("jobs carry signed URLs");
        let mut forged = objects.source_url.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        let code = http_status("GET", &forged, b"");
        say(
            "read a source with a forged token",
            refused_unless(code == 200, format!("HTTP {code}")),
        );
        let code = http_status(
            "PUT",
            &format!("{}&rung=../../../etc/rogue", objects.upload_url),
            b"x",
        );
        say(
            "write outside its key",
            refused_unless((200..300).contains(&code), format!("HTTP {code}")),
        );
        let code = http_status(
            "PUT",
            &format!("{}&rung=P1080p30fps16x9", objects.upload_url),
            b"x",
        );
        say(
            "write a rung its job lacks",
            refused_unless((200..300).contains(&code), format!("HTTP {code}")),
        );
        // Another segment's failure under this job's id: the broker takes it (a worker
        // reports), the orchestrator refuses it (the test reads its dead letter).
        let report = WorkerReport::SegmentFailed(SegmentFailed {
            job_id: job.job_id,
            stream: job.stream.clone(),
            seq: job.seq + 1,
            attempt: job.attempt,
            worker_id: "rogue".into(),
            disposition: Disposition::Permanent,
            message: "rogue".into(),
        });
        let sent = on_channel(&conn, |ch| {
            publish(ch, (RESULTS_EXCHANGE, "result"), &user, encode(&report))
        })
        .await;
        println!("sent another segment's failure: {sent:?}");
        got.delivery
            .acker
            .reject(BasicRejectOptions { requeue: true })
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
    });
    for (abuse, addrs) in [
        ("reach Redis", &closed[..1]),
        ("reach the orchestrator's API", &closed[1..]),
    ] {
        let reached: Vec<&String> = addrs
            .iter()
            .filter(|a| {
                a.parse::<std::net::SocketAddr>().is_ok_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok()
                })
            })
            .collect();
        say(
            abuse,
            refused_unless(
                !reached.is_empty(),
                format!("no route from here to {addrs:?}"),
            ),
        );
    }
}

#[test]
fn a_rogue_worker_on_another_host_is_refused_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Network::new();
    let gateway = net.gateway();
    let (rogue_host, honest_host) = (net.host(), net.host());
    let broker = Forward::start(&gateway, "127.0.0.1:5672".parse().unwrap());
    let work = format!("{gateway}:{}", free_port());
    let mut cluster = Cluster::start_with(
        0,
        &[
            "--work-addr",
            &work,
            "--work-url",
            &format!("http://{work}"),
        ],
        Vec::new(),
    );
    let remote = |url: String| url.replace("127.0.0.1:5672", &broker.addr.to_string());
    let rogue_url = remote(cluster.add_broker_user("rogue", "worker"));
    let honest_url = remote(cluster.add_broker_user("honest", "worker"));

    // An honest stream, its jobs waiting when the rogue comes.
    let input = clip(dir.path(), 6);
    let stream = stream_name("honest");
    let push = cluster.push_in_background(&input, &stream, &["--profiles", RUNGS]);
    let queue = job_queue(StreamMode::Vod, "cpu");
    wait_until("the stream's jobs queued", Duration::from_secs(60), || {
        cluster.queue_depth(&queue) == 3
    });

    let redis = cluster
        .redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    let redis_port = redis.rsplit(':').next().unwrap();
    let api_port = cluster.orchestrator_addr.rsplit(':').next().unwrap();
    let closed = [
        format!("{gateway}:{redis_port}"),
        format!("{gateway}:{api_port}"),
        cluster.orchestrator_addr.clone(),
    ]
    .join(",");
    let out = rogue_host
        .command(&std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "rogue_worker", "--nocapture"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ROGUE_AMQP_URL", &rogue_url)
        .env("ROGUE_CLOSED", &closed)
        .output()
        .expect("the rogue runs");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    for abuse in ABUSES {
        let line = said
            .lines()
            .find(|l| l.starts_with(&format!("abuse {abuse}:")))
            .unwrap_or_else(|| panic!("the rogue did not try {abuse:?}:\n{said}"));
        assert!(line.contains(": refused ("), "{line}");
    }
    // The broker refuses by permission; the forged report is refused by the orchestrator.
    assert!(said.contains("ACCESS_REFUSED"), "{said}");
    let mut letter = None;
    wait_until(
        "the rogue's report refused",
        Duration::from_secs(30),
        || {
            letter = cluster.dead_letters().into_iter().find(|d| {
                d["stream"] == stream.as_str()
                    && d["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("no such job was issued"))
            });
            letter.is_some()
        },
    );
    let rogue = format!("{}-rogue", cluster.vhost);
    assert!(
        letter.unwrap()["reason"].as_str().unwrap().contains(&rogue),
        "the refusal names the rogue by its broker user"
    );

    // The honest stream completes on an honest host, untouched.
    cluster.add_on_host(&honest_host, "worker", &[], &[("AMQP_URL", &honest_url)]);
    let out = push.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", cluster.logs());
    let status = cluster.wait_complete(&stream, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "{status}");
    assert_eq!(status["segments"]["failed"], 0, "{status}");
    for rung in RUNGS.split(',') {
        assert_eq!(cluster.playlist_seqs(&stream, rung), [0, 1, 2]);
    }
    cluster.check_output(&input, &stream);
    assert!(
        !cluster
            .logs_of("orchestrator")
            .contains(&format!("worker=\"{rogue}\"")),
        "nothing of the rogue's was accepted"
    );
}
