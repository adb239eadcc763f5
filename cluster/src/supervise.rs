//! Reconnect, don't crash: run a session until it ends cleanly, retrying with backoff when
//! a service (broker, Redis, object store) goes away.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Exponential backoff from 200 ms to 10 s.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let ms = 200u64.saturating_mul(1 << self.attempt.min(6));
        self.attempt += 1;
        Duration::from_millis(ms.min(10_000))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs `session` until it returns `Ok` or `token` is cancelled, retrying failures with
/// backoff. A session that ran for a minute before failing starts the backoff afresh.
pub async fn supervise<F, Fut>(name: &str, token: &CancellationToken, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::default();
    while !token.is_cancelled() {
        let started = Instant::now();
        match session().await {
            Ok(()) => return,
            Err(e) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(
                    component = name,
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "session failed, reconnecting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = token.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::default();
        let d: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            d,
            vec![200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success() {
        let token = CancellationToken::new();
        let mut calls = 0;
        supervise("test", &token, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    anyhow::bail!("down")
                }
                Ok(())
            }
        })
        .await;
        assert_eq!(calls, 3);
    }
}
