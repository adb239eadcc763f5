//! On-chain mode: the orchestrator's side of probabilistic micropayments and stake.
//!
//! It gives each sender ticket parameters of its own (recipient, recipientRand commitment
//! derived for that sender, face value, win probability, expiry), checks every ticket attached to a segment (recipient, sender,
//! parameters, expiry, low-s signature of the sender, the sender's funds at the broker,
//! nonce not used by another submission), credits each new ticket's expected value to the
//! sender's ledger account (the same ledger the off-chain mode uses, so fees are debited
//! there per output pixel), and queues winning tickets for redemption, which runs in the
//! background with retries. Its stake, the active set and senders' funds are read from
//! the contracts and cached in Redis for `refresh`.

use std::time::Duration;

use castwork_protocol::time::now_unix_ms;

use castwork_chain::ticket;
use castwork_chain::{Address, Chain, Deployment, SenderInfo, TicketDomain, B256, U256};
use castwork_protocol::payment::TicketParams;
use redis::aio::ConnectionManager;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::metrics;
use crate::service::HandleError;

mod redemption;
mod tickets;

pub use redemption::Redemption;

/// Winning tickets waiting to be redeemed, oldest last.
pub const WINNING_LIST: &str = "cw:chain:winning";
/// Redemptions done (JSON), newest first.
pub const REDEEMED_LIST: &str = "cw:chain:redeemed";
/// Winning tickets given up on (JSON with the reason), newest first.
pub const REDEEM_FAILED_LIST: &str = "cw:chain:redeem_failed";
const KEEP: i64 = 1000;

/// How tickets are priced and how long things are cached.
#[derive(Debug, Clone, Copy)]
pub struct TicketPolicy {
    /// Wei a winning ticket pays.
    pub face_value: U256,
    /// Expected value of one ticket, in wei (sets the win probability).
    pub ticket_ev: U256,
    /// How long advertised parameters, and tickets signed under them, stay valid.
    pub validity: Duration,
    /// How long stake, the active set and senders' funds are cached.
    pub refresh: Duration,
    /// Times the ticket broker may refuse a winning ticket before it is given up (failures
    /// that are not the ticket's are retried until it expires).
    pub redeem_attempts: u32,
}

/// Clock skew allowed between a broadcaster and the orchestrator in tickets' expiry.
const SKEW_SECS: u64 = 60;
/// Time allowed, after a ticket expires, before the sender's funds may leave the broker:
/// a ticket that won just before it expired still has to be redeemed.
const REDEEM_MARGIN_SECS: u64 = 600;

impl TicketPolicy {
    /// How far ahead a sender's funds must stay at the broker for a ticket accepted now to
    /// be redeemed: its validity, the age of our cached view of the sender, clock skew, and
    /// time to redeem.
    fn horizon_secs(&self) -> u64 {
        self.validity.as_secs() + self.refresh.as_secs() + SKEW_SECS + REDEEM_MARGIN_SECS
    }
}

/// Why a payment is refused, for the broadcaster's user.
pub type Refusal = String;

fn now_secs() -> u64 {
    now_unix_ms() / 1000
}

fn chain_err(e: anyhow::Error) -> HandleError {
    HandleError::Retry(format!("ethereum node: {e:#}"))
}

pub struct Payments {
    chain: Chain,
    deployment: Deployment,
    domain: TicketDomain,
    recipient: Address,
    secret: B256,
    win_prob: U256,
    ev: i64,
    policy: TicketPolicy,
    redis: ConnectionManager,
}

