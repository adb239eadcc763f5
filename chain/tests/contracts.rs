//! The staking contract and the ticket broker on a local anvil node: a slash needs the
//! orchestrator's signed claim and a quorum of verifiers within a window, unbonding stake is
//! still slashable, registration needs stake and ends with it, a full active set admits only a
//! newcomer with more stake than its smallest member, a winning ticket the sender cannot pay
//! is refused and stays redeemable, and the reserve pays only recipients active since before
//! the round, each its share of the round's reserve.

use castwork_chain::devnet::{dev_key, increase_time, Anvil};
use castwork_chain::ticket::{self, Ticket};
use castwork_chain::{Address, Bytes, Chain, Claim, DeployParams, Deployment, B256, U256};

const UNBONDING_SECS: u64 = 1_000;
const UNLOCK_SECS: u64 = 100;
const ROUND_SECS: u64 = 50;
const SLASH_WINDOW_SECS: u64 = 500;

/// `n` thousandths of a token (or of an ETH).
fn milli(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(15u64))
}

/// Starts anvil and deploys the contracts from dev account 0.
async fn deployed(max_active: u64) -> (Anvil, Chain, Deployment) {
    let anvil = Anvil::start().await.unwrap();
    let owner = Chain::connect(&anvil.url, dev_key(0)).unwrap();
    let d = owner
        .deploy(DeployParams {
            unbonding_period_secs: UNBONDING_SECS,
            unlock_period_secs: UNLOCK_SECS,
            round_secs: ROUND_SECS,
            max_active,
            slash_quorum: 2,
            slash_window_secs: SLASH_WINDOW_SECS,
        })
        .await
        .unwrap();
    (anvil, owner, d)
}

/// Dev account `i`, minted `stake` tokens by the owner.
async fn account(anvil: &Anvil, owner: &Chain, d: &Deployment, i: usize, stake: U256) -> Chain {
    let c = Chain::connect(&anvil.url, dev_key(i)).unwrap();
    if stake > U256::ZERO {
        owner.mint(d, c.account(), stake).await.unwrap();
    }
    c
}

async fn bond_and_register(c: &Chain, d: &Deployment, stake: U256) {
    c.bond(d, stake).await.unwrap();
    c.register(d, U256::from(1u64), U256::from(1u64), "http://orchestrator")
        .await
        .unwrap();
}

/// A ticket that always wins, signed by dev account `sender`: (ticket, signature, rand).
fn winning_ticket(
    d: &Deployment,
    sender: usize,
    recipient: Address,
    face_value: U256,
    nonce: u64,
) -> (Ticket, Vec<u8>, U256) {
    let rand = U256::from(1_000 + nonce);
    let t = Ticket {
        recipient,
        sender: dev_key(sender).address(),
        face_value,
        win_prob: U256::MAX,
        sender_nonce: U256::from(nonce),
        recipient_rand_hash: ticket::recipient_rand_hash(rand),
        expires_at: U256::from(4_000_000_000u64),
    };
    let sig = t.sign(&dev_key(sender), &d.ticket_domain()).unwrap();
    (t, sig.to_vec(), rand)
}

/// A claim for segment `seq` of stream "s" with two renditions, signed by dev account
/// `signer` as orchestrator `orchestrator`.
fn claim(d: &Deployment, orchestrator: Address, signer: usize, seq: u64) -> (Claim, Bytes) {
    let c = Claim {
        orchestrator,
        stream: "s".into(),
        seq,
        renditions: vec![B256::repeat_byte(0xa1), B256::repeat_byte(0xa2)],
        fee: milli(1),
    };
    let sig = c.sign(&dev_key(signer), &d.claim_domain()).unwrap();
    (c, sig)
}

/// Slashes `amount` of dev account `orch` for segment `seq`: `first` proposes on its
/// signed claim, `second` votes; returns the proposal's id.
async fn slash(
    d: &Deployment,
    (first, second): (&Chain, &Chain),
    orch: usize,
    amount: U256,
    seq: u64,
    evidence: B256,
) -> B256 {
    let (c, sig) = claim(d, dev_key(orch).address(), orch, seq);
    let (_, id) = first
        .propose_slash(d, &c, &sig, 1, amount, evidence)
        .await
        .unwrap();
    second.vote_slash(d, id).await.unwrap();
    id
}

