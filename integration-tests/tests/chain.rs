//! On-chain mode against a real local chain (anvil): contracts deployed and driven through
//! the operators' CLIs, a stream paid with probabilistic tickets whose winners are redeemed
//! on-chain, bad tickets refused (replayed, expired, under-funded sender), an orchestrator
//! outside the active set refusing work, a cheating worker redone by an honest one, and a
//! cheating orchestrator caught by the broadcaster's own check and slashed; a live stream
//! paid with tickets whose winners wait out an orchestrator without gas money and a
//! restarted node, then are redeemed exactly once; winners whose sender ran dry wait for
//! it to fund the broker again.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use castwork_chain::devnet::{dev_key, set_balance, Anvil};
use castwork_chain::{Address, Chain, Deployment, U256};
use common::{bin, clip, http_get, pre_cut_segments, stream_name, wait_until, Cluster, Pusher};

const RUNG: &str = "P240p30fps16x9";
const PASSWORD: &str = "castwork-test";
/// 0.6 gwei per output pixel: a 2 s 240p segment (426 x 240 x 60 pixels) costs ~3.7e15 wei.
const PRICE: [&str; 4] = ["--price-per-unit", "600000000", "--pixels-per-unit", "1"];
/// Tickets of 1e15 wei winning half the time: 8 per segment, about 4 winners each.
const FACE_VALUE: u64 = 1_000_000_000_000_000;
const TICKETS: [&str; 4] = [
    "--ticket-face-value",
    "1000000000000000",
    "--ticket-ev",
    "500000000000000",
];

/// A local chain with the accounts of the test written as keystores.
struct Net {
    anvil: Anvil,
    dir: tempfile::TempDir,
    deployment: PathBuf,
}

impl Net {
    fn keystore(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("key{i}"))
    }

    /// `--eth-*` flags of dev account `i`.
    fn eth(&self, i: usize) -> Vec<String> {
        vec![
            "--eth-url".into(),
            self.anvil.url.clone(),
            "--eth-keystore-path".into(),
            self.keystore(i).display().to_string(),
            "--eth-password".into(),
            PASSWORD.into(),
            "--eth-deployment".into(),
            self.deployment.display().to_string(),
        ]
    }

    fn deployment(&self) -> Deployment {
        Deployment::load(&self.deployment).unwrap()
    }

    fn client(&self, i: usize) -> Chain {
        Chain::connect(&self.anvil.url, dev_key(i)).unwrap()
    }
}

/// Runs `binary ARGS`, asserting success; its stdout.
fn run_ok(binary: &str, args: &[String]) -> String {
    let out = Command::new(bin(binary)).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{binary} {args:?} failed:\n{stdout}\n{stderr}"
    );
    println!("$ {binary} {}\n{stdout}", args.join(" "));
    stdout
}

fn args(parts: &[&str], eth: &[String]) -> Vec<String> {
    parts
        .iter()
        .map(|s| s.to_string())
        .chain(eth.iter().cloned())
        .collect()
}

