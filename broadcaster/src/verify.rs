//! The broadcaster's own check of what it paid for (the second layer of verification): a
//! sample of segments has every rendition decoded and compared with the source it sent.
//! A failure is recorded as evidence in the object store (`evidence/STREAM/SEQ-RUNG.json`)
//! and penalises the orchestrator: on-chain, the evidence's keccak256 goes to the staking
//! contract's `slash` (the broadcaster's account must hold the verifier role); off-chain,
//! its stake in the ledger (`cw:stake:ORCHESTRATOR` in the ledger's Redis) is reduced.

use std::collections::BTreeMap;

use anyhow::Context as _;
use bytes::Bytes;
use castwork_chain::cli::show_amount;
use castwork_chain::{Address, Chain, Deployment, U256};
use castwork_cluster::Storage;
use castwork_protocol::payment::SignedClaim;
use castwork_protocol::{ObjectRef, RenditionRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a push got back for each segment it sent: the source, the renditions and, on-chain,
/// the orchestrator's signed claim for them.
pub type Outputs = BTreeMap<u64, (ObjectRef, Vec<RenditionRef>, Option<SignedClaim>)>;

/// How segments are sampled and judged.
#[derive(Debug, Clone, Copy)]
pub struct VerifyPolicy {
    /// Fraction (0-1) of segments checked.
    pub sample_rate: f64,
    /// Luma PSNR under which a rendition is bad.
    pub min_psnr_db: f64,
}

/// What a failed check costs the orchestrator.
#[derive(Clone)]
pub enum Penalty {
    /// Slash on-chain through the staking contract (verifier role needed).
    Chain {
        chain: Chain,
        deployment: Deployment,
        orchestrator: Address,
        amount: U256,
    },
    /// Reduce the orchestrator's stake in the off-chain ledger.
    Ledger {
        redis_url: String,
        orchestrator: String,
        amount: i64,
    },
    /// Record the evidence only.
    None,
}

impl std::fmt::Debug for Penalty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Penalty::Chain {
                orchestrator,
                amount,
                ..
            } => write!(f, "slash {orchestrator} on-chain by {amount}"),
            Penalty::Ledger {
                orchestrator,
                amount,
                ..
            } => write!(f, "slash {orchestrator} in the ledger by {amount}"),
            Penalty::None => write!(f, "evidence only"),
        }
    }
}

/// A rendition that failed the broadcaster's check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evidence {
    pub stream: String,
    pub seq: u64,
    pub rendition: String,
    pub key: String,
    pub width: u32,
    pub height: u32,
    pub source_key: String,
    pub source_sha256: String,
    pub rendition_sha256: String,
    pub expected: String,
    pub measured: String,
    pub orchestrator: String,
    pub unix_ms: u64,
    /// The orchestrator's signed claim for the segment (on-chain mode), which a slash must
    /// cite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<SignedClaim>,
}

/// Off-chain slash: takes up to ARGV[1] from the stake in KEYS[1] (not below 0) and keeps
/// the evidence (ARGV[2]) in KEYS[2]. Returns {taken, stake left}.
const LEDGER_SLASH: &str = r#"
local stake = tonumber(redis.call('GET', KEYS[1]) or '0')
local take = math.min(stake, tonumber(ARGV[1]))
if take > 0 then redis.call('DECRBY', KEYS[1], take) end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, 999)
return {take, stake - take}
"#;

/// The off-chain stake of an orchestrator in the ledger.
pub fn stake_key(orchestrator: &str) -> String {
    format!("cw:stake:{orchestrator}")
}

/// Evidence of failed checks, newest first.
pub const EVIDENCE_LIST: &str = "cw:evidence";

/// Whether segment `seq` is in the sample: keyed with `secret`, this push's own (random,
/// never sent), so the orchestrator cannot tell which segments the broadcaster checks.
pub fn sampled(rate: f64, secret: &[u8], stream: &str, seq: u64) -> bool {
    castwork_protocol::sample::in_keyed_sample(rate, secret, &format!("verify/{stream}/{seq}"))
}

