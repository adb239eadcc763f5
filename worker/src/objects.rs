//! A job's objects: read and written through the signed URLs the job carries (on the
//! orchestrator's HTTP), so a worker needs no object-store credentials. A job without them
//! (from an orchestrator older than this worker) uses the object store this process was
//! given directly, if any.

use std::time::Duration;

use bytes::Bytes;
use castwork_cluster::StorageError;
use castwork_protocol::{ObjectRef, SegmentJob};
use reqwest::StatusCode;

use crate::job::{sha256_hex, JobContext, JobError};

/// How long one object request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The HTTP client for job objects; with `ca_file`, https:// URLs may also be vouched for
/// by the certificate authority in it (PEM).
pub fn client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(REQUEST_TIMEOUT)
        // A signed URL names the one place to go.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        let pem = castwork_cluster::read_ca_file(path, "--work-ca-file")?;
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("--work-ca-file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--work-ca-file {}: no PEM certificate in it",
                path.display()
            ));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| format!("the HTTP client: {e}"))
}

/// The orchestrator's answer to an object request as a job error, by whether a retry can
/// help.
async fn refused(what: &str, resp: reqwest::Response) -> JobError {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let why: String = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(body)
        .chars()
        .take(300)
        .collect();
    let message = format!("{what}: the orchestrator answered {status}: {why}");
    match status {
        // The object is not there, the rung is refused, or the rendition is over its cap:
        // no retry changes that.
        StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
            JobError::permanent(message)
        }
        // Expired URLs (a retry gets new ones), an attempt no longer wanted, a store away.
        _ => JobError::transient(message),
    }
}

fn unreachable(what: &str, e: reqwest::Error) -> JobError {
    JobError::transient(format!("{what}: {e}"))
}

/// The job's source segment, checked against its size and SHA-256.
pub async fn fetch_source(ctx: &JobContext, job: &SegmentJob) -> Result<Bytes, JobError> {
    let src = &job.source;
    if src.size > ctx.max_segment_bytes {
        return Err(JobError::permanent(format!(
            "source segment is {} bytes, over this worker's limit of {}",
            src.size, ctx.max_segment_bytes
        )));
    }
    let data = match (&job.objects, &ctx.storage) {
        (Some(urls), _) => get_bounded(ctx, &urls.source_url, src.size).await?,
        (None, Some(storage)) => match storage.get(&src.key).await {
            Ok(d) => d,
            Err(StorageError::NotFound(k)) => {
                return Err(JobError::permanent(format!(
                    "source segment {k} does not exist"
                )))
            }
            Err(e) => return Err(e.into()),
        },
        (None, None) => return Err(no_objects()),
    };
    if data.len() as u64 != src.size || sha256_hex(&data) != src.sha256 {
        return Err(JobError::permanent(format!(
            "source segment {} does not match its size and sha256",
            src.key
        )));
    }
    Ok(data)
}

fn no_objects() -> JobError {
    JobError::transient(
        "the job carries no object URLs and this worker has no object store: its orchestrator \
         is older than this worker",
    )
}

/// GETs `url`, reading at most `expected` bytes (the job says how large the object is).
async fn get_bounded(ctx: &JobContext, url: &str, expected: u64) -> Result<Bytes, JobError> {
    const WHAT: &str = "reading the source segment";
    let mut resp = ctx
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| unreachable(WHAT, e))?;
    if resp.status() != StatusCode::OK {
        return Err(refused(WHAT, resp).await);
    }
    let mut data = Vec::with_capacity(usize::try_from(expected).unwrap_or(0).min(64 << 20));
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(WHAT, e))? {
        if (data.len() + chunk.len()) as u64 > expected {
            return Err(JobError::permanent(format!(
                "{WHAT}: it is larger than the {expected} bytes the job says"
            )));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(data))
}

/// Stores one rendition of the job and returns where it is.
pub async fn put_rendition(
    ctx: &JobContext,
    job: &SegmentJob,
    rung: &str,
    bytes: Bytes,
) -> Result<ObjectRef, JobError> {
    let sha256 = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    match (&job.objects, &ctx.storage) {
        (Some(urls), _) => {
            let what = format!("uploading rendition {rung}");
            let resp = ctx
                .http
                .put(format!("{}&rung={rung}", urls.upload_url))
                .body(bytes)
                .send()
                .await
                .map_err(|e| unreachable(&what, e))?;
            if resp.status() != StatusCode::OK {
                return Err(refused(&what, resp).await);
            }
            let body = resp.bytes().await.map_err(|e| unreachable(&what, e))?;
            let stored: ObjectRef = serde_json::from_slice(&body)
                .map_err(|e| JobError::transient(format!("{what}: unreadable answer: {e}")))?;
            if stored.sha256 != sha256 || stored.size != size {
                return Err(JobError::transient(format!(
                    "{what}: the orchestrator stored other bytes than were sent"
                )));
            }
            Ok(stored)
        }
        (None, Some(storage)) => {
            let key = job.output_key(rung, &sha256);
            storage.put(&key, bytes).await?;
            Ok(ObjectRef { key, size, sha256 })
        }
        (None, None) => Err(no_objects()),
    }
}
