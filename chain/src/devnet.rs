//! A local anvil node for tests and local development: `contracts/` installs it from npm
//! (`@foundry-rs/anvil`). Chain id 31337, with anvil's ten well-known dev accounts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context as _};

/// anvil's default dev accounts' keys (from the public "test test ... junk" mnemonic).
const DEV_KEYS: [&str; 10] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "dbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

/// Dev account `i` (0-9) of anvil, funded with 10,000 ETH at start.
pub fn dev_key(i: usize) -> PrivateKeySigner {
    DEV_KEYS[i % DEV_KEYS.len()]
        .parse()
        .expect("the dev keys are valid")
}

/// The anvil binary: `$ANVIL`, the one npm installed under `contracts/`, or `anvil` on PATH.
pub fn anvil_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ANVIL") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let npm = root.join("contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    if npm.is_file() {
        return Some(npm);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("anvil"))
            .find(|p| p.is_file())
    })
}

/// A running anvil node, killed when dropped.
pub struct Anvil {
    child: Child,
    pub url: String,
    pub port: u16,
}

impl Anvil {
    /// Starts anvil on a free local port and waits until it answers.
    pub async fn start() -> anyhow::Result<Anvil> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Self::start_on(port).await
    }

    async fn start_on(port: u16) -> anyhow::Result<Anvil> {
        let Some(bin) = anvil_binary() else {
            bail!("anvil not found: run `npm install` in contracts/ (scripts/test.sh does), or set ANVIL");
        };
        let child = Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--host",
                "127.0.0.1",
                "--silent",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let anvil = Anvil { child, url, port };
        let provider = ProviderBuilder::new().connect_http(anvil.url.parse()?);
        let start = Instant::now();
        loop {
            if provider.get_chain_id().await.is_ok() {
                return Ok(anvil);
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!(
                    "{} did not answer on {} within 15 s",
                    bin.display(),
                    anvil.url
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node's whole state (accounts, contracts, storage), as `anvil_dumpState` gives it.
    pub async fn dump_state(&self) -> anyhow::Result<serde_json::Value> {
        let provider = ProviderBuilder::new().connect_http(self.url.parse()?);
        Ok(provider.raw_request("anvil_dumpState".into(), ()).await?)
    }

    /// Kills the node (SIGKILL): until [`Anvil::restart`], its URL answers nothing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new node on the same port with `state` (from [`Anvil::dump_state`]).
    pub async fn restart(&mut self, state: &serde_json::Value) -> anyhow::Result<()> {
        self.kill();
        *self = Self::start_on(self.port).await?;
        let provider = ProviderBuilder::new().connect_http(self.url.parse()?);
        let loaded: bool = provider
            .raw_request("anvil_loadState".into(), (state,))
            .await?;
        if !loaded {
            bail!("anvil did not load the state");
        }
        Ok(())
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Moves the node's clock forward by `secs` and mines a block.
pub async fn increase_time(url: &str, secs: u64) -> anyhow::Result<()> {
    let provider = ProviderBuilder::new().connect_http(url.parse()?);
    let _: serde_json::Value = provider
        .raw_request("evm_increaseTime".into(), (secs,))
        .await?;
    mine(url).await
}

/// Mines one block.
pub async fn mine(url: &str) -> anyhow::Result<()> {
    let provider = ProviderBuilder::new().connect_http(url.parse()?);
    let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await?;
    Ok(())
}

/// Sets `who`'s ETH balance to `wei`.
pub async fn set_balance(url: &str, who: Address, wei: U256) -> anyhow::Result<()> {
    let provider = ProviderBuilder::new().connect_http(url.parse()?);
    let _: serde_json::Value = provider
        .raw_request("anvil_setBalance".into(), (who, wei))
        .await?;
    Ok(())
}
