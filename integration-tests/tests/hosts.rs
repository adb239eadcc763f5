//! Workers on other hosts (issue 15): each worker runs in a network namespace of its own,
//! reaching the test machine only over its link to a bridge, with nothing in its
//! environment but its broker URL (its own broker user) and the CA of the test's TLS
//! certificates. The broker is reached through that network over `amqps://`, and so are
//! the orchestrator's `/work/` routes (a listener of their own, over HTTPS). A second
//! orchestrator replica runs on a third host, reaching the broker and Redis (`rediss://`
//! with a password, which no worker holds) over the network, and takes its share of the
//! work. The orchestrator's API is not reachable from the hosts at all. A push
//! completes on those workers; then one host's link is cut while it holds a job, the
//! segment is redone on the other host exactly once, and when the link comes back the late
//! worker changes nothing.

mod common;

use std::time::{Duration, Instant};

use common::netns::{Forward, Network};
use common::*;

const RUNGS: &str = "P144p30fps16x9,P360p30fps16x9";

/// The identities that had segments of `stream` accepted, from the orchestrator's log.
fn accepted_by(cluster: &Cluster, stream: &str) -> Vec<String> {
    cluster
        .logs_of("orchestrator")
        .lines()
        .filter(|l| l.contains("segment accepted") && l.contains(stream))
        .filter_map(|l| l.split("worker=").nth(1))
        .map(|w| {
            w.split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .to_string()
        })
        .collect()
}

