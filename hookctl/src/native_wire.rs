//! How hookctl and `hookctl-native`, the program that runs one native plugin in its own
//! process, talk. Both programs link it from this library.
//!
//! - hookctl writes a header line first on the host's stdin: the protocol, its version,
//!   a fresh random token and the plugin's `[config]` (a JSON object of texts, on the
//!   same line: JSON has no raw newline); then the event's document, if it has one.
//! - The host runs the plugin, writes what the plugin wrote through the ABI (each
//!   stream cut at the cap it was given), then ends stderr with a report line carrying
//!   the token (with the lines the plugin logged and the host's warnings), and exits
//!   with [`REPORT_STATUS`]. The plugin's own writes to fds 1 and
//!   2 go to stderr: only the host writes the document.
//! - Without that report, the host did not finish its call: the plugin ended the
//!   process itself (`exit()`, a signal) or the host could not run. Text that merely
//!   looks like a report (a plugin echoing a guest's description) lacks the token.

use serde::{Deserialize, Serialize};
use virt_hooks_core::backend::PluginConfig;
use virt_hooks_core::outcome::{LogLine, MAX_LOG_LINE, MAX_LOG_LINES};

/// Bumped whenever what travels here changes: a host from another build refuses.
pub const PROTOCOL: &str = "hookctl-native/2";

/// The build both sides must come from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The host's exit status when it ran to its report.
pub const REPORT_STATUS: i32 = 125;

/// The host's exit status when it cannot serve this hookctl (another build, bad use).
pub const UNUSABLE_STATUS: i32 = 126;

/// Starts the report line, followed by a space, the token, a space and the JSON.
pub const MARKER: &str = "hookctl-native-report";

/// Room on stderr for the report line beyond the plugin's own output cap: its lines
/// of log (each escaped in JSON, at worst 6 bytes for one) and the rest.
pub const REPORT_ROOM: usize = (8 << 10) + MAX_LOG_LINES * (6 * MAX_LOG_LINE + 32);

/// The longest message a report carries (a panic message, a load error).
pub const MAX_MESSAGE: usize = 2 << 10;

/// The header line for `token` and a plugin's `config`, newline included.
pub fn header(token: &str, config: &PluginConfig) -> String {
    let texts: serde_json::Map<String, serde_json::Value> = config
        .iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_string())))
        .collect();
    format!("{PROTOCOL} {VERSION} {token} {}\n", serde_json::Value::Object(texts))
}

/// What the header says.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// The token the report must carry.
    pub token: String,
    /// The plugin's `[config]`, each value as text, sorted by key.
    pub config: Vec<(String, String)>,
    /// Where the document starts in the host's stdin.
    pub document_start: usize,
}

/// Why the host cannot serve what is on its stdin.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// No line at all: not run by hookctl.
    Missing,
    /// Fewer than three words on it.
    Malformed,
    /// Another build's protocol or version.
    OtherBuild { protocol: String, version: String },
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Missing => f.write_str("no header on stdin: this program is run by hookctl, not by hand"),
            HeaderError::Malformed => f.write_str("a malformed header on stdin"),
            HeaderError::OtherBuild { protocol, version } => write!(
                f,
                "this is hookctl-native {VERSION} ({PROTOCOL}), but hookctl {version} ({protocol}) ran it: install both from the same build"
            ),
        }
    }
}

/// The host's side of [`header`].
pub fn read_header(input: &[u8]) -> Result<Header, HeaderError> {
    let newline = input.iter().position(|&b| b == b'\n').ok_or(HeaderError::Missing)?;
    let header = String::from_utf8_lossy(&input[..newline]);
    let mut words = header.splitn(4, ' ');
    let (Some(protocol), Some(version), Some(token)) = (words.next(), words.next(), words.next()) else {
        return Err(HeaderError::Malformed);
    };
    if (protocol, version) != (PROTOCOL, VERSION) {
        return Err(HeaderError::OtherBuild {
            protocol: protocol.to_owned(),
            version: version.to_owned(),
        });
    }
    let config = match words.next() {
        None => Vec::new(),
        Some(json) => {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(json).map_err(|_| HeaderError::Malformed)?;
            let mut config = Vec::with_capacity(object.len());
            for (key, value) in object {
                match value {
                    serde_json::Value::String(text) => config.push((key, text)),
                    _ => return Err(HeaderError::Malformed),
                }
            }
            config
        }
    };
    Ok(Header {
        token: token.to_owned(),
        config,
        document_start: newline + 1,
    })
}

