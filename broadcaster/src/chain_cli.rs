//! `broadcaster chain ...`: fund and inspect this account's deposit at the ticket broker;
//! as a verifier, list slash proposals and vote for one.

use anyhow::Context as _;
use castwork_chain::cli::{parse_amount, show_amount, AccountCommand, EthArgs};
use castwork_chain::{Address, B256, U256};
use clap::Subcommand;

fn amount(s: &str) -> Result<U256, String> {
    parse_amount(s)
}

#[derive(Subcommand, Debug)]
pub enum ChainCommand {
    /// Adds ETH to this account's deposit (pays winning tickets) and reserve (backs them
    /// when the deposit runs out), in wei or e.g. `0.5eth`.
    Deposit {
        /// ETH added to the deposit.
        #[arg(long, env = "DEPOSIT", default_value = "0", value_parser = amount)]
        deposit: U256,
        /// ETH added to the reserve.
        #[arg(long, env = "RESERVE", default_value = "0", value_parser = amount)]
        reserve: U256,
    },
    /// Prints this account's ETH balance and its deposit and reserve at the ticket broker.
    Status,
    /// Lists the slash proposals against ORCHESTRATOR: the rendition and claim each is
    /// about, the evidence's keccak256, votes so far and the voting deadline.
    SlashProposals { orchestrator: Address },
    /// Votes, as a verifier, for slash proposal ID (after checking its evidence: the
    /// proposer's `evidence/STREAM/SEQ-RUNG.json`, whose keccak256 the proposal cites). The
    /// vote that reaches the deployment's quorum slashes.
    VoteSlash { id: B256 },
    /// Creates or imports the account's keystore.
    Account {
        #[command(subcommand)]
        action: AccountCommand,
    },
}

pub async fn run(eth: &EthArgs, cmd: ChainCommand) -> anyhow::Result<()> {
    if let ChainCommand::Account { action } = cmd {
        return castwork_chain::cli::account(eth, action);
    }
    let (chain, d) = eth.connect().await?;
    let me = chain.account();
    match cmd {
        ChainCommand::SlashProposals { orchestrator } => {
            let quorum = chain.slash_quorum(&d).await?;
            let proposals = chain.slash_proposals(&d, orchestrator).await?;
            if proposals.is_empty() {
                println!("no slash proposal against {orchestrator}");
            }
            for p in proposals {
                println!("{}", p.describe(quorum));
            }
            return Ok(());
        }
        ChainCommand::VoteSlash { id } => {
            let m = chain
                .vote_slash(&d, id)
                .await
                .context("voting (does this account hold the verifier role?)")?;
            println!("voted for slash proposal {id} (tx {})", m.tx);
            return Ok(());
        }
        _ => {}
    }
    if let ChainCommand::Deposit { deposit, reserve } = cmd {
        if (deposit + reserve).is_zero() {
            anyhow::bail!("give --deposit and/or --reserve");
        }
        let m = chain.fund(&d, deposit, reserve).await?;
        println!(
            "funded {}: deposit +{}, reserve +{} (tx {})",
            me,
            show_amount(deposit),
            show_amount(reserve),
            m.tx
        );
    }
    let info = chain.sender_info(&d, me).await?;
    println!("account      {me}");
    println!("chain        {} (ticket broker {})", d.chain_id, d.broker);
    println!("eth balance  {}", show_amount(chain.eth_balance(me).await?));
    println!("deposit      {}", show_amount(info.deposit));
    println!("reserve      {}", show_amount(info.reserve));
    if info.withdrawable_at > 0 {
        println!(
            "unlocking    withdrawable at unix time {}",
            info.withdrawable_at
        );
    }
    Ok(())
}
