//! Per-key rate limits: the limit syntax (`"5/min"`), the counting algorithm, and the two
//! counter stores (process memory and Redis).
//!
//! Algorithm: fixed windows aligned to the Unix epoch. A spec `N/W` splits time into windows
//! `[k*W, (k+1)*W)`; each hit increments the counter of `(key, W, k)` and is allowed while that
//! counter is at most `N`. Refused hits still count, which changes nothing because the counter
//! only matters up to `N`. Counters expire when their window ends.
//!
//! Why fixed windows: the state is one integer per key and window, so the in-memory store and
//! the Redis store (`INCR` + `PEXPIRE` in one Lua script) run literally the same arithmetic and
//! give the same answers, and `RateLimit` headers report an exact `remaining` and `reset`
//! instead of an estimate. The known cost is that a client can spend `N` at the end of one
//! window and `N` again at the start of the next; limits should be chosen with that 2x burst in
//! mind.
//!
//! Time is passed in by the caller ([`RateStore::hit`] takes `now`), never read here, so tests
//! inject a clock and replicas sharing Redis agree on window boundaries as far as their clocks
//! agree (NTP-level skew only shifts a boundary by the skew).
//!
//! Keys are opaque: the caller composes them (`route:user_id`, `route:ip`). A store error is
//! reported, not decided: [`RedisFailure`] is the configured answer the caller applies.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;

/// Policy name in the `RateLimit`/`RateLimit-Policy` headers; one policy applies per route.
const POLICY_NAME: &str = "default";

/// Expired counters linger this much longer than their window so that replicas whose clocks
/// run slightly behind still find the counter instead of starting a new one.
const EXPIRY_GRACE: Duration = Duration::from_secs(2);

/// Longest window accepted; beyond it a counter would outlive any reasonable deploy.
const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Why a rate spec string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateSpecError {
    #[error("rate limit {0:?} is not of the form N/unit (e.g. 5/min, 100/s, 20/10s)")]
    Syntax(String),
    #[error("rate limit {0:?} has an unknown time unit (use s, sec, second, m, min, minute, h, hour, day)")]
    UnknownUnit(String),
    #[error("rate limit count must be at least 1")]
    ZeroLimit,
    #[error("rate limit window must be a whole number of seconds between 1s and 366 days")]
    BadWindow,
}

/// Why a counter store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RateStoreError {
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    #[error("redis error: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis returned an impossible counter value {0}")]
    BadReply(i64),
}

/// What to do with a request when the shared counter store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailure {
    /// Let the request through: availability over strictness (e.g. read APIs).
    Open,
    /// Refuse the request: strictness over availability (e.g. login, costly endpoints).
    Closed,
}

impl RedisFailure {
    /// Whether a request is allowed when the store failed.
    pub fn allows(self) -> bool {
        self == RedisFailure::Open
    }
}

/// `limit` hits per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct RateSpec {
    limit: u32,
    window: Duration,
}

impl RateSpec {
    /// Zero limits and windows are refused: a zero window divides by zero, and a zero limit is a
    /// route that should not exist, which belongs in the route policy, not here.
    pub fn new(limit: u32, window: Duration) -> Result<Self, RateSpecError> {
        if limit == 0 {
            return Err(RateSpecError::ZeroLimit);
        }
        // Whole seconds only: the `w` and `t` header parameters are integers of seconds.
        if window.is_zero() || window.subsec_nanos() != 0 || window > MAX_WINDOW {
            return Err(RateSpecError::BadWindow);
        }
        Ok(RateSpec { limit, window })
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn window_ms(&self) -> u64 {
        // `new` bounds the window to 366 days, far below u64 milliseconds.
        self.window.as_secs().saturating_mul(1000)
    }
}

impl FromStr for RateSpec {
    type Err = RateSpecError;

