//! `orchestrator chain ...`: the operator's on-chain commands.

use castwork_chain::cli::{parse_amount, show_amount, AccountCommand, EthArgs};
use castwork_chain::{Address, DeployParams, U256};
use clap::Subcommand;

fn amount(s: &str) -> Result<U256, String> {
    parse_amount(s)
}

/// An amount of the off-chain ledger (`ledger stake`), as the chain commands take amounts
/// (wei, or a decimal with `eth`, `gwei` or `wei`): at least 0, and within the ledger's
/// 64-bit signed wei.
pub fn ledger_amount(s: &str) -> Result<i64, String> {
    let v = parse_amount(s)?;
    i64::try_from(v).map_err(|_| {
        format!(
            "amount {s:?} does not fit the ledger: at most {} wei ({})",
            i64::MAX,
            show_amount(U256::from(i64::MAX))
        )
    })
}

/// What `ledger credit` adds and `ledger debit` takes back: a [`ledger_amount`] above 0.
pub fn positive_ledger_amount(s: &str) -> Result<i64, String> {
    if s.trim().starts_with('-') {
        return Err(format!(
            "amount {s:?} is negative: `ledger credit` adds wei, `ledger debit` takes wei back, \
             each by a positive amount"
        ));
    }
    match ledger_amount(s)? {
        0 => Err(format!("amount {s:?} is zero: nothing to add or take back")),
        v => Ok(v),
    }
}

#[derive(Subcommand, Debug)]
pub enum ChainCommand {
    /// Deploys the stake token, staking contract and ticket broker from this account (which
    /// becomes the token's minter and the staking contract's owner) and writes their
    /// addresses to OUT, the file every other command reads with --eth-deployment.
    Deploy {
        out: std::path::PathBuf,
        /// Seconds unbonded stake stays locked before it can be withdrawn.
        #[arg(long, env = "UNBONDING_PERIOD_SECS", default_value_t = 7 * 86_400)]
        unbonding_period_secs: u64,
        /// Seconds a broadcaster's deposit stays locked after it asks to withdraw.
        #[arg(long, env = "UNLOCK_PERIOD_SECS", default_value_t = 86_400)]
        unlock_period_secs: u64,
        /// Seconds per round of the ticket broker's reserve: in a round, an orchestrator in
        /// the active set since before it began may take its share of a sender's reserve.
        #[arg(long, env = "ROUND_SECS", default_value_t = 3600)]
        round_secs: u64,
        /// Size of the active set: the registered orchestrators, at most this many (when it
        /// is full, a newcomer must bond more than the smallest member, which it evicts).
        #[arg(long, env = "MAX_ACTIVE", default_value_t = 100)]
        max_active: u64,
        /// Accounts allowed to slash (broadcasters that submit evidence); repeatable, or
        /// comma-separated in the env var.
        #[arg(long, env = "VERIFIERS", value_delimiter = ',')]
        verifier: Vec<Address>,
        /// Verifier votes a slash needs (at least 2: no single verifier slashes).
        #[arg(long, env = "SLASH_QUORUM", default_value_t = 2)]
        slash_quorum: u64,
        /// Seconds a slash proposal takes votes, from the first (the orchestrator sees the
        /// proposal and its evidence hash on-chain meanwhile).
        #[arg(long, env = "SLASH_WINDOW_SECS", default_value_t = 86_400)]
        slash_window_secs: u64,
    },
    /// Mints AMOUNT stake tokens to TO (the deployer only).
    Mint {
        to: Address,
        #[arg(value_parser = amount)]
        amount: U256,
    },
    /// Grants (or with --revoke takes back) the verifier role (the deployer only).
    SetVerifier {
        verifier: Address,
        /// Takes the role back instead of granting it.
        #[arg(long)]
        revoke: bool,
    },
    /// Registers this orchestrator with its --price-per-unit / --pixels-per-unit and a
    /// service URI (its /price URL, for broadcasters).
    Register {
        /// Where broadcasters reach this orchestrator (recorded on-chain).
        #[arg(long, env = "SERVICE_URI", default_value = "")]
        service_uri: String,
    },
    /// Bonds AMOUNT of this account's stake tokens (integer base units, or e.g. `100eth`).
    Bond {
        #[arg(value_parser = amount)]
        amount: U256,
    },
    /// Starts unbonding AMOUNT: it leaves the stake at once, and can be withdrawn after the
    /// unbonding period.
    Unbond {
        #[arg(value_parser = amount)]
        amount: U256,
    },
    /// Withdraws unbonded stake whose period has passed.
    Withdraw,
    /// Prints this account's balances, stake, registration, active-set membership and the
    /// winning tickets redeemed (from Redis).
    Status,
    /// Creates or imports the account's keystore.
    Account {
        #[command(subcommand)]
        action: AccountCommand,
    },
}

