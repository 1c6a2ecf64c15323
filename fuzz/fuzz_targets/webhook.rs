//! Webhook verification: headers of either family and any body; a delivery is accepted only
//! when it carries the real HMAC of its id, timestamp and body (the fuzzer cannot make one).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portier::guards::webhook::{verify, WebhookHeaders, WebhookSecrets};

mod common;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn secrets() -> &'static WebhookSecrets {
    static S: OnceLock<WebhookSecrets> = OnceLock::new();
    S.get_or_init(|| WebhookSecrets::new([SECRET]).expect("secret"))
}

fuzz_target!(|data: &[u8]| {
    let f = common::fields(data, 5);
    let names = ["svix-id", "svix-timestamp", "svix-signature", "webhook-id"];
    let lookup = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .map(|i| f[i].as_str())
            .filter(|v| !v.is_empty())
    };
    let Ok(headers) = WebhookHeaders::from_lookup(lookup) else {
        return;
    };
    let body = f[4].as_bytes();
    let now = headers.timestamp.parse::<i64>().unwrap_or(0);
    if verify(secrets(), &headers, body, now, 300).is_ok() {
        panic!(
            "accepted a delivery the fuzzer signed: {:?}",
            headers.signature
        );
    }
});
