//! The Rust ticket code against an independent implementation: the Solidity ticket broker
//! itself, asked with `eth_call` on a local anvil node.

use castwork_chain::devnet::{dev_key, Anvil};
use castwork_chain::ticket::{self, Ticket, TicketError, HALF_ORDER};
use castwork_chain::{Address, Chain, DeployParams, TicketDomain, B256, U256};

fn tickets(sender: Address) -> Vec<Ticket> {
    let base = Ticket {
        recipient: Address::repeat_byte(0x22),
        sender,
        face_value: U256::from(10u64).pow(U256::from(15u64)),
        win_prob: U256::MAX >> 1,
        sender_nonce: U256::from(1u64),
        recipient_rand_hash: ticket::recipient_rand_hash(U256::from(7u64)),
        expires_at: U256::from(2_000_000_000u64),
    };
    vec![
        base.clone(),
        Ticket {
            recipient: Address::ZERO,
            ..base.clone()
        },
        Ticket {
            face_value: U256::ZERO,
            ..base.clone()
        },
        Ticket {
            face_value: U256::MAX,
            ..base.clone()
        },
        Ticket {
            win_prob: U256::ZERO,
            ..base.clone()
        },
        Ticket {
            win_prob: U256::MAX,
            ..base.clone()
        },
        Ticket {
            sender_nonce: U256::ZERO,
            ..base.clone()
        },
        Ticket {
            sender_nonce: U256::MAX,
            ..base.clone()
        },
        Ticket {
            expires_at: U256::ZERO,
            ..base.clone()
        },
        Ticket {
            expires_at: U256::MAX,
            ..base.clone()
        },
        Ticket {
            recipient_rand_hash: B256::ZERO,
            ..base.clone()
        },
        Ticket {
            recipient_rand_hash: B256::repeat_byte(0xff),
            sender: Address::repeat_byte(0xee),
            ..base
        },
    ]
}

#[tokio::test]
async fn ticket_hashing_signing_recovery_and_lottery_agree_with_the_contract() {
    let anvil = Anvil::start().await.unwrap();
    let signer = dev_key(1);
    let chain = Chain::connect(&anvil.url, dev_key(0)).unwrap();
    let d = chain
        .deploy(DeployParams {
            unbonding_period_secs: 60,
            unlock_period_secs: 60,
            round_secs: 60,
            max_active: 3,
            slash_quorum: 2,
            slash_window_secs: 3600,
        })
        .await
        .unwrap();
    let domain = d.ticket_domain();
    let n: U256 = (HALF_ORDER << 1usize) + U256::from(1u64);
    for (i, t) in tickets(signer.address()).iter().enumerate() {
        let digest = t.hash(&domain);
        assert_eq!(
            chain.contract_ticket_hash(&d, t).await.unwrap(),
            digest,
            "ticket {i}: hash"
        );
        // Bound to the chain and the broker: other domains give other digests.
        for other in [
            TicketDomain {
                chain_id: 1,
                ..domain
            },
            TicketDomain {
                broker: Address::repeat_byte(1),
                ..domain
            },
        ] {
            assert_ne!(t.hash(&other), digest, "ticket {i}: domain binding");
        }
        let sig = t.sign(&signer, &domain).unwrap();
        assert_eq!(
            chain.contract_recover(&d, digest, &sig).await.unwrap(),
            signer.address(),
            "ticket {i}"
        );
        assert_eq!(
            ticket::recover(&digest, &sig).unwrap(),
            signer.address(),
            "ticket {i}"
        );
        // The malleable twin (n - s, other v) is refused by both.
        let mut twin = sig.to_vec();
        let s = U256::from_be_slice(&sig[32..64]);
        twin[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
        twin[64] = if sig[64] == 27 { 28 } else { 27 };
        assert_eq!(
            chain.contract_recover(&d, digest, &twin).await.unwrap(),
            Address::ZERO,
            "ticket {i}"
        );
        assert_eq!(ticket::recover(&digest, &twin), Err(TicketError::HighS));
        // So are a short signature and v of 0/1.
        assert_eq!(
            chain
                .contract_recover(&d, digest, &sig[..64])
                .await
                .unwrap(),
            Address::ZERO
        );
        assert_eq!(
            ticket::recover(&digest, &sig[..64]),
            Err(TicketError::SignatureLength)
        );
        let mut v01 = sig.to_vec();
        v01[64] -= 27;
        assert_eq!(
            chain.contract_recover(&d, digest, &v01).await.unwrap(),
            Address::ZERO
        );
        assert_eq!(ticket::recover(&digest, &v01), Err(TicketError::SignatureV));
        // The lottery, at the probability bounds and in between.
        for (rand, prob) in [
            (U256::ZERO, U256::ZERO),
            (U256::from(7u64), U256::MAX),
            (U256::MAX, U256::from(1u64) << 255usize),
            (U256::from(i as u64), U256::MAX >> 3),
            (U256::from(12345u64), t.win_prob),
        ] {
            assert_eq!(
                chain
                    .contract_is_winning(&d, &sig, rand, prob)
                    .await
                    .unwrap(),
                ticket::is_winning(&sig, rand, prob),
                "ticket {i}, rand {rand}, winProb {prob}"
            );
        }
    }
}
