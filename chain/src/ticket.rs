//! Probabilistic micropayment tickets: EIP-712 hashing and signing bound to the chain id
//! and the ticket broker's address, low-s signature recovery, the lottery and its
//! expected-value arithmetic. Everything here agrees with `contracts/src/TicketBroker.sol`
//! (checked against the contract itself on anvil by the integration tests).

use alloy::primitives::{keccak256, Address, Bytes, B256, U256, U512};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync as _;
use alloy::sol_types::{eip712_domain, Eip712Domain, SolStruct as _};
use castwork_protocol::payment::{TicketParams, WireTicket};

mod typed {
    alloy::sol! {
        /// The EIP-712 type the sender signs; field order and names are the contract's.
        struct Ticket {
            address recipient;
            address sender;
            uint256 faceValue;
            uint256 winProb;
            uint256 senderNonce;
            bytes32 recipientRandHash;
            uint256 expiresAt;
        }
    }
}

/// secp256k1n / 2: signatures with a larger `s` are refused (the malleable twin of a
/// low-s signature would otherwise be a second, different lottery draw).
pub const HALF_ORDER: U256 = U256::from_be_slice(&[
    0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0x5D, 0x57, 0x6E, 0x73, 0x57, 0xA4, 0x50, 0x1D, 0xDF, 0xE9, 0x2F, 0x46, 0x68, 0x1B, 0x20, 0xA0,
]);

/// What a ticket is bound to: one chain and one broker contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketDomain {
    pub chain_id: u64,
    pub broker: Address,
}

impl TicketDomain {
    pub fn eip712(&self) -> Eip712Domain {
        eip712_domain! {
            name: "Castwork TicketBroker",
            version: "1",
            chain_id: self.chain_id,
            verifying_contract: self.broker,
        }
    }
}

/// A payment ticket, as the contract's `Ticket` struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub recipient: Address,
    pub sender: Address,
    pub face_value: U256,
    pub win_prob: U256,
    pub sender_nonce: U256,
    pub recipient_rand_hash: B256,
    pub expires_at: U256,
}

/// Why a ticket or its signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("malformed ticket: {0}")]
    Malformed(String),
    #[error("the signature is not 65 bytes")]
    SignatureLength,
    #[error("the signature's v must be 27 or 28")]
    SignatureV,
    #[error("the signature's s is in the upper half of the curve order (malleable)")]
    HighS,
    #[error("the signature does not recover: {0}")]
    Unrecoverable(String),
}

impl Ticket {
    fn typed(&self) -> typed::Ticket {
        typed::Ticket {
            recipient: self.recipient,
            sender: self.sender,
            faceValue: self.face_value,
            winProb: self.win_prob,
            senderNonce: self.sender_nonce,
            recipientRandHash: self.recipient_rand_hash,
            expiresAt: self.expires_at,
        }
    }

    /// The EIP-712 digest the sender signs (the contract's `ticketHash`).
    pub fn hash(&self, domain: &TicketDomain) -> B256 {
        self.typed().eip712_signing_hash(&domain.eip712())
    }

    /// Signs the ticket; k256 signatures are always low-s.
    pub fn sign(&self, signer: &PrivateKeySigner, domain: &TicketDomain) -> anyhow::Result<Bytes> {
        let sig = signer.sign_hash_sync(&self.hash(domain))?;
        Ok(Bytes::from(sig.as_bytes().to_vec()))
    }

    /// The ticket from its wire form (without its signature).
    pub fn from_wire(w: &WireTicket) -> Result<Ticket, TicketError> {
        let addr = |what: &str, s: &str| {
            s.parse::<Address>()
                .map_err(|e| TicketError::Malformed(format!("{what} {s:?}: {e}")))
        };
        let num = |what: &str, s: &str| {
            parse_u256(s).map_err(|e| TicketError::Malformed(format!("{what} {s:?}: {e}")))
        };
        Ok(Ticket {
            recipient: addr("recipient", &w.recipient)?,
            sender: addr("sender", &w.sender)?,
            face_value: num("face value", &w.face_value)?,
            win_prob: num("win probability", &w.win_prob)?,
            sender_nonce: U256::from(w.sender_nonce),
            recipient_rand_hash: w
                .recipient_rand_hash
                .parse::<B256>()
                .map_err(|e| TicketError::Malformed(format!("recipient rand hash: {e}")))?,
            expires_at: U256::from(w.expires_at),
        })
    }

