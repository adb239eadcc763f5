//! Choosing an orchestrator among several (`push --orch-addr URL,URL,...`, or on-chain
//! `--orch-from-chain`: the active set's registered service URIs): each one's offer
//! (`GET /offer`: price, room for live streams, limits) is read at once, with its
//! round-trip time. Those that do not answer, charge more than `--max-price-per-unit`,
//! have no room (their live streams are at their `--max-sessions`), are not in the active
//! set or, found on-chain, answer with another account than the one that registered the
//! URI, are left out. Among the rest one is drawn at random, each with the weight
//!
//!   (fastest round trip / its round trip) × (lowest price + ε) / (its price + ε)
//!     × its success rate [× (its stake / the highest stake), on-chain]
//!
//! (prices in wei per pixel, ε = 10⁻⁹; the success rate from `--orch-history`, see
//! [`crate::history`], 0.5 for all without one), so a fast, cheap, reliable, well-staked
//! orchestrator is chosen most often and the others now and then, which spreads streams
//! and keeps measuring them all, as go-livepeer's selection weighs stake and price and
//! suspends the orchestrators that failed it.

use std::time::{Duration, Instant};

use anyhow::bail;
use castwork_protocol::payment::PriceOffer;
use castwork_protocol::Price;

/// How long an orchestrator has to answer with its offer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keeps a free orchestrator's weight finite and orders priced ones by price.
const PRICE_EPSILON: f64 = 1e-9;

/// An orchestrator to ask: its HTTP address and, found on-chain, the account that
/// registered it and that account's bonded stake.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub url: String,
    pub account: Option<String>,
    pub stake: Option<f64>,
}

impl Target {
    pub fn at(url: &str) -> Target {
        Target {
            url: url.trim_end_matches('/').to_string(),
            ..Default::default()
        }
    }
}

/// An orchestrator that answered.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub target: Target,
    pub offer: PriceOffer,
    pub round_trip: Duration,
    /// Its success rate in this broadcaster's history.
    pub success: f64,
}

/// Why an orchestrator is left out, or `None` when it may be chosen.
pub fn excluded(c: &Candidate, max: &Price) -> Option<String> {
    if let Some(account) = &c.target.account {
        let named = c.offer.orchestrator.as_deref().unwrap_or("no account");
        if !named.eq_ignore_ascii_case(account) {
            return Some(format!(
                "its offer names {named}, not {account}, which registered this address"
            ));
        }
    }
    if let Err(m) = crate::payer::within_max(&c.offer.price, max) {
        return Some(m);
    }
    if let Some(cap) = c.offer.capacity.as_ref().filter(|c| !c.has_room()) {
        return Some(format!(
            "at capacity: {} live streams of {}",
            cap.live_sessions, cap.max_sessions
        ));
    }
    if c.offer.active == Some(false) {
        return Some("not in the active set".to_string());
    }
    if !c.offer.ingest.iter().any(|i| i == "http") {
        return Some("takes no work over HTTP".to_string());
    }
    None
}

fn price_per_pixel(p: &Price) -> f64 {
    p.price_per_unit as f64 / p.pixels_per_unit.max(1) as f64
}

/// Each candidate's weight (see the module's documentation).
pub fn weights(cands: &[Candidate]) -> Vec<f64> {
    let fastest = cands
        .iter()
        .map(|c| c.round_trip.as_secs_f64().max(1e-3))
        .fold(f64::INFINITY, f64::min);
    let cheapest = cands
        .iter()
        .map(|c| price_per_pixel(&c.offer.price))
        .fold(f64::INFINITY, f64::min);
    let most_stake = cands
        .iter()
        .filter_map(|c| c.target.stake)
        .fold(0.0, f64::max);
    cands
        .iter()
        .map(|c| {
            let speed = fastest / c.round_trip.as_secs_f64().max(1e-3);
            let price =
                (cheapest + PRICE_EPSILON) / (price_per_pixel(&c.offer.price) + PRICE_EPSILON);
            let stake = match c.target.stake {
                Some(s) if most_stake > 0.0 => s / most_stake,
                _ => 1.0,
            };
            speed * price * stake * c.success
        })
        .collect()
}

/// The index `draw` (uniform in [0, 1)) falls on when each index has its weight.
pub fn pick(weights: &[f64], draw: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let mut at = draw.clamp(0.0, 1.0) * total;
    for (i, w) in weights.iter().enumerate() {
        if at < *w {
            return i;
        }
        at -= w;
    }
    weights.len().saturating_sub(1)
}

