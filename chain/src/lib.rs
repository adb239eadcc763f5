//! Castwork's Ethereum side: bindings of the contracts in `contracts/`, EIP-712 payment
//! tickets, keystore accounts, and a client for the staking contract and the ticket broker.

pub mod claim;
pub mod cli;
pub mod client;
pub mod contracts;
pub mod devnet;
pub mod keystore;
pub mod ticket;

pub use alloy::primitives::{Address, Bytes, B256, U256};
pub use alloy::signers::local::PrivateKeySigner;
pub use claim::{Claim, ClaimDomain};
pub use client::{
    Chain, DeployParams, Deployment, Mined, NotMined, OrchestratorInfo, SenderInfo, SlashProposal,
    TxState,
};
pub use ticket::{Ticket, TicketDomain, TicketError};