/// Asserts that `r` failed and that its message cites `reason`.
fn assert_reverted<T: std::fmt::Debug>(r: anyhow::Result<T>, reason: &str) {
    let e = r.expect_err(&format!("expected a revert with {reason:?}"));
    let text = format!("{e:#}");
    assert!(text.contains(reason), "expected {reason:?} in: {text}");
}

/// Slashing is bound to a claim the orchestrator signed, and needs two verifiers within the
/// window: a forged or missing claim, renditions the claim does not cover, a stranger, one
/// verifier alone, a vote twice or after the window: all refused. The proposal and its
/// evidence hash are on-chain before the slash lands.
#[tokio::test]
async fn a_slash_needs_a_signed_claim_and_a_quorum_within_its_window() {
    let (anvil, owner, d) = deployed(3).await;
    let orch = account(&anvil, &owner, &d, 2, milli(100)).await;
    let (v1, v2) = (
        account(&anvil, &owner, &d, 1, U256::ZERO).await,
        account(&anvil, &owner, &d, 3, U256::ZERO).await,
    );
    let stranger = account(&anvil, &owner, &d, 4, U256::ZERO).await;
    for v in [&v1, &v2] {
        owner.set_verifier(&d, v.account(), true).await.unwrap();
    }
    bond_and_register(&orch, &d, milli(100)).await;
    let evidence = B256::repeat_byte(0xee);
    let bonded = || async { orch.orchestrator(&d, orch.account()).await.unwrap().bonded };

    // Forged: a claim "by" the orchestrator signed by the verifier itself.
    let (c, forged) = claim(&d, orch.account(), 1, 7);
    assert_reverted(
        v1.propose_slash(&d, &c, &forged, 0, milli(10), evidence)
            .await,
        "the claim is not signed by its orchestrator",
    );
    // Missing: no signature at all.
    assert_reverted(
        v1.propose_slash(&d, &c, &Bytes::new(), 0, milli(10), evidence)
            .await,
        "the claim is not signed by its orchestrator",
    );
    // A real claim, changed after it was signed, or citing a rendition it does not have.
    let (real, sig) = claim(&d, orch.account(), 2, 7);
    let mut tampered = real.clone();
    tampered.renditions[1] = B256::repeat_byte(0x66);
    assert_reverted(
        v1.propose_slash(&d, &tampered, &sig, 1, milli(10), evidence)
            .await,
        "the claim is not signed by its orchestrator",
    );
    assert_reverted(
        v1.propose_slash(&d, &real, &sig, 2, milli(10), evidence)
            .await,
        "the claim has no such rendition",
    );
    // A stranger cannot propose.
    assert_reverted(
        stranger
            .propose_slash(&d, &real, &sig, 0, milli(10), evidence)
            .await,
        "only a verifier slashes",
    );

    // One verifier's proposal: on-chain for the orchestrator to see, and nothing taken.
    let (_, id) = v1
        .propose_slash(&d, &real, &sig, 1, milli(10), evidence)
        .await
        .unwrap();
    let seen = orch.slash_proposals(&d, orch.account()).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].id, id);
    assert_eq!(
        seen[0].claim_hash,
        real.hash(&d.claim_domain()),
        "Rust and the contract agree"
    );
    assert_eq!(
        (seen[0].proposer, seen[0].rendition, seen[0].evidence_hash),
        (v1.account(), real.renditions[1], evidence)
    );
    assert_eq!((seen[0].votes, seen[0].executed), (1, false));
    assert_eq!(
        bonded().await,
        milli(100),
        "one verifier alone cannot slash"
    );
    assert_reverted(
        v1.vote_slash(&d, id).await,
        "this verifier has already voted",
    );
    assert_reverted(
        v1.propose_slash(&d, &real, &sig, 1, milli(10), evidence)
            .await,
        "this rendition is already proposed for a slash",
    );
    assert_reverted(stranger.vote_slash(&d, id).await, "only a verifier slashes");
    assert_reverted(
        v2.vote_slash(&d, B256::repeat_byte(9)).await,
        "no such slash proposal",
    );

    // The second verifier's vote reaches the quorum: the slash lands.
    v2.vote_slash(&d, id).await.unwrap();
    assert_eq!(bonded().await, milli(90));
    assert_eq!(
        orch.slashed_events(&d, orch.account()).await.unwrap(),
        vec![(id, milli(10), evidence)]
    );
    assert_reverted(
        v2.vote_slash(&d, id).await,
        "this proposal has already slashed",
    );

    // A vote after the window does not count.
    let (_, late) = v1
        .propose_slash(&d, &real, &sig, 0, milli(10), evidence)
        .await
        .unwrap();
    increase_time(&anvil.url, SLASH_WINDOW_SECS + 1)
        .await
        .unwrap();
    assert_reverted(
        v2.vote_slash(&d, late).await,
        "the proposal's voting window has closed",
    );
    assert_eq!(bonded().await, milli(90));
}

