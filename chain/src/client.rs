//! The Ethereum client: one account on one node, with the deployed contracts.

use std::path::Path;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::contracts::{StakeToken, Staking, TicketBroker};
use crate::ticket::{Ticket, TicketDomain};

/// Where the contracts are: written by `orchestrator chain deploy`, read by every command
/// through `--eth-deployment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub chain_id: u64,
    pub token: Address,
    pub staking: Address,
    pub broker: Address,
}

impl Deployment {
    pub fn load(path: &Path) -> anyhow::Result<Deployment> {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("reading the deployment file {}", path.display()))?;
        serde_json::from_str(&s)
            .with_context(|| format!("{} is not a Castwork deployment file", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn ticket_domain(&self) -> TicketDomain {
        TicketDomain {
            chain_id: self.chain_id,
            broker: self.broker,
        }
    }
}

/// Contract parameters chosen at deployment.
#[derive(Debug, Clone, Copy)]
pub struct DeployParams {
    pub unbonding_period_secs: u64,
    pub unlock_period_secs: u64,
    pub max_active: u64,
}

/// A transaction that was mined and succeeded.
#[derive(Debug, Clone, Copy)]
pub struct Mined {
    pub tx: B256,
    pub gas_used: u64,
    pub block: u64,
}

impl Mined {
    fn from_receipt(what: &str, r: TransactionReceipt) -> anyhow::Result<Mined> {
        if !r.status() {
            bail!("{what}: transaction {} reverted", r.transaction_hash);
        }
        Ok(Mined {
            tx: r.transaction_hash,
            gas_used: r.gas_used,
            block: r.block_number.unwrap_or_default(),
        })
    }
}

/// A sender's funds in the ticket broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderInfo {
    pub deposit: U256,
    pub reserve: U256,
    pub withdrawable_at: u64,
}

/// An orchestrator as the staking contract sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorInfo {
    pub bonded: U256,
    pub price_per_unit: U256,
    pub pixels_per_unit: U256,
    pub service_uri: String,
    pub registered: bool,
    pub unbonding: U256,
    pub withdrawable: U256,
}

/// One account on one node.
#[derive(Clone)]
pub struct Chain {
    provider: DynProvider,
    account: Address,
}

impl Chain {
    /// Connects `signer` to the node at `url`.
    pub fn connect(url: &str, signer: PrivateKeySigner) -> anyhow::Result<Chain> {
        let account = signer.address();
        let url = url
            .parse()
            .with_context(|| format!("--eth-url {url:?} is not a URL"))?;
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(url)
            .erased();
        Ok(Chain { provider, account })
    }

    pub fn account(&self) -> Address {
        self.account
    }

    pub async fn chain_id(&self) -> anyhow::Result<u64> {
        self.provider
            .get_chain_id()
            .await
            .context("asking the Ethereum node for its chain id")
    }

    /// Checks that `d` was deployed on this node's chain and that its contracts exist.
    pub async fn check(&self, d: &Deployment) -> anyhow::Result<()> {
        let id = self.chain_id().await?;
        if id != d.chain_id {
            bail!(
                "the node is on chain {id}, the deployment file is for chain {}",
                d.chain_id
            );
        }
        for (name, addr) in [
            ("token", d.token),
            ("staking", d.staking),
            ("broker", d.broker),
        ] {
            if self.provider.get_code_at(addr).await?.is_empty() {
                bail!("no {name} contract at {addr} on chain {id}");
            }
        }
        Ok(())
    }

    pub async fn eth_balance(&self, who: Address) -> anyhow::Result<U256> {
        Ok(self.provider.get_balance(who).await?)
    }

