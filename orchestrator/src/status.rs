//! `orchestrator status`: the cluster at a glance, from a running orchestrator's `/status`.

use crate::api::ClusterStatus;

/// Lays out rows under a header in columns two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row.clone());
    }
    out
}

/// The status as three tables: streams, workers, queues. `now_unix` ages the heartbeats.
pub fn render(status: &ClusterStatus, now_unix: u64) -> String {
    let mut out = String::new();
    let listed = status.streams.len() as u64;
    let (all, active) = if status.streams_active + status.streams_ended > 0 {
        (
            status.streams_active + status.streams_ended,
            status.streams_active,
        )
    } else {
        let active = status
            .streams
            .iter()
            .filter(|s| s.state == "active")
            .count();
        (listed, active as u64)
    };
    let shown = if listed < all {
        format!(", the latest {listed} shown")
    } else {
        String::new()
    };
    out += &format!("STREAMS ({all} in all, {active} active{shown})\n");
    let rows: Vec<Vec<String>> = status
        .streams
        .iter()
        .map(|s| {
            let resolved = s.done + s.failed + s.skipped;
            let progress = match s.total {
                Some(t) if t > 0 => format!("{}%", resolved * 100 / t),
                _ => "-".into(),
            };
            vec![
                s.stream.clone(),
                s.mode.clone(),
                s.state.clone(),
                s.total.map_or("-".into(), |t| t.to_string()),
                s.received.to_string(),
                s.done.to_string(),
                s.failed.to_string(),
                s.skipped.to_string(),
                progress,
            ]
        })
        .collect();
    out += &table(
        &[
            "STREAM", "MODE", "STATE", "TOTAL", "RECEIVED", "DONE", "FAILED", "SKIPPED", "PROGRESS",
        ],
        &rows,
    );
    for s in status.streams.iter() {
        if let Some(reason) = s.reason.as_deref().filter(|r| !r.is_empty()) {
            out += &format!("{} {}: {reason}\n", s.stream, s.state);
        }
    }
    let (slots, busy) = status.workers.iter().fold((0, 0), |(s, b), w| {
        (
            s + w["slots"].as_u64().unwrap_or(0),
            b + w["busy_slots"].as_u64().unwrap_or(0),
        )
    });
    out += &format!(
        "\nWORKERS ({} in all, {busy} of {slots} slots busy)\n",
        status.workers.len()
    );
    let rows: Vec<Vec<String>> = status
        .workers
        .iter()
        .map(|w| {
            let text = |k: &str| w[k].as_str().unwrap_or("-").to_string();
            let num = |k: &str| w[k].as_u64().map_or("-".into(), |n| n.to_string());
            let seen = w["last_seen_unix"].as_u64().map_or("-".into(), |t| {
                format!("{}s ago", now_unix.saturating_sub(t))
            });
            let gpus = w["devices"].as_array().map_or("-".into(), |d| {
                let list: Vec<String> = d
                    .iter()
                    .map(|d| {
                        format!(
                            "{}:{}/{}{}",
                            d["index"],
                            d["sessions_used"],
                            d["sessions"],
                            if d["healthy"] == true { "" } else { "!" }
                        )
                    })
                    .collect();
                if list.is_empty() {
                    "-".into()
                } else {
                    list.join(",")
                }
            });
            vec![
                text("id"),
                text("host"),
                text("class"),
                num("slots"),
                num("busy_slots"),
                gpus,
                text("version"),
                seen,
            ]
        })
        .collect();
    out += &table(
        &[
            "WORKER", "HOST", "CLASS", "SLOTS", "BUSY", "GPUS", "VERSION", "SEEN",
        ],
        &rows,
    );
    out += "\nQUEUES";
    match status.queues_as_of_unix_ms {
        Some(ms) => {
            out += &format!(" (read {}s ago)\n", now_unix.saturating_sub(ms / 1000));
            let rows: Vec<Vec<String>> = status
                .queues
                .iter()
                .map(|q| {
                    vec![
                        q.queue.clone(),
                        q.messages.to_string(),
                        q.consumers.to_string(),
                        q.unacked.map_or("-".into(), |n| n.to_string()),
                    ]
                })
                .collect();
            out += &table(&["QUEUE", "READY", "CONSUMERS", "UNACKED"], &rows);
            if status.queues.iter().any(|q| q.unacked.is_none()) {
                out += "(UNACKED -: not known, from RabbitMQ's management API, which samples a \
                        new queue within 5 s; if it lasts, see the orchestrator's log and \
                        --rabbitmq-management-url)\n";
            }
        }
        None => out += "\n(not read from the broker yet: is the orchestrator connected?)\n",
    }
    if !status.dead_letters.is_empty() {
        out += &format!(
            "\nDEAD LETTERS (the latest {}, newest first)\n",
            status.dead_letters.len()
        );
        let rows: Vec<Vec<String>> = status
            .dead_letters
            .iter()
            .map(|d| {
                vec![
                    format!("{}s ago", now_unix.saturating_sub(d.at_unix_ms / 1000)),
                    d.queue.clone(),
                    d.kind.clone(),
                    d.stream.clone().unwrap_or_else(|| "-".into()),
                    d.deliveries.map_or("-".into(), |n| n.to_string()),
                    d.reason.clone(),
                ]
            })
            .collect();
        out += &table(
            &["WHEN", "QUEUE", "KIND", "STREAM", "DELIVERIES", "REASON"],
            &rows,
        );
    }
    out
}

