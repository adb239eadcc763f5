//! On-chain mode: the orchestrator's side of probabilistic micropayments and stake.
//!
//! It advertises ticket parameters (recipient, recipientRand commitment, face value, win
//! probability, expiry), checks every ticket attached to a segment (recipient, sender,
//! parameters, expiry, low-s signature of the sender, the sender's funds at the broker,
//! nonce not used by another submission), credits each new ticket's expected value to the
//! sender's ledger account (the same ledger the off-chain mode uses, so fees are debited
//! there per output pixel), and queues winning tickets for redemption, which runs in the
//! background with retries. Its stake, the active set and senders' funds are read from
//! the contracts and cached in Redis for `refresh`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use castwork_protocol::time::now_unix_ms;

use anyhow::Context as _;
use castwork_chain::ticket::{self, Ticket};
use castwork_chain::{
    Address, Chain, Deployment, Mined, NotMined, SenderInfo, TicketDomain, TxState, B256, U256,
};
use castwork_protocol::payment::{Payment, TicketParams, WireTicket};
use redis::aio::ConnectionManager;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics;
use crate::service::HandleError;
use crate::state::{balance_key, LuaScript};

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

/// A winning ticket waiting for redemption.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Winning {
    ticket: WireTicket,
    seed: String,
    stream: String,
    seq: u64,
}

/// A redemption's outcome, kept in Redis for `chain status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Redemption {
    pub ticket_hash: String,
    pub sender: String,
    pub face_value: String,
    pub stream: String,
    pub seq: u64,
    pub tx: Option<String>,
    pub gas_used: Option<u64>,
    pub error: Option<String>,
    pub unix_ms: u64,
}

impl Redemption {
    /// The record of winning ticket `w` (hash `ticket_hash`), with no outcome yet.
    fn of(w: &Winning, ticket_hash: String) -> Redemption {
        Redemption {
            ticket_hash,
            sender: w.ticket.sender.clone(),
            face_value: w.ticket.face_value.clone(),
            stream: w.stream.clone(),
            seq: w.seq,
            unix_ms: now_unix_ms(),
            ..Redemption::default()
        }
    }
}

/// Records the tickets of one segment: refuses a nonce already used by another submission,
/// credits new tickets' expected value, queues new winners. KEYS[1] balance, KEYS[2..n+1]
/// the tickets' nonce keys, KEYS[n+2] the winning list. ARGV: segment, ttl, n, then n
/// digests, n expected values, n winning-ticket JSONs ('' for a losing ticket). Returns
/// {1, fresh tickets} or {-1, index of the replayed ticket, what it was used for}.
/// How long the redeemer's lease lasts without renewal: longer than one redemption can take
/// (a receipt is awaited at most `RECEIPT_TIMEOUT`), so a live holder never loses it.
const LEASE_MS: u64 = castwork_chain::client::RECEIPT_TIMEOUT.as_millis() as u64 + 60_000;

/// Takes or renews the redeemer's lease KEYS[1] for ARGV[1] (ARGV[2] ms); 1 if held.
static LEASE: LuaScript = LuaScript::new(
    r#"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#,
);

/// Gives the lease KEYS[1] up if ARGV[1] holds it.
static RELEASE: LuaScript = LuaScript::new(
    r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
);

