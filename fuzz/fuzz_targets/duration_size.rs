//! Durations and sizes as sidecars, `hookctl.toml` and the command line give them.
//!
//! Properties: nothing panics; a duration that parses is within [MIN_TIMEOUT,
//! MAX_TIMEOUT] and reads back, as `hookctl list` shows it, to within half a
//! millisecond; `TimeoutSetting` reads back as it displays; a size that parses is its number
//! times its unit, computed here without overflow.
#![no_main]

use std::time::Duration;

use virt_hooks_core::backend::{format_duration, parse_duration, parse_size, TimeoutSetting, MIN_TIMEOUT};
use virt_hooks_core::backend::MAX_TIMEOUT;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        assert!((MIN_TIMEOUT..=MAX_TIMEOUT).contains(&d), "{text:?} -> {d:?}");
        let shown = format_duration(d);
        let back = parse_duration(&shown).unwrap_or_else(|e| panic!("{text:?} -> {d:?} shown as {shown:?}: {e}"));
        let apart = back.abs_diff(d);
        assert!(
            apart <= Duration::from_micros(500),
            "{text:?} -> {d:?} -> {shown:?} -> {back:?}"
        );
    }
    match TimeoutSetting::parse(text) {
        Ok(TimeoutSetting::Default) => panic!("{text:?} parsed as the default"),
        Ok(t) => {
            let shown = t.to_string();
            let back = TimeoutSetting::parse(&shown).unwrap_or_else(|e| panic!("{t:?} shown as {shown:?}: {e}"));
            assert_eq!(back.or(None).is_none(), t.or(None).is_none(), "{shown:?}");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Some(n) = parse_size(text) {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let unit = match unit.trim() {
            "" | "B" => 1u128,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "kB" | "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => panic!("{text:?} parsed with unit {other:?}"),
        };
        let number: u128 = digits
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} parsed from {digits:?}: {e}"));
        assert_eq!(u128::from(n), number * unit, "{text:?}");
    }
});
