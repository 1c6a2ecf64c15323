//! Streaming memory bench for the S3 front door and the egress listener: a 1 GiB PUT and GET
//! generated on the fly, through Portier (`portier run`, release build, as a child process)
//! and directly to the store, against a signature-checking S3 store; then boto3's
//! `upload_file`/`download_file` of a 1 GiB file (multipart, 8 MiB parts, 10 threads) through
//! the egress listener and directly (`benches/egress_upload.py`, the `.venv` python). Prints
//! throughput and Portier's peak RSS (VmHWM). Everything on 127.0.0.1; objects are deleted.
//!
//! cargo build --release --bin portier --example s3_stream && target/release/examples/s3_stream [MiB] [--store fs|shm|mem] [--no-egress] [--runs N] [--file-api MiB]
//!
//! `--store` picks the store: `fs` (default) the embedded s3s-fs store in the temp directory;
//! `shm` the same with its root in /dev/shm (tmpfs: no disk, but s3s-fs still reads through
//! tokio's blocking pool in 4 KiB pieces); `mem` an in-memory s3s store
//! (`common/mem_store.rs`: every signature still checked, objects served from memory in 1 MiB
//! slices), so the store is not what limits the ratio. The egress part needs multipart
//! uploads, which the in-memory store does not serve: it is skipped with `mem` (and with
//! `--no-egress`). `--runs N` repeats the front-door PUT/GET pairs (Portier, then direct).
//! `--file-api MiB` also uploads a browser-shaped multipart form of that size to the file API
//! (`/api/s3/upload`: parsed as it streams, stored as a multipart upload) against a direct PUT
//! of the same bytes to the store, `--runs` times, with Portier's peak RSS after each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use portier::dev::DevIssuer;
use portier::s3::{self, Payload};
use serde_json::json;

#[path = "common/mem_store.rs"]
mod mem_store;