    /// The wire form of this ticket with its signature. Nonces and expiry are `u64` on the
    /// wire; larger values only occur in the contract tests.
    pub fn to_wire(&self, signature: &[u8]) -> WireTicket {
        WireTicket {
            recipient: self.recipient.to_checksum(None),
            sender: self.sender.to_checksum(None),
            face_value: self.face_value.to_string(),
            win_prob: self.win_prob.to_string(),
            sender_nonce: self.sender_nonce.saturating_to(),
            recipient_rand_hash: self.recipient_rand_hash.to_string(),
            expires_at: self.expires_at.saturating_to(),
            signature: alloy::hex::encode_prefixed(signature),
        }
    }
}

/// A decimal or `0x` hexadecimal unsigned 256-bit integer.
pub fn parse_u256(s: &str) -> Result<U256, String> {
    let s = s.trim();
    let r = match s.strip_prefix("0x") {
        Some(hex) => U256::from_str_radix(hex, 16),
        None => U256::from_str_radix(s, 10),
    };
    r.map_err(|e| e.to_string())
}

/// The address that signed `digest`, refusing anything the contract refuses: not 65 bytes,
/// v other than 27/28, or a high s.
pub fn recover(digest: &B256, sig: &[u8]) -> Result<Address, TicketError> {
    if sig.len() != 65 {
        return Err(TicketError::SignatureLength);
    }
    let v = sig[64];
    if v != 27 && v != 28 {
        return Err(TicketError::SignatureV);
    }
    let s = U256::from_be_slice(&sig[32..64]);
    if s > HALF_ORDER {
        return Err(TicketError::HighS);
    }
    let parsed = alloy::primitives::Signature::from_bytes_and_parity(sig, v == 28);
    parsed
        .recover_address_from_prehash(digest)
        .map_err(|e| TicketError::Unrecoverable(e.to_string()))
}

/// The lottery: a ticket wins when keccak256(signature ‖ recipientRand) < winProb.
pub fn is_winning(sig: &[u8], recipient_rand: U256, win_prob: U256) -> bool {
    let mut buf = Vec::with_capacity(sig.len() + 32);
    buf.extend_from_slice(sig);
    buf.extend_from_slice(&recipient_rand.to_be_bytes::<32>());
    U256::from_be_bytes(keccak256(&buf).0) < win_prob
}

/// Expected value of a ticket: faceValue x winProb / 2^256, rounded down.
pub fn expected_value(face_value: U256, win_prob: U256) -> U256 {
    let product = U512::from(face_value) * U512::from(win_prob);
    U256::from(product >> 256)
}

/// The win probability giving a ticket of `face_value` an expected value of at least `ev`
/// (rounded up, at most 2^256 - 1: a ticket worth its face value always wins but for one
/// hash in 2^256).
pub fn win_prob_for(ev: U256, face_value: U256) -> U256 {
    if face_value.is_zero() {
        return U256::ZERO;
    }
    let scaled: U512 = U512::from(ev) << 256usize;
    let face = U512::from(face_value);
    let p = scaled.div_ceil(face);
    if p > U512::from(U256::MAX) {
        U256::MAX
    } else {
        U256::from(p)
    }
}

/// Tickets of `ev_each` needed to cover `fee` (at least one for a non-zero fee).
pub fn tickets_for(fee: U256, ev_each: U256) -> Option<u64> {
    if fee.is_zero() {
        return Some(0);
    }
    if ev_each.is_zero() {
        return None;
    }
    u64::try_from(fee.div_ceil(ev_each)).ok()
}

/// The orchestrator's recipientRand for one sender under one set of parameters:
/// keccak256(secret ‖ seed ‖ sender ‖ face value ‖ win probability). The secret never
/// leaves the orchestrator; the seed travels with the tickets. Each sender gets its own:
/// a recipientRand revealed by redeeming one sender's winning ticket says nothing about
/// another sender's tickets, or about the same sender's under another seed.
pub fn recipient_rand(
    secret: &B256,
    seed: &B256,
    sender: Address,
    face_value: U256,
    win_prob: U256,
) -> U256 {
    let mut buf = Vec::with_capacity(32 * 4 + 20);
    buf.extend_from_slice(secret.as_slice());
    buf.extend_from_slice(seed.as_slice());
    buf.extend_from_slice(sender.as_slice());
    buf.extend_from_slice(&face_value.to_be_bytes::<32>());
    buf.extend_from_slice(&win_prob.to_be_bytes::<32>());
    U256::from_be_bytes(keccak256(buf).0)
}

/// keccak256 of `data` (evidence hashes).
pub fn keccak(data: &[u8]) -> B256 {
    keccak256(data)
}

/// 32 random bytes from the operating system's CSPRNG (secrets and seeds).
pub fn random_b256() -> B256 {
    use rand::RngCore as _;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    B256::from(b)
}

