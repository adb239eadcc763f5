//! The Ethereum client: one account on one node, with the deployed contracts.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alloy::network::Ethereum;
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, PendingTransactionBuilder, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolError as _;
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

    pub fn claim_domain(&self) -> crate::ClaimDomain {
        crate::ClaimDomain {
            chain_id: self.chain_id,
            staking: self.staking,
        }
    }
}

/// Contract parameters chosen at deployment.
#[derive(Debug, Clone, Copy)]
pub struct DeployParams {
    pub unbonding_period_secs: u64,
    pub unlock_period_secs: u64,
    /// Seconds per round of the ticket broker's reserve allocation.
    pub round_secs: u64,
    pub max_active: u64,
    /// Verifier votes a slash needs (at least 2).
    pub slash_quorum: u64,
    /// Seconds a slash proposal takes votes.
    pub slash_window_secs: u64,
}

/// A slash proposal against an orchestrator, as the staking contract holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlashProposal {
    pub id: B256,
    /// The verifier that proposed it.
    pub proposer: Address,
    /// The SHA-256 of the rendition it is about, and the claim's EIP-712 digest.
    pub rendition: B256,
    pub claim_hash: B256,
    pub amount: U256,
    /// Votes are taken until then (unix seconds).
    pub deadline: u64,
    pub votes: u64,
    pub executed: bool,
    pub evidence_hash: B256,
}

