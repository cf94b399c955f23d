//! The dispatcher's `<driver>.plugins/hookctl.toml`, parsed by hookctl's own `config.rs`
//! (compiled here from its source: hookctl is a binary crate).
//!
//! Properties: nothing panics; every mistake names the file and a line within the text;
//! a path in effect is absolute (with the system's defaults, a log is in effect), and a
//! path that is not in effect is a mistake (never the default in its place); the
//! timeout is within the limits; the file as a whole is sound exactly when there is no
//! mistake.
#![no_main]

#[allow(dead_code)]
#[path = "../../hookctl/src/config.rs"]
mod config;

use std::path::Path;

use virt_hooks_core::backend::MIN_TIMEOUT;
use virt_hooks_core::backend::MAX_TIMEOUT;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/libvirt/hooks/qemu.plugins/hookctl.toml");
    let s = config::parse_settings(path, text, config::DispatchConfig::system());
    let lines = text.split('\n').count();
    for e in &s.mistakes {
        assert_eq!(e.path, path);
        if let Some(line) = e.line {
            assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
        }
        assert!(e.to_string().starts_with(&path.display().to_string()));
    }
    // The system defaults name a log, and the file cannot turn it off.
    let log = s.log.clone().map(|log| log.expect("a log in effect"));
    for key in [&log, &s.state] {
        match key {
            Ok(p) => assert!(p.is_absolute(), "{s:?}"),
            Err(_) => assert!(!s.mistakes.is_empty(), "an unusable path without a mistake: {s:?}"),
        }
    }
    if let Some(t) = s.timeout {
        assert!((MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t), "{t:?}");
    }
    assert_eq!(s.config().is_ok(), s.mistakes.is_empty(), "{s:?}");
});
