//! The dispatcher's `<driver>.plugins/hookctl.toml`, parsed by hookctl's own `config.rs`
//! (compiled here from its source: hookctl is a binary crate).
//!
//! Properties: nothing panics; an error names the file and a line within the text; what
//! parses has absolute paths and a timeout within the limits.
#![no_main]

#[allow(dead_code)]
#[path = "../../hookctl/src/config.rs"]
mod config;

use std::path::Path;

use hooks_core::backend::MIN_TIMEOUT;
use hooks_core::MAX_TIMEOUT;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/libvirt/hooks/qemu.plugins/hookctl.toml");
    match config::parse(path, text) {
        Err(e) => {
            assert_eq!(e.path, path);
            if let Some(line) = e.line {
                let lines = text.split('\n').count();
                assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
            }
            assert!(e.to_string().starts_with(&path.display().to_string()));
        }
        Ok(c) => {
            assert!(c.log.is_absolute() && c.state.is_absolute(), "{c:?}");
            if let Some(t) = c.timeout {
                assert!((MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t), "{t:?}");
            }
        }
    }
});