#[tokio::test]
async fn unbonding_stake_is_still_slashed() {
    let (anvil, owner, d) = deployed(3).await;
    let orch = account(&anvil, &owner, &d, 2, milli(100)).await;
    let verifier = account(&anvil, &owner, &d, 1, U256::ZERO).await;
    let second = account(&anvil, &owner, &d, 3, U256::ZERO).await;
    for v in [&verifier, &second] {
        owner.set_verifier(&d, v.account(), true).await.unwrap();
    }
    bond_and_register(&orch, &d, milli(100)).await;
    // Two unbonds of 30 (one lock of 60); 40 stays bonded.
    orch.unbond(&d, milli(30)).await.unwrap();
    orch.unbond(&d, milli(30)).await.unwrap();
    let o = orch.orchestrator(&d, orch.account()).await.unwrap();
    assert_eq!((o.bonded, o.unbonding), (milli(40), milli(60)));

    // A slash of 80 takes the 40 bonded, then 40 of the unbonding stake.
    let hash = B256::repeat_byte(0xe1);
    let id = slash(&d, (&verifier, &second), 2, milli(80), 1, hash).await;
    let o = orch.orchestrator(&d, orch.account()).await.unwrap();
    assert_eq!(o.bonded, U256::ZERO);
    assert_eq!(o.unbonding, milli(20), "40 of the 60 unbonding was slashed");
    assert!(!o.registered, "a slash to zero bonded stake deregisters");
    assert_eq!(
        orch.slashed_events(&d, orch.account()).await.unwrap(),
        vec![(id, milli(80), hash)]
    );
    for v in [&verifier, &second] {
        assert_eq!(
            v.token_balance(&d, v.account()).await.unwrap(),
            milli(20),
            "half of what was taken goes to the two voters"
        );
    }

    // A slash larger than what is left takes what is left, even past the period.
    increase_time(&anvil.url, UNBONDING_SECS + 1).await.unwrap();
    let o = orch.orchestrator(&d, orch.account()).await.unwrap();
    assert_eq!(o.withdrawable, milli(20));
    let hash2 = B256::repeat_byte(0xe2);
    let id2 = slash(&d, (&verifier, &second), 2, milli(50), 2, hash2).await;
    let o = orch.orchestrator(&d, orch.account()).await.unwrap();
    assert_eq!((o.bonded, o.unbonding), (U256::ZERO, U256::ZERO));
    assert_eq!(
        orch.slashed_events(&d, orch.account()).await.unwrap()[1],
        (id2, milli(20), hash2)
    );
    let (c, sig) = claim(&d, orch.account(), 2, 3);
    let (_, id3) = verifier
        .propose_slash(&d, &c, &sig, 0, milli(1), B256::ZERO)
        .await
        .unwrap();
    assert_reverted(second.vote_slash(&d, id3).await, "nothing to slash");
    assert_reverted(
        orch.withdraw_unbonded(&d).await,
        "nothing is withdrawable yet",
    );
    assert_eq!(
        orch.token_balance(&d, orch.account()).await.unwrap(),
        U256::ZERO
    );
}

