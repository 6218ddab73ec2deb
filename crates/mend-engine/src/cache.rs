//! The process-local tier of check caches: one moka cache per name for "exists" answers
//! (its `try_get_with` also gives single-flight: concurrent checks of one key share one
//! request), and one for "missing" answers when the cache keeps them at all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mend_core::topology::CacheSpec;
use moka::future::Cache;

/// Entries kept per cache in one engine; older ones are evicted first.
const CAPACITY: u64 = 200_000;

#[derive(Clone)]
pub(crate) struct Tier {
    pub positive: Cache<String, bool>,
    /// Key → when it was found missing.
    pub negative: Option<Cache<String, i64>>,
}

pub(crate) struct Caches {
    tiers: Mutex<HashMap<String, Tier>>,
    /// Keys this engine just found missing → when. It covers the moment between a "missing"
    /// answer and the park that marks the key's sync in flight in the store, so the messages
    /// that arrive meanwhile do not ask again. Short-lived and safe: a message that parks on a
    /// stale entry resumes at once, because the release is newer than its check.
    /// Value: when it was found missing, and the key's release count before asking.
    pub recent_missing: Cache<String, (i64, i64)>,
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            tiers: Mutex::default(),
            recent_missing: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(Duration::from_secs(2))
                .build(),
        }
    }
}

impl Caches {
    /// The tier for `spec`'s name, made on first use with `spec`'s TTLs.
    pub(crate) fn tier(&self, spec: &CacheSpec) -> Tier {
        let mut tiers = match self.tiers.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        tiers
            .entry(spec.name.clone())
            .or_insert_with(|| Tier {
                positive: Cache::builder()
                    .max_capacity(CAPACITY)
                    .time_to_live(spec.ttl.0.max(Duration::from_millis(1)))
                    .build(),
                negative: (!spec.negative_ttl.0.is_zero()).then(|| {
                    Cache::builder()
                        .max_capacity(CAPACITY)
                        .time_to_live(spec.negative_ttl.0)
                        .build()
                }),
            })
            .clone()
    }

    /// Forgets a key in every tier (after a release, a "missing" answer is stale).
    pub(crate) async fn forget_missing(&self, key: &str) {
        self.recent_missing.invalidate(key).await;
        let tiers: Vec<Tier> = match self.tiers.lock() {
            Ok(t) => t.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        };
        for t in tiers {
            if let Some(neg) = &t.negative {
                neg.invalidate(key).await;
            }
        }
    }
}
