//! A broadcaster as a network client of independent orchestrators (issue 18, parts 1-2):
//! each orchestrator, with its own broker vhost, Redis, store and workers, advertises an
//! offer at `GET /offer` and takes pushes over HTTP (`/ingest/...`) from broadcasters with a
//! key; `broadcaster push --orch-addr A,B,C` chooses among them.

mod common;

use std::process::Command;
use std::time::Duration;

use castwork_protocol::*;
use common::*;
use serde_json::Value;

/// `orchestrator broadcasters add NAME` on `c`'s Redis: the key it prints.
fn add_key(c: &Cluster, name: &str) -> String {
    let key = c
        .orchestrator_cli(&["broadcasters", "add", name])
        .trim()
        .to_string();
    assert!(key.starts_with(&format!("{name}:")), "{key}");
    key
}

fn offer(c: &Cluster) -> Value {
    let (code, body) = http_get(&c.orchestrator_addr, "/offer").expect("offer answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn started(stream: &str, session: uuid::Uuid, mode: StreamMode, secret: &str) -> IngestMessage {
    IngestMessage::StreamStarted(StreamStarted {
        stream: stream.to_string(),
        session,
        mode,
        ladder: profile::parse_profiles("P144p30fps16x9").unwrap(),
        source: SourceMetadata::upright(640, 360, 30),
        broadcaster: None,
        target_duration_secs: (mode == StreamMode::Live).then_some(2),
        secret: secret.to_string(),
    })
}

#[test]
fn a_push_over_http_goes_to_an_orchestrator_within_price_and_with_room() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    // With the deployment's broker permissions: the orchestrator keeps each HTTP push's
    // events in a queue of its own.
    let cheap = Cluster::start_with_role_users(1);
    let dear = Cluster::start_with(1, &["--price-per-unit", "1000"], Vec::new());
    let full = Cluster::start_with(1, &["--max-sessions", "1"], Vec::new());
    // `full` is at capacity: one live stream, admitted through its own broker.
    let live = stream_name("occupant");
    Injector::new(&full.amqp_url).ingest(&started(
        &live,
        uuid::Uuid::now_v7(),
        StreamMode::Live,
        "occupant-publisher-secret",
    ));
    wait_until("the occupant's admission", Duration::from_secs(30), || {
        offer(&full)["capacity"]["live_sessions"] == 1
    });
    let o = offer(&full);
    assert_eq!(o["capacity"]["max_sessions"], 1, "{o}");
    assert_eq!(o["ingest"], serde_json::json!(["http"]), "{o}");
    assert_eq!(offer(&dear)["price_per_unit"], 1000);

    let keys = [&dear, &full, &cheap].map(|c| add_key(c, "studio"));
    let addrs = [&dear, &full, &cheap].map(|c| format!("http://{}", c.orchestrator_addr));
    // No broker or store of its own: what it would use points nowhere.
    let unused = dir.path().join("unused-store");
    let stream = stream_name("chosen");
    let out = Command::new(bin("broadcaster"))
        .env("RUST_LOG", "warn")
        .env("AMQP_URL", "amqp://nobody:nothing@127.0.0.1:1/none")
        .env("STORAGE_URL", format!("file://{}", unused.display()))
        .env("REDIS_URL", "redis://127.0.0.1:1/")
        .arg("push")
        .arg(&input)
        .args([
            "--stream",
            &stream,
            "--wait",
            "--profiles",
            "P144p30fps16x9",
        ])
        .args(["--orch-addr", &addrs.join(",")])
        .args(["--orch-key", &keys.join(",")])
        .args(["--max-price-per-unit", "10"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", cheap.logs());
    assert!(
        stderr.contains(&format!(
            "orchestrator {}: left out: the orchestrator charges 1000",
            addrs[0]
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "orchestrator {}: left out: at capacity: 1 live streams of 1",
            addrs[1]
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("chose orchestrator {}", addrs[2])),
        "{stderr}"
    );

    // Every segment once, in the chosen orchestrator's store, and nowhere else.
    let status = cheap.status(&stream);
    assert_eq!(status["state"], "complete", "{status}");
    let total = status["segments"]["total"].as_u64().unwrap();
    assert_eq!(status["segments"]["done"], total, "{status}");
    assert!(total >= 2, "{status}");
    assert_eq!(
        cheap.playlist_seqs(&stream, "P144p30fps16x9"),
        (0..total).collect::<Vec<_>>()
    );
    cheap.check_output(&input, &stream);
    for other in [&dear, &full] {
        let (code, _) = http_get(&other.orchestrator_addr, &format!("/streams/{stream}")).unwrap();
        assert_eq!(code, 404);
    }
    assert!(
        !unused.exists(),
        "a push over HTTP makes no store of its own"
    );
}

#[test]
fn http_ingest_takes_only_a_key_holder_and_only_its_own_session() {
    let c = Cluster::start_with(
        0,
        &[
            "--max-source-segment-mb",
            "1",
            "--ingest-starts-per-hour",
            "2",
        ],
        Vec::new(),
    );
    let alice = add_key(&c, "alice");
    let bob = add_key(&c, "bob");
    let addr = c.orchestrator_addr.clone();
    let t = Duration::from_secs(30);
    let auth = |key: &str| format!("Bearer {key}");
    let (stream, session, secret) = (
        stream_name("own"),
        uuid::Uuid::now_v7(),
        "alice-publisher-secret",
    );
    let start = encode(&started(&stream, session, StreamMode::Vod, secret));
    let post = |key: &str, body: &[u8]| {
        http_request(
            &addr,
            "POST",
            "/ingest/messages",
            &[("Authorization", &auth(key))],
            body,
            t,
        )
        .unwrap()
    };
    // No key, a wrong secret, a made-up name.
    let none = http_request(&addr, "POST", "/ingest/messages", &[], &start, t).unwrap();
    assert_eq!(none.status, 401, "{}", none.text());
    assert!(none.text().contains("broadcasters add"), "{}", none.text());
    assert_eq!(post("alice:0123456789abcdef", &start).status, 401);
    assert_eq!(post("mallory:0123456789abcdef", &start).status, 401);
    assert_eq!(post(&alice, b"{not json").status, 400);
    let ok = post(&alice, &start);
    assert_eq!(ok.status, 202, "{}", ok.text());

    let events = format!("/ingest/events/{session}?wait=10");
    let get = |key: &str, secret: &str| {
        http_request(
            &addr,
            "GET",
            &events,
            &[("Authorization", &auth(key)), ("X-Castwork-Secret", secret)],
            b"",
            t,
        )
        .unwrap()
    };
    // Another key holder, or the right key without the session's secret, reads nothing.
    assert_eq!(get(&bob, secret).status, 403);
    assert_eq!(get(&alice, "not-the-publisher-secret").status, 403);
    let admitted = get(&alice, secret);
    assert_eq!(admitted.status, 200, "{}", admitted.text());
    let page: Value = serde_json::from_slice(&admitted.body).unwrap();
    let list: Vec<StreamEvent> = serde_json::from_value(page["events"].clone()).unwrap();
    assert!(
        list.iter()
            .any(|e| matches!(e, StreamEvent::StreamAdmitted { session: s, .. } if *s == session)),
        "{list:?}"
    );
    assert_eq!(page["next"], list.len());
    // Read again from the start (an answer lost on the way): the same events.
    let again: Value = serde_json::from_slice(&get(&alice, secret).body).unwrap();
    assert_eq!(again["events"], page["events"]);
    // Bob cannot end or abort Alice's stream either.
    let end = encode(&IngestMessage::StreamEnded(StreamEnded {
        stream: stream.clone(),
        session,
        segments: 1,
        secret: secret.to_string(),
    }));
    assert_eq!(post(&bob, &end).status, 403);

    let put = |file: &str, body: &[u8]| {
        http_request(
            &addr,
            "PUT",
            &format!("/ingest/source/{session}/{file}"),
            &[
                ("Authorization", &auth(&alice)),
                ("X-Castwork-Secret", secret),
            ],
            body,
            t,
        )
        .unwrap()
    };
    let stored = put("0.ts", b"\x47 a source segment");
    assert_eq!(stored.status, 200, "{}", stored.text());
    let object: ObjectRef = serde_json::from_slice(&stored.body).unwrap();
    assert_eq!(object.key, source_key(&stream, 0, "ts"));
    assert!(c.storage_dir().join(&object.key).is_file());
    // Bounded: a name it does not take, a segment far ahead, one over the size limit.
    assert_eq!(put("0.sh", b"x").status, 400);
    assert_eq!(put("../../0.ts", b"x").status, 404);
    assert_eq!(put("99999999.ts", b"x").status, 400);
    assert_eq!(put("1.ts", &vec![0u8; 1024 * 1024 + 1]).status, 413);

    // Its outputs, for the key holder who pushed it: never a source, nothing of another
    // stream, nothing for another key.
    let output = |key: &str, path: &str| {
        http_request(
            &addr,
            "GET",
            &format!("/ingest/output/{session}/{path}"),
            &[("Authorization", &auth(key)), ("X-Castwork-Secret", secret)],
            b"",
            t,
        )
        .unwrap()
        .status
    };
    assert_eq!(
        output(&alice, &object.key),
        404,
        "a source is not an output"
    );
    let other = stream_name("not-yours");
    assert_eq!(output(&alice, &format!("streams/{other}/r/0.1.a.ts")), 404);
    let missing = format!("streams/{stream}/P144p30fps16x9/0.1.0123456789abcdef.ts");
    assert_eq!(output(&alice, &missing), 404);
    assert_eq!(output(&bob, &missing), 403);

    // The session is its stream's: a start naming another stream under it is refused.
    let hijack = encode(&started(
        &stream_name("other"),
        session,
        StreamMode::Vod,
        secret,
    ));
    assert_eq!(post(&alice, &hijack).status, 403);
    // Each start keeps an event queue: a key starts at most --ingest-starts-per-hour.
    let another = |n: &str| {
        encode(&started(
            &stream_name(n),
            uuid::Uuid::now_v7(),
            StreamMode::Vod,
            secret,
        ))
    };
    assert_eq!(
        post(&alice, &another("second")).status,
        429,
        "the hijack counted"
    );
    assert_eq!(
        post(&bob, &another("bobs")).status,
        202,
        "each key has its own count"
    );

    // A removed key is refused at once.
    c.orchestrator_cli(&["broadcasters", "remove", "alice"]);
    assert_eq!(get(&alice, secret).status, 401);
}
