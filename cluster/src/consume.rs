//! Settling a consumed message so that none goes round forever: it is acked once handled,
//! dead-lettered at once with its reason when no retry can help (a bad message, a refusal),
//! and retried with backoff when a service was unavailable, up to a number of deliveries
//! the broker counts (a quorum queue's `x-delivery-count`, which no consumer restart
//! resets), after which it is dead-lettered too.

use std::time::Duration;

use castwork_protocol::{
    DEAD_DELIVERIES_HEADER, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, DEAD_QUEUE_HEADER,
    DEAD_REASON_HEADER, PARKED_QUEUE,
};
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::Broker;

/// Deliveries a message gets for failures that may pass (a service away) before it is
/// dead-lettered. With [`retry_delay`] they span about three minutes.
pub const MAX_DELIVERIES: u32 = 12;

/// How handling a message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// No retry can help: dead-letter it with this reason.
    Permanent(String),
    /// A service was unavailable or timed out: retry later.
    Transient(String),
}

/// How many times the broker delivered this message before (0 the first time).
pub fn delivery_count(d: &Delivery) -> u32 {
    let count = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    match count {
        Some(v) => amqp_u64(&v).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        None => u32::from(d.redelivered),
    }
}

/// A header's integer value, whatever width the broker chose.
pub fn amqp_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

/// A header's string value.
pub fn header_str(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The pause before the `n`th delivery of a message that failed for a passing reason:
/// half a second, doubling, at most 30 s.
pub fn retry_delay(n: u32) -> Duration {
    Duration::from_millis((500u64 << n.min(6)).min(30_000))
}

/// Settles a delivery of `queue` by how handling it went (see the module's notes).
pub async fn settle(broker: &Broker, queue: &str, delivery: Delivery, outcome: Outcome) {
    match outcome {
        Outcome::Done => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Outcome::Permanent(reason) => dead_letter(broker, queue, delivery, &reason).await,
        Outcome::Transient(reason) => {
            let n = delivery_count(&delivery) + 1;
            if n >= MAX_DELIVERIES {
                let reason = format!("gave up after {n} deliveries: {reason}");
                dead_letter(broker, queue, delivery, &reason).await;
                return;
            }
            let delay = retry_delay(n);
            tracing::warn!(
                queue,
                error = reason,
                delivery = n,
                retry_in_ms = delay.as_millis() as u64,
                "handling failed, message requeued"
            );
            // In the background: the consumer goes on with other messages meanwhile.
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                crate::broker::requeue(&delivery).await;
            });
        }
    }
}

/// Sends a copy of the delivery, with why, from where and after how many deliveries, to
/// the dead-letter exchange (or, for a dead letter, to the parked queue), then acks it. If
/// the broker does not take the copy, the delivery goes back to its queue to be tried again.
pub async fn dead_letter(broker: &Broker, queue: &str, delivery: Delivery, reason: &str) {
    let deliveries = delivery_count(&delivery) + 1;
    tracing::warn!(queue, reason, deliveries, "message dead-lettered");
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    set_header(&mut headers, DEAD_REASON_HEADER, reason);
    set_header(&mut headers, DEAD_QUEUE_HEADER, queue);
    headers.insert(
        DEAD_DELIVERIES_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(deliveries)),
    );
    let (exchange, key) = if queue == DEAD_LETTER_QUEUE {
        (PARKED_QUEUE, "")
    } else {
        (DEAD_LETTER_EXCHANGE, "")
    };
    match broker
        .publish(exchange, key, &delivery.data, Some(headers))
        .await
    {
        Ok(()) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            tracing::warn!(queue, error = %e, "could not dead-letter a message: requeued");
            tokio::spawn(async move {
                tokio::time::sleep(retry_delay(deliveries)).await;
                crate::broker::requeue(&delivery).await;
            });
        }
    }
}

fn set_header(headers: &mut FieldTable, name: &str, value: &str) {
    // A reason is for people: a short one is enough, and a header must stay small.
    let mut value = value.to_string();
    if value.len() > 1000 {
        let mut cut = 1000;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
    }
    headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_stay_within_minutes() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert!(retry_delay(3) > retry_delay(2));
        assert_eq!(retry_delay(40), Duration::from_secs(30));
        let total: Duration = (1..MAX_DELIVERIES).map(retry_delay).sum();
        assert!(total > Duration::from_secs(60), "{total:?}");
        assert!(total < Duration::from_secs(300), "{total:?}");
    }

    #[test]
    fn header_values_are_bounded() {
        let mut h = FieldTable::default();
        set_header(&mut h, "x", &"é".repeat(800));
        match h.inner().get("x") {
            Some(AMQPValue::LongString(s)) => assert!(s.to_string().len() <= 1000),
            other => panic!("{other:?}"),
        }
    }
}