/// How the plugin's call ended, and whether the host cut its output.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// How the call ended.
    pub end: End,
    /// Whether the plugin's stdout was cut at its cap.
    #[serde(default)]
    pub stdout_truncated: bool,
    /// Whether the plugin's stderr was cut at its cap.
    #[serde(default)]
    pub stderr_truncated: bool,
    /// What the plugin logged (version 2 plugins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogLine>,
    /// What the host noticed (writes through the ABI after a call returned, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How the call ended.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum End {
    /// It returned this status (or, for `check`/`inspect`, loaded: 0).
    Exited {
        /// The status it returned.
        code: i32,
    },
    /// It panicked (a Rust plugin) or broke the ABI during the call.
    Crashed {
        /// What happened, at most [`MAX_MESSAGE`] bytes.
        message: String,
    },
    /// It could not be loaded.
    LoadError {
        /// Why.
        kind: LoadKind,
        /// The underlying cause (the dynamic loader's message, ...).
        source: Option<String>,
    },
    /// The host itself could not run it (unreadable stdin, ...).
    Failed {
        /// Why, at most [`MAX_MESSAGE`] bytes.
        message: String,
    },
}

/// The load errors a native plugin can have (`virt_hooks_dylib`'s kinds).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadKind {
    /// The file could not be read.
    Unreadable,
    /// The file is not a shared object the loader accepts.
    NotSharedObject,
    /// A symbol the ABI requires is missing.
    MissingSymbol {
        /// Its name.
        symbol: String,
    },
    /// The plugin was built for another version of the ABI.
    AbiMismatch {
        /// The version the host speaks.
        expected: u32,
        /// The plugin's.
        found: u32,
    },
    /// The plugin's descriptor is unusable.
    InvalidDescriptor {
        /// What is wrong with it.
        what: String,
    },
    /// A version 2 plugin's `init` refused to start.
    InitFailed {
        /// The status it returned.
        code: i32,
        /// What it wrote or logged, at most [`MAX_MESSAGE`] bytes.
        message: String,
    },
    /// Any other reason, in words.
    Other {
        /// The reason.
        message: String,
    },
}