    /// `N/unit` or `N/Munit`, e.g. `5/min`, `100/s`, `1000/hour`, `20/10s`, `3/2h`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || RateSpecError::Syntax(s.to_string());
        let (count, per) = s.trim().split_once('/').ok_or_else(syntax)?;
        let limit: u32 = parse_digits(count).ok_or_else(syntax)?;
        let unit_start = per.find(|c: char| !c.is_ascii_digit()).ok_or_else(syntax)?;
        let (multiplier, unit) = per.split_at(unit_start);
        let multiplier: u64 = if multiplier.is_empty() {
            1
        } else {
            parse_digits(multiplier).ok_or_else(syntax)?
        };
        let unit_secs: u64 = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hour" | "hours" => 60 * 60,
            "d" | "day" | "days" => 24 * 60 * 60,
            _ => return Err(RateSpecError::UnknownUnit(s.to_string())),
        };
        let secs = multiplier
            .checked_mul(unit_secs)
            .ok_or(RateSpecError::BadWindow)?;
        RateSpec::new(limit, Duration::from_secs(secs))
    }
}

/// Digits only: `u32::from_str` would also take a sign, which has no place in a limit.
fn parse_digits<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl TryFrom<String> for RateSpec {
    type Error = RateSpecError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.limit, self.window.as_secs())
    }
}

/// The verdict on one hit, with what the response headers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateOutcome {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Time until the current window ends and the quota is whole again.
    pub reset_after: Duration,
    /// Set only when refused; equal to `reset_after` under fixed windows.
    pub retry_after: Option<Duration>,
}

impl RateOutcome {
    /// The one decision both stores share, from the counter value after this hit.
    fn from_count(spec: &RateSpec, count: u64, reset_after: Duration) -> Self {
        let limit = spec.limit;
        let allowed = count <= u64::from(limit);
        let used = u32::try_from(count).unwrap_or(u32::MAX).min(limit);
        RateOutcome {
            allowed,
            limit,
            remaining: limit - used,
            reset_after,
            retry_after: (!allowed).then_some(reset_after),
        }
    }

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-09 and later,
    /// structured-field syntax), plus `Retry-After` when refused. Seconds are rounded up so a
    /// client that waits exactly that long is never refused again for the same window.
    pub fn headers(&self, spec: &RateSpec) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (
                "RateLimit-Policy",
                format!(
                    "\"{POLICY_NAME}\";q={};w={}",
                    spec.limit,
                    spec.window.as_secs()
                ),
            ),
            (
                "RateLimit",
                format!(
                    "\"{POLICY_NAME}\";r={};t={}",
                    self.remaining,
                    ceil_secs(self.reset_after)
                ),
            ),
        ];
        if let Some(retry) = self.retry_after {
            out.push(("Retry-After", ceil_secs(retry).max(1).to_string()));
        }
        out
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Where the current window of `spec` stands at `now`.
struct Window {
    index: u64,
    reset_after: Duration,
}

impl Window {
    fn at(spec: &RateSpec, now: SystemTime) -> Self {
        // A clock before 1970 is broken beyond what a rate limiter can fix; window 0 keeps
        // counting consistently instead of failing every request.
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let window_ms = spec.window_ms();
        let index = now_ms / window_ms;
        let reset_ms = window_ms - now_ms % window_ms;
        Window {
            index,
            reset_after: Duration::from_millis(reset_ms),
        }
    }

    /// Counter name: the window length is part of it so two specs on one key never share a
    /// counter, and the index makes each window a fresh counter without a reset step.
    fn counter_key(&self, prefix: &str, key: &str, spec: &RateSpec) -> String {
        format!("{prefix}{key}:{}:{}", spec.window_ms(), self.index)
    }
}

/// A counter store. Implementations must count atomically: concurrent hits on one key each get
/// a distinct counter value.
#[async_trait]
pub trait RateStore: Send + Sync {
    async fn hit(
        &self,
        key: &str,
        spec: &RateSpec,
        now: SystemTime,
    ) -> Result<RateOutcome, RateStoreError>;
}

struct Counter {
    hits: AtomicU64,
    ttl: Duration,
}

struct UntilWindowEnd;

impl moka::Expiry<String, Arc<Counter>> for UntilWindowEnd {
    fn expire_after_create(
        &self,
        _key: &String,
        counter: &Arc<Counter>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(counter.ttl)
    }
}

/// Counters in process memory: limits hold per replica only.
pub struct MemoryStore {
    counters: moka::sync::Cache<String, Arc<Counter>>,
}

