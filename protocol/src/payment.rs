//! Probabilistic micropayments on the wire. An orchestrator in on-chain mode advertises
//! [`TicketParams`] (at `GET /price`); the broadcaster signs tickets under them and attaches
//! a [`Payment`] to every segment it submits. Numbers wider than 64 bits are decimal strings;
//! addresses and hashes are `0x` hex. The typed forms and the cryptography live in the
//! `castwork-chain` crate.

use serde::{Deserialize, Serialize};

/// What tickets for this orchestrator must carry, and where they are redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketParams {
    /// The orchestrator's Ethereum address: tickets pay it.
    pub recipient: String,
    /// keccak256 of the orchestrator's secret recipientRand for `seed`.
    pub recipient_rand_hash: String,
    /// Sent back with the tickets, so the orchestrator can rebuild its recipientRand.
    pub seed: String,
    /// Wei paid by a winning ticket.
    pub face_value: String,
    /// A ticket wins with probability win_prob / 2^256.
    pub win_prob: String,
    /// Unix seconds after which tickets under these parameters are refused.
    pub expires_at: u64,
    /// The chain and ticket broker the tickets are bound to (EIP-712 domain).
    pub chain_id: u64,
    pub broker: String,
}

/// What an orchestrator signs (EIP-712, on-chain mode) for a segment it returns: a slash
/// for one of its renditions must cite it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedClaim {
    pub orchestrator: String,
    pub stream: String,
    pub seq: u64,
    /// SHA-256 of each rendition (`0x` and 64 hex digits), in ladder order.
    pub renditions: Vec<String>,
    /// The fee charged for the segment, in wei (decimal).
    pub fee: String,
    pub signature: String,
}

/// One signed ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireTicket {
    pub recipient: String,
    pub sender: String,
    pub face_value: String,
    pub win_prob: String,
    pub sender_nonce: u64,
    pub recipient_rand_hash: String,
    pub expires_at: u64,
    /// 65 bytes r ‖ s ‖ v, hex.
    pub signature: String,
}

/// The tickets paying for one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The [`TicketParams::seed`] the tickets were signed under.
    pub seed: String,
    pub tickets: Vec<WireTicket>,
}

/// What an orchestrator answers at `GET /price`: its price, and in on-chain mode whom to pay
/// and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceOffer {
    #[serde(flatten)]
    pub price: crate::Price,
    /// Who the orchestrator is: its Ethereum address on-chain, its --orchestrator-id
    /// off-chain (the name its stake has in the ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<String>,
    /// On-chain mode: the parameters tickets must be signed under (refreshed by the
    /// orchestrator before they expire; fetch again before signing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_params: Option<TicketParams>,
    /// On-chain mode: whether the orchestrator is in the active set (it refuses work if not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// At `GET /offer`: how many more live streams it admits now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// At `GET /offer`: what one stream may ask of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<OfferLimits>,
    /// At `GET /offer`: how a broadcaster submits work, e.g. `http` (`/ingest/...` on the
    /// same address, with a broadcaster key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingest: Vec<String>,
}

/// An orchestrator's room for live streams, as it advertises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// The most live streams it admits at once now (its --max-sessions, or its workers'
    /// slots); 0: no limit.
    pub max_sessions: u64,
    /// Live streams it is transcoding now.
    pub live_sessions: u64,
}

impl Capacity {
    /// Whether another live stream would be admitted now.
    pub fn has_room(&self) -> bool {
        self.max_sessions == 0 || self.live_sessions < self.max_sessions
    }
}

/// What one stream may ask of an orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferLimits {
    /// Rungs in one ladder.
    pub max_rungs: u32,
    /// Bytes in one source segment sent over HTTP.
    pub max_source_segment_bytes: u64,
}