/// Runs one `chain` command; `price` is the orchestrator's --price-per-unit and
/// --pixels-per-unit, `redis_url` where its redemptions are recorded.
pub async fn run(
    eth: &EthArgs,
    cmd: ChainCommand,
    price: castwork_protocol::Price,
    redis_url: &str,
) -> anyhow::Result<()> {
    match cmd {
        ChainCommand::Account { action } => castwork_chain::cli::account(eth, action),
        ChainCommand::Deploy {
            out,
            unbonding_period_secs,
            unlock_period_secs,
            round_secs,
            max_active,
            verifier,
            slash_quorum,
            slash_window_secs,
        } => {
            let chain = eth.connect_bare()?;
            let d = chain
                .deploy(DeployParams {
                    unbonding_period_secs,
                    unlock_period_secs,
                    round_secs,
                    max_active,
                    slash_quorum,
                    slash_window_secs,
                })
                .await?;
            for v in verifier {
                chain.set_verifier(&d, v, true).await?;
                println!("verifier {v} allowed");
            }
            d.save(&out)?;
            println!(
                "deployed on chain {}: token {}, staking {}, ticket broker {}\nwrote {}",
                d.chain_id,
                d.token,
                d.staking,
                d.broker,
                out.display()
            );
            Ok(())
        }
        cmd => {
            let (chain, d) = eth.connect().await?;
            let me = chain.account();
            match cmd {
                ChainCommand::Mint { to, amount } => {
                    let m = chain.mint(&d, to, amount).await?;
                    println!("minted {} to {to} (tx {})", show_amount(amount), m.tx);
                }
                ChainCommand::SetVerifier { verifier, revoke } => {
                    let m = chain.set_verifier(&d, verifier, !revoke).await?;
                    let what = if revoke { "revoked" } else { "allowed" };
                    println!("verifier {verifier} {what} (tx {})", m.tx);
                }
                ChainCommand::Register { service_uri } => {
                    let m = chain
                        .register(
                            &d,
                            U256::from(price.price_per_unit),
                            U256::from(price.pixels_per_unit.max(1)),
                            &service_uri,
                        )
                        .await?;
                    println!(
                        "registered {me}: {} wei per {} pixels (tx {}, gas {})",
                        price.price_per_unit, price.pixels_per_unit, m.tx, m.gas_used
                    );
                }
                ChainCommand::Bond { amount } => {
                    let m = chain.bond(&d, amount).await?;
                    let o = chain.orchestrator(&d, me).await?;
                    println!(
                        "bonded {}: stake now {} (tx {})",
                        show_amount(amount),
                        show_amount(o.bonded),
                        m.tx
                    );
                }
                ChainCommand::Unbond { amount } => {
                    let m = chain.unbond(&d, amount).await?;
                    let o = chain.orchestrator(&d, me).await?;
                    println!(
                        "unbonding {}: stake now {}, withdrawable after the unbonding period \
                         (tx {})",
                        show_amount(amount),
                        show_amount(o.bonded),
                        m.tx
                    );
                }
                ChainCommand::Withdraw => {
                    let before = chain.token_balance(&d, me).await?;
                    let m = chain.withdraw_unbonded(&d).await?;
                    let after = chain.token_balance(&d, me).await?;
                    println!("withdrew {} (tx {})", show_amount(after - before), m.tx);
                }
                ChainCommand::Status => status(&chain, &d, redis_url).await?,
                ChainCommand::Deploy { .. } | ChainCommand::Account { .. } => unreachable!(),
            }
            Ok(())
        }
    }
}