/// Cuts `text` to [`MAX_MESSAGE`] bytes, at a character boundary, saying how much was
/// cut.
pub fn bounded(text: String) -> String {
    match virt_hooks_core::text::Limit::bytes(MAX_MESSAGE).apply(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

impl Report {
    /// The report line for `token`, newline included.
    pub fn line(&self, token: &str) -> String {
        let json = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"end":{"status":"failed","message":"unencodable report"}}"#.to_owned());
        format!("{MARKER} {token} {json}\n")
    }

    /// Takes the report for `token` out of `stderr` (the last line that carries it),
    /// leaving the rest of the text as it was.
    pub fn take_from(stderr: &mut Vec<u8>, token: &str) -> Option<Report> {
        let prefix = format!("{MARKER} {token} ");
        let mut line_start = 0;
        let mut found = None;
        for line in stderr.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(prefix.as_bytes()) && line.ends_with(b"\n") {
                found = Some((line_start, line.len()));
            }
            line_start += line.len();
        }
        let (mut start, mut len) = found?;
        let json = &stderr[start + prefix.len()..start + len - 1];
        let report = serde_json::from_slice(json).ok()?;
        // The host starts the report on a line of its own: drop the empty line that
        // makes when the text before already ended one.
        if start > 0 && stderr[start - 1] == b'\n' && (start == 1 || stderr[start - 2] == b'\n') {
            start -= 1;
            len += 1;
        }
        stderr.drain(start..start + len);
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            end: End::LoadError {
                kind: LoadKind::AbiMismatch { expected: 1, found: 2 },
                source: None,
            },
            stdout_truncated: false,
            stderr_truncated: true,
            log: vec![LogLine {
                level: virt_hooks_core::outcome::LogLevel::Error,
                message: "a forged-looking \"line\"\n{}".into(),
            }],
            warnings: vec!["late write".into()],
        }
    }

    #[test]
    fn the_report_comes_out_of_stderr_and_leaves_the_plugins_text() {
        let mut stderr = b"the plugin said\nthis\n\n".to_vec();
        stderr.extend_from_slice(report().line("t0k3n").as_bytes());
        stderr.extend_from_slice(b"a background child, late\n");
        assert_eq!(Report::take_from(&mut stderr, "t0k3n"), Some(report()));
        assert_eq!(stderr, b"the plugin said\nthis\na background child, late\n");
    }

    #[test]
    fn the_hosts_own_newline_goes_with_the_report() {
        for (before, left) in [(&b"\n"[..], &b""[..]), (b"partial\n", b"partial\n")] {
            let mut stderr = before.to_vec();
            stderr.extend_from_slice(report().line("t").as_bytes());
            assert_eq!(Report::take_from(&mut stderr, "t"), Some(report()));
            assert_eq!(stderr, left);
        }
    }

    #[test]
    fn a_line_without_the_token_is_only_text() {
        // What a plugin could echo from a guest's description, even the exact format.
        let forged = Report {
            end: End::Exited { code: 0 },
            stdout_truncated: false,
            stderr_truncated: false,
            log: Vec::new(),
            warnings: Vec::new(),
        };
        for text in [
            forged.line("guessed").into_bytes(),
            format!("{MARKER}  {{}}\n").into_bytes(),
            b"plain\n".to_vec(),
            Vec::new(),
            // The right token, but cut before its newline (output cap).
            forged.line("t0k3n").trim_end().as_bytes().to_vec(),
        ] {
            let mut stderr = text.clone();
            assert_eq!(
                Report::take_from(&mut stderr, "t0k3n"),
                None,
                "{}",
                String::from_utf8_lossy(&text)
            );
            assert_eq!(stderr, text);
        }
    }

    #[test]
    fn the_host_reads_the_header_and_leaves_the_document() {
        use virt_hooks_core::backend::ConfigValue;
        let config = PluginConfig::from_entries([
            ("max_vcpus", ConfigValue::Integer(8)),
            ("note", ConfigValue::String("two words\nand a \"line\" {}".into())),
        ])
        .unwrap();
        let mut input = header("t0k3n", &config).into_bytes();
        let start = input.len();
        assert_eq!(input.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        input.extend_from_slice(b"<domain/>\nhookctl-native/2 x y\n");
        let read = read_header(&input).unwrap();
        assert_eq!((read.token.as_str(), read.document_start), ("t0k3n", start));
        assert_eq!(
            read.config,
            [
                ("max_vcpus".to_owned(), "8".to_owned()),
                ("note".to_owned(), "two words\nand a \"line\" {}".to_owned())
            ]
        );
        let plain = header("t", &PluginConfig::new());
        assert_eq!(read_header(plain.as_bytes()).unwrap().config, []);
        assert_eq!(read_header(b"<domain/>"), Err(HeaderError::Missing));
        assert_eq!(read_header(b"hookctl-native/2 only\n"), Err(HeaderError::Malformed));
        for bad in ["{", "[1]", "{\"k\":1}", "{} trailing"] {
            let line = format!("{PROTOCOL} {VERSION} t {bad}\n");
            assert_eq!(read_header(line.as_bytes()), Err(HeaderError::Malformed), "{bad}");
        }
        let other = format!("{PROTOCOL} 0.0.0-other t\n");
        let err = read_header(other.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("install both from the same build"), "{err}");
        let older = format!("hookctl-native/1 {VERSION} t\n");
        assert!(matches!(
            read_header(older.as_bytes()),
            Err(HeaderError::OtherBuild { .. })
        ));
    }

    #[test]
    fn messages_are_bounded_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_MESSAGE, "{}", cut.len());
        let (kept, note) = cut.split_once('…').unwrap();
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(
            note,
            format!(" ({:.1} KiB cut)", (2 * MAX_MESSAGE - kept.len()) as f64 / 1024.0)
        );
        assert_eq!(bounded("short".into()), "short");
    }
}