const CHUNK: usize = 256 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let store_kind = flag("--store").unwrap_or_else(|| "fs".to_owned());
    let runs: usize = flag("--runs").and_then(|r| r.parse().ok()).unwrap_or(1);
    let egress_wanted = store_kind != "mem" && !args.iter().any(|a| a == "--no-egress");
    let total = mib * 1024 * 1024;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let base = match store_kind.as_str() {
        "fs" | "mem" => std::env::temp_dir(),
        "shm" => std::path::PathBuf::from("/dev/shm"),
        other => return Err(format!("--store {other}: use fs, shm or mem").into()),
    };
    let dir = base.join(format!("portier-s3-stream-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policies"))?;
    let (ak, sk) = s3::generate_keys();
    let (store_addr, store_root, fs_store) = if store_kind == "mem" {
        let addr = rt.block_on(mem_store::start("bench", &ak, &sk))?;
        (addr, None, None)
    } else {
        let store = rt.block_on(s3::start(dir.join("store"), "bench", &ak, &sk))?;
        (store.addr, Some(store.root.clone()), Some(store))
    };
    let store_endpoint = format!("http://{store_addr}");
    let issuer = Arc::new(DevIssuer::generate(
        "https://bench.portier.test",
        "ins_bench",
    )?);
    let jwks = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let jwks_addr = jwks.local_addr()?;
    let doc = json!({"keys": [issuer.jwk()]});
    rt.spawn(portier::serve::serve(
        jwks,
        Arc::new(move |_| portier::serve::json_response(200, &doc)),
    ));
    let free = || -> std::io::Result<SocketAddr> {
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
    };
    let (listen, egress) = (free()?, free()?);
    std::fs::write(
        dir.join("config.toml"),
        format!(
            r#"[server]
listen = ["{listen}"]
threads = 1
[clerk]
issuer = "https://bench.portier.test"
missing_azp = "allow"
[clerk.jwks]
url = "http://{jwks_addr}/jwks"
[upstreams.unused]
peers = ["127.0.0.1:1"]
[limits]
max_body_bytes = 17179869184
[decision_log]
mode = "off"
[s3]
endpoint = "http://{store}"
region = "us-east-1"
bucket = "bench"
addressing = "path"
access_key_id_env = "BENCH_S3_AK"
secret_access_key_env = "BENCH_S3_SK"
session_token_env = "BENCH_S3_NO_TOKEN"
[egress]
listen = "{egress}"
bucket = "media"
[egress.services.bench]
access_key_id = "{EGRESS_KEY}"
secret_env = "BENCH_EGRESS_SECRET"
[[egress.services.bench.allow]]
operations = ["*"]
keys = ["user_*/**"]
"#,
            store = store_addr
        ),
    )?;
    std::fs::write(
        dir.join("policies/files.toml"),
        "[[route]]\nname = \"files\"\npath = \"/files/{key..}\"\nmethods = [\"GET\", \"PUT\", \"DELETE\"]\nupstream = \"s3\"\ns3 = \"object\"\nowner = \"key\"\nmax_body_bytes = 17179869184\n\n[[route]]\nname = \"upload\"\npath = \"/api/s3/upload\"\nmethods = [\"POST\"]\nupstream = \"s3\"\ns3 = \"upload\"\nobjects = \"files\"\n",
    )?;
    let exe = std::env::current_exe()?;
    let portier_bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("portier"))
        .ok_or("no target dir")?;
    let mut child = Command::new(&portier_bin)
        .args(["run", "-c"])
        .arg(dir.join("config.toml"))
        .env("BENCH_S3_AK", &ak)
        .env("BENCH_S3_SK", &sk)
        .env("BENCH_EGRESS_SECRET", EGRESS_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    if !portier::server::wait_listening(listen, Duration::from_secs(10))
        || !portier::server::wait_listening(egress, Duration::from_secs(10))
    {
        return Err("portier did not start".into());
    }
    let token = issuer.token(&issuer.claims("user_bench", "https://bench", 3600));
    let auth = format!("Bearer {token}");
    let key = "user_bench/books/big.bin";
    let rss0 = vm_hwm(pid);
    let portier_headers = [("Authorization", auth.as_str()), ("Host", "portier")];
    let portier_path = format!("/files/{key}");

    // The same transfers straight to the store, signed the way Portier signs them.
    let creds = s3::Credentials::new(ak.clone(), sk.clone(), None)?;
    let target = s3::S3Target::new(&store_endpoint, "us-east-1", "bench", s3::Addressing::Path)?;
    let uri = target.object_uri("user_bench/books/direct.bin")?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let direct_headers = |method: &str| -> Result<Vec<(String, String)>, s3::SignError> {
        let mut h = http::HeaderMap::new();
        let payload = if method == "PUT" {
            h.insert("content-length", http::HeaderValue::from(total));
            Payload::Unsigned
        } else {
            Payload::Empty
        };
        s3::sign_headers(
            &creds,
            "us-east-1",
            method,
            &uri,
            &h,
            payload,
            SystemTime::now(),
        )
    };

    let store_desc = match store_kind.as_str() {
        "mem" => "in-memory s3s store (signatures checked)",
        "shm" => "embedded s3s-fs store on /dev/shm",
        _ => "embedded s3s-fs store (disk-backed)",
    };
    println!("S3 streaming, {mib} MiB object, {store_desc}, 127.0.0.1, 1 Portier thread");
    println!("| run | PUT via Portier MiB/s | PUT direct MiB/s | PUT ratio | GET via Portier MiB/s | GET direct MiB/s | GET ratio | Portier CPU s/GiB PUT / GET |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let tick = clock_tick();
    let gib = total as f64 / (1u64 << 30) as f64;
    let mbps = |d: Duration| total as f64 / 1048576.0 / d.as_secs_f64();
    for run in 1..=runs {
        // Odd runs go through Portier first, even runs to the store first (cache, drift).
        let mut times = [Duration::ZERO; 4];
        let mut cpu = [0.0f64; 2];
        for order in 0..2 {
            let via_portier = (order == 0) == (run % 2 == 1);
            if via_portier {
                let t = Instant::now();
                let c = cpu_ticks(pid);
                let st = put(listen, &portier_path, &portier_headers, total)?;
                times[0] = t.elapsed();
                cpu[0] = (cpu_ticks(pid) - c) as f64 / tick / gib;
                assert_status(st, 200, "PUT via Portier")?;
                if let Some(root) = &store_root {
                    let on_disk = std::fs::metadata(root.join("bench").join(key))?.len();
                    if on_disk != total {
                        return Err(format!("stored {on_disk} bytes, sent {total}").into());
                    }
                }
                let t = Instant::now();
                let c = cpu_ticks(pid);
                let (st, got) = get(listen, &portier_path, &portier_headers)?;
                times[2] = t.elapsed();
                cpu[1] = (cpu_ticks(pid) - c) as f64 / tick / gib;
                assert_status(st, 200, "GET via Portier")?;
                if got != total {
                    return Err(format!("read {got} bytes of {total} via Portier").into());
                }
            } else {
                let signed = direct_headers("PUT")?;
                let hs: Vec<(&str, &str)> = signed
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let t = Instant::now();
                assert_status(put(store_addr, &path, &hs, total)?, 200, "PUT direct")?;
                times[1] = t.elapsed();
                let signed = direct_headers("GET")?;
                let hs: Vec<(&str, &str)> = signed
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let t = Instant::now();
                let (st, got) = get(store_addr, &path, &hs)?;
                times[3] = t.elapsed();
                assert_status(st, 200, "GET direct")?;
                if got != total {
                    return Err("direct GET short".into());
                }
            }
        }
        println!(
            "| {run} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} |",
            mbps(times[0]),
            mbps(times[1]),
            times[1].as_secs_f64() / times[0].as_secs_f64(),
            mbps(times[2]),
            mbps(times[3]),
            times[3].as_secs_f64() / times[2].as_secs_f64(),
            cpu[0],
            cpu[1]
        );
    }
    let rss1 = vm_hwm(pid);
    println!(
        "Portier peak RSS (VmHWM): {} MiB before the transfers, {} MiB after",
        rss0 / 1024,
        rss1 / 1024
    );

    if let Some(form_mib) = flag("--file-api").and_then(|m| m.parse::<u64>().ok()) {
        // The file API: a browser-shaped multipart/form-data upload (s3_key, then the file)
        // to /api/s3/upload, streamed into a multipart upload at the store; against a direct
        // PUT of the same bytes to the store, in turn.
        if store_kind == "mem" {
            return Err("--file-api needs a store with multipart uploads (fs or shm)".into());
        }
        let size = form_mib << 20;
        let boundary = "----portierbench7MA4YWxkTrZu0gW";
        let prefix = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"s3_key\"\r\n\r\nuser_bench/books/form.bin\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"form.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let suffix = format!("\r\n--{boundary}--\r\n");
        let ctype = format!("multipart/form-data; boundary={boundary}");
        let form_headers = [
            ("Authorization", auth.as_str()),
            ("Host", "portier"),
            ("Content-Type", ctype.as_str()),
        ];
        let mb = |d: Duration| size as f64 / 1048576.0 / d.as_secs_f64();
        println!();
        println!("File API upload, {form_mib} MiB multipart form, {store_desc}");
        println!("| run | via Portier (/api/s3/upload) MiB/s | direct PUT MiB/s | ratio | Portier VmHWM after |");
        println!("|---:|---:|---:|---:|---:|");
        for run in 1..=runs {
            let t = Instant::now();
            let st = post_form(
                listen,
                "/api/s3/upload",
                &form_headers,
                prefix.as_bytes(),
                size,
                suffix.as_bytes(),
            )?;
            let via = t.elapsed();
            assert_status(st, 200, "file API upload")?;
            if let Some(root) = &store_root {
                let stored = std::fs::metadata(root.join("bench/user_bench/books/form.bin"))?.len();
                if stored != size {
                    return Err(format!("stored {stored} bytes of {size}").into());
                }
            }
            let mut h = http::HeaderMap::new();
            h.insert("content-length", http::HeaderValue::from(size));
            let signed = s3::sign_headers(
                &creds,
                "us-east-1",
                "PUT",
                &uri,
                &h,
                Payload::Unsigned,
                SystemTime::now(),
            )?;
            let hs: Vec<(&str, &str)> = signed
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let t = Instant::now();
            assert_status(put(store_addr, &path, &hs, size)?, 200, "PUT direct")?;
            let direct = t.elapsed();
            println!(
                "| {run} | {:.0} | {:.0} | {:.2} | {} MiB |",
                mb(via),
                mb(direct),
                direct.as_secs_f64() / via.as_secs_f64(),
                vm_hwm(pid) / 1024
            );
        }
    }

    if egress_wanted {
        // boto3 through the egress listener (re-signed by Portier) and straight to the store.
        let file = dir.join("upload.bin");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
            let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 % 253) as u8).collect();
            let mut left = total;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            f.flush()?;
        }
        let via = boto3(
            &format!("http://{egress}"),
            "media",
            EGRESS_KEY,
            EGRESS_SECRET,
            &file,
            "user_bench/videos/egress.bin",
        )?;
        let direct = boto3(
            &store_endpoint,
            "bench",
            &ak,
            &sk,
            &file,
            "user_bench/videos/direct.bin",
        )?;
        let rss2 = vm_hwm(pid);
        println!();
        println!(
            "boto3 upload_file / download_file, {mib} MiB file (multipart, 8 MiB parts, 10 threads)"
        );
        println!("| transfer | via egress MiB/s | direct MiB/s | ratio |");
        println!("|---|---:|---:|---:|");
        for (what, v, d) in [
            ("upload_file", via.0, direct.0),
            ("download_file", via.1, direct.1),
        ] {
            println!(
                "| {what} | {:.0} | {:.0} | {:.2} |",
                total as f64 / 1048576.0 / v,
                total as f64 / 1048576.0 / d,
                d / v
            );
        }
        println!(
            "Portier peak RSS (VmHWM) after the egress transfers: {} MiB",
            rss2 / 1024
        );
    } else {
        println!("(egress part skipped: --no-egress, or the in-memory store, which has no multipart uploads)");
    }

    let _ = child.kill();
    let _ = child.wait();
    drop(fs_store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

const EGRESS_KEY: &str = "PORTIERBENCHEGRESS1";
const EGRESS_SECRET: &str = "bench-egress-local-secret-0123456789abcdef";

/// Runs benches/egress_upload.py; returns (upload, download) seconds.
fn boto3(
    endpoint: &str,
    bucket: &str,
    key_id: &str,
    secret: &str,
    file: &std::path::Path,
    key: &str,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let python =
        std::env::var("PORTIER_PYTHON").unwrap_or_else(|_| format!("{root}/.venv/bin/python"));
    let out = Command::new(python)
        .arg(format!("{root}/benches/egress_upload.py"))
        .args([endpoint, bucket, key_id, secret])
        .arg(file)
        .arg(key)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let secs = |what: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(what))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    match (out.status.success(), secs("upload "), secs("download ")) {
        (true, Some(u), Some(d)) => Ok((u, d)),
        _ => Err(format!(
            "boto3 via {endpoint}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into()),
    }
}

fn assert_status(got: u16, want: u16, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: HTTP {got}").into())
    }
}

/// User + system CPU time of a process, in clock ticks (`/proc/<pid>/stat` fields 14, 15).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The command name (field 2) may hold spaces: count from the closing parenthesis.
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            Some(f.get(11)? + f.get(12)?)
        })
        .unwrap_or(0)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident set of a process, in KiB.
