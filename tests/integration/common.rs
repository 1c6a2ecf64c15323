//! Test harness: real servers on 127.0.0.1:0 (a JWKS server, recording upstreams, Portier
//! itself) and a raw HTTP/1.1 client that sends request targets byte for byte, so path
//! attacks reach Portier exactly as an attacker would send them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use portier::config::Config;
use portier::dev::{json_response, serve, DevIssuer};
use portier::server::{self, ShutdownHandle};
use portier::state::Gateway;
use serde_json::{json, Value};

pub const ISSUER: &str = "https://clerk.portier.test";
pub const AZP: &str = "https://app.portier.test";

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

pub fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = runtime()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// `127.0.0.1:0`: Portier's listeners bind a port the system picks, and the test learns it
/// from the started server (`Portier::addr`, `Portier::admin`, `portier listening ...`).
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A port for a program that cannot report the port it bound: `redis-server`, `next start`,
/// and a Flask app that must know Portier's egress or admin address before Portier starts. Taken below Linux's ephemeral range
/// (32768+), so no `bind(:0)` of another test can be handed the same port in the window
/// between this check and Pingora's bind.
pub fn free_port() -> SocketAddr {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = 20_000 + (std::process::id() as usize % 400) * 25;
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + (base - 20_000 + n) % 12_000;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().expect("addr");
        }
    }
    panic!("no free port below the ephemeral range")
}

/// One issuer key (generated once per test binary: RSA key generation is not free).
pub fn issuer() -> &'static DevIssuer {
    static I: OnceLock<DevIssuer> = OnceLock::new();
    I.get_or_init(|| DevIssuer::generate(ISSUER, "ins_key1").expect("key"))
}

pub fn issuer2() -> &'static DevIssuer {
    static I: OnceLock<DevIssuer> = OnceLock::new();
    I.get_or_init(|| DevIssuer::generate(ISSUER, "ins_key2").expect("key"))
}

/// A JWKS HTTP server whose key list, availability and latency tests control.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub keys: Arc<Mutex<Vec<Value>>>,
    pub up: Arc<AtomicBool>,
    pub fetches: Arc<AtomicUsize>,
    pub delay_ms: Arc<AtomicUsize>,
}