/// Checks the sampled segments (pictures from the whole of each rendition against the
/// source's, turned upright by the source's `rotation` as the transcoder turns them);
/// returns the evidence of every bad rendition (already stored and penalised), and the
/// number of segments checked.
pub async fn verify(
    storage: &Storage,
    stream: &str,
    segments: &Outputs,
    rotation: u32,
    policy: VerifyPolicy,
    penalty: &Penalty,
    orchestrator: &str,
) -> anyhow::Result<(Vec<Evidence>, usize)> {
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let secret = crate::live::auth::random_hex(32).context("making the sample's secret")?;
    let mut found = Vec::new();
    let mut checked = 0;
    for (seq, (source, renditions, claim)) in segments {
        if !sampled(policy.sample_rate, secret.as_bytes(), stream, *seq) || renditions.is_empty() {
            continue;
        }
        checked += 1;
        let src = storage
            .get(&source.key)
            .await
            .with_context(|| format!("fetching {}", source.key))?;
        let (ext, formats) = castwork_protocol::source_container(&source.key);
        let src_path = tmp.path().join(format!("source-{seq}.{ext}"));
        tokio::fs::write(&src_path, &src).await?;
        let mut fetched = Vec::with_capacity(renditions.len());
        for r in renditions {
            let data = storage
                .get(&r.key)
                .await
                .with_context(|| format!("fetching {}", r.key))?;
            let path = tmp.path().join(format!("{seq}-{}.ts", r.rung));
            tokio::fs::write(&path, &data).await?;
            fetched.push((r, path, hex::encode(Sha256::digest(&data))));
        }
        let paths: Vec<_> = fetched.iter().map(|(_, p, _)| p.clone()).collect();
        let (s, seed) = (src_path.clone(), uuid::Uuid::new_v4().as_u64_pair().0);
        let scores = tokio::task::spawn_blocking(move || {
            castwork_media::quality::score(
                &s,
                formats,
                &paths,
                rotation,
                castwork_media::quality::RANDOM_PICTURES,
                seed,
            )
        })
        .await?;
        for (i, (r, _, rendition_sha256)) in fetched.into_iter().enumerate() {
            let measured = match &scores {
                Ok(scores) => match scores[i].verdict(policy.min_psnr_db) {
                    None => continue,
                    Some(why) => why,
                },
                Err(e) => format!("undecodable: {e}"),
            };
            let ev = Evidence {
                stream: stream.to_string(),
                seq: *seq,
                rendition: r.rung.clone(),
                key: r.key.clone(),
                width: r.width,
                height: r.height,
                source_key: source.key.clone(),
                source_sha256: source.sha256.clone(),
                rendition_sha256,
                expected: format!(
                    "luma PSNR >= {} dB against the source scaled to {}x{}, in every picture \
                     compared (first, middle, last and {} at random)",
                    policy.min_psnr_db,
                    r.width,
                    r.height,
                    castwork_media::quality::RANDOM_PICTURES
                ),
                measured,
                orchestrator: orchestrator.to_string(),
                unix_ms: castwork_protocol::time::now_unix_ms(),
                claim: claim.clone(),
            };
            found.push(ev);
        }
    }
    for ev in &found {
        record(storage, ev, penalty).await?;
    }
    Ok((found, checked))
}

/// The orchestrator's claim for the evidence's segment, checked: signed by `orchestrator`
/// under this deployment, for this stream and segment, and covering the bad rendition
/// (its index in the claim is returned).
fn claimed(
    ev: &Evidence,
    deployment: &Deployment,
    orchestrator: Address,
) -> anyhow::Result<(castwork_chain::Claim, castwork_chain::Bytes, usize)> {
    let wire = ev
        .claim
        .as_ref()
        .context("the orchestrator sent no signed claim for it")?;
    let (claim, sig) = castwork_chain::Claim::from_wire(wire, &deployment.claim_domain())?;
    if claim.orchestrator != orchestrator || claim.stream != ev.stream || claim.seq != ev.seq {
        anyhow::bail!(
            "its claim is for {} segment {}/{}, not {orchestrator} segment {}/{}",
            claim.orchestrator,
            claim.stream,
            claim.seq,
            ev.stream,
            ev.seq
        );
    }
    let hash: castwork_chain::B256 = ev
        .rendition_sha256
        .parse()
        .context("the rendition's hash")?;
    let bad = claim
        .renditions
        .iter()
        .position(|r| *r == hash)
        .context("the claim does not cover the rendition that was checked")?;
    Ok((claim, sig, bad))
}

/// Stores one piece of evidence and applies the penalty; prints what happened.
async fn record(storage: &Storage, ev: &Evidence, penalty: &Penalty) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(ev)?;
    let hash = castwork_chain::ticket::keccak(&json);
    let key = format!("evidence/{}/{}-{}.json", ev.stream, ev.seq, ev.rendition);
    storage
        .put(&key, Bytes::from(json.clone()))
        .await
        .with_context(|| format!("storing {key}"))?;
    eprintln!(
        "verification FAILED: segment {} rendition {}: {}, expected {}; evidence {key} \
         (keccak256 {hash})",
        ev.seq, ev.rendition, ev.measured, ev.expected
    );
    match penalty {
        Penalty::Chain {
            chain,
            deployment,
            orchestrator,
            amount,
        } => {
            let (claim, sig, bad) = match claimed(ev, deployment, *orchestrator) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cannot slash on-chain for segment {}: {e:#}", ev.seq);
                    return Ok(());
                }
            };
            let (m, id) = chain
                .propose_slash(deployment, &claim, &sig, bad, *amount, hash)
                .await
                .context(
                    "proposing the slash on-chain (does this account hold the verifier role?)",
                )?;
            let p = chain
                .slash_proposals(deployment, *orchestrator)
                .await?
                .into_iter()
                .find(|p| p.id == id);
            let votes = p.as_ref().map_or(0, |p| p.votes);
            let quorum = chain.slash_quorum(deployment).await?;
            eprintln!(
                "proposed slashing orchestrator {orchestrator} by {} for segment {} rendition {} \
                 (proposal {id}, tx {}, {votes} of {quorum} verifier votes): another verifier \
                 checks the evidence and votes with `broadcaster chain vote-slash {id}`",
                show_amount(*amount),
                ev.seq,
                ev.rendition,
                m.tx
            );
        }
        Penalty::Ledger {
            redis_url,
            orchestrator,
            amount,
        } => {
            let mut redis = castwork_cluster::redis_connect(redis_url).await?;
            let (taken, left): (i64, i64) = redis::Script::new(LEDGER_SLASH)
                .key(stake_key(orchestrator))
                .key(EVIDENCE_LIST)
                .arg(*amount)
                .arg(String::from_utf8_lossy(&json).to_string())
                .invoke_async(&mut redis)
                .await?;
            eprintln!(
                "slashed orchestrator {orchestrator} in the ledger: {taken} taken, stake now {left}"
            );
        }
        Penalty::None => {}
    }
    Ok(())
}
