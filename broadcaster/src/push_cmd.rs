//! `broadcaster push`: chooses the orchestrator (with --orch-addr), checks its price, sets
//! up payment and verification, pushes the file, and says how it went.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use castwork_broadcaster::{push, PushRequest};
use castwork_cluster::{shutdown_token, Storage};

use crate::cli::{Cli, Command};
use castwork_protocol::profile::{parse_profiles, parse_transcoding_options};

use crate::priced;

/// Runs `cli`'s push, with `storage` (none over HTTP).
pub(crate) async fn run(cli: Cli, storage: Option<Storage>) -> anyhow::Result<ExitCode> {
    let Command::Push {
        file,
        stream,
        profiles,
        transcoding_options,
        wait,
        timeout_secs,
        segment_secs,
        playback_url,
        admit_timeout_secs,
        broadcaster_id,
        max_price_per_unit,
        max_price_pixels_per_unit,
        orchestrator_url,
        orch_addr,
        orch_from_chain,
        orch_key,
        output_dir,
        failover_after_secs,
        stall_after_secs,
        orch_history,
        verify_sample_rate,
        verify_min_psnr_db,
        slash_amount,
        ledger_redis_url,
        test_only_tickets,
    } = cli.command
    else {
        anyhow::bail!("not a push");
    };
    let max = castwork_protocol::Price {
        price_per_unit: max_price_per_unit.unwrap_or(u64::MAX),
        pixels_per_unit: max_price_pixels_per_unit,
    };
    if max_price_per_unit.is_some()
        && orchestrator_url.is_none()
        && orch_addr.is_empty()
        && !orch_from_chain
    {
        anyhow::bail!(
            "--max-price-per-unit needs --orchestrator-url, --orch-addr or --orch-from-chain, \
             whose prices it checks"
        );
    }
    let history = orch_history.map(castwork_broadcaster::history::History::at);
    // Over HTTP: the orchestrator chosen among --orch-addr, or the active set's.
    let http_ingest = match orch_key {
        Some(keys) if !orch_addr.is_empty() || orch_from_chain => {
            let targets = match orch_from_chain {
                true => {
                    let (chain, deployment) = cli.eth.connect().await?;
                    castwork_broadcaster::select::from_chain(&chain, &deployment).await?
                }
                false => orch_addr
                    .iter()
                    .map(|a| castwork_broadcaster::select::Target::at(a))
                    .collect(),
            };
            let keys = castwork_broadcaster::select::keys_for(
                "--orch-key",
                &keys,
                targets.len(),
                !orch_from_chain,
            )?;
            let sender = match cli.eth.enabled() {
                true => Some(cli.eth.signer()?.address()),
                false => None,
            };
            let seen = history.as_ref().map(|h| h.load()).unwrap_or_default();
            let ranked = castwork_broadcaster::select::rank(&targets, &max, sender, &seen).await?;
            let routes: Vec<(String, String)> = ranked
                .into_iter()
                .map(|(i, c)| (c.target.url, keys[i].clone()))
                .collect();
            Some(routes)
        }
        _ => None,
    };
    if output_dir.is_some() && http_ingest.is_none() {
        anyhow::bail!(
            "--output-dir copies the renditions from an orchestrator over HTTP: give \
             --orch-addr or --orch-from-chain"
        );
    }
    // The copy goes into a local store rooted there (made, and absolute).
    let output_dir = match output_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", dir.display()))?;
            Some(std::fs::canonicalize(&dir)?)
        }
        None => None,
    };
    let copy_to = match &output_dir {
        Some(dir) => Some(Storage::from_url(&format!("file://{}", dir.display()))?),
        None => None,
    };
    let (http_ingest, spare_routes) = match http_ingest {
        Some(mut routes) => {
            let rest = routes.split_off(1);
            (routes.pop(), rest)
        }
        None => (None, Vec::new()),
    };
    let over_http = http_ingest.is_some();
    let orchestrator_url = match &http_ingest {
        Some((url, _)) => Some(url.clone()),
        None => orchestrator_url,
    };
    let (offer, payer) = priced(
        &cli.eth,
        orchestrator_url.as_deref(),
        &max,
        "--orchestrator-url or --orch-addr",
    )
    .await?;
    let payer = payer.map(|mut p| {
        p.test_tickets = test_only_tickets;
        Arc::new(p)
    });
    // Each spare with its own payer, on-chain (its own ticket parameters).
    let mut spares = Vec::new();
    for (url, key) in spare_routes {
        let payer = match &payer {
            Some(_) => priced(&cli.eth, Some(&url), &max, "--orch-addr")
                .await?
                .1
                .map(|mut p| {
                    p.test_tickets = test_only_tickets;
                    Arc::new(p)
                }),
            None => None,
        };
        spares.push(castwork_broadcaster::push::Route { url, key, payer });
    }
    // The check reads renditions from the object store, which a broadcaster pushing
    // over HTTP has no credentials for.
    if http_ingest.is_some() && verify_sample_rate.is_some_and(|r| r > 0.0) {
        anyhow::bail!(
            "--verify-sample-rate reads the renditions from the object store: not with \
             --orch-addr"
        );
    }
    let default_rate = match (&payer, &http_ingest) {
        (Some(_), None) => 0.1,
        _ => 0.0,
    };
    let rate = verify_sample_rate.unwrap_or(default_rate);
    if !(0.0..=1.0).contains(&rate) {
        anyhow::bail!("--verify-sample-rate must be between 0 and 1");
    }
    let verify = if wait && rate > 0.0 {
        let who = offer.as_ref().and_then(|o| o.orchestrator.clone());
        let penalty = match (&payer, &ledger_redis_url, &who) {
            (Some(p), _, _) => {
                let (chain, deployment) = cli.eth.connect().await?;
                castwork_broadcaster::verify::Penalty::Chain {
                    chain,
                    deployment,
                    orchestrator: p.recipient().parse()?,
                    amount: slash_amount,
                }
            }
            (None, Some(redis_url), Some(who)) => castwork_broadcaster::verify::Penalty::Ledger {
                redis_url: redis_url.clone(),
                orchestrator: who.clone(),
                amount: i64::try_from(slash_amount)
                    .map_err(|_| anyhow::anyhow!("--slash-amount does not fit the ledger"))?,
            },
            _ => castwork_broadcaster::verify::Penalty::None,
        };
        Some((
            castwork_broadcaster::verify::VerifyPolicy {
                sample_rate: rate,
                min_psnr_db: verify_min_psnr_db,
            },
            penalty,
            who.unwrap_or_else(|| "orchestrator".to_string()),
        ))
    } else {
        None
    };
    let ladder = match &transcoding_options {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            parse_transcoding_options(&text)?
        }
        None => parse_profiles(&profiles)?,
    };
    if !(0.5..=60.0).contains(&segment_secs) {
        anyhow::bail!("--segment-secs must be between 0.5 and 60");
    }
    // Absolute, as resolved; over HTTP the orchestrator's store is its own.
    let local_dir = storage
        .as_ref()
        .and_then(|s| s.to_string().strip_prefix("file://").map(PathBuf::from));
    let outcome = push(
        PushRequest {
            input: file,
            stream: stream.clone(),
            ladder,
            segment_secs,
            wait,
            amqp_url: cli.service.link.amqp_url,
            storage,
            http_ingest,
            spares,
            copy_to: copy_to.clone(),
            failover: castwork_broadcaster::push::Failover {
                unreachable: Duration::from_secs(failover_after_secs),
                stalled: (stall_after_secs > 0).then(|| Duration::from_secs(stall_after_secs)),
            },
            history: history.filter(|_| over_http),
            playback_url,
            local_dir: local_dir.clone(),
            admit_timeout: Duration::from_secs(admit_timeout_secs),
            broadcaster: broadcaster_id,
            payer,
            verify,
            wait_timeout: timeout_secs.map(Duration::from_secs),
            orchestrator_url: orchestrator_url.clone(),
            formats: None,
            cancel: None,
            progress: None,
        },
        shutdown_token(),
    )
    .await?;
    if !wait {
        println!("queued {} segments of stream {stream}", outcome.segments);
        if let Some(url) = &outcome.playback_url {
            println!("playback once transcoded: {url}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(master) = &outcome.master_playlist {
        if let Some(url) = &outcome.playback_url {
            println!("playback: {url}");
        }
        if let Some(dir) = &output_dir {
            println!("output: {}", dir.join(master).display());
        } else if let Some(dir) = &local_dir {
            println!("output: {}", dir.join(master).display());
        }
    }
    if outcome.verified > 0 {
        println!(
            "verified {} sampled segments: {} bad renditions",
            outcome.verified,
            outcome.evidence.len()
        );
    }
    if !outcome.evidence.is_empty() {
        eprintln!("the orchestrator's output failed this broadcaster's check (evidence above)");
        return Ok(ExitCode::FAILURE);
    }
    if outcome.is_incomplete() {
        eprintln!("{}", outcome.incomplete_report(&stream));
        return Ok(ExitCode::from(castwork_broadcaster::push::EXIT_INCOMPLETE));
    }
    println!(
        "done: {} segments, every rendition transcoded",
        outcome.segments
    );
    Ok(ExitCode::SUCCESS)
}
