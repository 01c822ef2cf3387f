//! Secrets at rest: opening any string never panics and never succeeds for
//! something that was not sealed with the same key and context; sealing any bytes
//! opens back to them.
#![no_main]

use courier_core::keyring::Keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &[u8])| {
    let (text, bytes) = input;
    let ring = Keyring::dev();
    if let Ok(plain) = ring.open(text, b"context") {
        // Only a genuine seal opens; re-sealing it opens to the same bytes.
        let again = ring.seal(&plain, b"context");
        assert_eq!(ring.open(&again, b"context").unwrap(), plain);
    }
    let sealed = ring.seal(bytes, b"context");
    assert_eq!(ring.open(&sealed, b"context").unwrap(), bytes);
    assert!(ring.open(&sealed, b"other").is_err());
    let _ = Keyring::parse(text);
});