/// Fetches `URL/status` and prints it.
pub async fn print(url: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let url = format!("{}/status", url.trim_end_matches('/'));
    let resp = reqwest::get(&url)
        .await
        .with_context(|| format!("cannot reach the orchestrator at {url}"))?;
    let code = resp.status();
    let body = resp.text().await.context("reading the status")?;
    if !code.is_success() {
        anyhow::bail!("{url} answered {code}: {body}");
    }
    let status: ClusterStatus = serde_json::from_str(&body)
        .with_context(|| format!("{url} did not answer with a cluster status"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    print!("{}", render(&status, now));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A status as `/status` sends it (fields added later take their defaults).
    fn status(v: serde_json::Value) -> ClusterStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn renders_streams_workers_and_queues_in_aligned_tables() {
        let status = status(json!({
            "streams": [{
                "stream": "camera-1", "mode": "vod", "state": "active", "total": 8,
                "received": 8, "done": 3, "failed": 1, "skipped": 0,
            }],
            "streams_active": 1,
            "streams_ended": 0,
            "workers": [{
                "id": "w1", "host": "box", "class": "cpu", "slots": 2, "busy_slots": 1,
                "version": "0.1.0", "last_seen_unix": 995,
            }, {
                "id": "g1", "host": "gpu", "class": "nvdec", "slots": 4, "busy_slots": 0,
                "version": "0.1.0", "last_seen_unix": 995, "devices": [
                    {"index": 0, "healthy": true, "sessions": 2, "sessions_used": 1},
                    {"index": 1, "healthy": false, "sessions": 2, "sessions_used": 0},
                ],
            }],
            "queues": [
                {"queue": "jobs.vod.cpu", "messages": 12, "unacked": 2, "consumers": 1},
                {"queue": "castwork.ingest", "messages": 0, "consumers": 1},
            ],
            "queues_as_of_unix_ms": 999_000,
        }));
        let out = render(&status, 1000);
        assert!(out.contains("STREAMS (1 in all, 1 active)"), "{out}");
        assert!(
            out.contains("camera-1  vod   active  8      8         3     1       0        50%"),
            "{out}"
        );
        assert!(
            out.contains("WORKERS (2 in all, 1 of 6 slots busy)"),
            "{out}"
        );
        assert!(
            out.contains("w1      box   cpu    2      1     -             0.1.0    5s ago"),
            "{out}"
        );
        // Each GPU: index, sessions in use of its sessions, `!` when out of service.
        assert!(
            out.contains("g1      gpu   nvdec  4      0     0:1/2,1:0/2!  0.1.0    5s ago"),
            "{out}"
        );
        assert!(out.contains("QUEUES (read 1s ago)"), "{out}");
        assert!(
            out.contains("QUEUE            READY  CONSUMERS  UNACKED"),
            "{out}"
        );
        assert!(
            out.contains("jobs.vod.cpu     12     1          2"),
            "{out}"
        );
        // Unknown is not zero.
        assert!(
            out.contains("castwork.ingest  0      1          -"),
            "{out}"
        );
        assert!(out.contains("UNACKED -: not known"), "{out}");
    }

    #[test]
    fn shows_why_a_stream_failed_and_the_dead_letters() {
        let status = status(json!({
            "streams": [{
                "stream": "trunc", "mode": "vod", "state": "failed", "total": null,
                "received": 0, "done": 0, "failed": 0, "skipped": 0,
                "reason": "the publisher gave up: the file ends early",
            }],
            "workers": [], "queues": [], "queues_as_of_unix_ms": null,
            "dead_letters": [{
                "at_unix_ms": 990_000, "queue": "castwork.ingest", "kind": "stream_ended",
                "reason": "stream trunc ended with 0 segments", "stream": "trunc",
                "deliveries": 1, "stream_failed": true,
            }],
        }));
        let out = render(&status, 1000);
        assert!(
            out.contains("trunc failed: the publisher gave up: the file ends early"),
            "{out}"
        );
        assert!(
            out.contains("DEAD LETTERS (the latest 1, newest first)"),
            "{out}"
        );
        assert!(
            out.contains("10s ago  castwork.ingest  stream_ended  trunc   1           stream trunc ended with 0 segments"),
            "{out}"
        );
    }

    #[test]
    fn says_when_queue_depths_are_not_known_yet() {
        let status = status(json!({
            "streams": [], "workers": [], "queues": [], "queues_as_of_unix_ms": null,
        }));
        let out = render(&status, 0);
        assert!(out.contains("not read from the broker yet"), "{out}");
        assert!(out.contains("STREAMS (0 in all, 0 active)"), "{out}");
    }
}