impl JwksServer {
    pub fn start(keys: Vec<Value>) -> JwksServer {
        let (l, addr) = listener();
        let keys = Arc::new(Mutex::new(keys));
        let up = Arc::new(AtomicBool::new(true));
        let fetches = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let (k, u, f, d) = (keys.clone(), up.clone(), fetches.clone(), delay_ms.clone());
        runtime().spawn(serve(
            l,
            Arc::new(move |_parts| {
                f.fetch_add(1, Ordering::SeqCst);
                let delay = d.load(Ordering::SeqCst);
                if delay > 0 {
                    std::thread::sleep(Duration::from_millis(delay as u64));
                }
                if !u.load(Ordering::SeqCst) {
                    return json_response(503, &json!({"error": "down"}));
                }
                let keys = k.lock().map(|k| k.clone()).unwrap_or_default();
                json_response(200, &json!({ "keys": keys }))
            }),
        ));
        JwksServer {
            addr,
            keys,
            up,
            fetches,
            delay_ms,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// An upstream that records every request and answers 200 (or sleeps on `/slow/...`).
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let (l, addr) = listener();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        runtime().spawn(serve(
            l,
            Arc::new(move |parts: http::request::Parts| {
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (k, v) in &parts.headers {
                    headers
                        .entry(k.as_str().to_string())
                        .or_default()
                        .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                }
                let path = parts.uri.to_string();
                if path.contains("/slow") {
                    std::thread::sleep(Duration::from_millis(1500));
                }
                if let Ok(mut s) = s.lock() {
                    s.push(Seen {
                        method: parts.method.to_string(),
                        path: path.clone(),
                        headers,
                    });
                }
                // Tests ask for what Clerk's middleware would answer: its handshake redirect,
                // or a page that sets a fresh session cookie (completing a handshake).
                let answer = parts
                    .headers
                    .get("x-test-answer")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let mut resp = json_response(200, &json!({"upstream": "ok", "path": path}));
                if answer == "handshake" {
                    *resp.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
                    resp.headers_mut().insert(
                        "location",
                        http::HeaderValue::from_static(
                            "https://clerk.portier.test/v1/client/handshake?format=nonce",
                        ),
                    );
                } else if let Some(token) = answer.strip_prefix("session=") {
                    if let Ok(v) = format!("__session={token}; Path=/; SameSite=Lax").parse() {
                        resp.headers_mut().append("set-cookie", v);
                    }
                    if let Ok(v) = "__client_uat=1700000000; Path=/".parse() {
                        resp.headers_mut().append("set-cookie", v);
                    }
                }
                resp
            }),
        ));
        Upstream { addr, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// Policies used by most tests: one of each requirement.
pub const TEST_POLICIES: &str = r#"
[[route]]
name = "public"
path = "/public/{rest..}"
methods = ["GET", "POST"]
upstream = "app"
access = "public"

[[route]]
name = "books"
path = "/api/books/{rest..}"
methods = ["GET", "POST"]
upstream = "app"

[[route]]
name = "jobs"
path = "/api/jobs/{user_id}/{rest..}"
methods = ["GET"]
upstream = "app"
owner = "user_id"

[[route]]
name = "pro"
path = "/api/pro"
methods = ["GET"]
upstream = "app"
plan = ["pro"]

[[route]]
name = "feature"
path = "/api/dashboard"
methods = ["GET"]
upstream = "app"
feature = ["dashboard"]

[[route]]
name = "admin"
path = "/admin/{rest..}"
methods = ["GET", "POST"]
upstream = "app"
org_role = ["org:admin"]

[[route]]
name = "perm"
path = "/api/reservations"
methods = ["GET"]
upstream = "app"
org_permission = ["org:reservations:manage"]

[[route]]
name = "claims"
path = "/api/metadata-pro"
methods = ["GET"]
upstream = "app"
[route.claims]
"metadata.subscription" = "pro"

[[route]]
name = "page"
path = "/dashboard/{rest..}"
methods = ["GET", "HEAD"]
upstream = "next"
page = true

[[route]]
name = "next-api"
path = "/next/{rest..}"
methods = ["GET"]
upstream = "next"

[[route]]
name = "slow"
path = "/slow/{rest..}"
methods = ["GET"]
upstream = "app"
access = "public"

[[route]]
name = "dead"
path = "/dead"
methods = ["GET"]
upstream = "dead"
access = "public"
"#;

pub struct Portier {
    pub addr: SocketAddr,
    /// The admin listener, when the config has one.
    pub admin: Option<SocketAddr>,
    /// The egress listener, when the config has one.
    pub egress: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    pub(crate) shutdown: ShutdownHandle,
    pub dir: TempDir,
}

impl Drop for Portier {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("portier-test-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&p).expect("tempdir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Setup {
    pub jwks_url: String,
    pub app: SocketAddr,
    pub next: SocketAddr,
    pub policies: String,
    pub extra_clerk: String,
    pub jwks_extra: String,
    /// Extra top-level config (e.g. `[admin]`, `[decision_log]`), appended verbatim.
    pub extra_config: String,
    pub reload_poll_ms: u64,
    /// Where the decision log goes; by default one file for the whole test run, which
    /// `scripts/test` greps for secrets afterwards.
    pub decision_log: PathBuf,
    pub admin: Option<SocketAddr>,
    /// `[server] grace_period_seconds` (the drain on SIGTERM); 0 by default in tests.
    pub grace_period_seconds: u64,
    /// Extra `[server]` keys, verbatim.
    pub server_extra: String,
}

/// The decision log shared by every Portier of the test run.
pub fn shared_decision_log() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("decision-log.jsonl")
}

impl Setup {
    pub fn new(jwks: &JwksServer, app: &Upstream, next: &Upstream) -> Setup {
        Setup {
            jwks_url: jwks.url(),
            app: app.addr,
            next: next.addr,
            policies: TEST_POLICIES.to_string(),
            extra_clerk: String::new(),
            jwks_extra: String::new(),
            extra_config: String::new(),
            reload_poll_ms: 0,
            decision_log: shared_decision_log(),
            admin: None,
            grace_period_seconds: 0,
            server_extra: String::new(),
        }
    }

    /// A public route `/pool/{rest..}` (GET, POST) to an upstream `pool` of `peers`, which
    /// gives up a connect after 300 ms; `extra` adds keys to `[upstreams.pool]` (and tables
    /// after it).
    pub fn pool(&mut self, peers: &[String], extra: &str) {
        self.policies = "[[route]]\nname = \"pool\"\npath = \"/pool/{rest..}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"pool\"\naccess = \"public\"\n".into();
        let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
        self.extra_config = format!(
            "[upstreams.pool]\npeers = [{}]\nconnect_timeout_ms = 300\n{extra}",
            peers.join(", ")
        );
    }

    /// Writes config.toml (Portier listening on port 0: the bound port is learnt when it
    /// starts) and the policies into a fresh directory.
    pub fn write(self) -> (TempDir, PathBuf) {
        let dir = TempDir::new();
        let listen = "127.0.0.1:0";
        // Port 1: nothing listens there, so connections are refused at once.
        let dead = "127.0.0.1:1";
        let config = format!(
            r#"
[server]
listen = ["{listen}"]
threads = 2
grace_period_seconds = {grace}
graceful_shutdown_timeout_seconds = 1
{server_extra}

[clerk]
issuer = "{ISSUER}"
authorized_parties = ["{AZP}"]
missing_azp = "reject"
{extra}

[clerk.jwks]
url = "{jwks}"
unknown_kid_cooldown_seconds = 5
failure_backoff_seconds = 0
{jwks_extra}

[upstreams.app]
peers = ["{app}"]
credentials = "strip"
read_timeout_ms = 500

[upstreams.next]
peers = ["{next}"]
credentials = "forward"

[upstreams.dead]
peers = ["{dead}"]
connect_timeout_ms = 300

[policies]
reload_poll_ms = {poll}

[decision_log]
path = "{log}"

{admin}
{extra_config}
"#,
            log = self.decision_log.display(),
            grace = self.grace_period_seconds,
            server_extra = self.server_extra,
            admin = self
                .admin
                .map(|a| format!("[admin]\nlisten = \"{a}\"\n"))
                .unwrap_or_default(),
            poll = self.reload_poll_ms,
            extra_config = self.extra_config,
            extra = self.extra_clerk,
            jwks = self.jwks_url,
            jwks_extra = self.jwks_extra,
            app = self.app,
            next = self.next,
        );
        let cfg_path = dir.0.join("config.toml");
        std::fs::write(&cfg_path, &config).expect("write config");
        std::fs::create_dir_all(dir.0.join("policies")).expect("mkdir");
        std::fs::write(dir.0.join("policies/test.toml"), &self.policies).expect("write policies");
        (dir, cfg_path)
    }

    pub fn start(self) -> Portier {
        capture_logs();
        let (dir, cfg_path) = self.write();
        let cfg = Config::load(&cfg_path).unwrap_or_else(|d| panic!("config:\n{d}"));
        portier::policy::PolicySet::load_config_dir(&cfg)
            .unwrap_or_else(|d| panic!("policies:\n{d}"));
        let built = server::build_from_config(&cfg, &cfg_path).expect("build");
        let gateway = built.gateway.clone();
        let bound = built.bound.clone();
        let (shutdown, _thread) = server::spawn(built);
        let listen = bound.public[0];
        assert!(
            server::wait_listening(listen, Duration::from_secs(10)),
            "portier did not start"
        );
        Portier {
            addr: listen,
            admin: bound.admin,
            egress: bound.egress,
            gateway,
            shutdown,
            dir,
        }
    }
}

/// Starts `portier run -c <cfg> <args>` and reads the addresses it printed once bound
/// (`portier listening public=... egress=... admin=...`); its stdout is drained afterwards.
pub fn spawn_portier_run(
    cfg: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, portier::server::Bound) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portier"))
        .args(["run", "-c"])
        .arg(cfg)
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start portier");
    let bound = listening(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("portier run printed no listening line")
    });
    (child, bound)
}

/// The addresses of the `portier listening public=... egress=... admin=...` line a started
/// `portier run` or `portier dev` prints once bound; the rest of its stdout is drained on a
/// thread, so the process never blocks on a full pipe.
pub fn listening(
    child: &mut std::process::Child,
    wait: Duration,
) -> Option<portier::server::Bound> {
    use std::io::BufRead;
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { return };
            if let Some(rest) = line.strip_prefix("portier listening ") {
                let _ = tx.send(rest.to_string());
                break;
            }
        }
        for _ in lines {}
    });
    rx.recv_timeout(wait).ok().map(|l| parse_bound(&l))
}

