//! What `hookctl-native`, the program that runs one native plugin in its own process,
//! tells hookctl beyond the plugin's stdout, stderr and exit status. Shared by both
//! binaries.
//!
//! A plugin that returned a status from 0 to 255 (except [`REPORT_STATUS`]) becomes the
//! host's exit status, with its output as the host's. Anything else (a load error, a
//! panic, another status) ends the host with [`REPORT_STATUS`] and a last stderr line of
//! [`MARKER`] followed by a JSON [`Report`].

// hookctl reads reports, the host writes them.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};

/// The host's exit status when its last stderr line is a report.
pub(crate) const REPORT_STATUS: i32 = 125;

/// Starts the report line.
pub(crate) const MARKER: &str = "hookctl-native-report: ";

/// How the plugin's call ended, when its exit status cannot say.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum Report {
    /// It returned a status outside 0..=255, or 125.
    Exited { code: i32 },
    /// It panicked (a Rust plugin) or broke the ABI during the call.
    Crashed { message: String },
    /// It could not be loaded.
    LoadError {
        kind: LoadKind,
        /// The underlying cause (the dynamic loader's message, ...).
        source: Option<String>,
    },
    /// The host itself could not run it (bad arguments, unreadable stdin).
    Failed { message: String },
}

/// The load errors a native plugin can have (`hooks_dylib`'s kinds).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum LoadKind {
    Unreadable,
    NotSharedObject,
    MissingSymbol {
        symbol: String,
    },
    AbiMismatch {
        expected: u32,
        found: u32,
    },
    InvalidDescriptor {
        what: String,
    },
    /// Any other reason, in words.
    Other {
        message: String,
    },
}

impl Report {
    /// The report line, newline included.
    pub(crate) fn line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|_| r#"{"status":"failed","message":"?"}"#.to_owned());
        format!("{MARKER}{json}\n")
    }

    /// Splits the report off the end of `stderr`, if its last line is one.
    pub(crate) fn take_from(stderr: &mut Vec<u8>) -> Option<Report> {
        let body = stderr.strip_suffix(b"\n")?;
        let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let json = body[start..].strip_prefix(MARKER.as_bytes())?;
        let report = serde_json::from_slice(json).ok()?;
        stderr.truncate(start);
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_comes_off_the_end_of_stderr_and_leaves_the_plugins_text() {
        let report = Report::LoadError {
            kind: LoadKind::AbiMismatch { expected: 1, found: 2 },
            source: None,
        };
        let mut stderr = b"the plugin said\nthis\n".to_vec();
        stderr.extend_from_slice(report.line().as_bytes());
        assert_eq!(Report::take_from(&mut stderr), Some(report));
        assert_eq!(stderr, b"the plugin said\nthis\n");
    }

    #[test]
    fn a_stderr_without_a_report_is_left_alone() {
        for text in [
            &b""[..],
            b"plain\n",
            b"hookctl-native-report: {not json}\n",
            b"x\nhookctl-native-report: {}",
        ] {
            let mut stderr = text.to_vec();
            assert_eq!(
                Report::take_from(&mut stderr),
                None,
                "{:?}",
                String::from_utf8_lossy(text)
            );
            assert_eq!(stderr, text);
        }
    }
}