#[tokio::test]
async fn registration_needs_stake_and_ends_with_it() {
    let (anvil, owner, d) = deployed(3).await;
    let a = account(&anvil, &owner, &d, 2, milli(100)).await;
    let b = account(&anvil, &owner, &d, 3, milli(100)).await;
    let c = account(&anvil, &owner, &d, 4, milli(100)).await;
    let verifier = account(&anvil, &owner, &d, 1, U256::ZERO).await;
    let second = account(&anvil, &owner, &d, 5, U256::ZERO).await;
    for v in [&verifier, &second] {
        owner.set_verifier(&d, v.account(), true).await.unwrap();
    }

    assert_reverted(
        a.register(&d, U256::from(1u64), U256::from(1u64), "http://a")
            .await,
        "bond stake before registering",
    );
    assert!(!a.orchestrator(&d, a.account()).await.unwrap().registered);
    // Registered in the order a, b, c; the active set is by stake.
    bond_and_register(&a, &d, milli(10)).await;
    bond_and_register(&b, &d, milli(20)).await;
    bond_and_register(&c, &d, milli(30)).await;
    assert_eq!(
        a.active_set(&d).await.unwrap(),
        vec![c.account(), b.account(), a.account()]
    );

    // Unbonding everything deregisters (the first of the list: the last moves in its place).
    a.unbond(&d, milli(10)).await.unwrap();
    assert!(!a.orchestrator(&d, a.account()).await.unwrap().registered);
    assert_eq!(
        a.active_set(&d).await.unwrap(),
        vec![c.account(), b.account()]
    );
    // Unbonding part of the stake does not.
    c.unbond(&d, milli(15)).await.unwrap();
    assert!(c.orchestrator(&d, c.account()).await.unwrap().registered);
    assert_eq!(
        a.active_set(&d).await.unwrap(),
        vec![b.account(), c.account()]
    );
    // Nor does a slash that leaves stake; a slash to zero does (c moved to the first slot).
    slash(&d, (&verifier, &second), 4, milli(5), 1, B256::ZERO).await;
    assert!(c.orchestrator(&d, c.account()).await.unwrap().registered);
    slash(&d, (&verifier, &second), 4, milli(10), 2, B256::ZERO).await;
    let o = c.orchestrator(&d, c.account()).await.unwrap();
    assert_eq!(o.bonded, U256::ZERO);
    assert!(!o.registered);
    assert_eq!(a.active_set(&d).await.unwrap(), vec![b.account()]);

    // Bonding again does not register by itself; registering again works.
    a.bond(&d, milli(50)).await.unwrap();
    assert!(!a.orchestrator(&d, a.account()).await.unwrap().registered);
    assert_eq!(a.active_set(&d).await.unwrap(), vec![b.account()]);
    a.register(&d, U256::from(7u64), U256::from(2u64), "http://a-again")
        .await
        .unwrap();
    let o = a.orchestrator(&d, a.account()).await.unwrap();
    assert!(o.registered);
    assert_eq!(o.service_uri, "http://a-again");
    assert_eq!(
        a.active_set(&d).await.unwrap(),
        vec![a.account(), b.account()]
    );
    c.bond(&d, milli(5)).await.unwrap();
    bond_and_register(&c, &d, milli(1)).await;
    assert_eq!(
        a.active_set(&d).await.unwrap(),
        vec![a.account(), b.account(), c.account()]
    );
    // The list's bookkeeping holds after the moves: each can still leave.
    b.unbond(&d, milli(20)).await.unwrap();
    assert_eq!(
        a.active_set(&d).await.unwrap(),
        vec![a.account(), c.account()]
    );
    a.unbond(&d, milli(50)).await.unwrap();
    c.unbond(&d, milli(6)).await.unwrap();
    assert!(a.active_set(&d).await.unwrap().is_empty());
    for x in [&a, &b, &c] {
        assert!(!x.orchestrator(&d, x.account()).await.unwrap().registered);
    }
}