impl SlashProposal {
    /// One line for operators: what it takes, for what, on which evidence, and its votes
    /// against the deployment's `quorum`.
    pub fn describe(&self, quorum: u64) -> String {
        format!(
            "slash proposal {}: {} for rendition {} (claim {}), evidence keccak256 {}, by {}, \
             {} of {quorum} votes, {}",
            self.id,
            crate::cli::show_amount(self.amount),
            self.rendition,
            self.claim_hash,
            self.evidence_hash,
            self.proposer,
            self.votes,
            if self.executed {
                "slashed".to_string()
            } else {
                format!("open until unix time {}", self.deadline)
            }
        )
    }
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

/// A transaction that was sent but not seen mined (the receipt did not come within
/// [`RECEIPT_TIMEOUT`], or the node could not be asked): it may still be mined, so a caller
/// that retries should look at it ([`Chain::tx_state`]) before sending another.
#[derive(Debug, thiserror::Error)]
#[error("transaction {tx} was sent but not seen mined: {reason}")]
pub struct NotMined {
    pub tx: B256,
    pub reason: String,
}

/// Where a sent transaction is.
#[derive(Debug, Clone, Copy)]
pub enum TxState {
    Mined(Mined),
    Reverted,
    /// In the node's pool, not mined yet.
    Pending,
    /// The node does not know it (dropped, or never arrived).
    Unknown,
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

/// How long a sent transaction may wait to be mined before the call gives up with an
/// error (a node that stopped mining must not hang the redeemer or a CLI forever).
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// One account on one node.
///
/// Transactions from one `Chain` (and its clones) are sent one at a time: each takes the
/// account's next nonce (pending ones counted) from the node, and the next send waits until
/// the node has it. A send that fails before it reaches the node (a revert in gas
/// estimation, say) therefore leaves no gap in the account's nonces.
#[derive(Clone)]
pub struct Chain {
    provider: DynProvider,
    account: Address,
    /// Signs claims (off-chain messages); transactions go through the provider's wallet.
    signer: Arc<PrivateKeySigner>,
    sending: Arc<tokio::sync::Mutex<()>>,
}

impl Chain {
    /// Connects `signer` to the node at `url`.
    pub fn connect(url: &str, signer: PrivateKeySigner) -> anyhow::Result<Chain> {
        let account = signer.address();
        let claims_signer = signer.clone();
        let url = url
            .parse()
            .with_context(|| format!("--eth-url {url:?} is not a URL"))?;
        // Not `ProviderBuilder::new()`: its cached nonce manager keeps a nonce taken by a
        // send whose gas estimation then reverted, and every later transaction of the
        // account waits behind that gap forever.
        let provider = ProviderBuilder::default()
            .with_gas_estimation()
            .with_simple_nonce_management()
            .fetch_chain_id()
            .wallet(EthereumWallet::from(signer))
            .connect_http(url)
            .erased();
        Ok(Chain {
            provider,
            account,
            signer: Arc::new(claims_signer),
            sending: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// This account's signed claim for a segment it returns (see [`crate::claim`]).
    pub fn sign_claim(
        &self,
        d: &Deployment,
        claim: &crate::Claim,
    ) -> anyhow::Result<castwork_protocol::payment::SignedClaim> {
        let sig = claim.sign(&self.signer, &d.claim_domain())?;
        Ok(claim.to_wire(&sig))
    }

    /// Sends one transaction (`send`, not started until here) and waits for it to be mined,
    /// at most [`RECEIPT_TIMEOUT`]; fails with `what` and the reason when it is refused,
    /// reverts or is not mined in time.
    async fn transact(
        &self,
        what: &str,
        send: impl Future<Output = Result<PendingTransactionBuilder<Ethereum>, alloy::contract::Error>>,
    ) -> anyhow::Result<Mined> {
        let pending = {
            // Until the node has it in its pool, no other send may ask for the next nonce.
            let _one_at_a_time = self.sending.lock().await;
            send.await.with_context(|| format!("{what}: sending"))?
        };
        let tx = *pending.tx_hash();
        let receipt = pending
            .with_timeout(Some(RECEIPT_TIMEOUT))
            .get_receipt()
            .await
            .map_err(|e| {
                anyhow::Error::new(NotMined {
                    tx,
                    reason: e.to_string(),
                })
                .context(what.to_string())
            })?;
        Mined::from_receipt(what, receipt)
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
        let _one_at_a_time = self.sending.lock().await;
        let token = StakeToken::deploy(self.provider.clone())
            .await
            .context("deploying the stake token")?;
        let staking = Staking::deploy(
            self.provider.clone(),
            *token.address(),
            U256::from(p.unbonding_period_secs),
            U256::from(p.max_active),
            U256::from(p.slash_quorum),
            U256::from(p.slash_window_secs),
        )
        .await
        .context("deploying the staking contract")?;
        let broker = TicketBroker::deploy(
            self.provider.clone(),
            U256::from(p.unlock_period_secs),
            *staking.address(),
            U256::from(p.round_secs),
        )
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
        self.transact("mint", self.token(d).mint(to, amount).send())
            .await
    }

    // ----- staking -----

    /// Approves and bonds `amount` of this account's tokens to its own stake.
    pub async fn bond(&self, d: &Deployment, amount: U256) -> anyhow::Result<Mined> {
        self.transact("approve", self.token(d).approve(d.staking, amount).send())
            .await?;
        self.transact("bond", self.staking(d).bond(amount).send())
            .await
    }

    pub async fn unbond(&self, d: &Deployment, amount: U256) -> anyhow::Result<Mined> {
        self.transact("unbond", self.staking(d).unbond(amount).send())
            .await
    }

    pub async fn withdraw_unbonded(&self, d: &Deployment) -> anyhow::Result<Mined> {
        self.transact("withdraw", self.staking(d).withdrawUnbonded().send())
            .await
    }

    pub async fn register(
        &self,
        d: &Deployment,
        price_per_unit: U256,
        pixels_per_unit: U256,
        service_uri: &str,
    ) -> anyhow::Result<Mined> {
        self.transact(
            "register",
            self.staking(d)
                .register(price_per_unit, pixels_per_unit, service_uri.to_string())
                .send(),
        )
        .await
    }

    pub async fn set_verifier(
        &self,
        d: &Deployment,
        verifier: Address,
        allowed: bool,
    ) -> anyhow::Result<Mined> {
        self.transact(
            "setVerifier",
            self.staking(d).setVerifier(verifier, allowed).send(),
        )
        .await
    }

    /// Proposes to slash `amount` of the claim's orchestrator for rendition `bad` of its
    /// signed claim, citing `evidence_hash`; this account's vote counts. Returns the
    /// proposal's id.
    pub async fn propose_slash(
        &self,
        d: &Deployment,
        claim: &crate::Claim,
        signature: &alloy::primitives::Bytes,
        bad: usize,
        amount: U256,
        evidence_hash: B256,
    ) -> anyhow::Result<(Mined, B256)> {
        let rendition = *claim
            .renditions
            .get(bad)
            .context("the claim has no such rendition")?;
        let mut buf = claim.hash(&d.claim_domain()).to_vec();
        buf.extend_from_slice(rendition.as_slice());
        let id = alloy::primitives::keccak256(buf);
        let m = self
            .transact(
                "proposeSlash",
                self.staking(d)
                    .proposeSlash(
                        claim.to_sol(),
                        signature.clone(),
                        claim.renditions.clone(),
                        U256::from(bad),
                        amount,
                        evidence_hash,
                    )
                    .send(),
            )
            .await?;
        Ok((m, id))
    }

    /// Verifier votes a slash needs (set at deployment).
    pub async fn slash_quorum(&self, d: &Deployment) -> anyhow::Result<u64> {
        Ok(self.staking(d).slashQuorum().call().await?.saturating_to())
    }

    /// Votes for slash proposal `id`.
    pub async fn vote_slash(&self, d: &Deployment, id: B256) -> anyhow::Result<Mined> {
        self.transact("voteSlash", self.staking(d).voteSlash(id).send())
            .await
    }

    /// The slash proposals against `orchestrator`, oldest first, with their votes so far.
    pub async fn slash_proposals(
        &self,
        d: &Deployment,
        orchestrator: Address,
    ) -> anyhow::Result<Vec<SlashProposal>> {
        let staking = self.staking(d);
        let logs = staking.SlashProposed_filter().from_block(0).query().await?;
        let mut out = Vec::new();
        for (e, _) in logs
            .into_iter()
            .filter(|(e, _)| e.orchestrator == orchestrator)
        {
            let p = staking.proposals(e.id).call().await?;
            out.push(SlashProposal {
                id: e.id,
                proposer: e.verifier,
                rendition: e.rendition,
                claim_hash: e.claimHash,
                amount: e.amount,
                deadline: e.deadline.saturating_to(),
                votes: p.votes.saturating_to(),
                executed: p.executed,
                evidence_hash: e.evidenceHash,
            });
        }
        Ok(out)
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

    /// The `Slashed` events of `orchestrator`: (proposal id, amount, evidence hash).
    pub async fn slashed_events(
        &self,
        d: &Deployment,
        orchestrator: Address,
    ) -> anyhow::Result<Vec<(B256, U256, B256)>> {
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
            .map(|e| (e.id, e.amount, e.evidenceHash))
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
        let Some(value) = deposit.checked_add(reserve) else {
            bail!("deposit + reserve overflows 256 bits");
        };
        self.transact(
            "fund",
            self.broker(d)
                .fundDepositAndReserve(deposit, reserve)
                .value(value)
                .send(),
        )
        .await
    }

    pub async fn sender_info(&self, d: &Deployment, sender: Address) -> anyhow::Result<SenderInfo> {
        let i = self.broker(d).getSenderInfo(sender).call().await?;
        Ok(SenderInfo {
            deposit: i.deposit,
            reserve: i.reserve,
            withdrawable_at: i.withdrawableAt.saturating_to(),
        })
    }

    /// What `recipient` may still take from `sender`'s reserve (nothing unless it is in the
    /// active set; at most its share, reserve funded / max active).
    pub async fn claimable_reserve(
        &self,
        d: &Deployment,
        sender: Address,
        recipient: Address,
    ) -> anyhow::Result<U256> {
        Ok(self
            .broker(d)
            .claimableReserve(sender, recipient)
            .call()
            .await?)
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

    /// The broker's unlock period: how long a sender's funds stay after `unlock`.
    pub async fn unlock_period(&self, d: &Deployment) -> anyhow::Result<u64> {
        Ok(self.broker(d).unlockPeriod().call().await?.saturating_to())
    }

    /// Asks the node (`eth_call`) whether redeeming the ticket would succeed now:
    /// `Ok(None)` if so, `Ok(Some(reason))` with the contract's revert reason if not, and
    /// `Err` when the node could not be asked.
    pub async fn refusal_to_redeem(
        &self,
        d: &Deployment,
        t: &Ticket,
        sig: &[u8],
        rand: U256,
    ) -> anyhow::Result<Option<String>> {
        let broker = self.broker(d);
        let call =
            broker.redeemWinningTicket(Self::contract_ticket(t), Bytes::copy_from_slice(sig), rand);
        match call.call().await {
            Ok(_) => Ok(None),
            Err(e) => match e.as_revert_data() {
                Some(data) => Ok(Some(
                    alloy::sol_types::Revert::abi_decode(&data)
                        .map(|r| r.reason)
                        .unwrap_or_else(|_| format!("reverted with {data}")),
                )),
                None => Err(e).context("asking the node whether the ticket redeems"),
            },
        }
    }

    /// Where transaction `tx` is: mined (with its gas), reverted, pending or unknown.
    pub async fn tx_state(&self, tx: B256) -> anyhow::Result<TxState> {
        if let Some(r) = self.provider.get_transaction_receipt(tx).await? {
            return Ok(match Mined::from_receipt("", r) {
                Ok(m) => TxState::Mined(m),
                Err(_) => TxState::Reverted,
            });
        }
        Ok(match self.provider.get_transaction_by_hash(tx).await? {
            Some(_) => TxState::Pending,
            None => TxState::Unknown,
        })
    }

    /// Redeems a winning ticket; the contract pays its recipient.
    pub async fn redeem(
        &self,
        d: &Deployment,
        t: &Ticket,
        sig: &[u8],
        rand: U256,
    ) -> anyhow::Result<Mined> {
        self.transact(
            "redeemWinningTicket",
            self.broker(d)
                .redeemWinningTicket(Self::contract_ticket(t), Bytes::copy_from_slice(sig), rand)
                .send(),
        )
        .await
    }
}
