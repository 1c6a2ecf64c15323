//! The `portier` command: run, check, dev, token. The only place `anyhow` is used.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use portier::config::{Config, Credentials};
use portier::dev::{self, DevIssuer};
use portier::diag::Diagnostics;
use portier::explain::{explain_request, ExplainAuth, ExplainContext, ExplainRequest};
use portier::headers::HeaderGuard;
use portier::policy::lint::lint_structure;
use portier::policy::testing;
use portier::policy::{read_dir_sources, Known, PolicySet};
use portier::server;
use portier::state::{build_verifier, ConfigInput, Gateway, PolicyInput, Sources};

// glibc malloc/free were ~13% of a proxied request's CPU in the load bench (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portier",
    version,
    about = "Authorization sidecar: Clerk session tokens, route policies, Pingora"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy in the foreground.
    Run {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Take over the listening sockets of the running Portier: start this, then send the
        /// old process SIGQUIT; it hands them over on `server.upgrade_sock`, drains and exits.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the config and every policy file, and lint the policies; exit 1 on any error.
    Check {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Show how one request would be decided, check by check.
    Explain {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        method: String,
        /// Path (and query) as the client sends it.
        target: String,
        /// Request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// A session token (sent as `Authorization: Bearer`; verified against the real JWKS).
        #[arg(long, conflicts_with = "claims")]
        token: Option<String>,
        /// A JSON file of claims to use as the verified caller (no signature needed).
        #[arg(long)]
        claims: Option<PathBuf>,
        /// The request body (`@file` reads a file), for routes decided on it.
        #[arg(short = 'd', long = "data")]
        data: Option<String>,
        /// Explain a request to the egress listener by this service (path-style S3 target).
        #[arg(long, conflicts_with_all = ["token", "claims"])]
        egress: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Run the policy tests (TOML cases in <policies>/tests); exit 1 on any failure.
    Test {
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Directory of test cases (default: the policies directory's tests/).
        #[arg(long)]
        cases: Option<PathBuf>,
    },
    /// Run Portier with a local issuer and an echo upstream, offline.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Policies directory (default: the policies embedded in the binary).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// The egress listener (S3 for boto3 services), as in the shipped config.
        #[arg(long, default_value = "127.0.0.1:9100")]
        egress: SocketAddr,
    },
    /// Print a new P-256 private key (PEM, PKCS#8) for `[[assertion.keys]]`.
    AssertionKey,
    /// Mint a token from the running `portier dev` issuer.
    Token {
        #[arg(long)]
        sub: String,
        /// Plan (repeatable), user-scoped unless written o:name.
        #[arg(long)]
        plan: Vec<String>,
        /// Feature (repeatable), user-scoped unless written o:name.
        #[arg(long)]
        feature: Vec<String>,
        /// Active organization id.
        #[arg(long)]
        org: Option<String>,
        #[arg(long, default_value = "member")]
        org_role: String,
        /// Lifetime, e.g. 60s, 10m, 1h.
        #[arg(long, default_value = "60s")]
        expires: String,
    },
}

fn init_logging() {
    portier::logging::init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config, upgrade } => run(&config, upgrade),
        Cmd::Check {
            config,
            format,
            deny_warnings,
        } => return check(&config, format, deny_warnings),
        Cmd::Test { config, cases } => return policy_test(&config, cases),
        Cmd::Explain {
            config,
            method,
            target,
            headers,
            token,
            claims,
            data,
            egress,
            format,
        } => match egress {
            Some(service) => explain_egress(
                &config,
                &service,
                (&method, &target),
                &headers,
                data,
                format,
            ),
            None => explain(
                &config,
                &method,
                &target,
                &headers,
                (token, claims, data),
                format,
            ),
        },
        Cmd::Dev {
            listen,
            policies,
            egress,
        } => run_dev(listen, egress, policies),
        Cmd::AssertionKey => portier::assertion::generate_pem()
            .map(|pem| print!("{pem}"))
            .map_err(anyhow::Error::from),
        Cmd::Token {
            sub,
            plan,
            feature,
            org,
            org_role,
            expires,
        } => token(&sub, &plan, &feature, org.as_deref(), &org_role, &expires),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_diags(d: &Diagnostics, format: Format) {
    match format {
        Format::Text => eprint!("{d}"),
        Format::Json => println!("{}", serde_json::to_string_pretty(&d.0).unwrap_or_default()),
    }
}

fn check(config: &Path, format: Format, deny_warnings: bool) -> ExitCode {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(d) => {
            print_diags(&d, format);
            return ExitCode::FAILURE;
        }
    };
    // Every problem at once: what does not compile is reported next to the lints of
    // everything that does.
    let sources = match read_dir_sources(&cfg.policies_dir) {
        Ok(s) => s,
        Err(d) => {
            print_diags(&d, format);
            return ExitCode::FAILURE;
        }
    };
    let (ups, hooks) = (cfg.upstream_names(), cfg.webhook_names());
    let known = Known {
        upstreams: &ups,
        webhooks: &hooks,
        declared: Some(&cfg.declared),
    };
    let (set, mut findings) = PolicySet::compile_partial(&sources, known);
    findings.extend(lint_structure(&set));
    let src = std::fs::read_to_string(config).unwrap_or_default();
    findings.extend(portier::config::lint::redundant_egress_rules(
        &cfg, config, &src,
    ));
    findings.extend(portier::config::lint::unknown_cookie_suffix(
        &cfg, config, &src,
    ));
    findings.extend(portier::config::lint::unset_secrets(
        &cfg,
        config,
        &src,
        |e| std::env::var_os(e).is_some_and(|v| !v.is_empty()),
    ));
    let findings = findings.sorted();
    print_diags(&findings, format);
    let failed = findings.has_errors() || (deny_warnings && findings.warnings() > 0);
    if format == Format::Text {
        println!(
            "{}: {} and {} route(s) in {}: {} error(s), {} warning(s)",
            if failed { "failed" } else { "ok" },
            config.display(),
            set.routes.len(),
            cfg.policies_dir.display(),
            findings.errors(),
            findings.warnings()
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn policy_test(config: &Path, cases: Option<PathBuf>) -> ExitCode {
    let result = (|| -> anyhow::Result<bool> {
        let cfg = Config::load(config).map_err(|d| anyhow!("invalid config:\n{d}"))?;
        let set = PolicySet::load_config_dir(&cfg).map_err(|d| anyhow!("policies:\n{d}"))?;
        let dir = cases.unwrap_or_else(|| cfg.policies_dir.join("tests"));
        let sources = testing::load_cases(&dir).map_err(|d| anyhow!("{d}"))?;
        let results = testing::run(&set, &sources).map_err(|d| anyhow!("test files:\n{d}"))?;
        let mut failed = 0;
        for r in &results {
            match &r.failure {
                None => println!("test {} ... ok", r.name),
                Some(f) => {
                    failed += 1;
                    println!(
                        "test {} ... FAILED\n  {}:{}: {f}",
                        r.name,
                        r.file.display(),
                        r.line
                    );
                }
            }
        }
        println!(
            "\npolicies: {} passed, {} failed",
            results.len() - failed,
            failed
        );
        if results.is_empty() {
            return Err(anyhow!("no policy test cases found in {}", dir.display()));
        }
        Ok(failed == 0)
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("portier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_data(data: Option<&str>) -> anyhow::Result<Vec<u8>> {
    Ok(match data {
        Some(d) => match d.strip_prefix('@') {
            Some(f) => std::fs::read(f).with_context(|| format!("reading {f}"))?,
            None => d.as_bytes().to_vec(),
        },
        None => Vec::new(),
    })
}

fn parse_headers(headers: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("header {h:?} is not `Name: value`"))
        })
        .collect()
}

fn explain_egress(
    config: &Path,
    service: &str,
    (method, target): (&str, &str),
    headers: &[String],
    data: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let body = read_data(data.as_deref())?;
    let cfg = Config::load(config).map_err(|d| anyhow!("invalid config:\n{d}"))?;
    let egress = cfg
        .egress
        .as_ref()
        .ok_or_else(|| anyhow!("{} has no [egress] section", config.display()))?;
    let mut map = http::HeaderMap::new();
    for (k, v) in parse_headers(headers)? {
        map.append(
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())?,
            http::HeaderValue::from_str(&v)?,
        );
    }
    let report = portier::egress::explain::explain(egress, service, method, target, &map, &body)?;
    match format {
        Format::Text => print!("{}", report.render_text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

fn explain(
    config: &Path,
    method: &str,
    target: &str,
    headers: &[String],
    (token, claims, data): (Option<String>, Option<PathBuf>, Option<String>),
    format: Format,
) -> anyhow::Result<()> {
    let body = read_data(data.as_deref())?;
    let cfg = Config::load(config).map_err(|d| anyhow!("invalid config:\n{d}"))?;
    let set = PolicySet::load_config_dir(&cfg).map_err(|d| anyhow!("policies:\n{d}"))?;
    let mut hs = parse_headers(headers)?;
    if let Some(t) = token {
        hs.push(("authorization".into(), format!("Bearer {t}")));
    }
    let auth = match claims {
        Some(f) => {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            let v: Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
            ExplainAuth::Claims(
                v.as_object()
                    .cloned()
                    .ok_or_else(|| anyhow!("{}: not a JSON object", f.display()))?,
            )
        }
        None => ExplainAuth::FromRequest,
    };
    let verifier = build_verifier(&cfg)?;
    let guard = HeaderGuard::new(&cfg.headers);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let request = ExplainRequest {
        method,
        target,
        headers: &hs,
        auth,
        body: &body,
    };
    let cx = ExplainContext {
        policies: &set,
        verifier: &verifier,
        guard: &guard,
        credentials_of: |u: &str| {
            cfg.upstreams
                .get(u)
                .map_or(Credentials::Strip, |u| u.credentials)
        },
        max_body_bytes: cfg.limits.max_body_bytes,
        max_header_bytes: cfg.limits.max_header_bytes,
        assertion: cfg.assertion.as_ref(),
        pages: &cfg.pages,
    };
    let report = rt.block_on(explain_request(cx, request))?;
    match format {
        Format::Text => print!("{}", report.render_text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

fn run(config: &Path, upgrade: bool) -> anyhow::Result<()> {
    init_logging();
    let cfg = Config::load(config).map_err(|d| anyhow!("invalid config:\n{d}"))?;
    let built = server::build_with(
        &cfg,
        portier::state::Sources {
            config: portier::state::ConfigInput::File(config.to_path_buf()),
            policies: portier::state::PolicyInput::ConfigDir,
        },
        server::RunMode {
            upgrade,
            exit_when_drained: true,
        },
    )?;
    warm_keys(&built.gateway);
    warm_credentials(&built.gateway);
    // One line on stdout for whatever started the process (a configured port 0 is resolved).
    println!("portier listening {}", built.bound);
    log::info!("portier listening {}", built.bound);
    built.run_forever()
}

/// Fetch keys before serving so the first request does not wait; not fatal if it fails.
fn warm_keys(gw: &Gateway) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match rt {
        Ok(rt) => {
            if let Err(e) = rt.block_on(gw.verifier().jwks.warm()) {
                log::warn!("signing keys not loaded yet ({e}); requests will retry");
            }
        }
        Err(e) => log::warn!("cannot pre-load keys: {e}"),
    }
}

/// Fetches the bucket's credentials before serving (readiness waits for them either way).
fn warm_credentials(gw: &Gateway) {
    let Some(s3) = gw.live().s3.clone() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match rt {
        Ok(rt) => {
            rt.block_on(s3.creds.tick());
            if let Some(why) = s3.creds.not_ready() {
                log::warn!("{why}; S3 requests get 503 until they load");
            }
        }
        Err(e) => log::warn!("cannot pre-load S3 credentials: {e}"),
    }
}

fn run_dev(
    listen: SocketAddr,
    egress: SocketAddr,
    policies: Option<PathBuf>,
) -> anyhow::Result<()> {
    init_logging();
    let servers = dev::start_dev_servers().context("starting the dev issuer and echo upstream")?;
    // Webhook secrets for the shipped webhook routes, made up for this run.
    let worker_secret = dev::random_webhook_secret();
    let clerk_secret = dev::random_webhook_secret();
    std::env::set_var("PORTIER_DEV_WORKER_WEBHOOK_SECRET", &worker_secret);
    std::env::set_var("PORTIER_DEV_CLERK_WEBHOOK_SECRET", &clerk_secret);
    std::env::set_var("PORTIER_DEV_S3_ACCESS_KEY_ID", &servers.s3.access_key);
    std::env::set_var("PORTIER_DEV_S3_SECRET_ACCESS_KEY", &servers.s3.secret_key);
    // The local key pair of the dev egress service: what a boto3 backend would be given.
    let egress_secret = dev::random_local_secret();
    std::env::set_var("PORTIER_DEV_EGRESS_SECRET", &egress_secret);
    // The identity assertion key, made up for this run (a config always names a real one).
    std::env::set_var(
        "PORTIER_DEV_ASSERTION_KEY",
        portier::assertion::generate_pem()?,
    );
    servers.issuer.save(&dev::state_file())?;
    let mut cfg = Config::parse(
        Path::new("<dev>"),
        &dev::dev_config_toml(listen, egress, &servers),
    )
    .map_err(|d| anyhow!("dev config:\n{d}"))?;
    cfg.verifier.issuer = servers.issuer.issuer.clone();
    // Edits to a policies directory apply live, as with `portier run`.
    let sources = Sources {
        config: ConfigInput::Fixed,
        policies: match &policies {
            Some(dir) => PolicyInput::Dir(dir.clone()),
            None => PolicyInput::Embedded(
                dev::EMBEDDED_POLICIES
                    .iter()
                    .map(|(f, s)| (PathBuf::from(f), s.to_string()))
                    .collect(),
            ),
        },
    };
    let built = server::build(&cfg, sources)?;
    // Port 0 becomes the port the system picked (the printed examples use it).
    let listen = built.bound.public.first().copied().unwrap_or(listen);
    let egress = built.bound.egress.unwrap_or(egress);
    println!("portier listening {}", built.bound);
    let pro = servers.issuer.token(&with_entitlements(
        servers
            .issuer
            .claims("user_123", "http://localhost:3000", 3600),
        &["pro".into()],
        &[],
    ));
    let free = servers.issuer.token(&servers.issuer.claims(
        "user_456",
        "http://localhost:3000",
        3600,
    ));
    println!(
        r#"
Portier dev is up on http://{listen}
  issuer (dev only) {iss}   JWKS http://{jwks}/.well-known/jwks.json
  upstreams flask + nextjs -> echo server http://{echo} (answers with the headers it got)

Try (tokens below are valid for 1 hour; mint more with `portier token --sub user_123 --plan pro`):

  # signed in, allowed: the echo shows x-portier-user-id, and no Authorization (flask strips it)
  curl -s http://{listen}/api/books/1 -H 'Authorization: Bearer {pro}'

  # your own jobs are allowed, another user's are not (403 not_owner)
  curl -s http://{listen}/api/jobs/user_123/42 -H 'Authorization: Bearer {pro}'
  curl -s http://{listen}/api/jobs/user_999/42 -H 'Authorization: Bearer {pro}'

  # image generation needs plan pro: user_456 has none (403 plan_required)
  curl -s -X POST http://{listen}/api/images/generate -H 'Authorization: Bearer {free}'

  # no token (401 token_missing), a spoofed identity header is dropped, a bad path (400 bad_path)
  curl -s http://{listen}/api/books/1
  curl -s http://{listen}/api/books/1 -H 'Authorization: Bearer {pro}' -H 'X_Portier_User_Id: user_999'
  curl -s http://{listen}/api/books/%2e%2e/admin

  # files in the embedded S3 store (signature-checking, in {s3root}): upload, list, download
  curl -s -X PUT --data-binary @README.md http://{listen}/api/files/user_123/books/readme.md -H 'Authorization: Bearer {pro}'
  curl -s 'http://{listen}/api/files/?prefix=books/' -H 'Authorization: Bearer {pro}'
  curl -s http://{listen}/api/files/user_123/books/readme.md -H 'Authorization: Bearer {pro}'
  curl -s -X POST http://{listen}/api/files/presigned-url -H 'Authorization: Bearer {pro}' -d '{{"key":"user_123/books/readme.md","method":"GET"}}'

  # the app's file API (what the front end's s3-service.ts calls): upload a form, list, presign, delete
  printf '\x89PNG\r\n\x1a\n-demo-' > /tmp/portier-demo.png
  curl -s http://{listen}/api/s3/upload -H 'Authorization: Bearer {pro}' -F file=@/tmp/portier-demo.png -F s3_key=user_123/images/demo.png
  curl -s 'http://{listen}/api/s3/list?user_id=user_123&content_type=image' -H 'Authorization: Bearer {pro}'
  curl -s -X POST http://{listen}/api/s3/presigned-url -H 'Authorization: Bearer {pro}' -d '{{"s3_key":"user_123/images/demo.png","expires_in":3600}}'
  curl -s -X DELETE http://{listen}/api/s3/delete -H 'Authorization: Bearer {pro}' -d '{{"s3_key":"user_123/images/demo.png"}}'

  # flask's requests carry a signed x-portier-assertion (the echo shows it); its public keys:
  curl -s http://{listen}{jwks_path}

  # a backend writing with boto3 through the egress listener (local keys, no AWS keys):
  AWS_ENDPOINT_URL_S3=http://{egress} AWS_ACCESS_KEY_ID={egress_key} \
  AWS_SECRET_ACCESS_KEY={egress_secret} AWS_DEFAULT_REGION=us-east-1 python3 -c \
    'import boto3; s3 = boto3.client("s3"); s3.put_object(Bucket="app-media", Key="user_123/books/b.txt", Body=b"hi"); print(s3.list_objects_v2(Bucket="app-media", Prefix="user_123/")["KeyCount"])'

Webhook secrets for this run: workers {worker_secret}  clerk {clerk_secret}
"#,
        egress_key = dev::DEV_EGRESS_KEY_ID,
        jwks_path = dev::DEV_JWKS_PATH,
        s3root = servers.s3.root.display(),
        iss = servers.issuer.issuer,
        jwks = servers.jwks_addr,
        echo = servers.echo_addr,
    );
    warm_keys(&built.gateway);
    built.run_forever()
}

fn with_entitlements(mut claims: Value, plans: &[String], features: &[String]) -> Value {
    let scoped = |v: &[String]| {
        v.iter()
            .map(|p| {
                if p.contains(':') {
                    p.clone()
                } else {
                    format!("u:{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    if !plans.is_empty() {
        claims["pla"] = json!(scoped(plans));
    }
    if !features.is_empty() {
        claims["fea"] = json!(scoped(features));
    }
    claims
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(anyhow!("bad duration unit in {s:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

fn token(
    sub: &str,
    plans: &[String],
    features: &[String],
    org: Option<&str>,
    org_role: &str,
    expires: &str,
) -> anyhow::Result<()> {
    let issuer = DevIssuer::load(&dev::state_file())?;
    let ttl = parse_duration(expires)?.as_secs() as i64;
    let mut claims = with_entitlements(
        issuer.claims(sub, "http://localhost:3000", ttl),
        plans,
        features,
    );
    if let Some(org) = org {
        claims["o"] = json!({"id": org, "rol": org_role.trim_start_matches("org:")});
    }
    println!("{}", issuer.token(&claims));
    Ok(())
}