/// keccak256 of the 32-byte big-endian recipientRand: the commitment put in tickets.
pub fn recipient_rand_hash(rand: U256) -> B256 {
    keccak256(rand.to_be_bytes::<32>())
}

/// The tickets a broadcaster signs for one payment: `count` tickets from `first_nonce`,
/// under the orchestrator's advertised parameters.
pub fn sign_tickets(
    params: &TicketParams,
    signer: &PrivateKeySigner,
    first_nonce: u64,
    count: u64,
) -> anyhow::Result<Vec<WireTicket>> {
    let domain = TicketDomain {
        chain_id: params.chain_id,
        broker: params.broker.parse()?,
    };
    let base = Ticket {
        recipient: params.recipient.parse()?,
        sender: signer.address(),
        face_value: parse_u256(&params.face_value).map_err(anyhow::Error::msg)?,
        win_prob: parse_u256(&params.win_prob).map_err(anyhow::Error::msg)?,
        sender_nonce: U256::ZERO,
        recipient_rand_hash: params.recipient_rand_hash.parse()?,
        expires_at: U256::from(params.expires_at),
    };
    (0..count)
        .map(|i| {
            let t = Ticket {
                sender_nonce: U256::from(first_nonce + i),
                ..base.clone()
            };
            let sig = t.sign(signer, &domain)?;
            Ok(t.to_wire(&sig))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            recipient: Address::repeat_byte(0x11),
            sender: Address::ZERO,
            face_value: U256::from(10u64).pow(U256::from(18u64)),
            win_prob: U256::MAX >> 4,
            sender_nonce: U256::from(7u64),
            recipient_rand_hash: recipient_rand_hash(U256::from(42u64)),
            expires_at: U256::from(2_000_000_000u64),
        }
    }

    /// Two senders under the same seed get unrelated recipientRands: one that sees the
    /// other's revealed (a redeemed winning ticket carries it) cannot tell its own winners.
    #[test]
    fn each_sender_has_its_own_recipient_rand() {
        let secret = random_b256();
        let seed = random_b256();
        let (a, b) = (PrivateKeySigner::random(), PrivateKeySigner::random());
        let (face, prob) = (U256::from(1000u64), U256::MAX >> 1);
        let rand_a = recipient_rand(&secret, &seed, a.address(), face, prob);
        let rand_b = recipient_rand(&secret, &seed, b.address(), face, prob);
        assert_ne!(rand_a, rand_b);
        assert_ne!(recipient_rand_hash(rand_a), recipient_rand_hash(rand_b));
        // The same sender under other parameters or another seed: another one too.
        assert_ne!(
            rand_b,
            recipient_rand(&secret, &seed, b.address(), face + U256::from(1u64), prob)
        );
        assert_ne!(
            rand_b,
            recipient_rand(&secret, &random_b256(), b.address(), face, prob)
        );
        // B, knowing A's recipientRand, predicts which of its 400 tickets win (half do):
        // its guesses are no better than a coin's.
        let domain = TicketDomain {
            chain_id: 31337,
            broker: Address::repeat_byte(0xbb),
        };
        let (mut right, mut wins) = (0, 0);
        for nonce in 0..400u64 {
            let t = Ticket {
                sender: b.address(),
                win_prob: prob,
                face_value: face,
                sender_nonce: U256::from(nonce),
                recipient_rand_hash: recipient_rand_hash(rand_b),
                ..ticket()
            };
            let sig = t.sign(&b, &domain).unwrap();
            let truth = is_winning(&sig, rand_b, prob);
            wins += usize::from(truth);
            right += usize::from(is_winning(&sig, rand_a, prob) == truth);
        }
        assert!((140..260).contains(&wins), "{wins} of 400 won at 1/2");
        assert!((140..260).contains(&right), "{right} of 400 guessed right");
    }

    #[test]
    fn a_signature_recovers_its_signer_and_is_low_s() {
        let signer = PrivateKeySigner::random();
        let domain = TicketDomain {
            chain_id: 31337,
            broker: Address::repeat_byte(0xbb),
        };
        let t = Ticket {
            sender: signer.address(),
            ..ticket()
        };
        let sig = t.sign(&signer, &domain).unwrap();
        assert_eq!(recover(&t.hash(&domain), &sig).unwrap(), signer.address());
        assert!(U256::from_be_slice(&sig[32..64]) <= HALF_ORDER);
        // The malleable twin (n - s, flipped v) is refused, not recovered.
        let n: U256 = (HALF_ORDER << 1usize) + U256::from(1u64);
        let mut twin = sig.to_vec();
        let s = U256::from_be_slice(&sig[32..64]);
        twin[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
        twin[64] = if sig[64] == 27 { 28 } else { 27 };
        assert_eq!(recover(&t.hash(&domain), &twin), Err(TicketError::HighS));
        // Another chain or broker is another digest: the signature recovers someone else.
        let other = TicketDomain {
            chain_id: 1,
            ..domain
        };
        assert_ne!(recover(&t.hash(&other), &sig).unwrap(), signer.address());
        assert_eq!(
            recover(&t.hash(&domain), &sig[..64]),
            Err(TicketError::SignatureLength)
        );
        let mut bad_v = sig.to_vec();
        bad_v[64] = 1;
        assert_eq!(
            recover(&t.hash(&domain), &bad_v),
            Err(TicketError::SignatureV)
        );
    }

    #[test]
    fn wire_form_round_trips() {
        let t = ticket();
        let w = t.to_wire(&[1u8; 65]);
        assert_eq!(Ticket::from_wire(&w).unwrap(), t);
        let mut bad = w.clone();
        bad.face_value = "12abc".into();
        assert!(matches!(
            Ticket::from_wire(&bad),
            Err(TicketError::Malformed(_))
        ));
        bad = w;
        bad.recipient = "0x12".into();
        assert!(matches!(
            Ticket::from_wire(&bad),
            Err(TicketError::Malformed(_))
        ));
    }

    #[test]
    fn win_probability_arithmetic_at_the_bounds() {
        let face = U256::from(1_000_000u64);
        // EV equal to the face value: the largest probability; its EV rounds down by one.
        assert_eq!(win_prob_for(face, face), U256::MAX);
        assert_eq!(expected_value(face, U256::MAX), face - U256::from(1u64));
        // More than the face value cannot be asked of one ticket.
        assert_eq!(win_prob_for(face * U256::from(2u64), face), U256::MAX);
        // Half the face value: exactly 2^255, and its EV is exact.
        let half = win_prob_for(face / U256::from(2u64), face);
        assert_eq!(half, U256::from(1u64) << 255);
        assert_eq!(expected_value(face, half), face / U256::from(2u64));
        // Rounding up keeps the EV at least what was asked, for awkward ratios.
        for (ev, f) in [(1u64, 3u64), (7, 1_000_000_007), (999, 1000), (1, u64::MAX)] {
            let p = win_prob_for(U256::from(ev), U256::from(f));
            assert!(expected_value(U256::from(f), p) >= U256::from(ev) - U256::from(1u64));
            assert!(expected_value(U256::from(f), p) <= U256::from(ev));
        }
        // Extremes do not overflow.
        assert_eq!(
            expected_value(U256::MAX, U256::MAX),
            U256::MAX - U256::from(1u64)
        );
        assert_eq!(win_prob_for(U256::MAX, U256::MAX), U256::MAX);
        assert_eq!(win_prob_for(U256::from(1u64), U256::MAX), U256::from(2u64));
        assert_eq!(win_prob_for(U256::from(1u64), U256::ZERO), U256::ZERO);
        assert_eq!(expected_value(U256::ZERO, U256::MAX), U256::ZERO);
        // Tickets to cover a fee.
        assert_eq!(tickets_for(U256::ZERO, U256::ZERO), Some(0));
        assert_eq!(tickets_for(U256::from(10u64), U256::ZERO), None);
        assert_eq!(tickets_for(U256::from(10u64), U256::from(3u64)), Some(4));
        assert_eq!(tickets_for(U256::MAX, U256::from(1u64)), None);
    }

    #[test]
    fn the_lottery_follows_the_probability() {
        let signer = PrivateKeySigner::random();
        let domain = TicketDomain {
            chain_id: 31337,
            broker: Address::repeat_byte(0xbb),
        };
        let rand = U256::from(123456789u64);
        let mut wins = 0;
        for nonce in 0..400u64 {
            let t = Ticket {
                sender: signer.address(),
                sender_nonce: U256::from(nonce),
                ..ticket()
            };
            let sig = t.sign(&signer, &domain).unwrap();
            assert!(!is_winning(&sig, rand, U256::ZERO));
            if is_winning(&sig, rand, U256::MAX >> 2) {
                wins += 1;
            }
        }
        // 1 in 4, 400 draws: 100 expected; 60..140 is beyond 4 standard deviations.
        assert!((60..140).contains(&wins), "{wins} wins of 400");
    }

    #[test]
    fn numbers_parse_in_decimal_and_hex() {
        assert_eq!(parse_u256("255").unwrap(), U256::from(255u64));
        assert_eq!(parse_u256("0xff").unwrap(), U256::from(255u64));
        assert!(parse_u256("-1").is_err());
        assert!(parse_u256(&format!("{}0", U256::MAX)).is_err());
    }
}