/// The key (`flag`'s value: one for all, or with `per_address` one per address in order,
/// comma-separated) for each of `n` orchestrators.
pub fn keys_for(
    flag: &str,
    keys: &str,
    n: usize,
    per_address: bool,
) -> anyhow::Result<Vec<String>> {
    let keys: Vec<String> = keys.split(',').map(str::to_string).collect();
    match keys.len() {
        1 => Ok(vec![keys[0].clone(); n]),
        k if per_address && k == n => Ok(keys),
        k => bail!(
            "{flag} takes one key for every orchestrator, or (with an address list) one per \
             address in the same order: {k} keys for {n} addresses"
        ),
    }
}

/// Reads `target`'s offer and how long it took.
async fn probe(
    target: &Target,
    sender: Option<castwork_chain::Address>,
) -> anyhow::Result<Candidate> {
    let started = Instant::now();
    let offer = crate::payer::fetch_at(&target.url, "offer", sender, PROBE_TIMEOUT).await?;
    Ok(Candidate {
        target: target.clone(),
        offer,
        round_trip: started.elapsed(),
        success: crate::history::Record::default().success_rate(),
    })
}

/// The active set's orchestrators with the service URIs they registered (those without
/// one are left out, and said so).
pub async fn from_chain(
    chain: &castwork_chain::Chain,
    deployment: &castwork_chain::Deployment,
) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::new();
    for account in chain.active_set(deployment).await? {
        let info = chain.orchestrator(deployment, account).await?;
        let uri = info.service_uri.trim();
        if uri.is_empty() {
            eprintln!("orchestrator {account}: left out: it registered no service URI");
            continue;
        }
        // What `chain register --service-uri` was given: the address, or its /price.
        let base = uri
            .trim_end_matches('/')
            .trim_end_matches("/price")
            .trim_end_matches("/offer");
        targets.push(Target {
            url: base.to_string(),
            account: Some(account.to_string()),
            stake: info.bonded.to_string().parse().ok(),
        });
    }
    Ok(targets)
}