impl MemoryStore {
    /// `max_keys` bounds memory. Eviction of a live counter under pressure restarts that key's
    /// window; moka's frequency-based admission keeps busy keys, which are the ones that matter.
    pub fn new(max_keys: u64) -> Self {
        MemoryStore {
            counters: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .expire_after(UntilWindowEnd)
                .build(),
        }
    }
}

#[async_trait]
impl RateStore for MemoryStore {
    async fn hit(
        &self,
        key: &str,
        spec: &RateSpec,
        now: SystemTime,
    ) -> Result<RateOutcome, RateStoreError> {
        let window = Window::at(spec, now);
        // Expiry only frees memory; correctness comes from the window index in the name, so
        // the cache's own clock and an injected `now` need not agree.
        let ttl = window.reset_after + EXPIRY_GRACE;
        let counter = self
            .counters
            .get_with(window.counter_key("", key, spec), || {
                Arc::new(Counter {
                    hits: AtomicU64::new(0),
                    ttl,
                })
            });
        let count = counter
            .hits
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        Ok(RateOutcome::from_count(spec, count, window.reset_after))
    }
}

/// `INCR` and the expiry in one script so no replica can observe (or leave behind, on a crash
/// between two commands) a counter without a TTL. The `PTTL` check also repairs a counter that
/// somehow lost its TTL instead of keeping it forever.
const HIT_SCRIPT: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
";

/// A Redis connection made on first use and remade after failures, every operation bounded by
/// `timeout`. Shared by the rate-limit and webhook replay stores.
pub(crate) fn lazy_connection(
    client: redis::Client,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // Reconnection is retried on later calls anyway; retrying inside one call would only
        // hold that request past its timeout.
        .set_number_of_retries(1)
        .set_max_delay(timeout);
    redis::aio::ConnectionManager::new_lazy_with_config(client, config)
}

/// Counters in Redis, shared by every replica pointed at the same server.
#[derive(Clone)]
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    timeout: Duration,
    prefix: String,
}

impl RedisStore {
    pub const DEFAULT_PREFIX: &'static str = "portier:rl:";

    /// Prepares a connection to `url` (`redis://host:port/db`). The connection is made lazily
    /// on the first hit, so Portier starts even while Redis is down and [`RedisFailure`]
    /// governs until it comes back. `timeout` bounds connecting and every hit: a slow limiter
    /// must not become the latency of every request.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RateStoreError> {
        let client = redis::Client::open(url).map_err(RateStoreError::InvalidUrl)?;
        let conn = lazy_connection(client, timeout).map_err(RateStoreError::Redis)?;
        Ok(RedisStore {
            conn,
            script: redis::Script::new(HIT_SCRIPT),
            timeout,
            prefix: Self::DEFAULT_PREFIX.to_string(),
        })
    }
}

