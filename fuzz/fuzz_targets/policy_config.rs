//! Policy and config files: any text compiles or yields diagnostics with a line (never a
//! panic), and a compiled policy set routes any path without panicking.
#![no_main]
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use portier::config::Config;
use portier::policy::PolicySet;

mod common;

fuzz_target!(|data: &[u8]| {
    let f = common::fields(data, 3);
    match PolicySet::compile(&[(PathBuf::from("p.toml"), f[0].clone())], &["app", "next"]) {
        Ok(set) => {
            if let Ok(path) = portier::path::canonicalize(&f[2]) {
                for m in ["GET", "POST", "DELETE"] {
                    let _ = set.lookup(m, &path);
                }
            }
        }
        Err(d) => assert!(d.0.iter().all(|d| d.line >= 1), "{d}"),
    }
    if let Err(d) = Config::parse(Path::new("config.toml"), &f[1]) {
        assert!(!d.0.is_empty() && d.0.iter().all(|d| d.line >= 1), "{d}");
    }
});