impl Payments {
    /// Sets up on-chain mode for `chain`'s account. The recipientRand secret is shared by
    /// every orchestrator process of the account through Redis (created once).
    pub async fn start(
        chain: Chain,
        deployment: Deployment,
        redis: ConnectionManager,
        policy: TicketPolicy,
    ) -> anyhow::Result<Payments> {
        let recipient = chain.account();
        let unlock = chain.unlock_period(&deployment).await?;
        if policy.horizon_secs() > unlock {
            anyhow::bail!(
                "--ticket-validity-secs {} + --chain-refresh-secs {} + {} s (clock skew and \
                 time to redeem) is longer than the ticket broker's unlock period ({unlock} \
                 s): a sender could withdraw before its winning tickets are redeemed",
                policy.validity.as_secs(),
                policy.refresh.as_secs(),
                SKEW_SECS + REDEEM_MARGIN_SECS
            );
        }
        if policy.face_value.is_zero() || policy.ticket_ev.is_zero() {
            anyhow::bail!("--ticket-face-value and --ticket-ev must be positive");
        }
        if policy.ticket_ev > policy.face_value {
            anyhow::bail!("--ticket-ev cannot exceed --ticket-face-value");
        }
        let win_prob = ticket::win_prob_for(policy.ticket_ev, policy.face_value);
        let ev = i64::try_from(ticket::expected_value(policy.face_value, win_prob))
            .map_err(|_| anyhow::anyhow!("--ticket-ev does not fit the ledger (64-bit wei)"))?;
        let key = format!("cw:chain:secret:{recipient:x}");
        let candidate = B256::from(rand_bytes());
        // The first process of the account sets it; the others read it.
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(candidate.to_string())
            .arg("NX")
            .query_async(&mut redis.clone())
            .await?;
        let stored: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis.clone())
            .await?;
        let secret: B256 = stored.parse()?;
        Ok(Payments {
            domain: deployment.ticket_domain(),
            chain,
            deployment,
            recipient,
            secret,
            win_prob,
            ev,
            policy,
            redis,
        })
    }

    pub fn recipient(&self) -> Address {
        self.recipient
    }

    /// Fresh parameters for `sender`: a new random seed on every call, and the recipientRand
    /// derived for that sender (go-livepeer's TicketParams does the same), so a broadcaster
    /// signs each payment under parameters nobody else holds, and a recipientRand revealed
    /// by a winning ticket is never needed again.
    pub fn params_for(&self, sender: Address) -> TicketParams {
        let seed = B256::from(rand_bytes());
        let rand = self.rand_for(&seed, sender);
        TicketParams {
            recipient: self.recipient.to_checksum(None),
            recipient_rand_hash: ticket::recipient_rand_hash(rand).to_string(),
            seed: seed.to_string(),
            face_value: self.policy.face_value.to_string(),
            win_prob: self.win_prob.to_string(),
            expires_at: now_secs() + self.policy.validity.as_secs(),
            chain_id: self.domain.chain_id,
            broker: self.domain.broker.to_checksum(None),
        }
    }

    /// Our signed claim for a segment we return: its renditions' SHA-256 hashes (hex, in
    /// the order the broadcaster is told them) and its fee. A verifier's slash must cite it.
    pub fn claim(
        &self,
        stream: &str,
        seq: u64,
        renditions: &[&str],
        fee: i64,
    ) -> anyhow::Result<castwork_protocol::payment::SignedClaim> {
        let renditions = renditions
            .iter()
            .map(|h| {
                let h = h.trim_start_matches("0x");
                h.parse::<B256>()
                    .map_err(|e| anyhow::anyhow!("rendition hash {h:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let claim = castwork_chain::Claim {
            orchestrator: self.recipient,
            stream: stream.to_string(),
            seq,
            renditions,
            fee: U256::from(fee.max(0) as u64),
        };
        self.chain.sign_claim(&self.deployment, &claim)
    }

    /// Our recipientRand for `sender`'s tickets under `seed` and our face value and win
    /// probability (tickets with others are refused before this is asked).
    fn rand_for(&self, seed: &B256, sender: Address) -> U256 {
        ticket::recipient_rand(
            &self.secret,
            seed,
            sender,
            self.policy.face_value,
            self.win_prob,
        )
    }

    /// A value cached in Redis under `key` for the refresh interval, else `fetch`ed.
    async fn cached<T, F>(&self, key: &str, fetch: F) -> Result<T, HandleError>
    where
        T: Serialize + DeserializeOwned,
        F: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut con = self.redis.clone();
        let hit: Option<String> = redis::cmd("GET").arg(key).query_async(&mut con).await?;
        if let Some(v) = hit.and_then(|h| serde_json::from_str(&h).ok()) {
            return Ok(v);
        }
        let v = fetch.await.map_err(chain_err)?;
        let json = serde_json::to_string(&v).map_err(|e| HandleError::Retry(e.to_string()))?;
        let ms = self.policy.refresh.as_millis().max(1) as u64;
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(json)
            .arg("PX")
            .arg(ms)
            .query_async(&mut con)
            .await?;
        Ok(v)
    }

    /// The active set (cached).
    pub async fn active_set(&self) -> Result<Vec<Address>, HandleError> {
        let key = format!("cw:chain:active_set:{:x}", self.deployment.staking);
        self.cached(&key, self.chain.active_set(&self.deployment))
            .await
    }

    /// `Err(why)` when this orchestrator is not in the active set.
    pub async fn check_active(&self) -> Result<Result<(), Refusal>, HandleError> {
        let set = self.active_set().await?;
        metrics::CHAIN_ACTIVE.set(i64::from(set.contains(&self.recipient)));
        if set.contains(&self.recipient) {
            return Ok(Ok(()));
        }
        let key = format!("cw:chain:orchestrator:{:x}", self.recipient);
        let me = self
            .cached(
                &key,
                self.chain.orchestrator(&self.deployment, self.recipient),
            )
            .await?;
        Ok(Err(format!(
            "orchestrator {} is not in the active set of the staking contract {} (bonded \
             stake {}, {} orchestrators active): it takes no work until it bonds enough \
             (`orchestrator chain bond`) and registers (`orchestrator chain register`)",
            self.recipient,
            self.deployment.staking,
            me.bonded,
            set.len()
        )))
    }

    /// A sender's funds at the broker, and what of its reserve would pay us (cached).
    pub async fn sender_funds(&self, sender: Address) -> Result<SenderFunds, HandleError> {
        let key = format!("cw:chain:sender:{:x}:{sender:x}", self.deployment.broker);
        self.cached(&key, async {
            Ok(SenderFunds {
                info: self.chain.sender_info(&self.deployment, sender).await?,
                claimable_reserve: self
                    .chain
                    .claimable_reserve(&self.deployment, sender, self.recipient)
                    .await?,
            })
        })
        .await
    }

    fn sender_of(account: Option<&str>) -> Result<Address, Refusal> {
        let Some(a) = account else {
            return Err(
                "this orchestrator is paid with tickets: push with an Ethereum account \
                        (--eth-url, --eth-keystore-path, --eth-deployment)"
                    .into(),
            );
        };
        a.parse::<Address>()
            .map_err(|_| format!("the broadcaster {a:?} is not an Ethereum address"))
    }

    async fn check_funds(&self, sender: Address) -> Result<Result<(), Refusal>, HandleError> {
        let SenderFunds {
            info: f,
            claimable_reserve,
        } = self.sender_funds(sender).await?;
        // A sender that unlocked may withdraw everything once the unlock period ends: a
        // ticket that could still be waiting for redemption then would pay nothing.
        if f.withdrawable_at != 0 && f.withdrawable_at <= now_secs() + self.policy.horizon_secs() {
            return Ok(Err(format!(
                "sender {sender} is withdrawing its funds from the ticket broker {} (withdrawable \
                 at unix time {}, before tickets signed now expire); fund it again with \
                 `broadcaster chain deposit` to cancel the withdrawal",
                self.deployment.broker, f.withdrawable_at
            )));
        }
        // The reserve pays each active orchestrator only its share of it.
        if f.deposit.saturating_add(claimable_reserve) < self.policy.face_value {
            return Ok(Err(format!(
                "under-funded: sender {sender} has {} wei deposited at the ticket broker {} \
                 and {claimable_reserve} of its reserve ({} in all) can pay this orchestrator, \
                 less than one ticket's face value of {} wei; fund it with `broadcaster chain \
                 deposit`",
                f.deposit, self.deployment.broker, f.reserve, self.policy.face_value
            )));
        }
        Ok(Ok(()))
    }

    /// Whether a stream of `account` may start: this orchestrator active, the sender funded.
    pub async fn admit_stream(
        &self,
        account: Option<&str>,
    ) -> Result<Result<(), Refusal>, HandleError> {
        if let Err(m) = self.check_active().await? {
            return Ok(Err(m));
        }
        let sender = match Self::sender_of(account) {
            Ok(s) => s,
            Err(m) => return Ok(Err(m)),
        };
        self.check_funds(sender).await
    }
}

/// What a sender can pay this orchestrator with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SenderFunds {
    pub info: SenderInfo,
    /// What this orchestrator may still take from the sender's reserve.
    pub claimable_reserve: U256,
}

fn alloy_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s.strip_prefix("0x").unwrap_or(s)).ok()
}

fn rand_bytes() -> [u8; 32] {
    castwork_chain::ticket::random_b256().0
}
