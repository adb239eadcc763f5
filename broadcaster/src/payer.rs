//! On-chain mode for the broadcaster: fetches the orchestrator's price and ticket
//! parameters, and signs enough probabilistic micropayment tickets to cover each segment.
//! Parameters are made for one sender and fetched for every payment: the orchestrator
//! takes nothing more under a recipientRand once a ticket under it has won.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use castwork_protocol::time::now_unix_ms;

use anyhow::{bail, Context as _};
use castwork_chain::ticket::{self, parse_u256};
use castwork_chain::{PrivateKeySigner, U256};
use castwork_protocol::payment::{Payment, PriceOffer, TicketParams};
use castwork_protocol::price::estimated_pixels;
use castwork_protocol::{Price, Rung};

fn now_secs() -> u64 {
    now_unix_ms() / 1000
}

/// `GET URL/price`: what the orchestrator charges and, on-chain, the ticket parameters for
/// `sender` (an orchestrator gives parameters only to a named sender).
pub async fn fetch_offer(
    url: &str,
    sender: Option<castwork_chain::Address>,
) -> anyhow::Result<PriceOffer> {
    fetch_at(url, "price", sender, std::time::Duration::from_secs(10)).await
}

/// `GET URL/PATH[?sender=ADDRESS]` (`price` or `offer`), waiting at most `timeout`.
pub async fn fetch_at(
    url: &str,
    path: &str,
    sender: Option<castwork_chain::Address>,
    timeout: std::time::Duration,
) -> anyhow::Result<PriceOffer> {
    let url = match sender {
        Some(a) => format!("{}/{path}?sender={a}", url.trim_end_matches('/')),
        None => format!("{}/{path}", url.trim_end_matches('/')),
    };
    let mut resp = reqwest::Client::builder()
        .timeout(timeout)
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot ask the orchestrator's price at {url}"))?;
    let status = resp.status();
    // An offer is a few hundred bytes; what any orchestrator answers is bounded.
    let body = crate::link::read_capped(&mut resp, 64 << 10)
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let body = String::from_utf8_lossy(&body);
    let shown: String = body.chars().take(300).collect();
    if !status.is_success() {
        bail!("{url} answered {status}: {shown}");
    }
    serde_json::from_str(&body)
        .with_context(|| format!("{url} did not answer with a price: {shown}"))
}

/// `Err` with the message for the broadcaster's user when `price` is above `max`.
pub fn within_max(price: &Price, max: &Price) -> Result<(), String> {
    if price.within(max) {
        return Ok(());
    }
    Err(format!(
        "the orchestrator charges {} wei per {} pixels, above your maximum of {} wei per {} \
         pixels",
        price.price_per_unit, price.pixels_per_unit, max.price_per_unit, max.pixels_per_unit
    ))
}

/// TESTS ONLY: tickets an honest broadcaster never sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestTickets {
    /// Every segment carries the first segment's tickets (replays).
    Reuse,
    /// Tickets that expired a minute ago (validly signed).
    Expired,
    /// Every payment under the first parameters fetched (new nonces), even after a ticket
    /// under them won.
    Spent,
    /// Tickets signed under parameters the orchestrator made for another sender.
    OthersParams,
}

/// Signs the tickets paying one orchestrator.
pub struct Payer {
    /// Tests only: misbehave this way.
    pub test_tickets: Option<TestTickets>,
    first: Mutex<Option<Payment>>,
    signer: PrivateKeySigner,
    url: String,
    /// The orchestrator's price (from its latest offer) and the most this broadcaster pays.
    price: Mutex<Price>,
    max: Price,
    params: Mutex<TicketParams>,
    /// Nonces start at the current time in microseconds x 1000, so two pushes from one
    /// account under the same parameters never reuse one.
    next_nonce: AtomicU64,
}

impl std::fmt::Debug for Payer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payer")
            .field("account", &self.signer.address())
            .field("orchestrator", &self.url)
            .finish()
    }
}

impl Payer {
    /// A payer for the orchestrator at `url`, which must be in on-chain mode and active, and
    /// charge at most `max` (now and whenever its parameters are fetched again).
    pub fn new(
        signer: PrivateKeySigner,
        url: &str,
        offer: PriceOffer,
        max: Price,
    ) -> anyhow::Result<Payer> {
        let Some(params) = offer.ticket_params else {
            bail!("the orchestrator at {url} does not take tickets (it is not in on-chain mode)");
        };
        if offer.active == Some(false) {
            bail!("the orchestrator at {url} is not in the active set: it takes no work");
        }
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        Ok(Payer {
            test_tickets: None,
            first: Mutex::new(None),
            signer,
            url: url.to_string(),
            price: Mutex::new(offer.price),
            max,
            params: Mutex::new(params),
            next_nonce: AtomicU64::new(micros.saturating_mul(1000)),
        })
    }

    pub fn address(&self) -> castwork_chain::Address {
        self.signer.address()
    }

    /// The orchestrator being paid (the tickets' recipient).
    pub fn recipient(&self) -> String {
        self.params
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recipient
            .clone()
    }

    /// Fresh parameters for the next payment (and the price, checked again).
    async fn current_params(&self) -> anyhow::Result<TicketParams> {
        if self.test_tickets == Some(TestTickets::Spent) {
            return Ok(self
                .params
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone());
        }
        let sender = match self.test_tickets {
            Some(TestTickets::OthersParams) => castwork_chain::Address::repeat_byte(0x5e),
            _ => self.signer.address(),
        };
        let offer = fetch_offer(&self.url, Some(sender)).await?;
        let Some(fresh) = offer.ticket_params else {
            bail!("the orchestrator at {} stopped taking tickets", self.url);
        };
        if let Err(m) = within_max(&offer.price, &self.max) {
            bail!("{m} (the orchestrator at {} raised its price)", self.url);
        }
        *self.price.lock().unwrap_or_else(|e| e.into_inner()) = offer.price;
        *self.params.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    /// Tickets whose expected value covers `frames` source frames through `rungs`, or
    /// `None` when the segment is free.
    pub async fn pay(
        &self,
        rungs: &[Rung],
        frames: u64,
        fps: f64,
    ) -> anyhow::Result<Option<Payment>> {
        let mut params = self.current_params().await?;
        let price = *self.price.lock().unwrap_or_else(|e| e.into_inner());
        let fee = price.fee(estimated_pixels(rungs, frames, fps))?;
        if fee <= 0 {
            return Ok(None);
        }
        if self.test_tickets == Some(TestTickets::Expired) {
            params.expires_at = now_secs().saturating_sub(60);
        }
        if self.test_tickets == Some(TestTickets::Reuse) {
            if let Some(p) = self.first.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return Ok(Some(p));
            }
        }
        let face = parse_u256(&params.face_value).map_err(anyhow::Error::msg)?;
        let prob = parse_u256(&params.win_prob).map_err(anyhow::Error::msg)?;
        let ev = ticket::expected_value(face, prob);
        let Some(count) = ticket::tickets_for(U256::from(fee as u64), ev) else {
            bail!("the orchestrator's tickets are worth nothing (face value {face}, win probability {prob})");
        };
        let first = self.next_nonce.fetch_add(count, Ordering::Relaxed);
        let tickets = ticket::sign_tickets(&params, &self.signer, first, count)?;
        let payment = Payment {
            seed: params.seed.clone(),
            tickets,
        };
        if self.test_tickets == Some(TestTickets::Reuse) {
            *self.first.lock().unwrap_or_else(|e| e.into_inner()) = Some(payment.clone());
        }
        Ok(Some(payment))
    }
}
