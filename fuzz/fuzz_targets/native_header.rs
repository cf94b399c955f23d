//! The host's side of the `hookctl-native` wire: what hookctl writes on its stdin (a
//! header line, then the guest's document, which its owner controls) through
//! `read_header` (`hookctl::native_wire`, the library both of hookctl's programs link).
//!
//! Properties: nothing panics; a header that is accepted ends at the first newline and
//! names this build; hookctl's header for any token without blanks, followed by any
//! document, gives back that token and the document untouched.
#![no_main]

use hookctl::native_wire::{header, read_header, HeaderError, PROTOCOL, VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match read_header(data) {
        Ok((token, start)) => {
            assert_eq!(data.iter().position(|&b| b == b'\n'), Some(start - 1));
            let line = String::from_utf8_lossy(&data[..start - 1]);
            assert!(line.starts_with(&format!("{PROTOCOL} {VERSION} {token}")), "{line:?}");
            assert!(!token.contains([' ', '\n']), "{token:?}");
        }
        Err(HeaderError::Missing) => assert!(!data.contains(&b'\n')),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // The document after a header may be anything, the token any word hookctl makes.
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len().min(32));
    let token: String = String::from_utf8_lossy(&data[..split])
        .chars()
        .filter(|c| !matches!(c, ' ' | '\n'))
        .collect();
    let mut input = header(&token).into_bytes();
    let start = input.len();
    input.extend_from_slice(data);
    assert_eq!(read_header(&input), Ok((token, start)));
});