    pub async fn block_timestamp(&self) -> anyhow::Result<u64> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await?
            .context("the node has no latest block")?;
        Ok(block.header.timestamp)
    }

    /// Deploys the token, staking and ticket broker contracts from this account, which
    /// becomes the token's minter and the staking contract's owner.
    pub async fn deploy(&self, p: DeployParams) -> anyhow::Result<Deployment> {
        let token = StakeToken::deploy(self.provider.clone())
            .await
            .context("deploying the stake token")?;
        let staking = Staking::deploy(
            self.provider.clone(),
            *token.address(),
            U256::from(p.unbonding_period_secs),
            U256::from(p.max_active),
        )
        .await
        .context("deploying the staking contract")?;
        let broker = TicketBroker::deploy(self.provider.clone(), U256::from(p.unlock_period_secs))
            .await
            .context("deploying the ticket broker")?;
        Ok(Deployment {
            chain_id: self.chain_id().await?,
            token: *token.address(),
            staking: *staking.address(),
            broker: *broker.address(),
        })
    }

    fn token(&self, d: &Deployment) -> StakeToken::StakeTokenInstance<DynProvider> {
        StakeToken::new(d.token, self.provider.clone())
    }

    fn staking(&self, d: &Deployment) -> Staking::StakingInstance<DynProvider> {
        Staking::new(d.staking, self.provider.clone())
    }

    fn broker(&self, d: &Deployment) -> TicketBroker::TicketBrokerInstance<DynProvider> {
        TicketBroker::new(d.broker, self.provider.clone())
    }

    // ----- stake token -----

    pub async fn token_balance(&self, d: &Deployment, who: Address) -> anyhow::Result<U256> {
        Ok(self.token(d).balanceOf(who).call().await?)
    }

    pub async fn mint(&self, d: &Deployment, to: Address, amount: U256) -> anyhow::Result<Mined> {
        let r = self
            .token(d)
            .mint(to, amount)
            .send()
            .await
            .context("mint")?;
        Mined::from_receipt("mint", r.get_receipt().await?)
    }

    // ----- staking -----

    /// Approves and bonds `amount` of this account's tokens to its own stake.
    pub async fn bond(&self, d: &Deployment, amount: U256) -> anyhow::Result<Mined> {
        let approve = self
            .token(d)
            .approve(d.staking, amount)
            .send()
            .await
            .context("approving the staking contract")?;
        Mined::from_receipt("approve", approve.get_receipt().await?)?;
        let r = self.staking(d).bond(amount).send().await.context("bond")?;
        Mined::from_receipt("bond", r.get_receipt().await?)
    }

    pub async fn unbond(&self, d: &Deployment, amount: U256) -> anyhow::Result<Mined> {
        let r = self
            .staking(d)
            .unbond(amount)
            .send()
            .await
            .context("unbond")?;
        Mined::from_receipt("unbond", r.get_receipt().await?)
    }

    pub async fn withdraw_unbonded(&self, d: &Deployment) -> anyhow::Result<Mined> {
        let r = self
            .staking(d)
            .withdrawUnbonded()
            .send()
            .await
            .context("withdraw")?;
        Mined::from_receipt("withdraw", r.get_receipt().await?)
    }

    pub async fn register(
        &self,
        d: &Deployment,
        price_per_unit: U256,
        pixels_per_unit: U256,
        service_uri: &str,
    ) -> anyhow::Result<Mined> {
        let r = self
            .staking(d)
            .register(price_per_unit, pixels_per_unit, service_uri.to_string())
            .send()
            .await
            .context("register")?;
        Mined::from_receipt("register", r.get_receipt().await?)
    }

    pub async fn set_verifier(
        &self,
        d: &Deployment,
        verifier: Address,
        allowed: bool,
    ) -> anyhow::Result<Mined> {
        let r = self
            .staking(d)
            .setVerifier(verifier, allowed)
            .send()
            .await
            .context("setVerifier")?;
        Mined::from_receipt("setVerifier", r.get_receipt().await?)
    }

    pub async fn slash(
        &self,
        d: &Deployment,
        orchestrator: Address,
        amount: U256,
        evidence_hash: B256,
    ) -> anyhow::Result<Mined> {
        let r = self
            .staking(d)
            .slash(orchestrator, amount, evidence_hash)
            .send()
            .await
            .context("slash")?;
        Mined::from_receipt("slash", r.get_receipt().await?)
    }

    pub async fn orchestrator(
        &self,
        d: &Deployment,
        who: Address,
    ) -> anyhow::Result<OrchestratorInfo> {
        let s = self.staking(d);
        let o = s.getOrchestrator(who).call().await?;
        let u = s.pendingUnbonding(who).call().await?;
        Ok(OrchestratorInfo {
            bonded: o.bonded,
            price_per_unit: o.pricePerUnit,
            pixels_per_unit: o.pixelsPerUnit,
            service_uri: o.serviceUri,
            registered: o.registered,
            unbonding: u.amount,
            withdrawable: u.withdrawable,
        })
    }

    /// The `Slashed` events of `orchestrator`: (verifier, amount, evidence hash).
    pub async fn slashed_events(
        &self,
        d: &Deployment,
        orchestrator: Address,
    ) -> anyhow::Result<Vec<(Address, U256, B256)>> {
        let logs = self
            .staking(d)
            .Slashed_filter()
            .from_block(0)
            .query()
            .await?;
        Ok(logs
            .into_iter()
            .map(|(e, _)| e)
            .filter(|e| e.orchestrator == orchestrator)
            .map(|e| (e.verifier, e.amount, e.evidenceHash))
            .collect())
    }

    pub async fn active_set(&self, d: &Deployment) -> anyhow::Result<Vec<Address>> {
        Ok(self.staking(d).activeSet().call().await?)
    }

    // ----- ticket broker -----

    pub async fn fund(
        &self,
        d: &Deployment,
        deposit: U256,
        reserve: U256,
    ) -> anyhow::Result<Mined> {
        let r = self
            .broker(d)
            .fundDepositAndReserve(deposit, reserve)
            .value(deposit + reserve)
            .send()
            .await
            .context("fundDepositAndReserve")?;
        Mined::from_receipt("fund", r.get_receipt().await?)
    }

    pub async fn sender_info(&self, d: &Deployment, sender: Address) -> anyhow::Result<SenderInfo> {
        let i = self.broker(d).getSenderInfo(sender).call().await?;
        Ok(SenderInfo {
            deposit: i.deposit,
            reserve: i.reserve,
            withdrawable_at: i.withdrawableAt.saturating_to(),
        })
    }

    fn contract_ticket(t: &Ticket) -> TicketBroker::Ticket {
        TicketBroker::Ticket {
            recipient: t.recipient,
            sender: t.sender,
            faceValue: t.face_value,
            winProb: t.win_prob,
            senderNonce: t.sender_nonce,
            recipientRandHash: t.recipient_rand_hash,
            expiresAt: t.expires_at,
        }
    }

    /// The contract's own EIP-712 digest of `t` (an `eth_call`).
    pub async fn contract_ticket_hash(&self, d: &Deployment, t: &Ticket) -> anyhow::Result<B256> {
        Ok(self
            .broker(d)
            .ticketHash(Self::contract_ticket(t))
            .call()
            .await?)
    }

    /// The contract's recovery of `sig` over `digest` (zero for a refused signature).
    pub async fn contract_recover(
        &self,
        d: &Deployment,
        digest: B256,
        sig: &[u8],
    ) -> anyhow::Result<Address> {
        Ok(self
            .broker(d)
            .recoverSigner(digest, Bytes::copy_from_slice(sig))
            .call()
            .await?)
    }

    /// The contract's lottery.
    pub async fn contract_is_winning(
        &self,
        d: &Deployment,
        sig: &[u8],
        rand: U256,
        win_prob: U256,
    ) -> anyhow::Result<bool> {
        Ok(self
            .broker(d)
            .isWinningTicket(Bytes::copy_from_slice(sig), rand, win_prob)
            .call()
            .await?)
    }

    pub async fn ticket_used(&self, d: &Deployment, digest: B256) -> anyhow::Result<bool> {
        Ok(self.broker(d).usedTickets(digest).call().await?)
    }

    /// Redeems a winning ticket; the contract pays its recipient.
    pub async fn redeem(
        &self,
        d: &Deployment,
        t: &Ticket,
        sig: &[u8],
        rand: U256,
    ) -> anyhow::Result<Mined> {
        let r = self
            .broker(d)
            .redeemWinningTicket(Self::contract_ticket(t), Bytes::copy_from_slice(sig), rand)
            .send()
            .await
            .context("redeemWinningTicket")?;
        Mined::from_receipt("redeemWinningTicket", r.get_receipt().await?)
    }
}
