//! Which capability class's queue a job goes to. Each mode (live, on-demand) has an order of
//! preference over the classes (`--route-live`, `--route-vod`); a job goes to the first class
//! in that order with a free slot among its workers, else to the first with any worker at
//! all, else to any class that has workers, so no job waits in a queue nobody reads while
//! another class could take it. With no worker anywhere it waits in the `cpu` queue, the
//! class any machine can serve (and [`crate::recovery::stranded`] moves it should workers of
//! another class appear first).
//!
//! What the classes have is read from the workers' heartbeats (the registry in Redis), at
//! most every [`REFRESH`]. A GPU worker whose devices are all out of service offers no free
//! slot: it does its jobs on its CPU, so work goes elsewhere first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use castwork_cluster::broker::CLASSES;
use castwork_protocol::StreamMode;

use crate::state::{now_unix_ms, State};

/// How old the view of the workers may be when a job is routed.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The live workers of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCapacity {
    pub workers: usize,
    /// Slots not busy, summed over the class's workers.
    pub free_slots: usize,
}

/// What each class has now.
pub type Capacity = HashMap<String, ClassCapacity>;

/// The orders of preference, and the last view of the workers.
#[derive(Debug)]
pub struct Routing {
    pub live: Vec<&'static str>,
    pub vod: Vec<&'static str>,
    seen: Mutex<(u64, Capacity)>,
}

/// An order of preference over the classes, as a flag gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassOrder(pub Vec<&'static str>);

/// Reads an order of preference for a flag.
pub fn parse_class_order(s: &str) -> Result<ClassOrder, String> {
    parse_order(s).map(ClassOrder)
}

/// Reads an order of preference: known classes, comma-separated, none twice.
pub fn parse_order(s: &str) -> Result<Vec<&'static str>, String> {
    let mut order = Vec::new();
    for name in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let class = CLASSES.iter().find(|c| **c == name).ok_or_else(|| {
            format!(
                "unknown class {name:?}: the classes are {}",
                CLASSES.join(", ")
            )
        })?;
        if order.contains(class) {
            return Err(format!("class {name} is listed twice"));
        }
        order.push(*class);
    }
    if order.is_empty() {
        return Err("name at least one class".into());
    }
    Ok(order)
}

impl Routing {
    pub fn new(live: Vec<&'static str>, vod: Vec<&'static str>) -> Self {
        Routing {
            live,
            vod,
            seen: Mutex::new((0, Capacity::new())),
        }
    }

    /// The class a job of `mode` goes to, given what the classes have.
    pub fn choose(&self, mode: StreamMode, capacity: &Capacity) -> &'static str {
        let order = match mode {
            StreamMode::Live => &self.live,
            StreamMode::Vod => &self.vod,
        };
        let has = |c: &&str, free: bool| {
            capacity
                .get(*c)
                .is_some_and(|k| k.workers > 0 && (!free || k.free_slots > 0))
        };
        let rest = CLASSES.iter().filter(|c| !order.contains(c));
        order
            .iter()
            .find(|c| has(c, true))
            .or_else(|| order.iter().find(|c| has(c, false)))
            .or_else(|| rest.clone().find(|c| has(c, true)))
            .or_else(|| rest.clone().find(|c| has(c, false)))
            .copied()
            .unwrap_or("cpu")
    }

    /// What each class has, from the workers' records (read again when older than
    /// [`REFRESH`]). A registry that cannot be read leaves the last view.
    pub async fn capacity(&self, state: &State) -> Capacity {
        let now = now_unix_ms();
        {
            let seen = self.seen.lock().expect("routing lock");
            if now < seen.0 + REFRESH.as_millis() as u64 {
                return seen.1.clone();
            }
        }
        match state.workers().await {
            Ok(records) => {
                let capacity = capacity_of(&records);
                *self.seen.lock().expect("routing lock") = (now, capacity.clone());
                capacity
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the workers: routing on the last view");
                self.seen.lock().expect("routing lock").1.clone()
            }
        }
    }
}

/// Sums workers' heartbeat records by class.
pub fn capacity_of(records: &[serde_json::Value]) -> Capacity {
    let mut capacity = Capacity::new();
    for r in records {
        let (Some(class), Some(slots)) = (r["class"].as_str(), r["slots"].as_u64()) else {
            continue;
        };
        if slots == 0 {
            continue;
        }
        let busy = r["busy_slots"].as_u64().unwrap_or(0).min(slots);
        let c = capacity.entry(class.to_string()).or_default();
        c.workers += 1;
        if !out_of_service(r) {
            c.free_slots += (slots - busy) as usize;
        }
    }
    capacity
}

