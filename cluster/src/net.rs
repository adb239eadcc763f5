//! Accepting TCP connections with a cap on how many are open at once: what every public
//! listener (HTTP, RTMP) does before it reads a byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// A listener that lets in at most `max` connections at once.
pub struct Gate {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    /// Names the listener in logs (`http`, `rtmp`).
    name: &'static str,
}

/// What came through the gate.
pub enum Arrival {
    /// A connection, holding one of the slots until the permit is dropped.
    Admitted(TcpStream, SocketAddr, OwnedSemaphorePermit),
    /// A connection past the cap, already closed.
    Refused(SocketAddr),
}

impl Gate {
    pub fn new(listener: TcpListener, max: usize, name: &'static str) -> Self {
        Gate {
            listener,
            slots: Arc::new(Semaphore::new(max.max(1))),
            name,
        }
    }

    /// The next connection, or `None` once `shutdown` is cancelled. Accept errors (out of
    /// file descriptors and the like) back off instead of spinning.
    pub async fn next(&self, shutdown: &CancellationToken) -> Option<Arrival> {
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => return None,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(listener = self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            return Some(match self.slots.clone().try_acquire_owned() {
                Ok(permit) => Arrival::Admitted(stream, peer, permit),
                Err(_) => {
                    tracing::debug!(listener = self.name, %peer, "connection refused: at the connection limit");
                    drop(stream);
                    Arrival::Refused(peer)
                }
            });
        }
    }
}