#[test]
fn workers_on_other_hosts_need_only_a_broker_url_and_a_cut_link_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Network::new();
    let gateway = net.gateway();
    let (h1, h2, h3) = (net.host(), net.host(), net.host());
    // Every link a host uses is TLS, with certificates a private CA signed for the address
    // the hosts reach: a broker of the test's own with a TLS listener (on the machine's
    // loopback, so the network reaches it through a forward, as through a router), and the
    // orchestrator's /work/ listener over HTTPS on the bridge.
    let tls = dev_tls(&dir.path().join("tls"), &[&gateway, &h3.address]);
    let certs = &tls.dir;
    let (ca, cert, key) = (tls.ca.clone(), &tls.cert, &tls.key);
    let node = RabbitNode::start_tls(certs);
    let tls_port = node.tls_port.unwrap();
    let broker = Forward::start(&gateway, format!("127.0.0.1:{tls_port}").parse().unwrap());
    let work = format!("{gateway}:{}", free_port());
    // Redis over TLS with a password, which the orchestrators alone hold.
    let redis = RedisNode::start_tls(certs, "castwork-orchestrator", "redis-secret");
    let mut cluster = Cluster::start_with(
        0,
        &[
            "--work-addr",
            &work,
            "--work-tls-cert",
            cert,
            "--work-tls-key",
            key,
        ],
        vec![
            (
                "AMQP_URL".into(),
                format!("amqps://guest:guest@localhost:{tls_port}/%2f"),
            ),
            ("AMQP_CA_FILE".into(), ca.clone()),
            ("REDIS_URL".into(), redis.url()),
            ("REDIS_CA_FILE".into(), ca.clone()),
        ],
    );
    // The orchestrator's replica on h3 reaches Redis through a forward on the bridge.
    let redis_fwd = Forward::start(
        &gateway,
        format!("127.0.0.1:{}", redis.port).parse().unwrap(),
    );

    // What a host reaches: the broker and the job objects, not Redis, not the API.
    for h in [&h1, &h2] {
        assert!(
            h.reaches(&broker.addr.to_string()),
            "{} cannot reach the broker",
            h.ns
        );
        assert!(h.reaches(&work), "{} cannot reach /work/", h.ns);
        let api_port = cluster.orchestrator_addr.rsplit(':').next().unwrap();
        for closed in [
            format!("{gateway}:6379"),
            format!("{gateway}:5672"),
            format!("{gateway}:{api_port}"),
            cluster.orchestrator_addr.clone(),
            format!("127.0.0.1:{}", redis.port),
        ] {
            assert!(!h.reaches(&closed), "{} reaches {closed}", h.ns);
        }
        // Redis is on the network for the replica, but a worker's host has no password.
        let out = h
            .command(std::path::Path::new("redis-cli"))
            .args(["--tls", "--cacert", &ca, "-h", &gateway])
            .args([
                "-p",
                &redis_fwd.addr.port().to_string(),
                "get",
                "cw:job_key",
            ])
            .output()
            .expect("redis-cli runs");
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(said.contains("NOAUTH") || said.contains("NOPERM"), "{said}");
    }

    // Each host's worker: a broker user of its own with the deployment's worker
    // permissions, its amqps:// URL (with a 5 s AMQP heartbeat, so the broker notices a
    // dead link within seconds) and the CA that vouches for the broker and /work/: nothing
    // else in its environment.
    // A second orchestrator replica on h3, with a broker user of the orchestrator role, the
    // same Redis (through the network) and the same store (mounted there too).
    let add_user = |name: &str, secret: &str, role: &str| {
        node.ctl(&["add_user", name, secret]);
        let [configure, write, read] = role_permissions(role);
        node.ctl(&[
            "set_permissions",
            "-p",
            "/",
            name,
            &configure,
            &write,
            &read,
        ]);
    };
    add_user("replica", "replica-secret", "orchestrator");
    let replica_work = format!("{}:{}", h3.address, free_port());
    let storage = format!("file://{}", cluster.storage_dir().display());
    let replica_redis = format!(
        "rediss://castwork-orchestrator:redis-secret@{}/",
        redis_fwd.addr
    );
    let replica_amqp = format!("amqps://replica:replica-secret@{}/%2f", broker.addr);
    cluster.add_on_host(
        &h3,
        "orchestrator",
        &[
            "--http-addr",
            "127.0.0.1:7935",
            "--work-addr",
            &replica_work,
            "--work-tls-cert",
            cert,
            "--work-tls-key",
            key,
            "--rabbitmq-management-url",
            "off",
            "--storage-url",
            &storage,
        ],
        &[
            ("AMQP_URL", &replica_amqp),
            ("AMQP_CA_FILE", &ca),
            ("REDIS_URL", &replica_redis),
            ("REDIS_CA_FILE", &ca),
        ],
    );
    wait_until("the replica to consume", Duration::from_secs(120), || {
        cluster
            .logs_of("orchestrator")
            .matches("consuming ingest and results")
            .count()
            == 2
    });
    let mut urls = Vec::new();
    for name in ["h1", "h2"] {
        add_user(name, "host-secret", "worker");
        urls.push((
            name.to_string(),
            format!("amqps://{name}:host-secret@{}/%2f?heartbeat=5", broker.addr),
        ));
    }
    let env = |url: &str| -> Vec<(&str, String)> {
        vec![
            ("AMQP_URL", url.to_string()),
            ("AMQP_CA_FILE", ca.clone()),
            ("WORK_CA_FILE", ca.clone()),
        ]
    };
    let add = |cluster: &mut Cluster, h, args: &[&str], url: &str| {
        let env = env(url);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cluster.add_on_host(h, "worker", args, &env);
    };
    // h1 encodes slowly, so it holds its job for seconds.
    let slow = ["--preset", "veryslow", "--threads", "1"];
    add(&mut cluster, &h1, &slow, &urls[0].1);
    add(&mut cluster, &h2, &[], &urls[1].1);
    for (identity, _) in &urls {
        wait_until(
            "both hosts' workers to beat",
            Duration::from_secs(60),
            || cluster.worker_record(identity).is_some(),
        );
    }
    assert!(
        cluster
            .logs_of("orchestrator")
            .contains(&format!("work_url=\"https://{work}\"")),
        "the hosts' jobs carry https:// URLs"
    );

    // (a) A push completes on the two hosts' workers (checked by the independent output
    // check, as every completed push is).
    let input = clip(dir.path(), 6);
    let stream = stream_name("hosts");
    let out = cluster.push(&input, &stream, &["--profiles", RUNGS]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let done_by = accepted_by(&cluster, &stream);
    assert_eq!(done_by.len(), 3, "{done_by:?}");
    assert!(
        done_by.iter().all(|w| urls.iter().any(|(id, _)| id == w)),
        "{done_by:?}"
    );
    // The replica on h3 shares the work: the broker hands each orchestrator its turn of
    // the ingest and report messages.
    let replica_handled = || {
        let out = h3
            .command(std::path::Path::new("curl"))
            .args(["-fsS", "http://127.0.0.1:7935/metrics"])
            .output()
            .expect("curl runs");
        let page = String::from_utf8_lossy(&out.stdout).to_string();
        metric_total(&page, "castwork_orchestrator_jobs_published_total", &[])
            + metric_total(
                &page,
                "castwork_orchestrator_segments_total",
                &["event=\"done\""],
            )
    };
    wait_until(
        "the replica to handle messages",
        Duration::from_secs(30),
        || replica_handled() > 0,
    );

    // (b) h1's link is cut while it holds a job.
    let input = {
        let d = dir.path().join("long");
        std::fs::create_dir(&d).unwrap();
        clip(&d, 12)
    };
    let stream = stream_name("cut");
    let push = cluster.push_in_background(&input, &stream, &["--profiles", RUNGS]);
    wait_until("h1 to hold a job", Duration::from_secs(60), || {
        cluster
            .worker_record(&urls[0].0)
            .is_some_and(|w| w["busy_slots"].as_u64() > Some(0))
    });
    let held = cluster.worker_record(&urls[0].0).unwrap();
    h1.link(false);
    let cut = Instant::now();
    eprintln!("cut h1's link while it held a job: {held}");
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let status = cluster.wait_complete(&stream, Duration::from_secs(180));
    assert_eq!(status["state"], "complete", "{status}");
    assert_eq!(status["segments"]["failed"], 0, "{status}");
    let done_by = accepted_by(&cluster, &stream);
    eprintln!(
        "segments accepted, by worker: {done_by:?}, {:?} after the cut",
        cut.elapsed()
    );
    assert!(
        done_by.iter().any(|w| *w == urls[1].0),
        "h2 took over: {done_by:?}"
    );
    cluster.check_output(&input, &stream);

    // The link comes back: the late worker reconnects, and nothing changes.
    h1.link(true);
    wait_until("h1 to beat again", Duration::from_secs(90), || {
        cluster.worker_record(&urls[0].0).is_some_and(|w| {
            w["last_seen_unix"].as_u64().unwrap_or(0)
                > std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    - 3
        })
    });
    std::thread::sleep(Duration::from_secs(5));
    let after = cluster.status(&stream);
    assert_eq!(after["segments"], status["segments"], "{after}");
    assert_eq!(accepted_by(&cluster, &stream).len(), done_by.len());
    cluster.check_output(&input, &stream);
}
