//! Command-line pieces shared by the orchestrator and the broadcaster: the `--eth-*` flags
//! (named after go-livepeer's `-ethUrl`, `-ethKeystorePath`, `-ethPassword`), amounts, and
//! the `chain account` commands.

use std::path::PathBuf;

use alloy::primitives::utils::{format_ether, ParseUnits, Unit};
use alloy::primitives::U256;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context as _};

use crate::client::{Chain, Deployment};
use crate::keystore;

/// On-chain mode: set `--eth-url` (and the account and deployment) to use it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EthArgs {
    /// JSON-RPC URL of an Ethereum node. Setting it turns on on-chain mode: stake from the
    /// staking contract, payment by probabilistic tickets redeemed at the ticket broker.
    #[arg(long, env = "ETH_URL", global = true)]
    pub eth_url: Option<String>,

    /// This node's Ethereum account: a keystore (Web3 Secret Storage) file, or a directory
    /// holding exactly one. `chain account new` makes one.
    #[arg(long, env = "ETH_KEYSTORE_PATH", global = true)]
    pub eth_keystore_path: Option<PathBuf>,

    /// The keystore's password: a file holding it, or the password itself.
    #[arg(long, env = "ETH_PASSWORD", global = true, hide_env_values = true)]
    pub eth_password: Option<String>,

    /// The contracts' addresses: the JSON file `orchestrator chain deploy` wrote.
    #[arg(long, env = "ETH_DEPLOYMENT", global = true)]
    pub eth_deployment: Option<PathBuf>,
}

impl EthArgs {
    pub fn enabled(&self) -> bool {
        self.eth_url.is_some()
    }

    /// The account from the keystore flags.
    pub fn signer(&self) -> anyhow::Result<PrivateKeySigner> {
        let Some(path) = &self.eth_keystore_path else {
            bail!("on-chain mode needs --eth-keystore-path (make one with `chain account new`)");
        };
        let password = keystore::read_password(self.eth_password.as_deref().unwrap_or(""))?;
        keystore::load(path, &password)
    }

    /// The client and deployment, checked against the node (right chain, contracts there).
    pub async fn connect(&self) -> anyhow::Result<(Chain, Deployment)> {
        let Some(url) = &self.eth_url else {
            bail!("this needs --eth-url, the JSON-RPC URL of an Ethereum node");
        };
        let Some(path) = &self.eth_deployment else {
            bail!("this needs --eth-deployment, the file `orchestrator chain deploy` wrote");
        };
        let deployment = Deployment::load(path)?;
        let chain = Chain::connect(url, self.signer()?)?;
        chain.check(&deployment).await?;
        Ok((chain, deployment))
    }

    /// The client alone, for deploying.
    pub fn connect_bare(&self) -> anyhow::Result<Chain> {
        let Some(url) = &self.eth_url else {
            bail!("this needs --eth-url, the JSON-RPC URL of an Ethereum node");
        };
        Chain::connect(url, self.signer()?)
    }
}

/// An amount in wei (or token base units): an integer, or a decimal with a unit: `eth`
/// (`1.5eth` is 1.5 x 10^18), `gwei` (`2.5gwei` is 2.5 x 10^9) or `wei`. A negative amount,
/// or one finer than a wei (`0.5wei`), is refused rather than rounded.
pub fn parse_amount(s: &str) -> Result<U256, String> {
    let t = s.trim();
    let refuse = |why: String| format!("amount {s:?}: {why}");
    if t.starts_with('-') {
        return Err(refuse("cannot be negative".into()));
    }
    // `gwei` before `wei`, which it ends with.
    for (suffix, unit) in [
        ("gwei", Unit::GWEI),
        ("wei", Unit::WEI),
        ("eth", Unit::ETHER),
    ] {
        let Some(d) = t.strip_suffix(suffix) else {
            continue;
        };
        let d = d.trim();
        if d.is_empty() {
            return Err(refuse(format!("no number before {suffix}")));
        }
        if d.split_once('.')
            .is_some_and(|(_, f)| f.len() > usize::from(unit.get()))
        {
            return Err(refuse(format!(
                "more than {} decimals of {suffix} is finer than a wei",
                unit.get()
            )));
        }
        return ParseUnits::parse_units(d, unit)
            .map(|v| v.get_absolute())
            .map_err(|e| refuse(e.to_string()));
    }
    crate::ticket::parse_u256(t).map_err(|e| refuse(e.to_string()))
}

/// `1500000000000000000 (1.5 eth)`.
pub fn show_amount(v: U256) -> String {
    let eth = format_ether(v);
    let eth = eth.trim_end_matches('0').trim_end_matches('.');
    format!("{v} ({eth} eth)")
}

/// `chain account ...`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum AccountCommand {
    /// Creates a new random account in a keystore under DIR, encrypted with --eth-password,
    /// and prints its address.
    New { dir: PathBuf },
    /// Puts the private key held (as hex) in KEY_FILE into a keystore under DIR, encrypted
    /// with --eth-password, and prints its address.
    Import { dir: PathBuf, key_file: PathBuf },
}

pub fn account(eth: &EthArgs, cmd: AccountCommand) -> anyhow::Result<()> {
    let password = keystore::read_password(eth.eth_password.as_deref().unwrap_or(""))?;
    if password.is_empty() {
        bail!("set --eth-password (a file, or the password itself) to encrypt the keystore");
    }
    let (signer, file) = match cmd {
        AccountCommand::New { dir } => keystore::create(&dir, &password, None)?,
        AccountCommand::Import { dir, key_file } => {
            let hex = std::fs::read_to_string(&key_file)
                .with_context(|| format!("reading {}", key_file.display()))?;
            let key: PrivateKeySigner = hex
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a private key", key_file.display()))?;
            keystore::create(&dir, &password, Some(&key))?
        }
    };
    println!("account {} in {}", signer.address(), file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_in_wei_and_eth() {
        assert_eq!(parse_amount("12").unwrap(), U256::from(12u64));
        assert_eq!(
            parse_amount("1.5eth").unwrap(),
            U256::from(1_500_000_000_000_000_000u64)
        );
        assert!(parse_amount("x").is_err());
        assert!(parse_amount("1.5").is_err());
        assert_eq!(
            parse_amount("2.5gwei").unwrap(),
            U256::from(2_500_000_000u64)
        );
        assert_eq!(
            parse_amount("3 gwei").unwrap(),
            U256::from(3_000_000_000u64)
        );
        assert_eq!(parse_amount("7wei").unwrap(), U256::from(7u64));
        assert_eq!(parse_amount("0eth").unwrap(), U256::ZERO);
        for bad in [
            "-5",
            "-1eth",
            "0.5wei",
            "1.0000000001gwei",
            "gwei",
            "eth",
            "1.2.3eth",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad}");
        }
        assert!(parse_amount("-5")
            .unwrap_err()
            .contains("cannot be negative"));
        assert_eq!(
            show_amount(U256::from(1_500_000_000_000_000_000u64)),
            "1500000000000000000 (1.5 eth)"
        );
        assert_eq!(show_amount(U256::ZERO), "0 (0 eth)");
    }
}