/// Probes every orchestrator of `targets` at once and ranks those that may be chosen
/// (each with its index in `targets`): first the one drawn, then the others by weight, the
/// spares a push moves to should the first fail. Says on stderr what it found of each.
pub async fn rank(
    targets: &[Target],
    max: &Price,
    sender: Option<castwork_chain::Address>,
    history: &std::collections::BTreeMap<String, crate::history::Record>,
) -> anyhow::Result<Vec<(usize, Candidate)>> {
    if targets.is_empty() {
        bail!("no orchestrator to choose from");
    }
    let probes = futures_util::future::join_all(targets.iter().map(|t| probe(t, sender))).await;
    let mut eligible = Vec::new();
    for (i, (target, probed)) in targets.iter().zip(probes).enumerate() {
        let url = &target.url;
        match probed {
            Err(e) => eprintln!("orchestrator {url}: left out: {e:#}"),
            Ok(mut c) => match excluded(&c, max) {
                Some(why) => eprintln!("orchestrator {url}: left out: {why}"),
                None => {
                    let seen = history.get(url).copied().unwrap_or_default();
                    c.success = seen.success_rate();
                    eprintln!(
                        "orchestrator {url}: {} wei per {} pixels, answered in {} ms, {} of \
                         {} pushes completed",
                        c.offer.price.price_per_unit,
                        c.offer.price.pixels_per_unit,
                        c.round_trip.as_millis(),
                        seen.completed,
                        seen.completed + seen.failed
                    );
                    eligible.push((i, c))
                }
            },
        }
    }
    if eligible.is_empty() {
        bail!(
            "none of the {} orchestrators can take the stream (above)",
            targets.len()
        );
    }
    let draw = (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64;
    let (indices, cands): (Vec<usize>, Vec<Candidate>) = eligible.into_iter().unzip();
    let w = weights(&cands);
    let first = pick(&w, draw);
    let mut ranked: Vec<(f64, (usize, Candidate))> = w
        .iter()
        .enumerate()
        .map(|(i, w)| if i == first { f64::INFINITY } else { *w })
        .zip(indices.into_iter().zip(cands))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let ranked: Vec<(usize, Candidate)> = ranked.into_iter().map(|(_, c)| c).collect();
    eprintln!("chose orchestrator {}", ranked[0].1.target.url);
    if ranked.len() > 1 {
        let spares: Vec<&str> = ranked[1..]
            .iter()
            .map(|(_, c)| c.target.url.as_str())
            .collect();
        eprintln!("should it fail: {}", spares.join(", "));
    }
    Ok(ranked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use castwork_protocol::payment::Capacity;

    fn cand(price: u64, ms: u64, cap: Option<(u64, u64)>) -> Candidate {
        Candidate {
            target: Target::at(&format!("http://o{price}-{ms}")),
            offer: PriceOffer {
                price: Price {
                    price_per_unit: price,
                    pixels_per_unit: 1,
                },
                orchestrator: None,
                ticket_params: None,
                active: None,
                capacity: cap.map(|(max, live)| Capacity {
                    max_sessions: max,
                    live_sessions: live,
                }),
                limits: None,
                ingest: vec!["http".into()],
            },
            round_trip: Duration::from_millis(ms),
            success: 0.5,
        }
    }

    #[test]
    fn over_the_maximum_or_at_capacity_is_left_out() {
        let max = Price {
            price_per_unit: 10,
            pixels_per_unit: 1,
        };
        assert!(excluded(&cand(11, 5, None), &max)
            .unwrap()
            .contains("above your maximum"));
        assert!(excluded(&cand(10, 5, None), &max).is_none());
        assert!(excluded(&cand(1, 5, Some((2, 2))), &max)
            .unwrap()
            .contains("at capacity"));
        assert!(excluded(&cand(1, 5, Some((2, 1))), &max).is_none());
        // 0: no limit.
        assert!(excluded(&cand(1, 5, Some((0, 50))), &max).is_none());
        let mut old = cand(1, 5, None);
        old.offer.ingest.clear();
        assert!(excluded(&old, &max).unwrap().contains("HTTP"));
        // Found on-chain: the offer must come from the account that registered the URI.
        let mut other = cand(1, 5, None);
        other.target.account = Some("0xAbC".into());
        other.offer.orchestrator = Some("0xdef".into());
        assert!(excluded(&other, &max).unwrap().contains("registered"));
        other.offer.orchestrator = Some("0xabc".into());
        assert!(excluded(&other, &max).is_none());
    }

    #[test]
    fn faster_and_cheaper_weigh_more() {
        // Each × 0.5, the success rate of one never seen.
        let w = weights(&[cand(2, 10, None), cand(2, 40, None), cand(4, 10, None)]);
        assert!((w[0] - 0.5).abs() < 1e-9);
        assert!((w[1] - 0.125).abs() < 1e-9);
        assert!((w[2] - 0.25).abs() < 1e-6);
        // A free orchestrator all but always beats a priced one.
        let w = weights(&[cand(0, 10, None), cand(1, 10, None)]);
        assert!(w[1] < 1e-6 * w[0]);
        // On-chain, in proportion to stake too.
        let (mut a, mut b) = (cand(2, 10, None), cand(2, 10, None));
        a.target.stake = Some(300.0);
        b.target.stake = Some(100.0);
        let w = weights(&[a, b]);
        assert!((w[1] / w[0] - 1.0 / 3.0).abs() < 1e-9);
        // With a history, in proportion to the success rate.
        let (mut good, mut bad) = (cand(2, 10, None), cand(2, 10, None));
        good.success = 0.9;
        bad.success = 0.1;
        let w = weights(&[good, bad]);
        assert!((w[1] / w[0] - 1.0 / 9.0).abs() < 1e-9);
    }

    #[test]
    fn one_key_for_all_or_one_each() {
        assert_eq!(keys_for("--k", "a", 3, true).unwrap(), ["a", "a", "a"]);
        assert_eq!(keys_for("--k", "a,b", 2, true).unwrap(), ["a", "b"]);
        assert!(keys_for("--k", "a,b", 3, true).is_err());
        assert!(keys_for("--k", "a,b", 2, false).is_err());
    }

    #[test]
    fn the_draw_falls_on_each_in_proportion() {
        let w = [1.0, 0.25, 0.5];
        assert_eq!(pick(&w, 0.0), 0);
        assert_eq!(pick(&w, 0.56), 0);
        assert_eq!(pick(&w, 0.58), 1);
        assert_eq!(pick(&w, 0.70), 1);
        assert_eq!(pick(&w, 0.72), 2);
        assert_eq!(pick(&w, 0.999), 2);
        assert_eq!(pick(&w, 1.0), 2);
    }
}
