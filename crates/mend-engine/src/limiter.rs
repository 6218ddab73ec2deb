//! Per-system limits in this engine: a rate (GCRA via `governor`) with a burst, a cap on
//! requests in flight, and a pause when the system answers 429 with Retry-After. A request
//! that finds no capacity does not fail: its message waits in the store in the `limited`
//! state and comes back when capacity is due.
//!
//! Systems of several topologies with the same name and base URL share one limiter: they
//! are the same endpoint.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mend_core::clock::now_ms;
use mend_core::rate::Rate;
use mend_core::topology::Catalog;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::systems::Systems;

pub(crate) struct SystemLimit {
    pub name: String,
    pub base_url: String,
    pub rate: Option<Rate>,
    pub burst: Option<u32>,
    pub max_concurrent: Option<u32>,
    gcra: Option<DefaultDirectRateLimiter>,
    slots: Option<Arc<Semaphore>>,
    paused_until: AtomicI64,
    /// When the rate allows the next request (Unix ms), learned from the last refusal.
    next_free: AtomicI64,
    in_flight: Arc<AtomicU64>,
}

/// Held while a request is in flight.
pub(crate) struct InFlight {
    _slot: Option<OwnedSemaphorePermit>,
    counter: Arc<AtomicU64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SystemLimit {
    fn new(
        name: &str,
        base_url: &str,
        rate: Option<Rate>,
        burst: Option<u32>,
        max_concurrent: Option<u32>,
    ) -> Self {
        let gcra = rate.map(|r| {
            let period = r.per / r.count.max(1);
            let burst = burst.unwrap_or(if r.per <= Duration::from_secs(1) {
                r.count
            } else {
                1
            });
            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                .expect("the period is positive")
                .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"));
            RateLimiter::direct(quota)
        });
        Self {
            name: name.to_owned(),
            base_url: base_url.to_owned(),
            rate,
            burst,
            max_concurrent,
            gcra,
            slots: max_concurrent.map(|n| Arc::new(Semaphore::new(n.max(1) as usize))),
            paused_until: AtomicI64::new(0),
            next_free: AtomicI64::new(0),
            in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A request may go now (hold the returned guard while it runs), or wait until the time
    /// returned (Unix ms).
    pub(crate) fn admit(&self) -> Result<InFlight, i64> {
        let now = now_ms();
        let paused = self.paused_until.load(Ordering::Relaxed);
        if paused > now {
            return Err(paused);
        }
        let slot = match &self.slots {
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return Err(now + 20),
            },
            None => None,
        };
        if let Some(g) = &self.gcra
            && let Err(not_until) = g.check()
        {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            let at = now + (wait.as_millis() as i64).max(1);
            self.next_free.fetch_max(at, Ordering::Relaxed);
            return Err(at);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(InFlight {
            _slot: slot,
            counter: self.in_flight.clone(),
        })
    }

    /// The system said 429: no request to it from this engine before `until`.
    pub(crate) fn pause_until(&self, until: i64) {
        self.paused_until.fetch_max(until, Ordering::Relaxed);
    }

    /// How many messages of a node using this system may be claimed now.
    pub(crate) fn room(&self) -> Option<u32> {
        let now = now_ms();
        // Paused by a 429, or the rate refused a request until later: claim nothing now,
        // rather than claim messages that would only go back to wait.
        if self.paused_until.load(Ordering::Relaxed) > now
            || self.next_free.load(Ordering::Relaxed) > now
        {
            return Some(0);
        }
        self.slots.as_ref().map(|s| s.available_permits() as u32)
    }

    pub(crate) fn view(&self) -> LimiterView {
        let paused = self.paused_until.load(Ordering::Relaxed);
        LimiterView {
            system: self.name.clone(),
            url: self.base_url.clone(),
            rate: self.rate.map(|r| r.to_string()),
            burst: self.burst,
            max_concurrent: self.max_concurrent,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            paused_until: (paused > now_ms()).then_some(paused),
        }
    }
}

/// What an operator sees of one system's limiter.
#[derive(Clone, Debug, Serialize)]
pub struct LimiterView {
    pub system: String,
    pub url: String,
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub in_flight: u64,
    pub paused_until: Option<i64>,
}

#[derive(Default)]
pub(crate) struct Limiters {
    /// (topology, system) → its limiter.
    by_system: HashMap<(String, String), Arc<SystemLimit>>,
    /// (topology, node) → the limiter of the system it calls.
    by_node: HashMap<(String, String), Arc<SystemLimit>>,
    all: Vec<Arc<SystemLimit>>,
}

impl Limiters {
    pub(crate) fn new(catalog: &Catalog, systems: &Systems) -> Self {
        let mut shared: HashMap<(String, String), Arc<SystemLimit>> = HashMap::new();
        let mut out = Limiters::default();
        for t in catalog.topologies.values() {
            for s in t.systems.values() {
                let Some(resolved) = systems.get(&(t.name.clone(), s.name.clone())) else {
                    continue;
                };
                let key = (s.name.clone(), resolved.base_url.clone());
                let limit = shared
                    .entry(key)
                    .or_insert_with(|| {
                        let l = Arc::new(SystemLimit::new(
                            &s.name,
                            &resolved.base_url,
                            s.rate,
                            s.burst,
                            s.max_concurrent,
                        ));
                        out.all.push(l.clone());
                        l
                    })
                    .clone();
                out.by_system
                    .insert((t.name.clone(), s.name.clone()), limit);
            }
            for n in t.nodes.values() {
                if let Some(sys) = n.system()
                    && let Some(l) = out.by_system.get(&(t.name.clone(), sys.to_owned()))
                {
                    out.by_node
                        .insert((t.name.clone(), n.name.clone()), l.clone());
                }
            }
        }
        out
    }

    pub(crate) fn system(&self, topology: &str, system: &str) -> Option<&Arc<SystemLimit>> {
        self.by_system
            .get(&(topology.to_owned(), system.to_owned()))
    }

    pub(crate) fn node(&self, topology: &str, node: &str) -> Option<&Arc<SystemLimit>> {
        self.by_node.get(&(topology.to_owned(), node.to_owned()))
    }

    /// The nodes that call `limit`'s system.
    pub(crate) fn nodes_of<'a>(
        &'a self,
        limit: &'a Arc<SystemLimit>,
    ) -> impl Iterator<Item = &'a (String, String)> + 'a {
        self.by_node
            .iter()
            .filter(move |(_, l)| Arc::ptr_eq(l, limit))
            .map(|(k, _)| k)
    }

    pub(crate) fn all(&self) -> &[Arc<SystemLimit>] {
        &self.all
    }
}