async fn status(
    chain: &castwork_chain::Chain,
    d: &castwork_chain::Deployment,
    redis_url: &str,
) -> anyhow::Result<()> {
    let me = chain.account();
    let o = chain.orchestrator(d, me).await?;
    let active = chain.active_set(d).await?;
    println!("account        {me}");
    println!(
        "chain          {} (broker {}, staking {})",
        d.chain_id, d.broker, d.staking
    );
    println!(
        "eth balance    {}",
        show_amount(chain.eth_balance(me).await?)
    );
    println!(
        "token balance  {}",
        show_amount(chain.token_balance(d, me).await?)
    );
    println!("bonded stake   {}", show_amount(o.bonded));
    println!(
        "unbonding      {} ({} withdrawable now)",
        show_amount(o.unbonding),
        show_amount(o.withdrawable)
    );
    if o.registered {
        println!(
            "registered     {} wei per {} pixels, {}",
            o.price_per_unit,
            o.pixels_per_unit,
            if o.service_uri.is_empty() {
                "no service URI"
            } else {
                &o.service_uri
            }
        );
    } else {
        println!("registered     no");
    }
    let place = active.iter().position(|a| *a == me);
    match place {
        Some(i) => println!("active set     yes (#{} of {})", i + 1, active.len()),
        None => println!("active set     NO ({} active): takes no work", active.len()),
    }
    // Slash proposals against us are on-chain from their first vote: seen here before the
    // quorum of verifiers lands them.
    let quorum = chain.slash_quorum(d).await?;
    for p in chain.slash_proposals(d, me).await? {
        println!("{}", p.describe(quorum));
    }
    match castwork_cluster::redis_connect(redis_url).await {
        Ok(redis) => {
            let (done, failed, pending) = crate::payments::Payments::redemptions(&redis).await?;
            let redeemed: Vec<_> = done.iter().filter(|r| r.tx.is_some()).collect();
            let gas: Vec<u64> = redeemed.iter().filter_map(|r| r.gas_used).collect();
            let mean = if gas.is_empty() {
                0
            } else {
                gas.iter().sum::<u64>() / gas.len() as u64
            };
            println!(
                "tickets        {} redeemed (mean gas {mean}), {pending} waiting, {} given up",
                redeemed.len(),
                failed.len()
            );
            for r in redeemed.iter().take(5) {
                println!(
                    "  redeemed {} wei from {} for {}/{} (tx {}, gas {})",
                    r.face_value,
                    r.sender,
                    r.stream,
                    r.seq,
                    r.tx.as_deref().unwrap_or(""),
                    r.gas_used.unwrap_or(0)
                );
            }
            for r in failed.iter().take(5) {
                println!("  gave up: {}", r.error.as_deref().unwrap_or(""));
            }
        }
        Err(e) => println!("tickets        (Redis unreachable: {e})"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_amounts_take_the_chain_commands_units_and_refuse_nothing_or_less() {
        assert_eq!(positive_ledger_amount("1000000"), Ok(1_000_000));
        assert_eq!(positive_ledger_amount("3gwei"), Ok(3_000_000_000));
        assert_eq!(positive_ledger_amount("2.5gwei"), Ok(2_500_000_000));
        assert_eq!(
            positive_ledger_amount("1eth"),
            Ok(1_000_000_000_000_000_000)
        );
        assert_eq!(positive_ledger_amount("5wei"), Ok(5));
        for (bad, why) in [
            ("0", "is zero"),
            ("0eth", "is zero"),
            ("-5", "is negative"),
            ("-1eth", "is negative"),
            ("10eth", "does not fit the ledger"),
            ("0.5wei", "finer than a wei"),
            ("five", "amount \"five\""),
        ] {
            let e = positive_ledger_amount(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // A stake may be zero, never negative.
        assert_eq!(ledger_amount("0"), Ok(0));
        assert!(ledger_amount("-1").is_err());
    }
}