static ACCEPT_TICKETS: LuaScript = LuaScript::new(
    r#"
local seg, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fresh = {}
for i = 1, n do
  local want = ARGV[3 + i] .. '|' .. seg
  local v = redis.call('GET', KEYS[1 + i])
  if v then
    if v ~= want then return {-1, i, v} end
  else
    fresh[#fresh + 1] = i
  end
end
-- A recipientRand that a winning ticket revealed pays nothing more (a redelivery of
-- that very payment, with no fresh ticket, is still taken).
if #fresh > 0 then
  local spent = redis.call('GET', KEYS[n + 3])
  if spent then return {-2, 0, spent} end
end
local won = false
for _, i in ipairs(fresh) do
  redis.call('SET', KEYS[1 + i], ARGV[3 + i] .. '|' .. seg, 'EX', ttl)
  redis.call('INCRBY', KEYS[1], ARGV[3 + n + i])
  local w = ARGV[3 + 2 * n + i]
  if w ~= '' then
    redis.call('LPUSH', KEYS[n + 2], w)
    won = true
  end
end
if won then redis.call('SET', KEYS[n + 3], seg, 'EX', ttl) end
return {1, #fresh, ''}
"#,
);

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

    /// Checks the tickets paying for segment `seq` of `stream` and credits the new ones'
    /// expected value to `account`. A redelivered submission (same tickets, same segment)
    /// credits nothing and is not an error; a ticket used for anything else is a replay.
    pub async fn accept(
        &self,
        account: Option<&str>,
        payment: Option<&Payment>,
        stream: &str,
        seq: u64,
    ) -> Result<Result<i64, Refusal>, HandleError> {
        if let Err(m) = self.check_active().await? {
            return Ok(Err(m));
        }
        let sender = match Self::sender_of(account) {
            Ok(s) => s,
            Err(m) => return Ok(Err(m)),
        };
        let Some(payment) = payment.filter(|p| !p.tickets.is_empty()) else {
            return Ok(Ok(0));
        };
        let checked = match self.check_tickets(sender, payment) {
            Ok(c) => c,
            Err(m) => {
                metrics::TICKETS.with_label_values(&["refused"]).inc();
                return Ok(Err(m));
            }
        };
        if let Err(m) = self.check_funds(sender).await? {
            metrics::TICKETS.with_label_values(&["refused"]).inc();
            return Ok(Err(m));
        }
        let segment = format!("{stream}/{seq}");
        let n = checked.len();
        let mut inv = ACCEPT_TICKETS.get().prepare_invoke();
        inv.key(balance_key(&sender.to_string()));
        for c in &checked {
            inv.key(format!(
                "cw:chain:ticket:{}:{}",
                c.wire.recipient_rand_hash.to_lowercase(),
                c.wire.sender_nonce
            ));
        }
        inv.key(WINNING_LIST);
        // Every ticket of a payment is under one recipientRand (one seed, one sender).
        let rand_hash = checked
            .first()
            .map(|c| c.wire.recipient_rand_hash.to_lowercase())
            .unwrap_or_default();
        inv.key(format!("cw:chain:spent:{rand_hash}"));
        // Kept a day past expiry: a ticket cannot be used after it expires anyway.
        let ttl = payment
            .tickets
            .iter()
            .map(|t| t.expires_at)
            .max()
            .unwrap_or(0)
            .saturating_sub(now_secs())
            + 86_400;
        inv.arg(&segment).arg(ttl).arg(n);
        for c in &checked {
            inv.arg(c.digest.to_string());
        }
        for _ in &checked {
            inv.arg(self.ev);
        }
        for c in &checked {
            let w = if c.wins {
                serde_json::to_string(&Winning {
                    ticket: c.wire.clone(),
                    seed: payment.seed.clone(),
                    stream: stream.to_string(),
                    seq,
                })
                .unwrap_or_default()
            } else {
                String::new()
            };
            inv.arg(w);
        }
        let (code, count, used): (i64, i64, String) =
            inv.invoke_async(&mut self.redis.clone()).await?;
        if code == -2 {
            metrics::TICKETS.with_label_values(&["refused"]).inc();
            return Ok(Err(format!(
                "recipientRandHash {rand_hash} was revealed by a winning ticket (paid with for \
                 segment {used}): tickets under it are worth nothing now; fetch \
                 /price?sender=YOUR_ADDRESS for new parameters"
            )));
        }
        if code < 0 {
            metrics::TICKETS.with_label_values(&["replayed"]).inc();
            let i = usize::try_from(count - 1)
                .unwrap_or(0)
                .min(n.saturating_sub(1));
            let used_for = used.split_once('|').map(|(_, s)| s).unwrap_or("");
            return Ok(Err(format!(
                "replayed ticket: nonce {} under recipientRandHash {} was already used for \
                 segment {used_for}",
                checked[i].wire.sender_nonce,
                checked[i].wire.recipient_rand_hash.to_lowercase()
            )));
        }
        let wins = checked.iter().filter(|c| c.wins).count();
        metrics::TICKETS
            .with_label_values(&["accepted"])
            .inc_by(count as u64);
        if count > 0 && wins > 0 {
            metrics::TICKETS
                .with_label_values(&["won"])
                .inc_by(wins as u64);
            info!(
                stream,
                seq,
                winning = wins,
                "winning ticket queued for redemption"
            );
        }
        Ok(Ok(count * self.ev))
    }

    /// The checks that need no state: every ticket pays us, from the stream's sender,
    /// under our parameters, unexpired, signed by the sender (low-s).
    fn check_tickets(&self, sender: Address, p: &Payment) -> Result<Vec<Checked>, Refusal> {
        let seed: B256 = p
            .seed
            .parse()
            .map_err(|_| format!("the payment's seed {:?} is not 32 bytes of hex", p.seed))?;
        let rand = self.rand_for(&seed, sender);
        let rand_hash = ticket::recipient_rand_hash(rand);
        let now = now_secs();
        let mut nonces = HashSet::new();
        let mut out = Vec::with_capacity(p.tickets.len());
        if p.tickets.len() > 10_000 {
            return Err("more than 10000 tickets in one payment".into());
        }
        for w in &p.tickets {
            let t = Ticket::from_wire(w).map_err(|e| e.to_string())?;
            let n = w.sender_nonce;
            if t.recipient != self.recipient {
                return Err(format!(
                    "ticket {n} pays {}, not this orchestrator ({})",
                    t.recipient, self.recipient
                ));
            }
            if t.sender != sender {
                return Err(format!(
                    "ticket {n} is from {}, not the stream's broadcaster {sender}",
                    t.sender
                ));
            }
            if t.face_value != self.policy.face_value || t.win_prob != self.win_prob {
                return Err(format!(
                    "ticket {n} has face value {} and win probability {}; this orchestrator's \
                     parameters are {} and {} (fetch /price again)",
                    t.face_value, t.win_prob, self.policy.face_value, self.win_prob
                ));
            }
            if t.recipient_rand_hash != rand_hash {
                return Err(format!(
                    "ticket {n}'s recipientRandHash is not this orchestrator's for seed {} and \
                     sender {sender} (parameters are made for one sender: fetch \
                     /price?sender=YOUR_ADDRESS)",
                    p.seed
                ));
            }
            if t.expires_at <= U256::from(now) {
                return Err(format!(
                    "ticket {n} expired at {} (now {now}); fetch /price again",
                    w.expires_at
                ));
            }
            // Tickets must be redeemable before the sender can take its funds back: their
            // expiry is ours (at most --ticket-validity-secs, which start() bounds by the
            // broker's unlock period), plus some clock skew.
            let latest = now + self.policy.validity.as_secs() + SKEW_SECS;
            if t.expires_at > U256::from(latest) {
                return Err(format!(
                    "ticket {n} expires at {}, later than this orchestrator's parameters allow \
                     ({latest}); fetch /price again",
                    w.expires_at
                ));
            }
            if !nonces.insert(n) {
                return Err(format!("nonce {n} appears twice in one payment"));
            }
            let sig = alloy_hex(&w.signature)
                .ok_or_else(|| format!("ticket {n}'s signature is not hex"))?;
            let digest = t.hash(&self.domain);
            let signer = ticket::recover(&digest, &sig).map_err(|e| format!("ticket {n}: {e}"))?;
            if signer != sender {
                return Err(format!(
                    "ticket {n}'s signature is {signer}'s, not the sender {sender}'s (wrong \
                     chain or broker, or a forged ticket)"
                ));
            }
            let wins = ticket::is_winning(&sig, rand, t.win_prob);
            out.push(Checked {
                wire: w.clone(),
                digest,
                wins,
            });
        }
        Ok(out)
    }

    /// Redeems queued winning tickets until `shutdown`, oldest first, retrying failures with
    /// backoff; gives one up when it expired, was already redeemed or was refused too often.
    /// Of the orchestrator processes of one account, only the holder of a lease in Redis
    /// redeems, so two never send the same ticket.
    pub async fn run_redeemer(&self, shutdown: CancellationToken) {
        let me = B256::from(rand_bytes()).to_string();
        let lease = format!("cw:chain:redeemer:{:x}", self.recipient);
        let mut state = RedeemState::default();
        let mut backoff = castwork_cluster::Backoff::default();
        let mut leading = false;
        loop {
            let lead: redis::RedisResult<i64> = LEASE
                .get()
                .key(&lease)
                .arg(&me)
                .arg(LEASE_MS)
                .invoke_async(&mut self.redis.clone())
                .await;
            let delay = match lead {
                Ok(1) => {
                    if !leading {
                        info!("this process redeems the winning tickets");
                        leading = true;
                    }
                    match self.redeem_oldest(&mut state).await {
                        Ok(Step::Resolved) => {
                            backoff = castwork_cluster::Backoff::default();
                            Duration::ZERO
                        }
                        Ok(Step::Empty) => Duration::from_millis(500),
                        // A refused ticket went behind the others: their turn comes soon.
                        Ok(Step::Rotated) => Duration::from_secs(1),
                        Err(e) => {
                            let d = backoff.next_delay();
                            warn!(
                                error = format!("{e:#}"),
                                retry_in_ms = d.as_millis() as u64,
                                "ticket redemption"
                            );
                            d
                        }
                    }
                }
                Ok(_) => {
                    leading = false;
                    Duration::from_secs(5)
                }
                Err(e) => {
                    warn!(error = %e, "redemption lease");
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => {
                    // Let another process take over at once.
                    let _: redis::RedisResult<i64> = RELEASE
                        .get()
                        .key(&lease)
                        .arg(&me)
                        .invoke_async(&mut self.redis.clone())
                        .await;
                    return;
                }
            }
        }
    }

    /// Tries the oldest queued winner.
    async fn redeem_oldest(&self, state: &mut RedeemState) -> anyhow::Result<Step> {
        let mut con = self.redis.clone();
        let item: Option<String> = redis::cmd("LINDEX")
            .arg(WINNING_LIST)
            .arg(-1)
            .query_async(&mut con)
            .await?;
        let Some(item) = item else {
            return Ok(Step::Empty);
        };
        let (list, record) = match serde_json::from_str::<Winning>(&item) {
            Ok(w) => match self.redeem(&w, state).await? {
                Try::Done(list, record) => (list, record),
                Try::Refused(why) => {
                    warn!(
                        reason = format!("{why:#}"),
                        "winning ticket not redeemed yet"
                    );
                    // The others get their turn first: one refused ticket blocks nothing.
                    let _: () = redis::cmd("LMOVE")
                        .arg(WINNING_LIST)
                        .arg(WINNING_LIST)
                        .arg("RIGHT")
                        .arg("LEFT")
                        .query_async(&mut con)
                        .await?;
                    return Ok(Step::Rotated);
                }
            },
            Err(e) => (
                REDEEM_FAILED_LIST,
                Redemption {
                    error: Some(format!("unreadable entry: {e}")),
                    unix_ms: now_unix_ms(),
                    ..Redemption::default()
                },
            ),
        };
        let json = serde_json::to_string(&record)?;
        let _: () = redis::pipe()
            .atomic()
            .cmd("LREM")
            .arg(WINNING_LIST)
            .arg(-1)
            .arg(&item)
            .ignore()
            .cmd("LPUSH")
            .arg(list)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(list)
            .arg(0)
            .arg(KEEP - 1)
            .ignore()
            .query_async(&mut con)
            .await?;
        Ok(Step::Resolved)
    }

    /// One try at a winning ticket.
    ///
    /// `Err` is a failure that is not the ticket's (the node cannot be reached, the
    /// account cannot pay for gas, the transaction was not mined in time): it is tried again
    /// as long as it takes, until it expires. `Try::Refused` is the contract refusing this
    /// ticket (asked first with `eth_call`): tried again `redeem_attempts` times, behind the
    /// other winners, then given up.
    async fn redeem(&self, w: &Winning, state: &mut RedeemState) -> anyhow::Result<Try> {
        let give_up = |hash: String, why: String| {
            let r = Redemption {
                error: Some(why),
                ..Redemption::of(w, hash)
            };
            Ok(Try::Done(REDEEM_FAILED_LIST, r))
        };
        let t = match Ticket::from_wire(&w.ticket) {
            Ok(t) => t,
            Err(e) => return give_up(String::new(), e.to_string()),
        };
        let Some(sig) = alloy_hex(&w.ticket.signature) else {
            return give_up(String::new(), "signature is not hex".into());
        };
        let Ok(seed) = w.seed.parse::<B256>() else {
            return give_up(String::new(), "seed is not hex".into());
        };
        let rand = ticket::recipient_rand(&self.secret, &seed, t.sender, t.face_value, t.win_prob);
        let digest = t.hash(&self.domain);
        let key = digest.to_string();
        // A redemption sent before and not seen mined: wait for it rather than send another.
        if let Some(&tx) = state.in_flight.get(&key) {
            match self.chain.tx_state(tx).await? {
                TxState::Mined(m) => {
                    state.forget(&key);
                    return Ok(Try::Done(REDEEMED_LIST, self.redeemed(w, &t, key, m)));
                }
                TxState::Pending => {
                    anyhow::bail!("redemption {tx} of winning ticket {digest} is not mined yet")
                }
                // The checks below decide what happens to the ticket now.
                TxState::Reverted | TxState::Unknown => {
                    state.in_flight.remove(&key);
                }
            }
        }
        let tries = &mut state.tries;
        if self
            .chain
            .ticket_used(&self.deployment, digest)
            .await
            .context("asking the ticket broker whether the ticket is used")?
        {
            tries.remove(&key);
            metrics::REDEMPTIONS
                .with_label_values(&["already_redeemed"])
                .inc();
            let r = Redemption {
                error: Some("already redeemed".into()),
                ..Redemption::of(w, key)
            };
            return Ok(Try::Done(REDEEMED_LIST, r));
        }
        if U256::from(self.chain.block_timestamp().await?) > t.expires_at {
            tries.remove(&key);
            metrics::REDEMPTIONS.with_label_values(&["expired"]).inc();
            return give_up(
                key,
                format!("ticket {digest} expired before it could be redeemed"),
            );
        }
        if let Some(reason) = self
            .chain
            .refusal_to_redeem(&self.deployment, &t, &sig, rand)
            .await?
        {
            // A sender out of funds may fund again before the ticket expires.
            if reason.contains("sender has no funds") {
                return Ok(Try::Refused(anyhow::anyhow!(
                    "winning ticket {digest} waits for its sender to fund the broker: {reason}"
                )));
            }
            let n = tries.entry(key.clone()).or_insert(0);
            *n += 1;
            warn!(ticket = %digest, attempt = *n, reason, "the ticket broker refuses the winning ticket");
            if *n >= self.policy.redeem_attempts {
                tries.remove(&key);
                metrics::REDEMPTIONS.with_label_values(&["failed"]).inc();
                return give_up(key, format!("the ticket broker refused it: {reason}"));
            }
            return Ok(Try::Refused(anyhow::anyhow!(
                "the ticket broker refuses winning ticket {digest}: {reason}"
            )));
        }
        let m = match self.chain.redeem(&self.deployment, &t, &sig, rand).await {
            Ok(m) => m,
            Err(e) => {
                if let Some(sent) = e.downcast_ref::<NotMined>() {
                    state.in_flight.insert(key, sent.tx);
                }
                return Err(e.context(format!("redeeming winning ticket {digest}")));
            }
        };
        state.forget(&key);
        Ok(Try::Done(REDEEMED_LIST, self.redeemed(w, &t, key, m)))
    }

    /// The record of winning ticket `w` (`t`, hash `key`) redeemed by `m`.
    fn redeemed(&self, w: &Winning, t: &Ticket, key: String, m: Mined) -> Redemption {
        metrics::REDEMPTIONS.with_label_values(&["redeemed"]).inc();
        metrics::REDEMPTION_GAS.observe(m.gas_used as f64);
        info!(
            ticket = key,
            tx = %m.tx,
            gas_used = m.gas_used,
            face_value = %t.face_value,
            "winning ticket redeemed"
        );
        Redemption {
            tx: Some(m.tx.to_string()),
            gas_used: Some(m.gas_used),
            ..Redemption::of(w, key)
        }
    }

    /// Recent redemptions and failures, newest first.
    pub async fn redemptions(
        redis: &ConnectionManager,
    ) -> redis::RedisResult<(Vec<Redemption>, Vec<Redemption>, u64)> {
        let (done, failed, pending): (Vec<String>, Vec<String>, u64) = redis::pipe()
            .cmd("LRANGE")
            .arg(REDEEMED_LIST)
            .arg(0)
            .arg(-1)
            .cmd("LRANGE")
            .arg(REDEEM_FAILED_LIST)
            .arg(0)
            .arg(-1)
            .cmd("LLEN")
            .arg(WINNING_LIST)
            .query_async(&mut redis.clone())
            .await?;
        let parse = |v: Vec<String>| -> Vec<Redemption> {
            v.iter()
                .filter_map(|s| serde_json::from_str(s).ok())
                .collect()
        };
        Ok((parse(done), parse(failed), pending))
    }
}

/// What a sender can pay this orchestrator with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SenderFunds {
    pub info: SenderInfo,
    /// What this orchestrator may still take from the sender's reserve.
    pub claimable_reserve: U256,
}

/// The redeemer's memory of the tickets it tried.
#[derive(Default)]
struct RedeemState {
    /// How often the broker refused each ticket.
    tries: HashMap<String, u32>,
    /// Redemptions sent and not seen mined, by ticket.
    in_flight: HashMap<String, B256>,
}

impl RedeemState {
    fn forget(&mut self, ticket: &str) {
        self.tries.remove(ticket);
        self.in_flight.remove(ticket);
    }
}

/// What one turn of the redeemer did.
enum Step {
    /// A winner was redeemed or given up.
    Resolved,
    /// None is queued.
    Empty,
    /// The oldest is refused for now and went behind the others.
    Rotated,
}

/// The outcome of one try at a winning ticket.
enum Try {
    /// Resolved: the record and the list it goes to.
    Done(&'static str, Redemption),
    /// The contract refuses it for now; it has tries left.
    Refused(anyhow::Error),
}

struct Checked {
    wire: WireTicket,
    digest: B256,
    wins: bool,
}

fn alloy_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s.strip_prefix("0x").unwrap_or(s)).ok()
}

fn rand_bytes() -> [u8; 32] {
    castwork_chain::ticket::random_b256().0
}
