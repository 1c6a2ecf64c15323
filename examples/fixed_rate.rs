//! An open-loop (fixed-rate) HTTP/1.1 load generator. wrk is closed-loop: when the server
//! slows down, wrk sends less, and the slow moments are under-sampled. Here requests are due
//! at fixed times (`RATE` per second) whatever the answers do; each latency is measured from
//! the moment the request was *due*, so time spent queued behind a busy connection counts
//! (no coordinated omission). A second histogram measures from the moment the request was
//! written, for comparison.
//!
//! ```sh
//! cargo run --release --example fixed_rate -- URL RATE SECONDS [--connections 64] \
//!     [--token-file FILE] [--warmup SECONDS] [--label NAME]
//! ```
//!
//! `--token-file` sends `Authorization: Bearer <line>`, cycling through the file's lines.
//! Prints p50/p90/p99/p99.9/max and one `RESULT ...` line that `benches/load.sh` parses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Mutex};

struct Args {
    url: http::Uri,
    rate: f64,
    seconds: f64,
    connections: usize,
    tokens: Vec<String>,
    warmup: f64,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut connections = 64;
    let mut token_file = None;
    let mut warmup = 1.0;
    let mut label = String::from("-");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--connections" => {
                connections = value()?.parse().map_err(|_| "bad --connections")?;
            }
            "--token-file" => token_file = Some(value()?),
            "--warmup" => warmup = value()?.parse().map_err(|_| "bad --warmup")?,
            "--label" => label = value()?,
            _ => positional.push(a),
        }
    }
    let [url, rate, seconds] = positional.as_slice() else {
        return Err("URL, RATE and SECONDS are required".into());
    };
    let url: http::Uri = url.parse().map_err(|_| "URL is not a URI")?;
    if url.scheme_str() != Some("http") || url.authority().is_none() {
        return Err("URL must be http://host:port/path".into());
    }
    let rate: f64 = rate.parse().map_err(|_| "RATE must be a number")?;
    let seconds: f64 = seconds.parse().map_err(|_| "SECONDS must be a number")?;
    if !(rate > 0.0 && seconds > 0.0 && connections > 0 && warmup >= 0.0) {
        return Err("RATE, SECONDS and --connections must be positive".into());
    }
    let tokens = match token_file {
        None => Vec::new(),
        Some(f) => std::fs::read_to_string(&f)
            .map_err(|e| format!("{f}: {e}"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    };
    Ok(Args {
        url,
        rate,
        seconds,
        connections,
        tokens,
        warmup,
        label,
    })
}

/// Latencies in nanoseconds, up to a minute, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant, valid histogram bounds")
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    non_2xx: AtomicU64,
    errors: AtomicU64,
}

/// One due request: when it was due, and whether it falls in the measured window.
type Due = (Instant, bool);

