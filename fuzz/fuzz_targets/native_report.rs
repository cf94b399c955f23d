//! hookctl's side of the `hookctl-native` wire: the host's stderr (the plugin's own
//! text, which a plugin controls, then the report line) through `Report::take_from`.
//! From `hookctl::native_wire`, the library both of hookctl's programs link.
//!
//! Properties: nothing panics; text without a report is left as it was; a report taken
//! out removes its line and nothing else; a report encodes to one line and decodes to
//! itself, appended as the host appends it after any text, which comes back unchanged.
#![no_main]

use hookctl::native_wire::{bounded, End, Report, MARKER};
use libfuzzer_sys::fuzz_target;
use virt_hooks_core::outcome::{LogLevel, LogLine};

/// The token the seed corpus uses (hookctl makes a random one per run).
const TOKEN: &str = "00112233445566778899aabbccddeeff";

/// What `stderr` is once the host's report is taken out of `text` + "\n" + line.
fn after_host_text(text: &[u8]) -> Vec<u8> {
    let mut left = text.to_vec();
    if !left.is_empty() && !left.ends_with(b"\n") {
        left.push(b'\n');
    }
    left
}

fn round_trip(text: &[u8], report: &Report) {
    let line = report.line(TOKEN);
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
    let mut stderr = text.to_vec();
    stderr.push(b'\n');
    stderr.extend_from_slice(line.as_bytes());
    let taken = Report::take_from(&mut stderr, TOKEN);
    assert_eq!(taken.as_ref(), Some(report), "{line:?}");
    assert_eq!(stderr, after_host_text(text), "{line:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut stderr = data.to_vec();
    match Report::take_from(&mut stderr, TOKEN) {
        None => assert_eq!(stderr, data, "text without a report was changed"),
        Some(report) => {
            let prefix = format!("{MARKER} {TOKEN} ");
            // What was removed: one line with the prefix, and maybe the newline before
            // it; the text around it is kept.
            assert!(stderr.len() < data.len());
            let cut = data.len() - stderr.len();
            let common = data.iter().zip(&stderr).take_while(|(a, b)| a == b).count();
            let is_line = |piece: &[u8]| {
                let line = piece.strip_prefix(b"\n").unwrap_or(piece);
                line.starts_with(prefix.as_bytes())
                    && line.ends_with(b"\n")
                    && line.iter().filter(|&&b| b == b'\n').count() == 1
            };
            let removed_at = (common.saturating_sub(cut)..=common)
                .rev()
                .find(|&s| is_line(&data[s..s + cut]) && data[s + cut..] == stderr[s..]);
            assert!(removed_at.is_some(), "the report was not removed as one line");
            round_trip(&stderr, &report);
        }
    }
    let message = bounded(String::from_utf8_lossy(data).into_owned());
    // The plugin's own log lines travel in the report: any text, even the marker.
    let log = String::from_utf8_lossy(data)
        .lines()
        .take(4)
        .map(|l| LogLine {
            level: LogLevel::from_abi(l.len() as i32 % 5),
            message: l.to_owned(),
        })
        .collect();
    round_trip(
        data,
        &Report {
            end: End::Crashed { message },
            stdout_truncated: true,
            stderr_truncated: false,
            log,
            warnings: vec![format!("{MARKER} {TOKEN} {{}}")],
        },
    );
});