fn vm_hwm(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    len: Option<u64>,
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("content-length") {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if let Some(n) = len {
        req.push_str(&format!("Content-Length: {n}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    Ok(s)
}

/// PUTs `total` generated bytes; returns the status.
fn put(addr: SocketAddr, path: &str, headers: &[(&str, &str)], total: u64) -> std::io::Result<u16> {
    let mut s = head(addr, "PUT", path, headers, Some(total))?;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let (status, _) = read_response(s)?;
    Ok(status)
}

/// POSTs `prefix`, `total` generated bytes and `suffix` (a multipart form around a file);
/// returns the status.
fn post_form(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    prefix: &[u8],
    total: u64,
    suffix: &[u8],
) -> std::io::Result<u16> {
    let len = prefix.len() as u64 + total + suffix.len() as u64;
    let mut s = head(addr, "POST", path, headers, Some(len))?;
    s.write_all(prefix)?;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    s.write_all(suffix)?;
    let (status, _) = read_response(s)?;
    Ok(status)
}

/// GETs and counts the body bytes.
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, u64)> {
    let s = head(addr, "GET", path, headers, None)?;
    read_response(s)
}

fn read_response(s: TcpStream) -> std::io::Result<(u16, u64)> {
    let mut r = BufReader::with_capacity(CHUNK, s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    Ok((status, n))
}
