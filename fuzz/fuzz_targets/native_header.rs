//! The host's side of the `hookctl-native` wire: what hookctl writes on its stdin (a
//! header line with the plugin's `[config]`, then the guest's document, which its owner
//! controls) through `read_header` (`hookctl::native_wire`, the library both of
//! hookctl's programs link).
//!
//! Properties: nothing panics; a header that is accepted ends at the first newline and
//! names this build; hookctl's header for any token without blanks and any config,
//! followed by any document, gives back that token, that config and the document
//! untouched.
#![no_main]

use hookctl::native_wire::{header, read_header, HeaderError, PROTOCOL, VERSION};
use libfuzzer_sys::fuzz_target;
use virt_hooks_core::backend::{ConfigValue, PluginConfig};

fuzz_target!(|data: &[u8]| {
    match read_header(data) {
        Ok(read) => {
            let (token, start) = (read.token, read.document_start);
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
    // A config made of the data: keys from its words that are keys, the text as values.
    let text = String::from_utf8_lossy(data).replace('\0', "");
    let entries: Vec<(String, ConfigValue)> = text
        .split_whitespace()
        .filter(|w| PluginConfig::check_key(w).is_ok())
        .take(8)
        .map(|k| (k.to_owned(), ConfigValue::String(text.clone())))
        .collect();
    let config = PluginConfig::from_entries(entries).unwrap_or_default();
    let mut input = header(&token, &config).into_bytes();
    let start = input.len();
    input.extend_from_slice(data);
    let read = read_header(&input).expect("hookctl's own header");
    assert_eq!((read.token, read.document_start), (token, start));
    let sent: Vec<(String, String)> = config.iter().map(|(k, v)| (k.to_owned(), v.to_string())).collect();
    assert_eq!(read.config, sent);
});
