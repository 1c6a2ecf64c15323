//! S3 keys and ownership: a decoded key survives the encoding Portier sends to the store (it
//! decodes back to itself); a key owned by a user never
//! escapes `<user id>/`; a listing's prefix is always inside the caller's folder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portier::s3::front::{decode_query_value, list_query};
use portier::s3::key::{canonical_key, encode_key_for_path, is_valid_user_id, owned_by};

mod common;

/// Percent-decoding as a store does it (bytes, then UTF-8), written here so the check does not
/// lean on Portier's own decoder.
fn store_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fuzz_target!(|data: &[u8]| {
    let f = common::fields(data, 3);
    let (raw, user, query) = (&f[0], &f[1], &f[2]);
    if let Ok(k) = canonical_key(raw) {
        let sent = encode_key_for_path(&k);
        assert_eq!(
            canonical_key(&sent).as_deref(),
            Ok(k.as_str()),
            "{raw:?} -> {sent:?}"
        );
        assert!(
            !k.starts_with('/') && !k.ends_with('/') && !k.contains("//"),
            "{k:?}"
        );
        assert!(k.split('/').all(|s| s != "." && s != ".."), "{k:?}");
        // What the store stores is the key Portier decided on, byte for byte.
        assert_eq!(store_decode(&sent).as_deref(), Some(k.as_str()), "{sent:?}");
        if is_valid_user_id(user) && owned_by(&k, user) {
            // Owned: the store's first path segment is the user, and nothing after it climbs
            // out of the folder.
            let stored = store_decode(&sent).unwrap_or_default();
            let mut segs = stored.split('/');
            assert_eq!(segs.next(), Some(user.as_str()), "{k:?} owned by {user:?}");
            assert!(
                segs.all(|s| !s.is_empty() && s != "." && s != ".."),
                "{stored:?} escapes {user:?}/"
            );
        }
    }
    if is_valid_user_id(user) {
        if let Ok(q) = list_query(user, Some(query)) {
            let prefix = q
                .split('&')
                .find_map(|p| p.strip_prefix("prefix="))
                .and_then(decode_query_value)
                .unwrap_or_default();
            assert!(
                prefix.starts_with(&format!("{user}/")),
                "{q:?} lists outside {user:?}"
            );
        }
    }
});
