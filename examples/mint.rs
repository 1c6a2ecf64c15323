//! Writes what the load bench needs to authenticate: a fresh RSA key's JWKS (`jwks.json`), its
//! public key (`public.pem`, for HAProxy's `jwt_verify`), one session token (`token.txt`) and
//! `N` distinct ones (`tokens.txt`, one a line), all signed by `portier::dev::DevIssuer`.
//!
//! ```sh
//! cargo run --release --example mint -- OUT_DIR N [ISSUER] [AZP] [TTL_SECS]
//! ```
//!
//! Defaults: issuer `https://clerk.bench.test`, azp `https://app.bench.test`, 2 hours. Each
//! token has its own `sub`, `sid` and `jti`, the `pro` plan and the `dashboard` feature.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use portier::dev::DevIssuer;
use serde_json::json;

fn token(issuer: &DevIssuer, i: usize, azp: &str, ttl: i64) -> String {
    let mut claims = issuer.claims(&format!("user_2bench{i:020}"), azp, ttl);
    claims["pla"] = json!("u:pro");
    claims["fea"] = json!("u:dashboard");
    issuer.token(&claims)
}

fn run(args: &[String]) -> Result<(), String> {
    let out = PathBuf::from(args.first().ok_or("OUT_DIR is required")?);
    let n: usize = args
        .get(1)
        .ok_or("N is required")?
        .parse()
        .map_err(|_| "N must be a number")?;
    let iss = args
        .get(2)
        .map_or("https://clerk.bench.test", String::as_str);
    let azp = args.get(3).map_or("https://app.bench.test", String::as_str);
    let ttl: i64 = args
        .get(4)
        .map_or(Ok(7200), |t| t.parse())
        .map_err(|_| "TTL_SECS must be a number")?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let issuer = DevIssuer::generate(iss, "ins_bench").map_err(|e| e.to_string())?;
    let write = |name: &str, data: &[u8]| {
        std::fs::write(out.join(name), data).map_err(|e| format!("{name}: {e}"))
    };
    write(
        "jwks.json",
        json!({ "keys": [issuer.jwk()] }).to_string().as_bytes(),
    )?;
    write("public.pem", issuer.public_pem().as_bytes())?;
    write("token.txt", token(&issuer, 0, azp, ttl).as_bytes())?;
    // RSA signing is ~1 ms a token: split the work over the machine's cores.
    let workers = std::thread::available_parallelism().map_or(1, |p| p.get());
    let chunks: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let issuer = &issuer;
                s.spawn(move || {
                    (w..n)
                        .step_by(workers)
                        .map(|i| token(issuer, i + 1, azp, ttl))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out.join("tokens.txt")).map_err(|e| format!("tokens.txt: {e}"))?,
    );
    let mut written = 0;
    for t in chunks.iter().flatten() {
        writeln!(file, "{t}").map_err(|e| format!("tokens.txt: {e}"))?;
        written += 1;
    }
    file.flush().map_err(|e| format!("tokens.txt: {e}"))?;
    if written != n {
        return Err(format!("only {written} of {n} tokens were signed"));
    }
    eprintln!(
        "mint: wrote jwks.json, public.pem, token.txt and {n} tokens to {}",
        out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mint: {e}\nusage: mint OUT_DIR N [ISSUER] [AZP] [TTL_SECS]");
            ExitCode::from(2)
        }
    }
}