/// A chain with the contracts deployed by account 0 (verifier: account 1, the
/// broadcaster), orchestrator account 2 minted, bonded and registered, and broadcaster
/// account 1 funded with 1 ETH deposit and 1 ETH reserve.
fn setup(rt: &tokio::runtime::Runtime) -> Net {
    let anvil = rt.block_on(Anvil::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deployment = dir.path().join("deployment.json");
    let net = Net {
        anvil,
        dir,
        deployment,
    };
    for i in 0..5 {
        castwork_chain::keystore::create(&net.keystore(i), PASSWORD, Some(&dev_key(i))).unwrap();
    }
    let broadcaster = dev_key(1).address().to_string();
    let orchestrator = dev_key(2).address().to_string();
    // A second verifier: a slash needs two votes (the deployment's default quorum).
    let verifier = dev_key(3).address().to_string();
    let deploy = net.deployment.display().to_string();
    run_ok(
        "orchestrator",
        &args(
            &[
                "chain",
                "deploy",
                &deploy,
                "--max-active",
                "1",
                "--verifier",
                &broadcaster,
                "--verifier",
                &verifier,
            ],
            &net.eth(0),
        ),
    );
    run_ok(
        "orchestrator",
        &args(&["chain", "mint", &orchestrator, "1000eth"], &net.eth(0)),
    );
    run_ok(
        "orchestrator",
        &args(&["chain", "bond", "100eth"], &net.eth(2)),
    );
    let mut reg: Vec<String> = PRICE.iter().map(|s| s.to_string()).collect();
    reg.extend(args(
        &["chain", "register", "--service-uri", "http://orchestrator"],
        &net.eth(2),
    ));
    run_ok("orchestrator", &reg);
    run_ok(
        "broadcaster",
        &args(
            &["chain", "deposit", "--deposit", "1eth", "--reserve", "1eth"],
            &net.eth(1),
        ),
    );
    net
}

fn orchestrator_args(net: &Net, extra: &[&str]) -> Vec<String> {
    let mut a = net.eth(2);
    a.extend(PRICE.iter().map(|s| s.to_string()));
    a.extend(TICKETS.iter().map(|s| s.to_string()));
    a.extend(["--chain-refresh-secs".to_string(), "1".to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn push_args(net: &Net, cluster: &Cluster, account: usize, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["--profiles".to_string(), RUNG.to_string()];
    a.extend(net.eth(account));
    a.extend([
        "--orchestrator-url".to_string(),
        format!("http://{}", cluster.orchestrator_addr),
        "--max-price-per-unit".to_string(),
        "1000000000".to_string(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn metric(cluster: &Cluster, line_start: &str) -> f64 {
    metric_sum(&[&cluster.orchestrator_addr], line_start)
}

/// The sum of a metric over the orchestrators at `addrs`.
fn metric_sum(addrs: &[&str], line_start: &str) -> f64 {
    addrs
        .iter()
        .map(|a| {
            let (_, m) = http_get(a, "/metrics").unwrap();
            m.lines()
                .find(|l| l.starts_with(line_start))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        })
        .sum()
}

/// The orchestrator's count of tickets with `outcome` (accepted, won, refused, replayed).
fn ticket_count(cluster: &Cluster, outcome: &str) -> f64 {
    metric(
        cluster,
        &format!("castwork_orchestrator_tickets_total{{outcome=\"{outcome}\"}}"),
    )
}

/// The count of winning-ticket redemptions with `outcome` (redeemed, already_redeemed,
/// expired, failed) over the orchestrators at `addrs`.
fn redemption_count(addrs: &[&str], outcome: &str) -> f64 {
    metric_sum(
        addrs,
        &format!("castwork_orchestrator_ticket_redemptions_total{{outcome=\"{outcome}\"}}"),
    )
}

/// Asserts that `chain status` shows `won` redemptions, none waiting and none given up.
fn assert_all_redeemed(status: &str, won: f64) {
    assert!(
        status.contains(&format!("tickets        {won} redeemed (mean gas"))
            && status.contains("0 waiting, 0 given up"),
        "{status}"
    );
}

/// What `sender` lost at the broker (deposit + reserve) since `before`.
fn spent_since(
    rt: &tokio::runtime::Runtime,
    observer: &Chain,
    d: &Deployment,
    sender: Address,
    before: castwork_chain::SenderInfo,
) -> U256 {
    let after = rt.block_on(observer.sender_info(d, sender)).unwrap();
    (before.deposit + before.reserve) - (after.deposit + after.reserve)
}

/// `orchestrator chain status` of the orchestrator (account 2) of `cluster`.
fn chain_status(net: &Net, cluster: &Cluster) -> String {
    run_ok(
        "orchestrator",
        &args(
            &["--redis-url", cluster.redis_url(), "chain", "status"],
            &net.eth(2),
        ),
    )
}

#[test]
fn a_stream_paid_with_tickets_has_its_winners_redeemed_and_bad_payments_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = setup(&rt);
    let d = net.deployment();
    let orch = dev_key(2).address();
    let sender = dev_key(1).address();
    let observer = net.client(0);
    let status = run_ok(
        "orchestrator",
        &args(
            &["--redis-url", "redis://127.0.0.1:1/", "chain", "status"],
            &net.eth(2),
        ),
    );
    assert!(status.contains("active set     yes (#1 of 1)"), "{status}");

    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    // Every result's pictures checked, a worker banned after one bad result; the first
    // worker cheats (black frames).
    let oargs = orchestrator_args(
        &net,
        &["--quality-sample-rate", "1", "--max-bad-results", "1"],
    );
    let mut cluster = Cluster::start_with(0, &refs(&oargs), Vec::new());
    cluster.add(
        "worker",
        &["--worker-id", "cheater", "--test-only-cheat-black"],
    );
    let cheater = cluster.pids("worker")[0];

    // The orchestrator advertises its ticket parameters, made for one sender: two senders
    // asking at once get different recipientRand hashes, and nobody gets any unnamed.
    let offer_for = |who: Option<Address>| {
        let path = who.map_or("/price".to_string(), |a| format!("/price?sender={a}"));
        let (code, offer) = http_get(&cluster.orchestrator_addr, &path).unwrap();
        assert_eq!(code, 200, "{offer}");
        serde_json::from_str::<serde_json::Value>(&offer).unwrap()
    };
    let offer = offer_for(Some(sender));
    let other = offer_for(Some(dev_key(3).address()));
    assert_ne!(
        offer["ticket_params"]["recipient_rand_hash"],
        other["ticket_params"]["recipient_rand_hash"]
    );
    assert!(offer_for(None).get("ticket_params").is_none());
    let (code, _) = http_get(&cluster.orchestrator_addr, "/price?sender=nobody").unwrap();
    assert_eq!(code, 400);
    let params = &offer["ticket_params"];
    assert_eq!(params["recipient"], orch.to_string(), "{offer}");
    assert_eq!(params["face_value"], FACE_VALUE.to_string(), "{offer}");
    assert_eq!(params["chain_id"], 31337, "{offer}");
    assert_eq!(params["broker"], d.broker.to_string(), "{offer}");
    assert_eq!(offer["active"], true, "{offer}");

    let orch_eth_before = rt.block_on(observer.eth_balance(orch)).unwrap();
    let funds_before = rt.block_on(observer.sender_info(&d, sender)).unwrap();
    let stream = stream_name("paid");
    let pa = push_args(&net, &cluster, 1, &["--verify-sample-rate", "1"]);
    let mut push = cluster.push_in_background(&input, &stream, &refs(&pa));
    wait_until(
        "the cheating worker to be banned",
        Duration::from_secs(90),
        || cluster.exit_status(cheater).is_some(),
    );
    cluster.add("worker", &["--worker-id", "honest"]);
    let pushed = push.wait().unwrap();
    let out =
        std::fs::read_to_string(cluster.dir.path().join(format!("push-{stream}.out"))).unwrap();
    assert!(pushed.success(), "{out}\n{}", cluster.logs());
    assert!(
        out.contains("verified 3 sampled segments: 0 bad renditions"),
        "{out}"
    );
    let logs = cluster.logs();
    assert!(logs.contains("quality check failed: luma PSNR"), "{logs}");
    let accepted: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("segment accepted") && l.contains(&stream))
        .collect();
    assert_eq!(accepted.len(), 3, "{logs}");
    assert!(accepted.iter().all(|l| l.contains("\"honest\"")), "{logs}");

    // Every ticket was accepted once; the winners are redeemed on-chain.
    let tickets = ticket_count(&cluster, "accepted");
    let won = ticket_count(&cluster, "won");
    assert_eq!(tickets, 24.0, "8 tickets per segment");
    assert!(won >= 1.0, "no winning ticket among 24 at 1/2 (odds 6e-8)");
    wait_until(
        "the winners to be redeemed",
        Duration::from_secs(60),
        || redemption_count(&[&cluster.orchestrator_addr], "redeemed") == won,
    );
    let paid = spent_since(&rt, &observer, &d, sender, funds_before);
    assert_eq!(
        paid,
        U256::from(FACE_VALUE) * U256::from(won as u64),
        "the sender paid each winner's face value"
    );
    let orch_eth_after = rt.block_on(observer.eth_balance(orch)).unwrap();
    assert!(
        orch_eth_after > orch_eth_before,
        "the orchestrator earned more than its gas"
    );
    let status = chain_status(&net, &cluster);
    assert_all_redeemed(&status, won);
    let gas: u64 = status
        .split("mean gas ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    println!("gas used per redemption: {gas}");
    assert!((50_000..200_000).contains(&gas), "{gas}");
    // The ledger holds what the tickets were worth less what the segments cost.
    let ledger = run_ok(
        "orchestrator",
        &[
            "--redis-url".into(),
            cluster.redis_url().to_string(),
            "ledger".into(),
            "show".into(),
        ],
    );
    assert!(ledger.contains(&sender.to_string()), "{ledger}");

    // Replays: every segment pays with the first segment's tickets, and the first is
    // submitted twice (a redelivery, which is not a replay and credits nothing more).
    cluster.add("worker", &["--worker-id", "honest-2"]);
    let replay = stream_name("replay");
    let pa = push_args(&net, &cluster, 1, &["--test-only-tickets", "reuse"]);
    let out = cluster.push(&input, &replay, &refs(&pa));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("2 of 3 segments failed"), "{err}");
    assert!(
        err.contains("replayed ticket")
            && err.contains(&format!("already used for segment {replay}/0")),
        "{err}"
    );
    assert_eq!(
        ticket_count(&cluster, "accepted"),
        32.0,
        "the redelivered first segment credited its 8 tickets once"
    );

    // Expired tickets.
    let pa = push_args(&net, &cluster, 1, &["--test-only-tickets", "expired"]);
    let out = cluster.push(&input, &stream_name("expired"), &refs(&pa));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("3 of 3 segments failed"),
        "{err}"
    );
    assert!(err.contains("expired at"), "{err}");

    // Parameters the orchestrator made for another sender: the recipientRand is the
    // other's, and tickets this sender signs under it are refused.
    let pa = push_args(&net, &cluster, 1, &["--test-only-tickets", "others-params"]);
    let out = cluster.push(&input, &stream_name("others"), &refs(&pa));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("3 of 3 segments failed"),
        "{err}"
    );
    assert!(
        err.contains("is not this orchestrator's for seed")
            && err.contains(&format!("and sender {sender}")),
        "{err}"
    );

    // Every payment under one set of parameters: once a ticket under them has won (each
    // ticket does at 1/2, 8 per segment), the next payment under them is refused.
    let spent = stream_name("spent");
    let pa = push_args(&net, &cluster, 1, &["--test-only-tickets", "spent"]);
    let out = cluster.push(&input, &spent, &refs(&pa));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("was revealed by a winning ticket"), "{err}");
    assert!(
        err.contains(&format!("paid with for segment {spent}/")),
        "{err}"
    );

    // An account with nothing at the broker is refused.
    let pa = push_args(&net, &cluster, 4, &[]);
    let out = cluster.push(&input, &stream_name("broke"), &refs(&pa));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("under-funded: sender") && err.contains("broadcaster chain deposit"),
        "{err}"
    );

    // Unbonding everything drops the orchestrator out of the active set: it refuses work.
    let unbond = run_ok(
        "orchestrator",
        &args(&["chain", "unbond", "100eth"], &net.eth(2)),
    );
    assert!(unbond.contains("stake now 0"), "{unbond}");
    let withdraw = Command::new(bin("orchestrator"))
        .args(args(&["chain", "withdraw"], &net.eth(2)))
        .output()
        .unwrap();
    assert!(!withdraw.status.success());
    assert!(String::from_utf8_lossy(&withdraw.stderr).contains("nothing is withdrawable yet"));
    std::thread::sleep(Duration::from_secs(2));
    let out = cluster.push(
        &input,
        &stream_name("inactive"),
        &refs(&push_args(&net, &cluster, 1, &[])),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is not in the active set"), "{err}");
}

#[test]
fn a_cheating_orchestrator_is_caught_by_the_broadcaster_and_slashed_on_chain() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = setup(&rt);
    let d = net.deployment();
    let orch = dev_key(2).address();
    let verifier = dev_key(1).address();
    let observer = net.client(0);
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    // The orchestrator skips its own checks; its only worker outputs black frames.
    let oargs = orchestrator_args(&net, &["--test-only-skip-checks"]);
    let mut cluster = Cluster::start_with(0, &refs(&oargs), Vec::new());
    cluster.add(
        "worker",
        &["--worker-id", "cheater", "--test-only-cheat-black"],
    );
    let stake_before = rt.block_on(observer.orchestrator(&d, orch)).unwrap().bonded;
    let tokens_before = rt.block_on(observer.token_balance(&d, verifier)).unwrap();
    let stream = stream_name("cheat");
    let pa = push_args(
        &net,
        &cluster,
        1,
        &["--verify-sample-rate", "1", "--slash-amount", "10eth"],
    );
    let out = cluster.push(&input, &stream, &refs(&pa));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("verification FAILED: segment 0 rendition P240p30fps16x9: luma PSNR"),
        "{err}"
    );
    // The evidence is stored, with the orchestrator's signed claim for the segment; the
    // broadcaster proposes the slash on it, citing the evidence's hash.
    let evidence = cluster
        .storage_dir()
        .join(format!("evidence/{stream}/0-{RUNG}.json"));
    let json = std::fs::read(&evidence).unwrap();
    let hash = castwork_chain::ticket::keccak(&json);
    assert!(err.contains(&hash.to_string()), "{err}");
    let e: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(e["orchestrator"], orch.to_string());
    assert!(
        e["measured"].as_str().unwrap().starts_with("luma PSNR"),
        "{e}"
    );
    assert_eq!(e["claim"]["orchestrator"], orch.to_string(), "{e}");
    assert_eq!(e["claim"]["seq"], 0, "{e}");
    assert!(
        err.contains(&format!("proposed slashing orchestrator {orch}"))
            && err.contains("1 of 2 verifier votes"),
        "{err}"
    );
    let proposals = rt.block_on(observer.slash_proposals(&d, orch)).unwrap();
    assert_eq!(proposals.len(), 1, "{proposals:?}");
    let id = proposals[0].id;
    assert_eq!(proposals[0].evidence_hash, hash);
    // One verifier alone slashes nothing; the orchestrator sees the proposal first.
    assert_eq!(
        rt.block_on(observer.orchestrator(&d, orch)).unwrap().bonded,
        stake_before
    );
    let status = chain_status(&net, &cluster);
    assert!(
        status.contains(&format!("slash proposal {id}")) && status.contains("1 of 2 votes"),
        "{status}"
    );
    // The second verifier lists it, votes, and the slash lands.
    let listed = run_ok(
        "broadcaster",
        &args(
            &["chain", "slash-proposals", &orch.to_string()],
            &net.eth(3),
        ),
    );
    assert!(listed.contains(&hash.to_string()), "{listed}");
    let voted = run_ok(
        "broadcaster",
        &args(&["chain", "vote-slash", &id.to_string()], &net.eth(3)),
    );
    assert!(voted.contains("voted for slash proposal"), "{voted}");
    let stake_after = rt.block_on(observer.orchestrator(&d, orch)).unwrap().bonded;
    let ten = U256::from(10u64) * U256::from(10u64).pow(U256::from(18u64));
    assert_eq!(stake_before - stake_after, ten, "10 tokens slashed");
    let tokens_after = rt.block_on(observer.token_balance(&d, verifier)).unwrap();
    assert_eq!(
        tokens_after - tokens_before,
        ten / U256::from(4u64),
        "half to the two voters"
    );
    let events = rt.block_on(observer.slashed_events(&d, orch)).unwrap();
    assert_eq!(
        events,
        vec![(id, ten, hash)],
        "the contract's Slashed event"
    );
}

#[test]
fn a_live_stream_is_paid_with_tickets_and_its_winners_survive_a_node_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut net = setup(&rt);
    let d = net.deployment();
    let orch = dev_key(2).address();
    let sender = dev_key(1).address();
    let observer = net.client(0);
    let oargs = orchestrator_args(&net, &[]);
    let mut cluster = Cluster::start_with(1, &refs(&oargs), Vec::new());
    // A second process of the same orchestrator shares the segments (and the queue of
    // winners: only one of them may redeem).
    let second = format!("127.0.0.1:{}", common::free_port());
    let mut oargs2 = oargs.clone();
    oargs2.extend(["--http-addr".to_string(), second.clone()]);
    cluster.add("orchestrator", &refs(&oargs2));
    wait_until("the second orchestrator", Duration::from_secs(30), || {
        http_get(&second, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    let both = [cluster.orchestrator_addr.clone(), second];
    let sum = |line: &str| metric_sum(&[&both[0], &both[1]], line);
    // The orchestrator cannot pay for gas: its winners wait in the queue.
    rt.block_on(set_balance(&net.anvil.url, orch, U256::ZERO))
        .unwrap();
    let funds_before = rt.block_on(observer.sender_info(&d, sender)).unwrap();

    let mut serve: Vec<String> = vec![
        "--live-orchestrator-url".into(),
        format!("http://{}", cluster.orchestrator_addr),
        "--live-max-price-per-unit".into(),
        "1000000000".into(),
    ];
    serve.extend(net.eth(1));
    let live = cluster.serve_live(&refs(&serve));
    let segs = pre_cut_segments(cluster.dir.path(), 6);
    assert_eq!(segs.len(), 3);
    let stream = stream_name("live-paid");
    let mut pusher = Pusher::new(&live, &stream);
    for (i, seg) in segs.iter().enumerate() {
        let a = pusher.put(i as u64, seg);
        assert_eq!(a.status, 200, "{}\n{}", a.text(), cluster.logs());
    }
    let tickets = sum("castwork_orchestrator_tickets_total{outcome=\"accepted\"}");
    let won = sum("castwork_orchestrator_tickets_total{outcome=\"won\"}");
    // Two rungs of 2 s at 0.6 gwei per pixel, paid with tickets worth 5e14 wei each.
    assert!(tickets >= 3.0 * 16.0, "{tickets} tickets for 3 segments");
    assert!(won >= 1.0, "no winning ticket among {tickets} at 1/2");
    let logs = cluster.logs();
    let accepted = logs
        .lines()
        .filter(|l| l.contains("segment accepted") && l.contains(&stream))
        .count();
    assert_eq!(accepted, 3, "{logs}");
    wait_until(
        "a redemption to fail for want of gas money",
        Duration::from_secs(30),
        || cluster.logs().contains("redeeming winning ticket"),
    );
    let redeemed = |outcome: &str| redemption_count(&[&both[0], &both[1]], outcome);
    assert_eq!(redeemed("redeemed"), 0.0);

    // The node goes away, then comes back with its state; the orchestrator gets ETH.
    let state = rt.block_on(net.anvil.dump_state()).unwrap();
    net.anvil.kill();
    std::thread::sleep(Duration::from_secs(3));
    rt.block_on(net.anvil.restart(&state)).unwrap();
    rt.block_on(set_balance(
        &net.anvil.url,
        orch,
        U256::from(10u64).pow(U256::from(18u64)),
    ))
    .unwrap();
    wait_until(
        "the winners to be redeemed after the restart",
        Duration::from_secs(90),
        || redeemed("redeemed") == won,
    );
    assert_eq!(redeemed("already_redeemed"), 0.0, "one process redeems");
    let logs = cluster.logs();
    assert_eq!(
        logs.matches("this process redeems the winning tickets")
            .count(),
        1,
        "{logs}"
    );
    for l in cluster
        .logs()
        .lines()
        .filter(|l| l.contains("ticket redemption"))
    {
        println!("{l}");
    }
    // Every winner paid once: the sender lost exactly their face values.
    let paid = spent_since(&rt, &observer, &d, sender, funds_before);
    assert_eq!(paid, U256::from(FACE_VALUE) * U256::from(won as u64));
    assert_all_redeemed(&chain_status(&net, &cluster), won);
}

#[test]
fn a_winner_its_sender_cannot_pay_yet_waits_for_a_refill_and_is_redeemed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = setup(&rt);
    let d = net.deployment();
    let sender = dev_key(3).address();
    let observer = net.client(0);
    // Account 3 deposits one face value and no reserve.
    run_ok(
        "broadcaster",
        &args(
            &["chain", "deposit", "--deposit", &FACE_VALUE.to_string()],
            &net.eth(3),
        ),
    );
    let funds_before = rt.block_on(observer.sender_info(&d, sender)).unwrap();
    // Every ticket wins (expected value = face value): a 2 s segment pays with 4 winners.
    let mut oargs = net.eth(2);
    oargs.extend(PRICE.iter().map(|s| s.to_string()));
    for a in [
        "--ticket-face-value",
        &FACE_VALUE.to_string(),
        "--ticket-ev",
        &FACE_VALUE.to_string(),
        "--chain-refresh-secs",
        "1",
    ] {
        oargs.push(a.to_string());
    }
    let cluster = Cluster::start_with(1, &refs(&oargs), Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    let out = cluster.push(
        &input,
        &stream_name("refill"),
        &refs(&push_args(&net, &cluster, 3, &[])),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let won = ticket_count(&cluster, "won");
    assert_eq!(won, ticket_count(&cluster, "accepted"));
    assert!(won >= 2.0, "{won} winners");
    let redeemed = |c: &Cluster| redemption_count(&[&c.orchestrator_addr], "redeemed");
    // The deposit pays the first winner; the others wait, behind each other.
    wait_until(
        "the other winners to wait for the sender",
        Duration::from_secs(30),
        || {
            cluster
                .logs()
                .contains("waits for its sender to fund the broker")
        },
    );
    assert_eq!(redeemed(&cluster), 1.0);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(redeemed(&cluster), 1.0, "nothing more to pay with");

    // The sender funds the broker again: every winner is paid, none given up.
    run_ok(
        "broadcaster",
        &args(&["chain", "deposit", "--deposit", "1eth"], &net.eth(3)),
    );
    wait_until(
        "the waiting winners to be redeemed",
        Duration::from_secs(60),
        || redeemed(&cluster) == won,
    );
    // What was deposited in all paid exactly the winners.
    let after = rt.block_on(observer.sender_info(&d, sender)).unwrap();
    assert_eq!(
        after.deposit + U256::from(FACE_VALUE) * U256::from(won as u64),
        funds_before.deposit + U256::from(10u64).pow(U256::from(18u64))
    );
    assert_all_redeemed(&chain_status(&net, &cluster), won);
}

#[test]
fn a_broadcaster_finds_its_orchestrator_on_chain_and_pays_it_over_http() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let net = setup(&rt);
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let oargs = orchestrator_args(&net, &[]);
    let cluster = Cluster::start_with(1, &refs(&oargs), Vec::new());
    // The orchestrator registers where broadcasters reach it (setup registered a name that
    // leads nowhere).
    let mut reg: Vec<String> = PRICE.iter().map(|s| s.to_string()).collect();
    let uri = format!("http://{}/price", cluster.orchestrator_addr);
    reg.extend(args(
        &["chain", "register", "--service-uri", &uri],
        &net.eth(2),
    ));
    run_ok("orchestrator", &reg);
    let key = run_ok(
        "orchestrator",
        &[
            "--redis-url".to_string(),
            cluster.redis_url().to_string(),
            "broadcasters".to_string(),
            "add".to_string(),
            "payer".to_string(),
        ],
    );

    let stream = stream_name("found-on-chain");
    let out = Command::new(bin("broadcaster"))
        .env("RUST_LOG", "warn")
        .env("AMQP_URL", "amqp://nobody:nothing@127.0.0.1:1/none")
        .arg("push")
        .arg(&input)
        .args(["--stream", &stream, "--wait", "--profiles", RUNG])
        .args(net.eth(1))
        .args(["--orch-from-chain", "--orch-key", key.trim()])
        .args(["--max-price-per-unit", "1000000000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", cluster.logs());
    let base = format!("http://{}", cluster.orchestrator_addr);
    assert!(
        stderr.contains(&format!("chose orchestrator {base}")),
        "{stderr}"
    );
    let status = cluster.status(&stream);
    assert_eq!(status["state"], "complete", "{status}");
    assert!(ticket_count(&cluster, "accepted") > 0.0);

    // Above the broadcaster's maximum, the only orchestrator of the active set is left out.
    let out = Command::new(bin("broadcaster"))
        .arg("push")
        .arg(&input)
        .args(["--stream", &stream_name("too-dear"), "--profiles", RUNG])
        .args(net.eth(1))
        .args(["--orch-from-chain", "--orch-key", key.trim()])
        .args(["--max-price-per-unit", "1000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "orchestrator {base}: left out: the orchestrator charges"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("none of the 1 orchestrators can take the stream"),
        "{stderr}"
    );
}
