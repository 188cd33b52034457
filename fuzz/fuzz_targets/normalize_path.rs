//! Path normalization (`plans::path`): any bytes, as a resource, under every
//! `paths.unsafe` policy. It never panics; a normalized path normalizes to
//! itself; and no output holds `//`, `/./`, `/../`, a query, a fragment, a
//! segment's parameters or an encoded unreserved character.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::plans::path::{UnsafePaths, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for policy in [UnsafePaths::Refuse, UnsafePaths::Keep, UnsafePaths::Decode] {
        let Ok(once) = normalize(path, policy) else {
            continue;
        };
        let twice = normalize(&once, policy).expect("a normalized path normalizes");
        assert_eq!(twice, once, "{path:?} under {policy:?}");
        for bad in ["//", "/./", "/../", "?", "#", ";"] {
            assert!(!once.contains(bad), "{path:?} → {once:?} holds {bad:?}");
        }
        assert!(!once.ends_with("/.") && !once.ends_with("/.."), "{path:?} → {once:?}");
        let bytes = once.as_bytes();
        for (i, _) in once.match_indices('%') {
            let hex = std::str::from_utf8(&bytes[i + 1..(i + 3).min(bytes.len())]).unwrap_or("");
            if let Ok(c) = u8::from_str_radix(hex, 16)
                && hex.len() == 2
            {
                let unreserved = c.is_ascii_alphanumeric() || b"-._~".contains(&c);
                assert!(!unreserved, "{path:?} → {once:?} keeps %{hex} encoded");
            }
        }
    }
});
