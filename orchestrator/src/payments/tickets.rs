//! Taking tickets: every ticket attached to a segment is checked (recipient, sender, our
//! parameters and recipientRand for that sender, expiry, low-s signature), then recorded
//! once in Redis, its expected value credited to the sender's ledger account and winners
//! queued for redemption; a recipientRand that won takes nothing more.

use std::collections::HashSet;

use castwork_chain::ticket::{self, Ticket};
use castwork_chain::{Address, B256, U256};
use castwork_protocol::payment::{Payment, WireTicket};
use tracing::info;

use super::redemption::Winning;
use super::{alloy_hex, now_secs, Payments, Refusal, SKEW_SECS, WINNING_LIST};
use crate::metrics;
use crate::service::HandleError;
use crate::state::{balance_key, LuaScript};

/// Records the tickets of one segment: refuses a nonce already used by another submission,
/// credits new tickets' expected value, queues new winners. KEYS[1] balance, KEYS[2..n+1]
/// the tickets' nonce keys, KEYS[n+2] the winning list, KEYS[n+3] the payment's
/// recipientRand's "won" mark. ARGV: segment, ttl, n, then n digests, n expected values, n
/// winning-ticket JSONs ('' for a losing ticket). Returns {1, fresh tickets}, {-1, index of
/// the replayed ticket, what it was used for} or {-2, 0, the segment whose ticket under
/// this recipientRand won}.
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

impl Payments {
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
}

struct Checked {
    wire: WireTicket,
    digest: B256,
    wins: bool,
}
