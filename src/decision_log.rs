//! The decision log: one JSON line per request with what was decided and why. It carries the
//! route, decision, reason, user id, status, upstream and latency, and by construction nothing
//! else: never a token, cookie, signature, query string or header value.

use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{DecisionLogConfig, DecisionLogMode};

/// One decision. Only these fields can ever be written.
#[derive(Debug, Serialize)]
pub struct DecisionRecord<'a> {
    pub ts: String,
    pub method: &'a str,
    /// The canonical path (no query string: queries may carry presigned signatures).
    pub path: Option<&'a str>,
    pub route: Option<&'a str>,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub shadow_reason: Option<&'static str>,
    pub user_id: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<&'a str>,
    /// The S3 operation (`GetObject`, `PutObject`...) of an S3 route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'static str>,
    /// The kind folder of the key an S3 route touched (`images`, `videos`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'a str>,
    /// The internal service of an egress request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<&'a str>,
    pub latency_us: u64,
    pub policy_generation: u64,
}

pub struct DecisionLog {
    mode: DecisionLogMode,
    sample_rate: f64,
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Debug, thiserror::Error)]
#[error("decision log {0}: {1}")]
pub struct DecisionLogError(String, std::io::Error);

impl DecisionLog {
    /// Lines are buffered (64 KiB) and flushed at least once a second by [`DecisionLog::flush`]
    /// (a background task) and when Portier stops: a `write(2)` per request cost 7% of a
    /// proxied request's CPU in the load bench.
    pub fn open(cfg: &DecisionLogConfig) -> Result<DecisionLog, DecisionLogError> {
        let out: Box<dyn Write + Send> = match &cfg.path {
            None => Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            )),
            Some(p) => Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| DecisionLogError(p.display().to_string(), e))?,
            )),
        };
        Ok(DecisionLog {
            mode: cfg.mode,
            sample_rate: cfg.sample_rate,
            out: Mutex::new(out),
        })
    }

    /// Whether a request with this outcome is recorded (sampling applies to plain allows).
    pub fn wants(&self, denied_or_shadowed: bool) -> bool {
        match self.mode {
            DecisionLogMode::Off => false,
            DecisionLogMode::Deny => denied_or_shadowed,
            DecisionLogMode::All => {
                denied_or_shadowed
                    || self.sample_rate >= 1.0
                    || rand::random::<f64>() < self.sample_rate
            }
        }
    }

    /// Writes buffered lines out.
    pub fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            if let Err(e) = out.flush() {
                log::warn!("decision log flush failed: {e}");
            }
        }
    }

    /// The line is built whole in a per-thread buffer (reused: no allocation per request)
    /// before it is written, so a record is never half written.
    pub fn write(&self, rec: &DecisionRecord<'_>) {
        thread_local! {
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        LINE.with(|cell| {
            let mut fresh = Vec::new();
            let mut held = cell.try_borrow_mut();
            let line = match held.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut fresh,
            };
            line.clear();
            if serde_json::to_writer(&mut *line, rec).is_err() {
                return;
            }
            line.push(b'\n');
            if let Ok(mut out) = self.out.lock() {
                if let Err(e) = out.write_all(line) {
                    log::warn!("decision log write failed: {e}");
                }
            }
            // A rare huge line (a long path) does not stay allocated.
            if line.capacity() > 16 * 1024 {
                *line = Vec::new();
            }
        })
    }
}

/// RFC 3339 UTC time with milliseconds, without a date-time dependency. The date part is
/// computed once per second per thread.
pub fn rfc3339_now() -> String {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with(|cell| {
        let mut c = cell.borrow_mut();
        if c.0 != d.as_secs() {
            *c = (d.as_secs(), civil_second(d.as_secs() as i64));
        }
        format!("{}.{:03}Z", c.1, d.subsec_millis())
    })
}

/// RFC 3339 UTC time (`YYYY-MM-DDTHH:MM:SSZ`) of a Unix second.
pub fn rfc3339_at(secs: i64) -> String {
    format!("{}Z", civil_second(secs))
}

/// `YYYY-MM-DDTHH:MM:SS` for a Unix second.
fn civil_second(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::clock::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_rfc3339() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_record_is_one_whole_json_line() {
        let sink = Shared::default();
        let log = DecisionLog {
            mode: DecisionLogMode::All,
            sample_rate: 1.0,
            out: Mutex::new(Box::new(sink.clone())),
        };
        let long = format!("/api/{}", "x".repeat(20_000));
        for path in ["/api/items/42", long.as_str(), "/b"] {
            log.write(&DecisionRecord {
                ts: rfc3339_now(),
                method: "GET",
                path: Some(path),
                route: Some("items"),
                decision: "allow",
                reason: None,
                shadow_reason: None,
                user_id: Some("user_2abc"),
                status: 200,
                upstream: Some("app"),
                operation: None,
                kind: None,
                service: None,
                latency_us: 12,
                policy_generation: 1,
            });
        }
        let text = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let paths: Vec<String> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                v["path"].as_str().expect("path").to_owned()
            })
            .collect();
        assert_eq!(paths, ["/api/items/42", long.as_str(), "/b"]);
    }

    #[test]
    fn modes_and_sampling() {
        let log = |mode, sample_rate| DecisionLog {
            mode,
            sample_rate,
            out: Mutex::new(Box::new(std::io::sink())),
        };
        assert!(!log(DecisionLogMode::Off, 1.0).wants(true));
        assert!(log(DecisionLogMode::Deny, 0.0).wants(true));
        assert!(!log(DecisionLogMode::Deny, 1.0).wants(false));
        assert!(log(DecisionLogMode::All, 0.0).wants(true));
        assert!(!log(DecisionLogMode::All, 0.0).wants(false));
        assert!(log(DecisionLogMode::All, 1.0).wants(false));
    }
}