/// The addresses of a `portier listening ...` line.
pub fn parse_bound(line: &str) -> portier::server::Bound {
    let mut b = portier::server::Bound::default();
    for part in line.split_whitespace() {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k {
            "public" => {
                b.public = v
                    .split(',')
                    .map(|a| a.parse().expect("public address"))
                    .collect()
            }
            "egress" => b.egress = Some(v.parse().expect("egress address")),
            "admin" => b.admin = Some(v.parse().expect("admin address")),
            _ => {}
        }
    }
    b
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    /// The `error` reason code of a JSON refusal.
    pub fn reason(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A request straight to the store (a presigned URL), with these headers and body.
pub fn store_request(url: &str, method: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let addr: SocketAddr = host.parse().expect("addr");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("{method} /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).expect("write");
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

/// `url` without the query parameter `name`.
pub fn without_param(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').expect("query");
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.split('=').next() != Some(name))
        .collect();
    format!("{base}?{}", kept.join("&"))
}

/// GETs a presigned URL straight from the store.
pub fn fetch_url(url: &str) -> Resp {
    store_request(url, "GET", &[], b"")
}

/// Sends one request with `Connection: close` and reads the whole answer.
pub fn raw(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: portier.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Resp {
    raw(addr, "GET", target, headers)
}

pub fn parse(buf: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A valid v2 session token for `sub` with extra claims merged in.
pub fn token_with(sub: &str, extra: Value) -> String {
    let mut claims = issuer().claims(sub, AZP, 60);
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    issuer().token(&claims)
}

pub fn token(sub: &str) -> String {
    token_with(sub, json!({}))
}

/// The standard world: JWKS with key 1, an app and a next upstream, Portier in front.
pub struct World {
    pub jwks: JwksServer,
    pub app: Upstream,
    pub next: Upstream,
    pub portier: Portier,
}

impl World {
    pub fn start() -> World {
        Self::start_with(|_| {})
    }

    pub fn start_with(f: impl FnOnce(&mut Setup)) -> World {
        let jwks = JwksServer::start(vec![issuer().jwk()]);
        let app = Upstream::start();
        let next = Upstream::start();
        let mut setup = Setup::new(&jwks, &app, &next);
        f(&mut setup);
        let portier = setup.start();
        World {
            jwks,
            app,
            next,
            portier,
        }
    }

    pub fn get(&self, target: &str, headers: &[(&str, &str)]) -> Resp {
        get(self.portier.addr, target, headers)
    }

    pub fn get_as(&self, target: &str, token: &str) -> Resp {
        let auth = bearer(token);
        self.get(target, &[("Authorization", &auth)])
    }
}

/// What a body-recording upstream received.
#[derive(Debug, Clone)]
pub struct SeenBody {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// False when the client (Portier) aborted the body midway.
    pub complete: bool,
}

/// An upstream that reads and records whole request bodies.
pub struct BodyUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<SeenBody>>>,
}

impl BodyUpstream {
    pub fn start() -> BodyUpstream {
        use http_body_util::BodyExt;
        let (l, addr) = listener();
        let seen: Arc<Mutex<Vec<SeenBody>>> = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        runtime().spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let s = s.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let (body, complete) = match body.collect().await {
                                    Ok(b) => (b.to_bytes().to_vec(), true),
                                    Err(_) => (Vec::new(), false),
                                };
                                let headers = parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect();
                                if let Ok(mut s) = s.lock() {
                                    s.push(SeenBody {
                                        path: parts.uri.to_string(),
                                        headers,
                                        body,
                                        complete,
                                    });
                                }
                                Ok::<_, std::convert::Infallible>(json_response(
                                    200,
                                    &json!({"ok": true}),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        BodyUpstream { addr, seen }
    }

    pub fn requests(&self) -> Vec<SeenBody> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Sends a request with a body (`Content-Length`, or chunked when `chunked`).
pub fn send_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunked: bool,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: portier.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if chunked {
        req.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    }
    let _ = s.write_all(req.as_bytes());
    if chunked {
        for part in body.chunks(16 * 1024) {
            let _ = s.write_all(format!("{:x}\r\n", part.len()).as_bytes());
            let _ = s.write_all(part);
            let _ = s.write_all(b"\r\n");
        }
        let _ = s.write_all(b"0\r\n\r\n");
    } else {
        let _ = s.write_all(body);
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

/// A `redis-server` on a free port below the ephemeral range, killed on drop.
pub struct Redis {
    pub port: u16,
    child: std::process::Child,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port().port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is required (scripts/setup installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            server::wait_listening(addr, Duration::from_secs(10)),
            "redis-server did not start"
        );
        Redis { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `portier run` as a child process (a real replica), killed on drop.
pub struct PortierProcess {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    child: std::process::Child,
    config: PathBuf,
    _dir: Option<TempDir>,
}

impl PortierProcess {
    pub fn start(setup: Setup) -> PortierProcess {
        Self::start_args(setup, &[])
    }

    /// `portier run -c <config> <args>`, listening on ports the system picks.
    pub fn start_args(setup: Setup, args: &[&str]) -> PortierProcess {
        let (dir, cfg) = setup.write();
        let (child, bound) = spawn_portier_run(&cfg, args, &[]);
        let addr = bound.public[0];
        assert!(
            server::wait_listening(addr, Duration::from_secs(15)),
            "portier process did not start"
        );
        // From now on the config names the bound ports, as a production config does: a
        // process started `--upgrade` on it takes exactly these sockets over.
        let text = std::fs::read_to_string(&cfg).expect("config");
        let text = text.replacen(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"{addr}\"]"),
            1,
        );
        std::fs::write(&cfg, text).expect("config");
        PortierProcess {
            addr,
            admin: bound.admin,
            child,
            config: cfg,
            _dir: Some(dir),
        }
    }

    /// Another `portier run` on the same config (`--upgrade` takes this one's sockets over).
    pub fn another(&self, args: &[&str]) -> PortierProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_portier"))
            .args(["run", "-c"])
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start portier");
        PortierProcess {
            addr: self.addr,
            admin: self.admin,
            child,
            config: self.config.clone(),
            _dir: None,
        }
    }

    /// The config file the process runs on (edit it to reload).
    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `QUIT`, `HUP`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {sig}");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PortierProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every log line of this test binary, for tests that prove a secret never reaches a log.
pub fn captured_logs() -> String {
    log_capture()
        .lines
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default()
}

struct Capture {
    lines: Mutex<String>,
}

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        // The same rule as the production logger: Pingora's header dumps never get in.
        m.level() <= log::Level::Debug && portier::logging::allowed(m.target(), m.level())
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            if let Ok(mut l) = self.lines.lock() {
                l.push_str(&format!("{} {}: {}\n", r.level(), r.target(), r.args()));
            }
        }
    }
    fn flush(&self) {}
}

fn log_capture() -> &'static Capture {
    static C: OnceLock<&'static Capture> = OnceLock::new();
    C.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture {
            lines: Mutex::new(String::new()),
        }));
        let _ = log::set_logger(c);
        log::set_max_level(log::LevelFilter::Debug);
        c
    })
}

/// Installs the capturing logger (idempotent); servers started afterwards log into it.
pub fn capture_logs() {
    let _ = log_capture();
}

/// A TCP relay that records the first 64 MiB the client side sends and counts every byte, so
/// a test can see what reached a server and how much of a body did.
pub struct Relay {
    pub addr: SocketAddr,
    pub sent: Arc<Mutex<Vec<u8>>>,
    pub total: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (l, addr) = listener();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (rec, count) = (sent.clone(), total.clone());
        runtime().spawn(async move {
            loop {
                let Ok((client, _)) = l.accept().await else {
                    continue;
                };
                let (rec, count) = (rec.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            count.fetch_add(n as u64, Ordering::SeqCst);
                            if let Ok(mut r) = rec.lock() {
                                let room = (64 * 1024 * 1024usize).saturating_sub(r.len());
                                r.extend_from_slice(&buf[..n.min(room)]);
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Relay { addr, sent, total }
    }

    pub fn text(&self) -> String {
        self.sent
            .lock()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default()
    }

    /// Bytes received so far, once the count has stopped moving (bounded wait).
    pub fn settled_total(&self) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut last = self.total.load(Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.total.load(Ordering::SeqCst);
            if now == last || std::time::Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

/// A Standard Webhooks `v1,` signature of `id.ts.body` with a `whsec_` secret.
pub fn webhook_signature(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let mut msg = format!("{id}.{ts}.").into_bytes();
    msg.extend_from_slice(body);
    format!("v1,{}", STANDARD.encode(aws_lc_rs::hmac::sign(&key, &msg)))
}

/// An upstream that can die and come back on the same address, as a peer's process does: on
/// `kill` its listener closes (new connections are refused) and every open connection is
/// closed, requests being answered included. Each request is answered `200 ok` after `delay`.
pub struct MortalUpstream {
    pub addr: SocketAddr,
    delay: Duration,
    served: Arc<AtomicUsize>,
    life: Mutex<Option<Life>>,
}

struct Life {
    dead: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl MortalUpstream {
    pub fn start(delay: Duration) -> MortalUpstream {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let u = MortalUpstream {
            addr,
            delay,
            served: Arc::new(AtomicUsize::new(0)),
            life: Mutex::new(None),
        };
        u.live(l);
        u
    }

    /// Requests answered so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    pub fn kill(&self) {
        let Some(life) = self.life.lock().expect("life").take() else {
            return;
        };
        life.dead.store(true, Ordering::SeqCst);
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect(self.addr);
        for c in life.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Until the listener is gone, a connect would still be accepted.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Listen again on the same address.
    pub fn revive(&self) {
        let l = TcpListener::bind(self.addr).expect("rebind the same address");
        self.live(l);
    }

    fn live(&self, l: TcpListener) {
        let dead = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        *self.life.lock().expect("life") = Some(Life {
            dead: dead.clone(),
            conns: conns.clone(),
        });
        let (served, delay) = (self.served.clone(), self.delay);
        std::thread::spawn(move || {
            for s in l.incoming() {
                if dead.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(s) = s else { continue };
                if let Ok(c) = s.try_clone() {
                    conns.lock().expect("conns").push(c);
                }
                let (served, dead) = (served.clone(), dead.clone());
                std::thread::spawn(move || answer_until_closed(s, delay, &served, &dead));
            }
        });
    }
}

fn answer_until_closed(s: TcpStream, delay: Duration, served: &AtomicUsize, dead: &AtomicBool) {
    use std::io::BufRead;
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = std::io::BufReader::new(s);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        std::thread::sleep(delay);
        if dead.load(Ordering::SeqCst) {
            return;
        }
        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
        served.fetch_add(1, Ordering::SeqCst);
    }
}
