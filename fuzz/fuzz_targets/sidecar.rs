//! A hook's sidecar (`<hook>.toml`) through `HookSettings::parse`.
//!
//! Properties: nothing panics; an error names the file and, when the TOML parser or a
//! key gave one, a line within the text; what parses is within the limits (timeout,
//! memory, state cap) and its `[match]` compiles and matches without panicking.
#![no_main]

use std::path::Path;
use std::time::Duration;

use virt_hooks_core::backend::{HookSettings, MIN_TIMEOUT};
use virt_hooks_core::{Driver, RawEvent};
use virt_hooks_core::backend::MAX_TIMEOUT;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/libvirt/hooks/qemu.d/10-x.sh.toml");
    match HookSettings::parse(path, text) {
        Err(e) => {
            assert_eq!(e.path, path);
            let lines = text.split('\n').count();
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
            }
            assert!(e.column.is_none() || e.line.is_some(), "{e:?}");
            assert!(e.to_string().starts_with(&path.display().to_string()));
        }
        Ok(s) => {
            if let Some(t) = s.timeout.or(None) {
                assert!((MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t), "timeout {t:?}");
            }
            assert!(s.memory.is_none_or(|m| m > 0 && m <= 4 << 30), "memory {:?}", s.memory);
            assert!(s.max_output.is_none_or(|m| m > 0));
            assert!(s.state_max.is_none_or(|m| m > 0 && m <= 1 << 30 && s.state));
            let _ = s.summary();
            let _ = s.effective_timeout(Some(Duration::from_secs(10)));
            for driver in Driver::ALL {
                let _ = s.matcher.check_for(driver);
            }
            let event = RawEvent::new(Driver::Qemu, ["gpu-1", "prepare", "begin", "-"])
                .with_input(Some(b"<domain><devices><hostdev/></devices></domain>".to_vec()));
            let _ = s.matcher.matches(&event);
        }
    }
});