/// Whether a worker's record shows GPUs and none of them in service. Such a worker does its
/// class's jobs on its CPU, slowly: it still counts as a worker of the class (a job may
/// wait for it rather than for nobody), but offers no free slot, so a job goes first where
/// a device or a CPU worker has room.
fn out_of_service(record: &serde_json::Value) -> bool {
    record["devices"].as_array().is_some_and(|devices| {
        !devices.is_empty()
            && devices
                .iter()
                .all(|d| d["healthy"].as_bool() == Some(false))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routing() -> Routing {
        Routing::new(
            parse_order("nvenc,nvdec,cpu").unwrap(),
            parse_order("cpu").unwrap(),
        )
    }

    fn cap(list: &[(&str, usize, usize)]) -> Capacity {
        list.iter()
            .map(|(c, workers, free)| {
                (
                    c.to_string(),
                    ClassCapacity {
                        workers: *workers,
                        free_slots: *free,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn live_goes_to_a_gpu_class_with_room_and_to_the_cpu_otherwise() {
        let r = routing();
        let both = cap(&[("nvdec", 1, 2), ("cpu", 3, 3)]);
        assert_eq!(r.choose(StreamMode::Live, &both), "nvdec");
        let gpu_full = cap(&[("nvdec", 1, 0), ("cpu", 3, 1)]);
        assert_eq!(r.choose(StreamMode::Live, &gpu_full), "cpu");
        let all_full = cap(&[("nvdec", 1, 0), ("cpu", 3, 0)]);
        assert_eq!(r.choose(StreamMode::Live, &all_full), "nvdec");
        assert_eq!(r.choose(StreamMode::Live, &cap(&[("cpu", 1, 0)])), "cpu");
        // No worker anywhere (a cluster starting): the CPU's queue, which any machine serves.
        assert_eq!(r.choose(StreamMode::Live, &Capacity::new()), "cpu");
    }

    #[test]
    fn a_job_never_waits_for_a_class_with_no_workers_when_another_has_some() {
        let r = routing();
        // On-demand work prefers the CPU, but only GPU workers run.
        assert_eq!(r.choose(StreamMode::Vod, &cap(&[("nvenc", 2, 0)])), "nvenc");
        assert_eq!(
            r.choose(StreamMode::Vod, &cap(&[("cpu", 1, 0), ("nvenc", 2, 4)])),
            "cpu"
        );
        assert_eq!(r.choose(StreamMode::Vod, &Capacity::new()), "cpu");
    }

    #[test]
    fn orders_name_known_classes_once() {
        assert_eq!(parse_order(" nvdec, cpu ").unwrap(), ["nvdec", "cpu"]);
        assert!(parse_order("gpu")
            .unwrap_err()
            .contains("the classes are cpu, nvdec, nvenc"));
        assert!(parse_order("cpu,cpu").is_err());
        assert!(parse_order("").is_err());
    }

    #[test]
    fn capacity_sums_workers_by_class_and_skips_records_without_slots() {
        let records = [
            json!({"class": "cpu", "slots": 2, "busy_slots": 1}),
            json!({"class": "cpu", "slots": 1, "busy_slots": 5}),
            json!({"class": "nvdec", "slots": 0, "busy_slots": 0}),
            json!({"slots": 2}),
        ];
        assert_eq!(capacity_of(&records), cap(&[("cpu", 2, 1)]));
    }

    #[test]
    fn a_gpu_worker_with_every_device_out_of_service_offers_no_free_slot() {
        let device = |healthy: bool| json!({"index": 0, "healthy": healthy});
        let records = [
            json!({"class": "nvdec", "slots": 4, "busy_slots": 0,
                   "devices": [device(false), device(false)]}),
            json!({"class": "nvenc", "slots": 2, "busy_slots": 0,
                   "devices": [device(false), device(true)]}),
            json!({"class": "nvenc", "slots": 1, "busy_slots": 0, "devices": []}),
            json!({"class": "cpu", "slots": 1, "busy_slots": 0}),
        ];
        let capacity = capacity_of(&records);
        assert_eq!(
            capacity,
            cap(&[("nvdec", 1, 0), ("nvenc", 2, 3), ("cpu", 1, 1)])
        );
        // Live work then goes to a CPU worker with room before the failed card's worker.
        let r = Routing::new(
            parse_order("nvdec,cpu").unwrap(),
            parse_order("cpu").unwrap(),
        );
        assert_eq!(r.choose(StreamMode::Live, &capacity), "cpu");
        let busy_cpu = capacity_of(&[
            records[0].clone(),
            json!({"class": "cpu", "slots": 1, "busy_slots": 1}),
        ]);
        assert_eq!(r.choose(StreamMode::Live, &busy_cpu), "nvdec");
    }
}