struct Worker {
    url: Arc<http::Uri>,
    tokens: Arc<Vec<String>>,
    next: Arc<Mutex<mpsc::UnboundedReceiver<Due>>>,
    counts: Arc<Counts>,
    seq: Arc<AtomicU64>,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(url: &http::Uri) -> Option<Sender> {
    let authority = url.authority()?.as_str();
    let stream = tokio::net::TcpStream::connect(authority).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

impl Worker {
    /// Sends due requests one at a time on its own keep-alive connection until the schedule
    /// ends; returns (due-to-done, written-to-done) histograms.
    async fn run(self) -> (Histogram<u64>, Histogram<u64>) {
        let mut total = histogram();
        let mut service = histogram();
        let mut sender: Option<Sender> = None;
        let path = self
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let host = self
            .url
            .authority()
            .map_or(String::new(), |a| a.to_string());
        loop {
            let due = { self.next.lock().await.recv().await };
            let Some((due, measured)) = due else { break };
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = connect(&self.url).await;
            }
            let Some(s) = sender.as_mut() else {
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut req = http::Request::builder()
                .uri(path.as_str())
                .header(http::header::HOST, host.as_str());
            if !self.tokens.is_empty() {
                let i = self.seq.fetch_add(1, Ordering::Relaxed) as usize % self.tokens.len();
                req = req.header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", self.tokens[i]),
                );
            }
            let Ok(req) = req.body(Empty::<Bytes>::new()) else {
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if s.ready().await.is_err() {
                sender = None;
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let written = Instant::now();
            let outcome = match s.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.into_body().collect().await {
                        Ok(_) => Some(status),
                        Err(_) => None,
                    }
                }
                Err(_) => None,
            };
            let done = Instant::now();
            match outcome {
                Some(st) if st.is_success() => self.counts.ok.fetch_add(1, Ordering::Relaxed),
                Some(_) => self.counts.non_2xx.fetch_add(1, Ordering::Relaxed),
                None => {
                    sender = None;
                    self.counts.errors.fetch_add(1, Ordering::Relaxed)
                }
            };
            if measured {
                let _ = total.record((done - due).as_nanos().max(1) as u64);
                let _ = service.record((done - written).as_nanos().max(1) as u64);
            }
        }
        (total, service)
    }
}

/// Releases requests at their due times from a plain thread: tokio's timer has 1 ms
/// granularity, which at 2,000 req/s would bunch requests and charge the bunching to the
/// server. Sleeps until shortly before each due time, then spins the rest.
fn schedule(tx: mpsc::UnboundedSender<Due>, rate: f64, seconds: f64, warmup: f64) -> u64 {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = ((seconds + warmup) * rate).round() as u64;
    let first_measured = (warmup * rate).round() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            let left = due - now;
            if left > Duration::from_micros(200) {
                std::thread::sleep(left - Duration::from_micros(150));
            } else {
                std::hint::spin_loop();
            }
        }
        if tx.send((due, i >= first_measured)).is_err() {
            return i;
        }
    }
    total - first_measured
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "fixed_rate: {e}\nusage: fixed_rate URL RATE SECONDS [--connections N] \
                 [--token-file FILE] [--warmup SECONDS] [--label NAME]"
            );
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fixed_rate: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let next = Arc::new(Mutex::new(rx));
    let counts = Arc::new(Counts::default());
    let url = Arc::new(args.url.clone());
    let tokens = Arc::new(args.tokens.clone());
    let seq = Arc::new(AtomicU64::new(0));
    let (rate, seconds, warmup) = (args.rate, args.seconds, args.warmup);
    let scheduled = std::thread::spawn(move || schedule(tx, rate, seconds, warmup));
    let (total, service) = runtime.block_on(async {
        let handles: Vec<_> = (0..args.connections)
            .map(|_| {
                tokio::spawn(
                    Worker {
                        url: url.clone(),
                        tokens: tokens.clone(),
                        next: next.clone(),
                        counts: counts.clone(),
                        seq: seq.clone(),
                    }
                    .run(),
                )
            })
            .collect();
        let mut total = histogram();
        let mut service = histogram();
        // Bounded: the schedule ends after warmup + seconds; answers get 10 s more.
        let deadline = Duration::from_secs_f64(warmup + seconds + 10.0);
        let joined =
            tokio::time::timeout(deadline, futures_join(handles, &mut total, &mut service)).await;
        if joined.is_err() {
            eprintln!("fixed_rate: some requests were still unanswered at the deadline");
        }
        (total, service)
    });
    let measured = scheduled.join().unwrap_or(0);
    let ok = counts.ok.load(Ordering::Relaxed);
    let non_2xx = counts.non_2xx.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    println!(
        "fixed_rate {} -> {}: {rate} req/s for {seconds} s (+{warmup} s warm-up), {} connections",
        args.label, args.url, args.connections
    );
    println!(
        "  measured {} of {measured} due; 2xx (all phases) {ok}, non-2xx {non_2xx}, errors {errors}",
        total.len()
    );
    for (name, h) in [("from due time", &total), ("from write   ", &service)] {
        println!(
            "  {name}: p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us",
            us(h, 0.5),
            us(h, 0.9),
            us(h, 0.99),
            us(h, 0.999),
            h.max() as f64 / 1000.0
        );
    }
    println!(
        "RESULT label={} rate={rate} measured={} ok={ok} non2xx={non_2xx} errors={errors} \
         p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} \
         svc_p50_us={:.1} svc_p99_us={:.1} svc_p999_us={:.1}",
        args.label,
        total.len(),
        us(&total, 0.5),
        us(&total, 0.9),
        us(&total, 0.99),
        us(&total, 0.999),
        total.max() as f64 / 1000.0,
        us(&service, 0.5),
        us(&service, 0.99),
        us(&service, 0.999),
    );
    if errors > 0 || non_2xx > 0 || total.is_empty() {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Joins the workers, merging their histograms as they finish.
async fn futures_join(
    handles: Vec<tokio::task::JoinHandle<(Histogram<u64>, Histogram<u64>)>>,
    total: &mut Histogram<u64>,
    service: &mut Histogram<u64>,
) {
    for h in handles {
        if let Ok((t, s)) = h.await {
            let _ = total.add(&t);
            let _ = service.add(&s);
        }
    }
}
