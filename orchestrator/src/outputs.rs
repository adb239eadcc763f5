//! What the orchestrator tells a publisher about where a stream's outputs go: the URL
//! viewers will play it at, and the object store's identity (so a publisher writing into
//! another store is told at once, not by every segment failing).

use std::net::SocketAddr;

use castwork_protocol::{master_playlist_key, StoreIdentity};
use tracing::warn;

use crate::service::Orchestrator;

/// The playback base of an orchestrator that was given none: its own `/hls/` route on the
/// address it is bound to (loopback in place of an unspecified address such as 0.0.0.0).
pub fn default_playback_base(bound: SocketAddr) -> String {
    let ip = match bound.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    format!("http://{}/hls", SocketAddr::new(ip, bound.port()))
}

impl Orchestrator {
    /// The URL of `stream`'s master playlist under the playback base.
    pub(crate) fn playback_url(&self, stream: &str) -> String {
        format!(
            "{}/{}",
            self.playback_base.trim_end_matches('/'),
            master_playlist_key(stream)
        )
    }

    /// The object store's id (written now if it has none, so deleting it is harmless) and
    /// URL; `None`, with a warning, when the store does not answer.
    pub(crate) async fn store_identity(&self) -> Option<StoreIdentity> {
        match self.storage.ensure_id().await {
            Ok(id) => Some(StoreIdentity {
                id,
                url: self.storage.to_string(),
            }),
            Err(e) => {
                warn!(error = %e, "cannot read the object store's id: publishers go unchecked");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_base_is_the_bound_address_made_reachable() {
        let at = |s: &str| default_playback_base(s.parse().unwrap());
        assert_eq!(at("127.0.0.1:7935"), "http://127.0.0.1:7935/hls");
        assert_eq!(at("10.1.2.3:80"), "http://10.1.2.3:80/hls");
        assert_eq!(at("0.0.0.0:7935"), "http://127.0.0.1:7935/hls");
        assert_eq!(at("[::]:7935"), "http://[::1]:7935/hls");
    }
}