#[tokio::test]
async fn a_full_active_set_takes_a_newcomer_only_with_more_stake_than_its_smallest() {
    let (anvil, owner, d) = deployed(2).await;
    let a = account(&anvil, &owner, &d, 2, milli(100)).await;
    let b = account(&anvil, &owner, &d, 3, milli(100)).await;
    let c = account(&anvil, &owner, &d, 4, milli(100)).await;
    bond_and_register(&a, &d, milli(10)).await;
    bond_and_register(&b, &d, milli(20)).await;
    let is_active = |x: Address| {
        let a = &a;
        let d = &d;
        async move { a.active_set(d).await.unwrap().contains(&x) }
    };

    // Full: as much stake as the smallest member is not enough.
    c.bond(&d, milli(10)).await.unwrap();
    assert_reverted(
        c.register(&d, U256::from(1u64), U256::from(1u64), "http://c")
            .await,
        "the active set is full",
    );
    assert!(!c.orchestrator(&d, c.account()).await.unwrap().registered);
    // More stake than the smallest member (a) replaces it.
    c.bond(&d, milli(5)).await.unwrap();
    c.register(&d, U256::from(1u64), U256::from(1u64), "http://c")
        .await
        .unwrap();
    assert_eq!(
        a.active_set(&d).await.unwrap(),
        vec![b.account(), c.account()]
    );
    assert!(!a.orchestrator(&d, a.account()).await.unwrap().registered);
    assert!(!is_active(a.account()).await);
    // The evicted one comes back by outstaking the smallest (now c, 15): 25 in all.
    a.bond(&d, milli(15)).await.unwrap();
    a.register(&d, U256::from(1u64), U256::from(1u64), "http://a")
        .await
        .unwrap();
    assert_eq!(
        a.active_set(&d).await.unwrap(),
        vec![a.account(), b.account()]
    );
    assert!(is_active(a.account()).await && !is_active(c.account()).await);
    // A member updating its price is not a newcomer.
    b.register(&d, U256::from(9u64), U256::from(1u64), "http://b2")
        .await
        .unwrap();
    assert_eq!(
        b.orchestrator(&d, b.account()).await.unwrap().service_uri,
        "http://b2"
    );
}

#[tokio::test]
async fn a_ticket_the_sender_cannot_pay_is_refused_and_stays_redeemable() {
    let (anvil, owner, d) = deployed(3).await;
    let sender = account(&anvil, &owner, &d, 1, U256::ZERO).await;
    let recipient = dev_key(2).address();
    let (t, sig, rand) = winning_ticket(&d, 1, recipient, milli(3), 1);
    let digest = t.hash(&d.ticket_domain());

    // Nothing at the broker: refused, and not used up.
    assert_reverted(
        owner.redeem(&d, &t, &sig, rand).await,
        "sender has no funds for this ticket",
    );
    assert!(!owner.ticket_used(&d, digest).await.unwrap());

    // Once the sender funds its deposit, the same ticket redeems, for its face value.
    sender.fund(&d, milli(5), U256::ZERO).await.unwrap();
    let before = owner.eth_balance(recipient).await.unwrap();
    let m = owner.redeem(&d, &t, &sig, rand).await.unwrap();
    println!(
        "gas: redeemWinningTicket paid from the deposit: {}",
        m.gas_used
    );
    assert!(owner.ticket_used(&d, digest).await.unwrap());
    assert_eq!(
        owner.eth_balance(recipient).await.unwrap() - before,
        milli(3)
    );
    assert_eq!(
        owner
            .sender_info(&d, sender.account())
            .await
            .unwrap()
            .deposit,
        milli(2)
    );
    assert_reverted(
        owner.redeem(&d, &t, &sig, rand).await,
        "ticket is already used",
    );

    // A ticket the deposit covers in part is paid that part and used up.
    let (t2, sig2, rand2) = winning_ticket(&d, 1, recipient, milli(3), 2);
    owner.redeem(&d, &t2, &sig2, rand2).await.unwrap();
    assert_eq!(
        owner.eth_balance(recipient).await.unwrap() - before,
        milli(5)
    );
    assert!(owner
        .ticket_used(&d, t2.hash(&d.ticket_domain()))
        .await
        .unwrap());

    // A ticket with no face value pays nothing: refused.
    let (t3, sig3, rand3) = winning_ticket(&d, 1, recipient, U256::ZERO, 3);
    assert_reverted(
        owner.redeem(&d, &t3, &sig3, rand3).await,
        "ticket has no face value",
    );
}

