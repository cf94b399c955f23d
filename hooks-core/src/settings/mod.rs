//! Per-hook settings, declared as data beside a hook: an optional sidecar
//! `<hook file name>.toml` (e.g. `40-slow.sh.toml`, `30-filter.wasm.toml`).
//!
//! ```toml
//! timeout = 2            # seconds, or "500ms", "2s", "1m", or "none"; default: the backend's (or dispatcher's)
//! memory = "64MiB"       # wasm only
//! max_output = "16MiB"   # per stream
//! policy = "required"    # or "optional": its failure is logged, never fails the event
//! on_reconnect_failure = "kill"  # or "log": what its failure at `reconnect` does (plugins dirs only)
//! [match]                # all optional; a hook that does not match is not called
//! objects = ["win*", "db-?"]     # globs on the object (domain/network) name
//! ops = ["prepare", "release"]
//! subops = ["begin"]
//! xpath = ["/domain/devices/hostdev"]  # XPath 1.0 on the event's document: each must select or be true
//! xmlns = { app = "http://example.org/app/1.0" }  # prefixes for `xpath` (e.g. `/domain/metadata/app:gpu`)
//! ```
//!
//! Unknown keys and bad values are errors naming the file and the line (and, for an
//! `xpath` expression, the column). See [`XPath`] for how expressions match.

// `sidecar.rs` has the settings a sidecar gives and how it is read, `matcher.rs` which
// events a hook wants, and `grammar.rs` how durations and sizes are written.
mod grammar;
mod matcher;
mod sidecar;
#[cfg(test)]
mod tests;

pub use self::grammar::{parse_duration, parse_size, parse_span, InvalidValue, MAX_TIMEOUT, MIN_TIMEOUT};
pub use self::matcher::Matcher;
pub use self::sidecar::{HookPolicy, HookSettings, OnReconnectFailure, SettingsError, TimeoutSetting};

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::xpath::{EventDocument, XPath};
use crate::HookEvent;
