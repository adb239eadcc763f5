//! The off-chain ledger in Redis: accounts' balances and the part reserved by admitted
//! segments, and orchestrators' stakes (read by scanning, never with `KEYS`).

use super::{segment_key, LuaScript, State};

/// Reserves a segment's estimated fee from its account if the balance, less what is
/// already reserved, covers it. Returns {1} when reserved (or already was), else
/// {0, balance, reserved}.
static RESERVE: LuaScript = LuaScript::new(include_str!("lua/reserve.lua"));

/// Takes wei from an account if what is not reserved covers it (see [`State::debit`]).
static DEBIT: LuaScript = LuaScript::new(include_str!("lua/debit.lua"));

/// The balance of a paying account, in wei.
pub fn balance_key(account: &str) -> String {
    format!("cw:balance:{account}")
}

/// Wei of an account reserved by admitted segments (see `release_lua`).
pub fn reserved_key(account: &str) -> String {
    format!("cw:reserved:{account}")
}

impl State {
    /// Reserves `estimate` wei of `account` for a segment being admitted: `Ok(())`, or
    /// `Err((balance, reserved))` when what is not yet reserved does not cover it.
    pub async fn reserve(
        &self,
        account: &str,
        stream: &str,
        seq: u64,
        estimate: i64,
    ) -> redis::RedisResult<Result<(), (i64, i64)>> {
        let r: Vec<i64> = RESERVE
            .get()
            .key(segment_key(stream, seq))
            .key(balance_key(account))
            .key(reserved_key(account))
            .arg(estimate)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match r.as_slice() {
            [0, balance, reserved] => Err((*balance, *reserved)),
            _ => Ok(()),
        })
    }

    /// An account's balance and the part of it reserved by segments admitted but not yet
    /// resolved, in wei (0 for an account never credited).
    pub async fn account(&self, account: &str) -> redis::RedisResult<(i64, i64)> {
        let (balance, reserved): (Option<i64>, Option<i64>) = redis::cmd("MGET")
            .arg(balance_key(account))
            .arg(reserved_key(account))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((balance.unwrap_or(0), reserved.unwrap_or(0)))
    }

    /// Adds `amount` wei (more than 0: [`State::debit`] takes some back) to an account;
    /// the new balance.
    pub async fn credit(&self, account: &str, amount: i64) -> redis::RedisResult<i64> {
        if amount <= 0 {
            return Err(refused(format!(
                "a credit of {amount} wei: only a positive amount can be added"
            )));
        }
        redis::cmd("INCRBY")
            .arg(balance_key(account))
            .arg(amount)
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Takes `amount` wei (more than 0) from an account, never more than what segments in
    /// progress have not reserved: `Ok(new balance)`, or `Err((balance, reserved))` when
    /// that does not cover it (nothing is taken).
    pub async fn debit(
        &self,
        account: &str,
        amount: i64,
    ) -> redis::RedisResult<Result<i64, (i64, i64)>> {
        if amount <= 0 {
            return Err(refused(format!(
                "a debit of {amount} wei: only a positive amount can be taken back"
            )));
        }
        let r: Vec<i64> = DEBIT
            .get()
            .key(balance_key(account))
            .key(reserved_key(account))
            .arg(amount)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match r.as_slice() {
            [1, balance] => Ok(*balance),
            [_, balance, reserved] => Err((*balance, *reserved)),
            _ => Err((0, 0)),
        })
    }

    /// Sets an orchestrator's off-chain stake.
    pub async fn set_stake(&self, orchestrator: &str, amount: i64) -> redis::RedisResult<()> {
        redis::cmd("SET")
            .arg(format!("cw:stake:{orchestrator}"))
            .arg(amount)
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Every key matching `pattern`, by SCAN (never KEYS, which stops Redis for everyone
    /// while it walks the whole key space), sorted.
    async fn scan(&self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        let mut con = self.redis.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Every orchestrator's off-chain stake, with the pieces of evidence against it.
    pub async fn stakes(&self) -> redis::RedisResult<Vec<(String, i64, usize)>> {
        let mut con = self.redis.clone();
        let keys = self.scan("cw:stake:*").await?;
        let evidence: Vec<String> = redis::cmd("LRANGE")
            .arg("cw:evidence")
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await?;
        let mut out = Vec::new();
        for k in keys {
            let stake: Option<i64> = redis::cmd("GET").arg(&k).query_async(&mut con).await?;
            let who = k.trim_start_matches("cw:stake:").to_string();
            let n = evidence
                .iter()
                .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
                .filter(|e| e["orchestrator"].as_str() == Some(who.as_str()))
                .count();
            out.push((who, stake.unwrap_or(0), n));
        }
        out.sort();
        Ok(out)
    }

    /// Every account with a balance, sorted: (account, balance, reserved).
    pub async fn balances(&self) -> redis::RedisResult<Vec<(String, i64, i64)>> {
        let mut con = self.redis.clone();
        let keys = self.scan(&balance_key("*")).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let accounts: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix("cw:balance:").map(str::to_string))
            .collect();
        let reserved: Vec<String> = accounts.iter().map(|a| reserved_key(a)).collect();
        let (balances, reserved): (Vec<Option<i64>>, Vec<Option<i64>>) = redis::pipe()
            .cmd("MGET")
            .arg(&keys)
            .cmd("MGET")
            .arg(&reserved)
            .query_async(&mut con)
            .await?;
        Ok(accounts
            .into_iter()
            .zip(balances.into_iter().zip(reserved))
            .filter_map(|(a, (b, r))| Some((a, b?, r.unwrap_or(0))))
            .collect())
    }
}

/// A request the ledger refuses before it reaches Redis.
fn refused(why: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "ledger", why))
}
