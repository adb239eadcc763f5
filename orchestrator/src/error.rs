//! The one error type of the orchestrator's handlers, which carries how its message is
//! settled: retried (a service was away) or dead-lettered with its reason (no retry helps).

/// Why a message could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// A service is unavailable or timed out: requeue the message and try again (up to a
    /// bound, then it is dead-lettered).
    #[error("{0}")]
    Retry(String),
    /// No retry can help (a bad or refused message, an error of the request itself): the
    /// message is dead-lettered at once with this reason.
    #[error("{0}")]
    Refused(String),
}

impl HandleError {
    /// How the message is settled.
    pub fn outcome(self) -> castwork_cluster::consume::Outcome {
        use castwork_cluster::consume::Outcome;
        match self {
            HandleError::Retry(m) => Outcome::Transient(m),
            HandleError::Refused(m) => Outcome::Permanent(m),
        }
    }
}

impl From<redis::RedisError> for HandleError {
    /// Redis being away, dropping the connection or timing out may pass; an error of the
    /// request itself (a script's refusal, a wrong type, an empty command) never will.
    fn from(e: redis::RedisError) -> Self {
        if matches!(e.retry_method(), redis::RetryMethod::NoRetry) {
            HandleError::Refused(format!("redis refused the request: {e}"))
        } else {
            HandleError::Retry(format!("redis: {e}"))
        }
    }
}

impl From<castwork_cluster::BrokerError> for HandleError {
    fn from(e: castwork_cluster::BrokerError) -> Self {
        HandleError::Retry(e.to_string())
    }
}

impl From<castwork_cluster::StorageError> for HandleError {
    /// A missing object or a bad key will not appear by trying again; the store being away
    /// may pass.
    fn from(e: castwork_cluster::StorageError) -> Self {
        match e {
            castwork_cluster::StorageError::Store { .. } => HandleError::Retry(e.to_string()),
            _ => HandleError::Refused(e.to_string()),
        }
    }
}