#[async_trait]
impl RateStore for RedisStore {
    async fn hit(
        &self,
        key: &str,
        spec: &RateSpec,
        now: SystemTime,
    ) -> Result<RateOutcome, RateStoreError> {
        let window = Window::at(spec, now);
        let ttl_ms =
            u64::try_from((window.reset_after + EXPIRY_GRACE).as_millis()).unwrap_or(u64::MAX);
        let name = window.counter_key(&self.prefix, key, spec);
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(name);
        invocation.arg(ttl_ms);
        let count: i64 = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| RateStoreError::Timeout(self.timeout))?
            .map_err(RateStoreError::Redis)?;
        let count = u64::try_from(count)
            .ok()
            .filter(|c| *c > 0)
            .ok_or(RateStoreError::BadReply(count))?;
        Ok(RateOutcome::from_count(spec, count, window.reset_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> RateSpec {
        s.parse().expect("valid spec")
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn parses_units_and_multipliers() {
        let cases = [
            ("5/min", 5, 60),
            ("100/s", 100, 1),
            ("10/sec", 10, 1),
            ("10/second", 10, 1),
            ("7/m", 7, 60),
            ("7/minute", 7, 60),
            ("1000/hour", 1000, 3600),
            ("3/h", 3, 3600),
            ("50/day", 50, 86400),
            ("20/10s", 20, 10),
            ("3/2h", 3, 7200),
            (" 5/min ", 5, 60),
        ];
        for (input, limit, secs) in cases {
            let s = spec(input);
            assert_eq!(
                (s.limit(), s.window()),
                (limit, Duration::from_secs(secs)),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_zero_and_garbage() {
        assert_eq!("0/min".parse::<RateSpec>(), Err(RateSpecError::ZeroLimit));
        assert_eq!("5/0s".parse::<RateSpec>(), Err(RateSpecError::BadWindow));
        assert_eq!(
            "5/400day".parse::<RateSpec>(),
            Err(RateSpecError::BadWindow)
        );
        assert!(matches!(
            "5/fortnight".parse::<RateSpec>(),
            Err(RateSpecError::UnknownUnit(_))
        ));
        assert!(matches!(
            "5/MIN".parse::<RateSpec>(),
            Err(RateSpecError::UnknownUnit(_))
        ));
        for garbage in [
            "",
            "5",
            "/min",
            "5/",
            "-5/min",
            "+5/min",
            "5.5/min",
            "five/min",
            "5/10",
            "5 / min",
            "99999999999/s",
            "5/min/x",
        ] {
            assert!(garbage.parse::<RateSpec>().is_err(), "{garbage:?} accepted");
        }
        assert_eq!(
            RateSpec::new(1, Duration::from_millis(1500)),
            Err(RateSpecError::BadWindow)
        );
    }

    #[test]
    fn deserializes_from_config_strings() {
        #[derive(Deserialize)]
        struct Conf {
            limit: RateSpec,
            on_redis_failure: RedisFailure,
        }
        let c: Conf = toml::from_str("limit = \"5/min\"\non_redis_failure = \"closed\"")
            .expect("valid config");
        assert_eq!(c.limit, spec("5/min"));
        assert_eq!(c.on_redis_failure, RedisFailure::Closed);
        assert!(!c.on_redis_failure.allows());
        assert!(RedisFailure::Open.allows());
        assert!(toml::from_str::<Conf>("limit = \"0/min\"\non_redis_failure = \"open\"").is_err());
        assert!(toml::from_str::<Conf>("limit = \"5/min\"\non_redis_failure = \"Open\"").is_err());
    }

    #[tokio::test]
    async fn sixth_hit_in_a_five_per_minute_window_is_refused() {
        let store = MemoryStore::new(10_000);
        let s = spec("5/min");
        // 20 s into a minute window: 40 s until it resets.
        let now = at(1_700_000_000 - 1_700_000_000 % 60 + 20);
        for i in 1..=5u32 {
            let out = store.hit("login:1.2.3.4", &s, now).await.expect("hit");
            assert!(out.allowed, "hit {i}");
            assert_eq!(out.remaining, 5 - i);
            assert_eq!(out.retry_after, None);
        }
        let refused = store.hit("login:1.2.3.4", &s, now).await.expect("hit");
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(40)));
        assert_eq!(
            refused.headers(&s),
            vec![
                ("RateLimit-Policy", "\"default\";q=5;w=60".to_string()),
                ("RateLimit", "\"default\";r=0;t=40".to_string()),
                ("Retry-After", "40".to_string()),
            ]
        );

        let other = store.hit("login:5.6.7.8", &s, now).await.expect("hit");
        assert!(other.allowed);
        assert_eq!(other.remaining, 4);
        assert_eq!(other.headers(&s).len(), 2, "no Retry-After when allowed");
    }

    #[tokio::test]
    async fn quota_returns_when_the_window_ends() {
        let store = MemoryStore::new(10_000);
        let s = spec("5/min");
        let start = 1_700_000_000 - 1_700_000_000 % 60;
        for _ in 0..6 {
            store.hit("k", &s, at(start + 59)).await.expect("hit");
        }
        let late = store
            .hit("k", &s, at(start + 59) + Duration::from_millis(999))
            .await
            .expect("hit");
        assert!(!late.allowed);
        assert_eq!(late.retry_after, Some(Duration::from_millis(1)));
        assert_eq!(late.headers(&s)[2], ("Retry-After", "1".to_string()));

        let next = store.hit("k", &s, at(start + 60)).await.expect("hit");
        assert!(next.allowed);
        assert_eq!(next.remaining, 4);
        assert_eq!(next.reset_after, Duration::from_secs(60));
    }

    #[tokio::test]
    async fn specs_with_different_windows_do_not_share_a_counter() {
        let store = MemoryStore::new(10_000);
        let now = at(1_700_000_000);
        for _ in 0..2 {
            store.hit("k", &spec("2/min"), now).await.expect("hit");
        }
        assert!(
            !store
                .hit("k", &spec("2/min"), now)
                .await
                .expect("hit")
                .allowed
        );
        assert!(
            store
                .hit("k", &spec("2/hour"), now)
                .await
                .expect("hit")
                .allowed
        );
    }

    /// A throwaway redis-server, killed on drop so a failing assertion leaves nothing behind.
    struct RedisServer {
        child: std::process::Child,
        port: u16,
    }

    impl RedisServer {
        const BINARY: &'static str = "/usr/bin/redis-server";

        fn start() -> RedisServer {
            assert!(
                std::path::Path::new(Self::BINARY).exists(),
                "{} is missing: install redis-server (apt-get install redis-server) to run \
                 the shared rate limit test",
                Self::BINARY
            );
            let first = 20_000 + (std::process::id() % 10_000) as u16;
            for port in (first..32_000).chain(20_000..first) {
                // Probe first: redis-server would also fail on a busy port, but only after a
                // slower start-up, and the probe skips most taken ports cheaply.
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                    continue;
                }
                let child = std::process::Command::new(Self::BINARY)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn redis-server");
                let mut server = RedisServer { child, port };
                if server.wait_ready() {
                    return server;
                }
                // Lost the port between probe and bind; `server` is dropped (killed) here.
            }
            panic!("no free port below 32768 for redis-server");
        }

        fn wait_ready(&mut self) -> bool {
            use std::io::{Read, Write};
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return false;
                }
                if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                    let mut buf = [0u8; 7];
                    if s.write_all(b"PING\r\n").is_ok()
                        && s.read_exact(&mut buf).is_ok()
                        && &buf == b"+PONG\r\n"
                    {
                        return true;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    #[tokio::test]
    async fn redis_replicas_share_one_limit_and_report_outages() {
        let mut server = RedisServer::start();
        let timeout = Duration::from_millis(500);
        let a = RedisStore::new(&server.url(), timeout).expect("store a");
        let b = RedisStore::new(&server.url(), timeout).expect("store b");
        let s = spec("5/min");
        let now = at(1_700_000_000 - 1_700_000_000 % 60 + 15);

        let mut remaining = Vec::new();
        for i in 0..5 {
            let store = if i % 2 == 0 { &a } else { &b };
            let out = store.hit("api:user_1", &s, now).await.expect("redis hit");
            assert!(out.allowed, "hit {i}");
            remaining.push(out.remaining);
        }
        assert_eq!(
            remaining,
            vec![4, 3, 2, 1, 0],
            "both replicas count into one counter"
        );
        let refused = b.hit("api:user_1", &s, now).await.expect("redis hit");
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(45)));
        assert!(
            a.hit("api:user_2", &s, now)
                .await
                .expect("redis hit")
                .allowed
        );

        // Same arithmetic as the memory store, hit for hit.
        let memory = MemoryStore::new(100);
        for _ in 0..5 {
            memory.hit("api:user_1", &s, now).await.expect("memory hit");
        }
        assert_eq!(
            memory.hit("api:user_1", &s, now).await.expect("memory hit"),
            refused
        );

        // The counter carries a TTL: the window's remaining 45 s plus the grace.
        let client = redis::Client::open(server.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let key = format!("portier:rl:api:user_1:60000:{}", (1_700_000_000 / 60));
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("pttl");
        assert!((40_000..=47_000).contains(&pttl), "pttl {pttl}");

        server.kill();
        for store in [&a, &b] {
            let started = std::time::Instant::now();
            let err = store
                .hit("api:user_3", &s, now)
                .await
                .expect_err("hit must fail while redis is down");
            assert!(
                matches!(err, RateStoreError::Redis(_) | RateStoreError::Timeout(_)),
                "{err:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "failure took too long"
            );
        }
    }
}
