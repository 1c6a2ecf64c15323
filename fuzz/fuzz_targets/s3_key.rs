//! S3 keys and ownership: a decoded key survives the encoding Portier sends to the store (it
//! decodes back to itself); a key owned by a user never
//! escapes `<user id>/`; a listing's prefix is always inside the caller's folder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portier::s3::front::{decode_query_value, list_query};
use portier::s3::key::{canonical_key, encode_key_for_path, is_valid_user_id, owned_by};

mod common;

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
        if is_valid_user_id(user) && owned_by(&k, user) {
            assert!(
                k.starts_with(&format!("{user}/")),
                "{k:?} owned by {user:?}"
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
