//! Redeeming winning tickets at the ticket broker, in the background, oldest first, with
//! retries; one orchestrator process of an account at a time (a lease in Redis).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use castwork_chain::ticket::{self, Ticket};
use castwork_chain::{Mined, NotMined, TxState, B256, U256};
use castwork_protocol::payment::WireTicket;
use castwork_protocol::time::now_unix_ms;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    alloy_hex, rand_bytes, Payments, KEEP, REDEEMED_LIST, REDEEM_FAILED_LIST, WINNING_LIST,
};
use crate::metrics;
use crate::state::LuaScript;

/// A winning ticket waiting for redemption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Winning {
    pub(super) ticket: WireTicket,
    pub(super) seed: String,
    pub(super) stream: String,
    pub(super) seq: u64,
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

impl Payments {
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
