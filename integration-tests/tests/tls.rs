//! TLS on every link: a cluster whose every process reaches RabbitMQ over `amqps://`,
//! whose workers reach the orchestrator's `/work/` routes over `https://`, and whose
//! orchestrator reaches Redis over `rediss://` with a password (an ACL user; Redis's default user is off),
//! trusting a private certificate authority (made by `scripts/dev-tls.sh`) through
//! `AMQP_CA_FILE` and `REDIS_CA_FILE`, completes a push; a worker that does not trust that
//! CA is refused by its own TLS check and says why, and so is a Redis client without the
//! CA or with a wrong password.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const RUNG: &str = "P144p30fps16x9";

#[test]
fn every_process_reaches_the_broker_over_tls_trusting_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dev_tls(&dir.path().join("tls"), &[]);
    let certs = &tls.dir;
    let node = RabbitNode::start_tls(certs);
    let url = format!(
        "amqps://guest:guest@localhost:{}/%2f",
        node.tls_port.unwrap()
    );
    let (ca, cert, key) = (tls.ca.clone(), &tls.cert, &tls.key);
    let redis = RedisNode::start_tls(certs, "castwork-orchestrator", "redis-secret");
    // The workers' /work/ routes over HTTPS too, with a certificate the same CA signed.
    let work = format!("127.0.0.1:{}", free_port());
    // The worker starts once the orchestrator is healthy, so has bound --work-addr: a worker
    // started beside it could take that free port for its own --http-addr 127.0.0.1:0.
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
            ("AMQP_URL".into(), url),
            ("AMQP_CA_FILE".into(), ca.clone()),
            ("REDIS_URL".into(), redis.url()),
            ("REDIS_CA_FILE".into(), ca.clone()),
            ("WORK_CA_FILE".into(), ca.clone()),
        ],
    );
    assert!(
        cluster
            .logs_of("orchestrator")
            .contains(&format!("work_url=\"https://{work}\"")),
        "{}",
        cluster.logs_of("orchestrator")
    );
    cluster.add("worker", &["--worker-id", "w0"]);
    let input = clip(dir.path(), 4);
    let out = cluster.push(&input, &stream_name("tls"), &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );

    // /work/ speaks only TLS: a client without the CA does not trust it, and one with it
    // is answered (a request without a token is refused).
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(format!("https://{work}/work/source"))
            .output()
            .expect("curl runs")
    };
    let untrusting = curl(&[]);
    assert_eq!(untrusting.status.code(), Some(60), "{untrusting:?}");
    let trusting = curl(&["--cacert", &ca]);
    assert_eq!(
        String::from_utf8_lossy(&trusting.stdout),
        "400",
        "{trusting:?}"
    );
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{work}/work/source"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "400", "{plain:?}");

    // Without the CA, the broker's certificate is not trusted.
    assert!(!cluster.logs_of("worker").contains("certificate"));
    cluster.add_without("worker", &["--worker-id", "untrusting"], &["AMQP_CA_FILE"]);
    wait_until(
        "the untrusting worker's refusal",
        Duration::from_secs(30),
        || {
            cluster
                .logs_of("worker")
                .contains("invalid peer certificate")
        },
    );

    // Redis: the state the push left is readable with the CA and the password, and not
    // without either.
    let redis_cli = |url: &str, ca: Option<&str>| {
        let mut cmd = Command::new(bin("orchestrator"));
        cmd.args(["workers", "unban", "nobody", "--redis-url", url])
            .env_remove("REDIS_CA_FILE");
        if let Some(ca) = ca {
            cmd.env("REDIS_CA_FILE", ca);
        }
        cmd.output().expect("orchestrator runs")
    };
    let ok = redis_cli(&redis.url(), Some(&ca));
    assert!(ok.status.success(), "{ok:?}");
    let untrusting = redis_cli(&redis.url(), None);
    assert!(!untrusting.status.success(), "{untrusting:?}");
    let text = String::from_utf8_lossy(&untrusting.stderr);
    assert!(text.contains("certificate"), "{text}");
    let wrong = redis_cli(&redis.url().replace("redis-secret", "guess"), Some(&ca));
    assert!(!wrong.status.success(), "{wrong:?}");
    let text = String::from_utf8_lossy(&wrong.stderr);
    assert!(text.contains("Password authentication failed"), "{text}");
}
