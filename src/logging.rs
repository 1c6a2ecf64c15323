//! Logger set-up. One rule matters for secrets: Pingora's own debug and trace records print
//! whole request headers (including `Authorization` with a session token or a SigV4
//! signature), so they are dropped whatever `RUST_LOG` says. Portier's own logs never carry
//! a token, key or signature.

/// Whether a record may be logged at all.
pub fn allowed(target: &str, level: log::Level) -> bool {
    !(target.starts_with("pingora") && level > log::Level::Info)
}

struct Guarded(env_logger::Logger);

impl log::Log for Guarded {
    fn enabled(&self, m: &log::Metadata) -> bool {
        allowed(m.target(), m.level()) && self.0.enabled(m)
    }
    fn log(&self, r: &log::Record) {
        if allowed(r.target(), r.level()) {
            self.0.log(r);
        }
    }
    fn flush(&self) {
        self.0.flush();
    }
}

/// Installs the process logger: `RUST_LOG` (default `info`), minus unsafe records.
pub fn init() {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Guarded(inner))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_debug_is_never_logged() {
        assert!(!allowed("pingora_proxy::proxy_h1", log::Level::Debug));
        assert!(allowed("pingora_proxy::proxy_h1", log::Level::Warn));
        assert!(allowed("portier::proxy", log::Level::Debug));
    }
}