#[tokio::test]
async fn the_reserve_pays_only_active_recipients_each_its_share_per_round() {
    // Two active slots: each eligible recipient may take half of the round's reserve.
    let (anvil, owner, d) = deployed(2).await;
    let sender = account(&anvil, &owner, &d, 1, U256::ZERO).await;
    let active = account(&anvil, &owner, &d, 2, milli(100)).await;
    // The sender's own account, not staked yet: a fake recipient.
    let fake = account(&anvil, &owner, &d, 3, milli(100)).await;
    let claimable = |r: Address| {
        let (owner, d, s) = (&owner, &d, sender.account());
        async move { owner.claimable_reserve(d, s, r).await.unwrap() }
    };
    let next_round = || increase_time(&anvil.url, ROUND_SECS);
    // Start just after a round began, so the steps below (seconds) stay within rounds.
    let now = owner.block_timestamp().await.unwrap();
    increase_time(&anvil.url, ROUND_SECS - now % ROUND_SECS + 1)
        .await
        .unwrap();
    bond_and_register(&active, &d, milli(100)).await;
    sender.fund(&d, milli(1), milli(1000)).await.unwrap();
    // Joined in this round: its share starts with the next one.
    assert_eq!(claimable(active.account()).await, U256::ZERO);
    next_round().await.unwrap();
    assert_eq!(claimable(active.account()).await, milli(500));
    assert_eq!(claimable(fake.account()).await, U256::ZERO);

    // The deposit pays any recipient; the reserve does not pay one outside the active set.
    let (t, sig, rand) = winning_ticket(&d, 1, fake.account(), milli(1000), 1);
    let before = owner.eth_balance(fake.account()).await.unwrap();
    owner.redeem(&d, &t, &sig, rand).await.unwrap();
    assert_eq!(
        owner.eth_balance(fake.account()).await.unwrap() - before,
        milli(1),
        "only the deposit"
    );
    let info = owner.sender_info(&d, sender.account()).await.unwrap();
    assert_eq!((info.deposit, info.reserve), (U256::ZERO, milli(1000)));
    let (t, sig, rand) = winning_ticket(&d, 1, fake.account(), milli(1000), 2);
    assert_reverted(
        owner.redeem(&d, &t, &sig, rand).await,
        "sender has no funds for this ticket",
    );
    assert!(!owner
        .ticket_used(&d, t.hash(&d.ticket_domain()))
        .await
        .unwrap());
    let fake_ticket = (t, sig, rand);

    // An eligible recipient gets at most reserve / maxActive in a round.
    let (t, sig, rand) = winning_ticket(&d, 1, active.account(), milli(1000), 3);
    let before = owner.eth_balance(active.account()).await.unwrap();
    let m = owner.redeem(&d, &t, &sig, rand).await.unwrap();
    println!(
        "gas: redeemWinningTicket paid from the reserve: {}",
        m.gas_used
    );
    assert_eq!(
        owner.eth_balance(active.account()).await.unwrap() - before,
        milli(500)
    );
    assert_eq!(reserve_left(&owner, &d, &sender).await, milli(500));
    assert_eq!(claimable(active.account()).await, U256::ZERO);
    // Its share is spent: the next ticket is refused, and waits.
    let (t, sig, rand) = winning_ticket(&d, 1, active.account(), milli(1000), 4);
    assert_reverted(
        owner.redeem(&d, &t, &sig, rand).await,
        "sender has no funds for this ticket",
    );
    // A recipient joining the active set during the round takes nothing in it.
    bond_and_register(&fake, &d, milli(100)).await;
    assert_eq!(claimable(fake.account()).await, U256::ZERO);
    let (ft, fsig, frand) = fake_ticket;
    assert_reverted(
        owner.redeem(&d, &ft, &fsig, frand).await,
        "sender has no funds for this ticket",
    );

    // The next round shares what is left (500) between the two members.
    next_round().await.unwrap();
    assert_eq!(claimable(active.account()).await, milli(250));
    assert_eq!(claimable(fake.account()).await, milli(250));
    owner.redeem(&d, &t, &sig, rand).await.unwrap();
    assert_eq!(
        owner.eth_balance(active.account()).await.unwrap() - before,
        milli(750)
    );
    let before = owner.eth_balance(fake.account()).await.unwrap();
    owner.redeem(&d, &ft, &fsig, frand).await.unwrap();
    assert_eq!(
        owner.eth_balance(fake.account()).await.unwrap() - before,
        milli(250)
    );
    assert_eq!(reserve_left(&owner, &d, &sender).await, U256::ZERO);
    // Funds added after the round's first claim wait for the next round's base.
    sender.fund(&d, U256::ZERO, milli(200)).await.unwrap();
    assert_eq!(claimable(active.account()).await, U256::ZERO);
    next_round().await.unwrap();
    assert_eq!(claimable(active.account()).await, milli(100));
    assert_eq!(claimable(fake.account()).await, milli(100));
}

/// What is left of `sender`'s reserve at the broker.
async fn reserve_left(observer: &Chain, d: &Deployment, sender: &Chain) -> U256 {
    observer
        .sender_info(d, sender.account())
        .await
        .unwrap()
        .reserve
}
