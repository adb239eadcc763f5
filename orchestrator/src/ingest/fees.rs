//! What a priced orchestrator (off-chain ledger) asks of a stream's account before it
//! takes the work: an on-demand stream's whole estimated fee at its start (its length is
//! known), a live stream's first segment, and each segment's own estimate, reserved until
//! the segment is resolved.

use castwork_protocol::price::estimated_pixels;
use castwork_protocol::{Rung, SourceMetadata};

use crate::service::{HandleError, Orchestrator};

/// Account names a ledger accepts: letters, digits and `_.:-`, at most 100 (an Ethereum
/// address fits).
pub fn validate_account(account: &str) -> Result<(), String> {
    if account.is_empty()
        || account.len() > 100
        || !account
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    {
        return Err(format!(
            "account {account:?} must be 1-100 letters, digits or _.:-"
        ));
    }
    Ok(())
}

impl Orchestrator {
    /// The account that pays for a stream, or why none can (for the broadcaster's user).
    fn payer<'a>(&self, account: Option<&'a str>) -> Result<&'a str, String> {
        let Some(account) = account else {
            return Err(format!(
                "this orchestrator charges {} wei per {} pixels: push with --broadcaster-id \
                 ACCOUNT, an account credited with `orchestrator ledger credit ACCOUNT AMOUNT`",
                self.price.price_per_unit, self.price.pixels_per_unit
            ));
        };
        validate_account(account)?;
        Ok(account)
    }

    /// Whether `account` can pay for `frames` source frames through `rungs`: `Ok(Err(why))`
    /// when it cannot, with a message for the broadcaster's user. With `segment`, the
    /// estimated fee is reserved for that segment until it is resolved (so segments
    /// admitted at once cannot overdraw the account together).
    pub(super) async fn affordable(
        &self,
        account: Option<&str>,
        rungs: &[Rung],
        frames: u64,
        fps: f64,
        segment: Option<(&str, u64)>,
    ) -> Result<Result<(), String>, HandleError> {
        let price = self.price;
        let account = match self.payer(account) {
            Ok(a) => a,
            Err(m) => return Ok(Err(m)),
        };
        let pixels = estimated_pixels(rungs, frames, fps);
        let needed = match price.fee(pixels) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let short = match segment {
            Some((stream, seq)) => self.state.reserve(account, stream, seq, needed).await?,
            None => {
                let (balance, reserved) = self.state.account(account).await?;
                if balance - reserved < needed {
                    Err((balance, reserved))
                } else {
                    Ok(())
                }
            }
        };
        let remedy = if self.payments.is_some() {
            "attach tickets whose expected value covers the segment (the broadcaster's \
             --eth-* flags do)"
                .to_string()
        } else {
            format!("credit it with `orchestrator ledger credit {account} AMOUNT`")
        };
        Ok(short.map_err(|(balance, reserved)| {
            format!(
                "insufficient balance: account {account} has {balance} wei ({reserved} of it \
                 reserved for segments in progress), a segment needs about {needed} wei \
                 ({pixels} output pixels at {} wei per {} pixels); {remedy}",
                price.price_per_unit, price.pixels_per_unit
            )
        }))
    }

    /// Whether `account` covers the whole estimated fee of an on-demand stream of `source`
    /// through `rungs` (see [`castwork_protocol::Price::stream_estimate`]), less what its
    /// segments in progress reserved: `Ok(Err(why))`, with the amount needed and the
    /// amount available, when it does not, or when the source's duration is unknown.
    /// Nothing is reserved: each segment still reserves its own estimate when it arrives.
    pub(super) async fn covers_stream(
        &self,
        account: Option<&str>,
        rungs: &[Rung],
        source: &SourceMetadata,
    ) -> Result<Result<(), String>, HandleError> {
        let price = self.price;
        let account = match self.payer(account) {
            Ok(a) => a,
            Err(m) => return Ok(Err(m)),
        };
        let Some(duration_us) = source.duration_us.filter(|d| *d > 0) else {
            return Ok(Err(format!(
                "this orchestrator charges {} wei per {} pixels and admits an on-demand stream \
                 only when its account covers the whole stream, but the source's duration is \
                 unknown, so its fee cannot be estimated: remux the file so that it states its \
                 duration (ffmpeg -i IN -c copy OUT.mp4) and push that",
                price.price_per_unit, price.pixels_per_unit
            )));
        };
        let fps = source.frame_rate.as_f64();
        let estimate = match price.stream_estimate(rungs, duration_us, fps) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let (balance, reserved) = self.state.account(account).await?;
        let available = balance.saturating_sub(reserved);
        if available >= estimate.fee {
            return Ok(Ok(()));
        }
        let missing = estimate.fee.saturating_sub(available);
        Ok(Err(format!(
            "insufficient balance for the whole stream: it needs about {} wei and account \
             {account} has {available} wei available ({balance} wei, {reserved} of it reserved \
             for segments in progress). The estimate is {:.1} s of source, {} frames through \
             {} renditions: {} output pixels at {} wei per {} pixels, with up to {} wei for \
             each segment's rounding. Credit the {missing} wei missing with `orchestrator \
             ledger credit {account} {missing}`; nothing was charged",
            estimate.fee,
            duration_us as f64 / 1e6,
            estimate.frames,
            rungs.len(),
            estimate.pixels,
            price.price_per_unit,
            price.pixels_per_unit,
            estimate.segments,
        )))
    }
}
