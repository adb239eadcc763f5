//! Claims: what an orchestrator signs (EIP-712, bound to the chain id and the staking
//! contract) for each segment it returns: the stream, the segment, the SHA-256 hashes of
//! its renditions and the fee. A slash must cite one: the staking contract checks the
//! orchestrator's signature over it, so a verifier cannot slash for a rendition the
//! orchestrator never returned. Agrees with `contracts/src/Staking.sol` (checked against the
//! contract on anvil by chain/tests/contracts.rs).

use alloy::primitives::{keccak256, Address, Bytes, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync as _;
use alloy::sol_types::{eip712_domain, Eip712Domain, SolStruct as _};
use castwork_protocol::payment::SignedClaim;

use crate::ticket::{parse_u256, recover};

mod typed {
    alloy::sol! {
        /// The EIP-712 type the orchestrator signs; field order and names are the contract's.
        struct Claim {
            address orchestrator;
            bytes32 stream;
            uint256 seq;
            bytes32 renditions;
            uint256 fee;
        }
    }
}

/// What a claim is bound to: one chain and one staking contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimDomain {
    pub chain_id: u64,
    pub staking: Address,
}

impl ClaimDomain {
    pub fn eip712(&self) -> Eip712Domain {
        eip712_domain! {
            name: "Castwork Staking",
            version: "1",
            chain_id: self.chain_id,
            verifying_contract: self.staking,
        }
    }
}

/// A claim, as the contract's `Claim` struct takes it, with the rendition hashes it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub orchestrator: Address,
    pub stream: String,
    pub seq: u64,
    /// SHA-256 of each rendition, in ladder order.
    pub renditions: Vec<B256>,
    pub fee: U256,
}

/// keccak256 of the hashes, concatenated: the contract's `keccak256(abi.encodePacked(...))`.
pub fn renditions_hash(renditions: &[B256]) -> B256 {
    let mut buf = Vec::with_capacity(32 * renditions.len());
    for r in renditions {
        buf.extend_from_slice(r.as_slice());
    }
    keccak256(buf)
}

impl Claim {
    fn typed(&self) -> typed::Claim {
        typed::Claim {
            orchestrator: self.orchestrator,
            stream: keccak256(self.stream.as_bytes()),
            seq: U256::from(self.seq),
            renditions: renditions_hash(&self.renditions),
            fee: self.fee,
        }
    }

    /// The contract's `Claim` argument.
    pub fn to_sol(&self) -> crate::contracts::Staking::Claim {
        let t = self.typed();
        crate::contracts::Staking::Claim {
            orchestrator: t.orchestrator,
            stream: t.stream,
            seq: t.seq,
            renditions: t.renditions,
            fee: t.fee,
        }
    }

    /// The EIP-712 digest the orchestrator signs (the contract's `claimHash`).
    pub fn hash(&self, domain: &ClaimDomain) -> B256 {
        self.typed().eip712_signing_hash(&domain.eip712())
    }

    /// Signs the claim; k256 signatures are always low-s.
    pub fn sign(&self, signer: &PrivateKeySigner, domain: &ClaimDomain) -> anyhow::Result<Bytes> {
        let sig = signer.sign_hash_sync(&self.hash(domain))?;
        Ok(Bytes::from(sig.as_bytes().to_vec()))
    }

    /// The wire form, with its signature.
    pub fn to_wire(&self, signature: &[u8]) -> SignedClaim {
        SignedClaim {
            orchestrator: self.orchestrator.to_checksum(None),
            stream: self.stream.clone(),
            seq: self.seq,
            renditions: self.renditions.iter().map(|r| r.to_string()).collect(),
            fee: self.fee.to_string(),
            signature: alloy::hex::encode_prefixed(signature),
        }
    }

    /// A claim and its signature from the wire, with the signature checked to be the
    /// claim's orchestrator's under `domain`.
    pub fn from_wire(w: &SignedClaim, domain: &ClaimDomain) -> anyhow::Result<(Claim, Bytes)> {
        let claim = Claim {
            orchestrator: w
                .orchestrator
                .parse()
                .map_err(|e| anyhow::anyhow!("claim orchestrator {:?}: {e}", w.orchestrator))?,
            stream: w.stream.clone(),
            seq: w.seq,
            renditions: w
                .renditions
                .iter()
                .map(|r| r.parse::<B256>())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("claim rendition hash: {e}"))?,
            fee: parse_u256(&w.fee).map_err(|e| anyhow::anyhow!("claim fee: {e}"))?,
        };
        let sig = alloy::hex::decode(&w.signature)
            .map_err(|e| anyhow::anyhow!("claim signature: {e}"))?;
        let signer = recover(&claim.hash(domain), &sig)?;
        if signer != claim.orchestrator {
            anyhow::bail!(
                "the claim for segment {} is signed by {signer}, not its orchestrator {}",
                w.seq,
                claim.orchestrator
            );
        }
        Ok((claim, Bytes::from(sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> ClaimDomain {
        ClaimDomain {
            chain_id: 31337,
            staking: Address::repeat_byte(0x5a),
        }
    }

    #[test]
    fn a_signed_claim_travels_and_is_checked() {
        let orch = PrivateKeySigner::random();
        let claim = Claim {
            orchestrator: orch.address(),
            stream: "s".into(),
            seq: 4,
            renditions: vec![B256::repeat_byte(1), B256::repeat_byte(2)],
            fee: U256::from(1234u64),
        };
        let sig = claim.sign(&orch, &domain()).unwrap();
        let wire = claim.to_wire(&sig);
        let (back, _) = Claim::from_wire(&wire, &domain()).unwrap();
        assert_eq!(back, claim);
        // Another signer, another domain or a changed field: refused.
        let other = PrivateKeySigner::random();
        let forged = claim.to_wire(&claim.sign(&other, &domain()).unwrap());
        assert!(Claim::from_wire(&forged, &domain()).is_err());
        let elsewhere = ClaimDomain {
            chain_id: 1,
            ..domain()
        };
        assert!(Claim::from_wire(&wire, &elsewhere).is_err());
        let mut changed = wire.clone();
        changed.fee = "1".into();
        assert!(Claim::from_wire(&changed, &domain()).is_err());
    }
}
