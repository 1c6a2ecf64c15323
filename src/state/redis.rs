//! Redis-backed rate-limit and replay stores, connected on first use: a Redis connection
//! belongs to the tokio runtime that made it, and Pingora's runtimes only exist once the
//! server runs.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::guards::ratelimit::{RateOutcome, RateSpec, RateStore, RateStoreError, RedisStore};
use crate::guards::webhook::{RedisReplayStore, ReplayError, ReplayStore};

pub(super) struct LazyRedis {
    pub(super) url: String,
    pub(super) timeout: Duration,
    pub(super) rate: tokio::sync::OnceCell<RedisStore>,
    pub(super) replay: tokio::sync::OnceCell<RedisReplayStore>,
}

impl LazyRedis {
    async fn replay_store(&self) -> Result<&RedisReplayStore, ReplayError> {
        self.replay
            .get_or_try_init(|| async { RedisReplayStore::new(&self.url, self.timeout) })
            .await
    }
}

#[async_trait]
impl RateStore for LazyRedis {
    async fn hit(
        &self,
        key: &str,
        spec: &RateSpec,
        now: SystemTime,
    ) -> Result<RateOutcome, RateStoreError> {
        let store = self
            .rate
            .get_or_try_init(|| async { RedisStore::new(&self.url, self.timeout) })
            .await?;
        store.hit(key, spec, now).await
    }
}

#[async_trait]
impl ReplayStore for LazyRedis {
    async fn first_seen(&self, id: &str, ttl: Duration) -> Result<bool, ReplayError> {
        self.replay_store().await?.first_seen(id, ttl).await
    }

    async fn forget(&self, id: &str) -> Result<(), ReplayError> {
        self.replay_store().await?.forget(id).await
    }
}
