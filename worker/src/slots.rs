//! Transcode slots shared by live and on-demand jobs, with live jobs served first: when a
//! slot frees up, a waiting live job gets it before any waiting on-demand job, so a live
//! segment never waits longer than the shortest running transcode.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Which waiters a freed slot goes to first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Live,
    Vod,
}

#[derive(Default)]
struct Inner {
    free: usize,
    closed: bool,
    live: VecDeque<oneshot::Sender<()>>,
    vod: VecDeque<oneshot::Sender<()>>,
}

/// A counting semaphore with two priority classes.
#[derive(Clone)]
pub struct Slots {
    inner: Arc<Mutex<Inner>>,
    total: usize,
}

/// A held slot; dropping it hands the slot to the next waiter.
pub struct SlotPermit {
    slots: Slots,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl Slots {
    pub fn new(total: usize) -> Self {
        Slots {
            inner: Arc::new(Mutex::new(Inner {
                free: total,
                ..Default::default()
            })),
            total,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The lock guards plain counters: a panic elsewhere cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.lock().free
    }

    /// Waits for a slot; `None` once the slots are closed (shutdown).
    pub async fn acquire(&self, priority: Priority) -> Option<SlotPermit> {
        let rx = {
            let mut inner = self.lock();
            if inner.closed {
                return None;
            }
            if inner.free > 0 {
                inner.free -= 1;
                return Some(SlotPermit {
                    slots: self.clone(),
                });
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::Live => inner.live.push_back(tx),
                Priority::Vod => inner.vod.push_back(tx),
            }
            rx
        };
        match rx.await {
            Ok(()) => Some(SlotPermit {
                slots: self.clone(),
            }),
            Err(_) => None,
        }
    }

    /// Refuses new acquisitions and wakes every waiter with `None`.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.live.clear();
        inner.vod.clear();
    }

    fn release(&self) {
        let mut inner = self.lock();
        loop {
            let next = inner.live.pop_front().or_else(|| inner.vod.pop_front());
            match next {
                // A waiter that gave up (its future was dropped) does not take the slot.
                Some(tx) => {
                    if tx.send(()).is_ok() {
                        return;
                    }
                }
                None => {
                    inner.free += 1;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_freed_slot_goes_to_live_waiters_first() {
        let slots = Slots::new(1);
        let held = slots.acquire(Priority::Vod).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, p) in [
            ("vod1", Priority::Vod),
            ("live", Priority::Live),
            ("vod2", Priority::Vod),
        ] {
            let (s, o) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = s.acquire(p).await.unwrap();
                o.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(permit);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(slots.available(), 0);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec!["live", "vod1", "vod2"]);
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test]
    async fn an_abandoned_waiter_does_not_leak_the_slot() {
        let slots = Slots::new(1);
        let held = slots.acquire(Priority::Vod).await.unwrap();
        let waiting =
            tokio::time::timeout(Duration::from_millis(10), slots.acquire(Priority::Live));
        assert!(waiting.await.is_err());
        drop(held);
        assert_eq!(slots.available(), 1);
        slots.close();
        assert!(slots.acquire(Priority::Live).await.is_none());
    }
}
