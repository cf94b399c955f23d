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

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::xpath::{EventDocument, XPath};
use crate::HookEvent;

/// A hook's time limit as its settings give it.
///
/// ```
/// use std::time::Duration;
/// use virt_hooks_core::backend::TimeoutSetting;
/// let ten = Some(Duration::from_secs(10));
/// assert_eq!(TimeoutSetting::Default.or(ten), ten);
/// assert_eq!(TimeoutSetting::Never.or(ten), None);
/// assert_eq!(TimeoutSetting::After(Duration::from_secs(2)).or(ten), Some(Duration::from_secs(2)));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TimeoutSetting {
    /// Not set: the default of whoever runs the hook applies (the backend's, or the
    /// dispatcher's `timeout` in `hookctl.toml`).
    #[default]
    Default,
    /// `timeout = "none"`: no limit, asked for explicitly.
    Never,
    /// This long.
    After(Duration),
}

impl TimeoutSetting {
    /// The limit to apply, given the default.
    pub fn or(self, default: Option<Duration>) -> Option<Duration> {
        match self {
            TimeoutSetting::Default => default,
            TimeoutSetting::Never => None,
            TimeoutSetting::After(t) => Some(t),
        }
    }

    /// Parses a settings value: a duration ([`parse_duration`]) or `"none"`.
    ///
    /// # Errors
    /// [`InvalidValue`] saying what was expected.
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        if text.trim() == "none" {
            return Ok(TimeoutSetting::Never);
        }
        parse_duration(text).map(TimeoutSetting::After)
    }
}

impl fmt::Display for TimeoutSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeoutSetting::Default => f.write_str("default"),
            TimeoutSetting::Never => f.write_str("none"),
            TimeoutSetting::After(t) => f.write_str(&crate::format_duration(*t)),
        }
    }
}

/// What a hook's failure does to the event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookPolicy {
    /// The failure fails the event (libvirt's behaviour). The default.
    #[default]
    Required,
    /// The failure is recorded and logged but never fails the event.
    Optional,
}

/// What a hook's failure at `reconnect` (libvirtd restarting with the guest running)
/// does, where the dispatcher decides it (a flat plugins dir; see
/// [`crate::HooksDir::with_reconnect_failure`]). libvirt itself kills the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnReconnectFailure {
    /// The failure fails the event and libvirt kills the running guest (libvirt's own
    /// behaviour, and what its layout, `<driver>` and `<driver>.d/`, always does).
    Kill,
    /// The failure is logged as an error and the event succeeds: the guest lives.
    Log,
}

impl OnReconnectFailure {
    /// The value as written in a sidecar (`kill`, `log`).
    pub const fn as_str(self) -> &'static str {
        match self {
            OnReconnectFailure::Kill => "kill",
            OnReconnectFailure::Log => "log",
        }
    }
}

impl fmt::Display for OnReconnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which events a hook wants; empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    objects: Vec<glob::Pattern>,
    ops: Vec<glob::Pattern>,
    subops: Vec<glob::Pattern>,
    xpath: Vec<XPath>,
    /// Prefixes for `xpath`: (prefix, namespace URI), sorted by prefix.
    xmlns: Vec<(String, String)>,
}

impl Matcher {
    /// Whether the event passes every non-empty list: its object, op and subop match
    /// one of the globs, and every `xpath` expression holds on its input (see [`XPath`];
    /// an event without an XML document never passes a non-empty `xpath`; XML past the
    /// parser's limits passes it, failing closed: see [`crate::backend::XPath::holds`]).
    ///
    /// The globs are tested first; the input is parsed only when they pass, and only
    /// once for all hooks when the event comes from the registry
    /// ([`HookEvent::input_document`]).
    pub fn matches(&self, event: &dyn HookEvent) -> bool {
        let any = |pats: &[glob::Pattern], s: &str| pats.is_empty() || pats.iter().any(|p| p.matches(s));
        any(&self.objects, event.object())
            && any(&self.ops, event.op())
            && any(&self.subops, event.subop())
            && self.document_matches(event)
    }

    fn document_matches(&self, event: &dyn HookEvent) -> bool {
        if self.xpath.is_empty() {
            return true;
        }
        let all = |doc: &EventDocument<'_>| self.xpath.iter().all(|x| x.holds(doc, &self.xmlns));
        match event.input_document() {
            Some(shared) => all(shared),
            None => all(&EventDocument::new(event.input())),
        }
    }

    /// Checks that every `ops` and `subops` pattern can match something the driver
    /// calls: `ops = ["prepar"]` would silently never run the hook.
    ///
    /// # Errors
    /// The key (`ops` or `subops`), and which pattern matches nothing and what would.
    pub fn check_for(&self, driver: crate::Driver) -> Result<(), (&'static str, String)> {
        let ops = crate::libvirt_ops(driver);
        for pat in &self.ops {
            if !ops.iter().any(|op| pat.matches(op)) {
                let message = format!(
                    "ops: `{}` matches no {driver} operation (there are: {})",
                    pat.as_str(),
                    ops.join(", ")
                );
                return Err(("ops", message));
            }
        }
        for pat in &self.subops {
            if !["begin", "end", "-"].iter().any(|s| pat.matches(s)) {
                let message = format!("subops: `{}` matches no subop (there are: begin, end, -)", pat.as_str());
                return Err(("subops", message));
            }
        }
        if driver == crate::Driver::Daemon && !self.xpath.is_empty() {
            let message = "xpath: daemon events carry no document (their hooks read /dev/null), \
                           so this hook would never run"
                .to_owned();
            return Err(("xpath", message));
        }
        Ok(())
    }

    /// The `objects` globs, as written.
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        self.objects.iter().map(glob::Pattern::as_str)
    }

    /// The `ops` globs, as written.
    pub fn ops(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().map(glob::Pattern::as_str)
    }

    /// The `subops` globs, as written.
    pub fn subops(&self) -> impl Iterator<Item = &str> {
        self.subops.iter().map(glob::Pattern::as_str)
    }

    /// The `xpath` expressions, as written.
    pub fn xpath(&self) -> impl Iterator<Item = &str> {
        self.xpath.iter().map(XPath::as_str)
    }

    /// The `xmlns` prefixes for `xpath`: (prefix, namespace URI), sorted by prefix.
    pub fn xmlns(&self) -> impl Iterator<Item = (&str, &str)> {
        self.xmlns.iter().map(|(p, u)| (p.as_str(), u.as_str()))
    }

    /// Whether it matches only events whose input is an XML document (it has `xpath`):
    /// never a daemon event, nor one without a well-formed document.
    pub fn needs_document(&self) -> bool {
        !self.xpath.is_empty()
    }

    /// Whether it matches everything.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.ops.is_empty() && self.subops.is_empty() && self.xpath.is_empty()
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (name, pats) in [("objects", &self.objects), ("ops", &self.ops), ("subops", &self.subops)] {
            if !pats.is_empty() {
                let list: Vec<_> = pats.iter().map(glob::Pattern::as_str).collect();
                parts.push(format!("{name}={}", list.join(",")));
            }
        }
        if !self.xpath.is_empty() {
            // Expressions hold spaces and commas: quoted, as in the sidecar.
            let list: Vec<&str> = self.xpath().collect();
            parts.push(format!("xpath={list:?}"));
        }
        if !self.xmlns.is_empty() {
            let list: Vec<String> = self.xmlns.iter().map(|(p, u)| format!("{p}={u}")).collect();
            parts.push(format!("xmlns={}", list.join(",")));
        }
        f.write_str(&parts.join(" "))
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &[glob::Pattern], b: &[glob::Pattern]| {
            a.iter()
                .map(glob::Pattern::as_str)
                .eq(b.iter().map(glob::Pattern::as_str))
        };
        same(&self.objects, &other.objects)
            && same(&self.ops, &other.ops)
            && same(&self.subops, &other.subops)
            && self.xpath == other.xpath
            && self.xmlns == other.xmlns
    }
}

/// A hook's settings. `Default` is libvirt's behaviour: no limits of its own, required,
/// every event.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct HookSettings {
    /// Time limit.
    pub timeout: TimeoutSetting,
    /// The default limit of whoever runs the hook (hookctl's dispatcher: 30 s, or
    /// `timeout` in `hookctl.toml`), for hooks whose own `timeout` is unset; a backend
    /// whose own default is shorter keeps it. Set by [`crate::HooksDir::with_default_timeout`].
    pub default_timeout: Option<Duration>,
    /// Memory cap in bytes (wasm); `None` leaves the backend's default.
    pub memory: Option<u64>,
    /// Output cap per stream in bytes; `None` leaves the backend's default.
    pub max_output: Option<u64>,
    /// Whether its failure fails the event.
    pub policy: HookPolicy,
    /// `on_reconnect_failure` as its sidecar sets it (`None`: not set, the directory's
    /// default applies; see [`crate::backend::DirEntry::on_reconnect_failure`]).
    pub on_reconnect_failure: Option<OnReconnectFailure>,
    /// Which events it wants.
    pub matcher: Matcher,
    /// Whether it keeps a directory per object (`state = true`; see [`crate::StateRoot`]).
    pub state: bool,
    /// The cap on that directory's size in bytes where the backend can hold it (wasm);
    /// `None` leaves [`crate::DEFAULT_STATE_MAX`].
    pub state_max: Option<u64>,
    /// The file these came from, if any.
    pub source: Option<PathBuf>,
}

/// A settings file that cannot be used.
///
/// Shown as `FILE:LINE: MESSAGE`, or `FILE:LINE:COLUMN: MESSAGE` when the column is
/// known (an `xpath` expression's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}{}{}: {message}",
    path.display(),
    line.map(|l| format!(":{l}")).unwrap_or_default(),
    line.and(*column).map(|c| format!(":{c}")).unwrap_or_default()
)]
pub struct SettingsError {
    /// The settings file.
    pub path: PathBuf,
    /// The line (1-based), when known.
    pub line: Option<usize>,
    /// The column on that line (1-based, in characters), when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    timeout: Option<toml::Spanned<Value>>,
    memory: Option<toml::Spanned<Value>>,
    max_output: Option<toml::Spanned<Value>>,
    policy: Option<HookPolicy>,
    on_reconnect_failure: Option<OnReconnectFailure>,
    state: Option<bool>,
    state_max: Option<toml::Spanned<Value>>,
    #[serde(rename = "match")]
    matcher: Option<MatchFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchFile {
    #[serde(default)]
    objects: Vec<String>,
    #[serde(default)]
    ops: Vec<String>,
    #[serde(default)]
    subops: Vec<String>,
    #[serde(default)]
    xpath: Vec<toml::Spanned<String>>,
    xmlns: Option<toml::Spanned<std::collections::BTreeMap<String, String>>>,
}

/// A number or a string in a settings file (TOML integers are `i64`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Value {
    Int(i64),
    Float(f64),
    Text(String),
}

/// The longest timeout accepted anywhere (settings, command line, embedders' limits are
/// clamped to it): one week. Longer is a mistake, and deadlines stay far from overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The shortest timeout accepted: one millisecond (shorter only ever fails).
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// A duration or size that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

/// A timeout: a plain number of seconds (`"2"`, `"0.25"`), a number and a unit
/// (`"500ms"`, `"1.5s"`, `"1m"`, `"1h"`, `"1d"`), or what [`humantime`] reads
/// (`"2h 30m"`, `"1h30m"`, `"1 hour 30 min"`): the grammar of `hookctl log --since`.
/// Zero, negative, not-a-number, less than [`MIN_TIMEOUT`] and more than
/// [`MAX_TIMEOUT`] are refused.
///
/// ```
/// use std::time::Duration;
/// use virt_hooks_core::backend::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
/// assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
/// assert_eq!(parse_duration("2h 30m"), Ok(Duration::from_secs(9000)));
/// assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
/// assert!(parse_duration("8d").unwrap_err().to_string().contains("too long"));
/// assert!(parse_duration("0").unwrap_err().to_string().contains("0 would"));
/// assert!(parse_duration("1e20").is_err());
/// ```
///
/// # Errors
/// [`InvalidValue`] saying what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    match written(text)? {
        Written::Seconds(secs) => seconds(secs, text),
        Written::Exact(d) => within_bounds(d, text),
    }
}

/// A length of time in [`parse_duration`]'s grammar without a timeout's bounds: zero
/// and any length a [`Duration`] holds (`hookctl log --since 30d`).
///
/// # Errors
/// [`InvalidValue`] for what is not a length of time, a negative one, or one past what a
/// [`Duration`] holds.
pub fn parse_span(text: &str) -> Result<Duration, InvalidValue> {
    match written(text)? {
        Written::Seconds(secs) if secs.is_nan() || secs < 0.0 => {
            Err(InvalidValue(format!("`{text}` is not a positive duration")))
        }
        Written::Seconds(secs) => Duration::try_from_secs_f64(secs).map_err(|_| too_long(text)),
        Written::Exact(d) => Ok(d),
    }
}

/// A length of time as written, before any bounds.
enum Written {
    /// A number of seconds (a number and one unit), which may be negative or infinite.
    Seconds(f64),
    /// What humantime read: units added up exactly.
    Exact(Duration),
}

/// Reads a number with at most one unit as a float (`2.5`, `1.5h`, `1e3ms`, `-1d`), so
/// that fractions and exponents work; anything else as humantime does.
fn written(text: &str) -> Result<Written, InvalidValue> {
    let t = text.trim();
    let split = t
        .find(|c: char| c.is_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    if let Ok(n) = num.parse::<f64>() {
        if let Some(scale) = unit_seconds(unit) {
            return Ok(Written::Seconds(n * scale));
        }
    }
    match humantime::parse_duration(t) {
        Ok(d) => Ok(Written::Exact(d)),
        Err(humantime::DurationError::NumberOverflow) => Err(too_long(text)),
        Err(_) if t.starts_with('-') => Err(InvalidValue(format!("`{text}` is not a positive duration"))),
        Err(_) => Err(InvalidValue(format!(
            "`{text}` is not a duration: use a number of seconds, or \"500ms\", \"2s\", \"1m\", \"1h\", \"1d\", \"2h 30m\""
        ))),
    }
}

/// Seconds in one `unit` (no unit: seconds), for the units humantime knows (`ms`, `s`,
/// `min`, `h`, `d`, `w`, their long names, ...); `None` for what is not one unit.
fn unit_seconds(unit: &str) -> Option<f64> {
    if unit.is_empty() {
        return Some(1.0);
    }
    if !unit.chars().all(char::is_alphabetic) {
        return None;
    }
    humantime::parse_duration(&format!("1{unit}"))
        .ok()
        .map(|d| d.as_secs_f64())
}

fn too_long(shown: &str) -> InvalidValue {
    InvalidValue(format!(
        "`{shown}` is too long: at most {} seconds (7 days)",
        MAX_TIMEOUT.as_secs()
    ))
}

/// Checks an exact length against a timeout's bounds, as [`seconds`] checks a number.
fn within_bounds(d: Duration, shown: &str) -> Result<Duration, InvalidValue> {
    if d.is_zero() {
        return seconds(0.0, shown);
    }
    if d > MAX_TIMEOUT {
        return Err(too_long(shown));
    }
    if d < MIN_TIMEOUT {
        return Err(InvalidValue(format!("`{shown}` is too short: at least 1ms")));
    }
    Ok(d)
}

/// Checks a number of seconds: positive, finite, at most [`MAX_TIMEOUT`].
fn seconds(secs: f64, shown: &str) -> Result<Duration, InvalidValue> {
    if secs.is_nan() || secs < 0.0 {
        return Err(InvalidValue(format!("`{shown}` is not a positive duration")));
    }
    if secs == 0.0 {
        return Err(InvalidValue(format!(
            "`{shown}`: a timeout of 0 would fail every call; leave it out for the default, or give e.g. \"500ms\""
        )));
    }
    if secs > MAX_TIMEOUT.as_secs_f64() {
        return Err(too_long(shown));
    }
    if secs < MIN_TIMEOUT.as_secs_f64() {
        return Err(InvalidValue(format!("`{shown}` is too short: at least 1ms")));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `"64MiB"`, `"512KiB"`, `"1GiB"`, `"100kB"`, `"4096"` (bytes); `None` when it is not
/// a size or does not fit in 64 bits.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The largest `memory` accepted: a 32-bit WebAssembly memory's whole address space.
const MAX_MEMORY: u64 = 4 << 30;

/// The largest `state_max`: state lives on tmpfs, in the host's memory.
const MAX_STATE: u64 = 1 << 30;

/// Checks an `xmlns` entry: a prefix an expression can use, bound to a namespace.
fn check_prefix(prefix: &str, uri: &str) -> Result<(), String> {
    let mut chars = prefix.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(format!("`{prefix}` is not a prefix (a name without `:`)"));
    }
    if prefix == "xmlns" || prefix == "xml" {
        return Err(format!(
            "`{prefix}` cannot be bound (`xml` always is, to its own namespace)"
        ));
    }
    if uri.is_empty() {
        return Err(format!("`{prefix}` is bound to an empty namespace URI"));
    }
    Ok(())
}

/// An `xpath` expression's error, at its line and column in the sidecar: the column in
/// the file when the TOML string is written as is (no escapes), else the string's start,
/// with the column within the expression in the message.
fn xpath_error(path: &Path, text: &str, item: &toml::Spanned<String>, e: crate::XPathError) -> SettingsError {
    let span = item.span();
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let raw = text.get(span.start..span.end).unwrap_or_default();
    let expr = item.get_ref();
    let verbatim = raw.len() == expr.len() + 2
        && matches!(raw.as_bytes().first(), Some(b'"' | b'\''))
        && raw.get(1..raw.len() - 1) == Some(expr.as_str());
    let column = if verbatim { column + e.column } else { column };
    SettingsError {
        path: path.to_owned(),
        line: Some(line),
        column: Some(column),
        message: format!("xpath `{expr}`: {} (column {} of the expression)", e.message, e.column),
    }
}

impl HookSettings {
    /// The sidecar file for a hook: `<hook path>.toml`.
    pub fn sidecar(hook: &Path) -> PathBuf {
        let mut p = hook.as_os_str().to_owned();
        p.push(".toml");
        PathBuf::from(p)
    }

    /// Reads the sidecar of `hook`, or defaults when there is none.
    ///
    /// # Errors
    /// A [`SettingsError`] naming the file and line.
    pub fn for_hook(hook: &Path) -> Result<Self, SettingsError> {
        let path = Self::sidecar(hook);
        match fs::read_to_string(&path) {
            Ok(text) => Self::parse(&path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(SettingsError {
                path,
                line: None,
                column: None,
                message: format!("cannot read it: {e}"),
            }),
        }
    }

    /// Reads the sidecar of `hook` through the trust rule: a sidecar that someone other
    /// than root or the effective uid could change is refused, since it can turn a
    /// hook off (`policy`, `[match]`). Defaults when there is none.
    ///
    /// # Errors
    /// A [`SettingsError`] naming the file (and line), or why it was refused.
    pub fn for_hook_trusted(hook: &Path, trust: &crate::TrustPolicy) -> Result<Self, SettingsError> {
        let path = Self::sidecar(hook);
        let bytes = match trust.read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(Self::default()),
            Err(e) => {
                return Err(SettingsError {
                    path,
                    line: None,
                    column: None,
                    message: format!("refused: {}", e.reason()),
                })
            }
        };
        let text = String::from_utf8(bytes).map_err(|_| SettingsError {
            path: path.clone(),
            line: None,
            column: None,
            message: "not UTF-8 text".into(),
        })?;
        Self::parse(&path, &text)
    }

    /// Parses settings text; `path` names it in errors.
    ///
    /// ```
    /// use virt_hooks_core::HookPolicy;
    /// use virt_hooks_core::backend::HookSettings;
    /// let s = HookSettings::parse("x.toml".as_ref(), "timeout = 1.5\npolicy = \"optional\"\n[match]\nops = [\"prepare\"]\n").unwrap();
    /// assert_eq!(s.timeout, virt_hooks_core::backend::TimeoutSetting::After(std::time::Duration::from_millis(1500)));
    /// assert_eq!(s.policy, HookPolicy::Optional);
    /// let err = HookSettings::parse("x.toml".as_ref(), "timeout = 1\ncolour = \"red\"\n").unwrap_err();
    /// assert_eq!(err.line, Some(2));
    /// ```
    ///
    /// # Errors
    /// A [`SettingsError`] naming the file and line.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        let fail = |line: Option<usize>, message: String| SettingsError {
            path: path.to_owned(),
            line,
            column: None,
            message,
        };
        let line_at = |span: std::ops::Range<usize>| Some(text[..span.start.min(text.len())].matches('\n').count() + 1);
        let line_of = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| i + 1)
        };
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            fail(line, e.message().trim().to_owned())
        })?;
        let timeout = match file.timeout {
            None => TimeoutSetting::Default,
            Some(v) => {
                let line = line_at(v.span());
                let parsed = match v.into_inner() {
                    Value::Int(n) => seconds(n as f64, &n.to_string()).map(TimeoutSetting::After),
                    Value::Float(n) => seconds(n, &n.to_string()).map(TimeoutSetting::After),
                    Value::Text(t) => TimeoutSetting::parse(&t),
                };
                parsed.map_err(|e| fail(line, format!("timeout: {e}")))?
            }
        };
        let size = |key: &str, v: Option<toml::Spanned<Value>>, max: u64| -> Result<Option<u64>, SettingsError> {
            let Some(v) = v else { return Ok(None) };
            let line = line_at(v.span());
            let bytes = match v.into_inner() {
                Value::Int(b) => u64::try_from(b).ok(),
                Value::Float(_) => None,
                Value::Text(t) => parse_size(&t),
            };
            match bytes {
                Some(b) if b > 0 && b <= max => Ok(Some(b)),
                Some(b) if b > max => Err(fail(line, format!("{key} is too large: at most {max} bytes"))),
                _ => Err(fail(
                    line,
                    format!("{key} must be a positive size like \"64MiB\" or a number of bytes"),
                )),
            }
        };
        let memory = size("memory", file.memory, MAX_MEMORY)?;
        let max_output = size("max_output", file.max_output, u64::MAX)?;
        let state = file.state.unwrap_or(false);
        let state_line = file.state_max.as_ref().and_then(|v| line_at(v.span()));
        let state_max = size("state_max", file.state_max, MAX_STATE)?;
        if state_max.is_some() && !state {
            return Err(fail(state_line, "state_max without `state = true`".into()));
        }
        let policy = file.policy.unwrap_or_default();
        if let (HookPolicy::Optional, Some(OnReconnectFailure::Kill)) = (policy, file.on_reconnect_failure) {
            return Err(fail(
                line_of("on_reconnect_failure"),
                "on_reconnect_failure = \"kill\" with policy = \"optional\": an optional hook's failure never fails an event, so it could never kill".into(),
            ));
        }
        let mut matcher = Matcher::default();
        if let Some(m) = file.matcher {
            let globs = |key: &str, list: Vec<String>| -> Result<Vec<glob::Pattern>, SettingsError> {
                list.iter()
                    .map(|g| {
                        glob::Pattern::new(g)
                            .map_err(|e| fail(line_of(key), format!("bad pattern `{g}` in {key}: {e}")))
                    })
                    .collect()
            };
            let xmlns = match m.xmlns {
                None => Vec::new(),
                Some(table) => {
                    let line = line_at(table.span());
                    let table = table.into_inner();
                    for (prefix, uri) in &table {
                        if let Err(why) = check_prefix(prefix, uri) {
                            return Err(fail(line, format!("xmlns: {why}")));
                        }
                    }
                    table.into_iter().collect()
                }
            };
            let xpath = m
                .xpath
                .iter()
                .map(|item| XPath::compile(item.get_ref(), &xmlns).map_err(|e| xpath_error(path, text, item, e)))
                .collect::<Result<_, _>>()?;
            matcher = Matcher {
                objects: globs("objects", m.objects)?,
                ops: globs("ops", m.ops)?,
                subops: globs("subops", m.subops)?,
                xpath,
                xmlns,
            };
        }
        Ok(HookSettings {
            default_timeout: None,
            timeout,
            memory,
            max_output,
            policy,
            on_reconnect_failure: file.on_reconnect_failure,
            matcher,
            state,
            state_max,
            source: Some(path.to_owned()),
        })
    }

    /// The limit a backend applies: the hook's own `timeout`; when unset, the shorter of
    /// the backend's default and [`HookSettings::default_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use virt_hooks_core::backend::{HookSettings, TimeoutSetting};
    /// let mut s = HookSettings::default();
    /// s.default_timeout = Some(Duration::from_secs(120));
    /// assert_eq!(s.effective_timeout(None), Some(Duration::from_secs(120)));
    /// assert_eq!(s.effective_timeout(Some(Duration::from_secs(10))), Some(Duration::from_secs(10)));
    /// s.timeout = TimeoutSetting::Never;
    /// assert_eq!(s.effective_timeout(Some(Duration::from_secs(10))), None);
    /// ```
    pub fn effective_timeout(&self, backend_default: Option<Duration>) -> Option<Duration> {
        let default = match (backend_default, self.default_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.timeout.or(default)
    }

    /// A one-line summary of what differs from the defaults, for `hookctl list`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.timeout != TimeoutSetting::Default {
            parts.push(format!("timeout={}", self.timeout));
        }
        if let Some(m) = self.memory {
            parts.push(format!("memory={}MiB", m.div_ceil(1 << 20)));
        }
        if let Some(o) = self.max_output {
            parts.push(format!("max_output={o}"));
        }
        if self.policy == HookPolicy::Optional {
            parts.push("policy=optional".into());
        }
        if let Some(on) = self.on_reconnect_failure {
            parts.push(format!("on_reconnect_failure={on}"));
        }
        match (self.state, self.state_max) {
            (true, Some(max)) => parts.push(format!("state(max={max})")),
            (true, None) => parts.push("state".into()),
            _ => {}
        }
        if !self.matcher.is_empty() {
            parts.push(format!("match: {}", self.matcher));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawEvent;

    fn parse(text: &str) -> Result<HookSettings, SettingsError> {
        HookSettings::parse(Path::new("h.toml"), text)
    }

    #[test]
    fn full_file() {
        let s = parse(
            "timeout = 2\nmemory = \"32MiB\"\nmax_output = 1024\npolicy = \"optional\"\n[match]\nobjects = [\"win*\", \"db-?\"]\nops = [\"prepare\", \"release\"]\nsubops = [\"begin\"]\n",
        )
        .unwrap();
        assert_eq!(s.timeout, TimeoutSetting::After(Duration::from_secs(2)));
        assert_eq!(s.memory, Some(32 << 20));
        assert_eq!(s.max_output, Some(1024));
        let ev = |o: &str, op: &str| RawEvent::new(crate::Driver::Qemu, [o, op, "begin", "-"]);
        assert!(s.matcher.matches(&ev("win10", "prepare")));
        assert!(s.matcher.matches(&ev("db-1", "prepare")));
        assert!(!s.matcher.matches(&ev("db-12", "prepare")));
        assert!(!s.matcher.matches(&ev("win10", "start")));
        assert_eq!(s.summary(), "timeout=2s memory=32MiB max_output=1024 policy=optional match: objects=win*,db-? ops=prepare,release subops=begin");
    }

    #[test]
    fn state_and_its_cap() {
        let s = parse("state = true\nstate_max = \"2MiB\"\n").unwrap();
        assert!(s.state);
        assert_eq!(s.state_max, Some(2 << 20));
        assert_eq!(s.summary(), "state(max=2097152)");
        assert!(!parse("").unwrap().state);
        let e = parse("\nstate_max = 4096\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("without `state = true`"), "{e}");
        let e = parse("state = true\nstate_max = \"2GiB\"\n").unwrap_err();
        assert!(e.message.contains("too large"), "{e}");
        let e = parse("state = \"yes\"\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn on_reconnect_failure_is_kill_or_log_and_never_with_optional() {
        let s = parse("on_reconnect_failure = \"kill\"\n").unwrap();
        assert_eq!(s.on_reconnect_failure, Some(OnReconnectFailure::Kill));
        assert_eq!(s.summary(), "on_reconnect_failure=kill");
        let s = parse("on_reconnect_failure = \"log\"\n").unwrap();
        assert_eq!(s.on_reconnect_failure, Some(OnReconnectFailure::Log));
        assert_eq!(parse("").unwrap().on_reconnect_failure, None);
        // A typo must not silently mean either.
        let e = parse("timeout = 1\non_reconnect_failure = \"kil\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("kill") && e.message.contains("log"), "{e}");
        let e = parse("on_reconnect_failure = true\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        // An optional hook never fails an event: asking it to kill is a contradiction.
        let e = parse("policy = \"optional\"\non_reconnect_failure = \"kill\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("optional"), "{e}");
        assert!(parse("policy = \"optional\"\non_reconnect_failure = \"log\"\n").is_ok());
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse("timeout = 1\n\n[match]\nobject = [\"x\"]\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.to_string().starts_with("h.toml:4: unknown field `object`"), "{e}");
        let e = parse("memory = \"lots\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "h.toml:1: memory must be a positive size like \"64MiB\" or a number of bytes"
        );
        let e = parse("policy = \"maybe\"\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        let e = parse("timeout = -1.0\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        let e = parse("[match]\nops = [\"[\"]\n").unwrap_err();
        assert!(e.to_string().starts_with("h.toml:2: bad pattern `[`"), "{e}");
    }

    #[test]
    fn a_bad_xpath_is_an_error_with_file_line_and_column() {
        let text = "timeout = 1\n[match]\nxpath = [\n  \"/domain/devices/hostdev\",\n  \"/domain/devices/[x]\",\n]\n";
        let e = parse(text).unwrap_err();
        assert_eq!((e.line, e.column), (Some(5), Some(20)), "{e}");
        assert!(
            e.to_string().starts_with("h.toml:5:20: xpath `/domain/devices/[x]`: "),
            "{e}"
        );
        assert!(e.to_string().ends_with("(column 17 of the expression)"), "{e}");
        // A literal string, on the `xpath` line itself.
        let e = parse("[match]\nxpath = ['count(/domain/devices/disk) >']\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.column.unwrap() >= 10 + 29, "{e}");
        // With escapes the file column is the string's start; the message has the rest.
        let e = parse("[match]\nxpath = [\"/domain[name=\\\"a\\\"][frob()]\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(10)), "{e}");
        assert!(e.message.contains("unknown function `frob()`"), "{e}");
        assert!(e.message.contains("(column 19 of the expression)"), "{e}");
        let e = parse("[match]\nxpath = [\"/domain/metadata/app:gpu\"]\n").unwrap_err();
        assert!(e.message.contains("prefix `app` is not bound"), "{e}");
        // Unknown keys beside it keep their line.
        let e = parse("[match]\nxpath = [\"/domain\"]\nxpaths = [\"/domain\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(3), None), "{e}");
        assert!(e.to_string().starts_with("h.toml:3: unknown field `xpaths`"), "{e}");
        let e = parse("[match]\nxpath = \"/domain\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "a string where a list is needed: {e}");
    }

    #[test]
    fn xpath_and_xmlns_are_compiled_and_shown() {
        let s = parse(
            "[match]\nobjects = [\"gpu-*\"]\nxpath = [\"/domain/devices/hostdev\", \"count(/domain/devices/disk) > 1\", \"/domain/metadata/app:gpu\"]\nxmlns = { app = \"http://example.org/app/1.0\" }\n",
        )
        .unwrap();
        assert!(s.matcher.needs_document());
        assert_eq!(s.matcher.xpath().count(), 3);
        assert_eq!(
            s.matcher.xmlns().collect::<Vec<_>>(),
            [("app", "http://example.org/app/1.0")]
        );
        assert_eq!(
            s.summary(),
            "match: objects=gpu-* xpath=[\"/domain/devices/hostdev\", \"count(/domain/devices/disk) > 1\", \"/domain/metadata/app:gpu\"] xmlns=app=http://example.org/app/1.0"
        );
        let xml = |doc: &str| {
            RawEvent::new(crate::Driver::Qemu, ["gpu-1", "prepare", "begin", "-"])
                .with_input(Some(doc.as_bytes().to_vec()))
        };
        let all = "<domain><metadata><a:gpu xmlns:a='http://example.org/app/1.0'/></metadata><devices><disk/><disk/><hostdev/></devices></domain>";
        assert!(s.matcher.matches(&xml(all)));
        assert!(
            !s.matcher.matches(&xml(&all.replace("<hostdev/>", ""))),
            "every expression must hold"
        );
        assert!(
            !s.matcher.matches(&xml(&all.replace("app/1.0", "app/2.0"))),
            "the URI counts, not the prefix"
        );
        // Input that is there but not evaluated fails closed.
        assert!(s.matcher.matches(&xml("not xml")));
        assert!(!s
            .matcher
            .matches(&RawEvent::new(crate::Driver::Qemu, ["gpu-1", "prepare", "begin", "-"])));
        let other = RawEvent::new(crate::Driver::Qemu, ["db-1", "prepare", "begin", "-"])
            .with_input(Some(all.as_bytes().to_vec()));
        assert!(!s.matcher.matches(&other), "the globs still apply");
        for bad in [
            "xmlns = { \"a:b\" = \"urn:x\" }",
            "xmlns = { xmlns = \"urn:x\" }",
            "xmlns = { xml = \"urn:x\" }",
            "xmlns = { a = \"\" }",
        ] {
            let e = parse(&format!("[match]\n{bad}\n")).unwrap_err();
            assert_eq!(e.line, Some(2), "{bad}: {e}");
            assert!(e.message.starts_with("xmlns: "), "{bad}: {e}");
        }
    }

    #[test]
    fn xpath_on_a_daemon_hook_is_refused_by_the_driver_check() {
        let s = parse("[match]\nxpath = [\"/domain\"]\n").unwrap();
        let (key, message) = s.matcher.check_for(crate::Driver::Daemon).unwrap_err();
        assert_eq!(key, "xpath");
        assert!(message.contains("daemon events carry no document"), "{message}");
        s.matcher.check_for(crate::Driver::Qemu).unwrap();
        s.matcher.check_for(crate::Driver::Network).unwrap();
    }

    /// What humantime reads (`--since 1d`) a sidecar reads too, within a timeout's
    /// bounds: a day, hours and minutes together, with or without blanks.
    #[test]
    fn a_sidecar_takes_the_grammar_of_the_command_line() {
        for (text, secs) in [
            ("1d", 86_400),
            ("2h 30m", 9_000),
            ("1h30m", 5_400),
            ("1 hour 30 min", 5_400),
            ("1.5d", 129_600),
            ("1w", 604_800),
            ("7d", 604_800),
            ("6d 23h 59m 59s", 604_799),
        ] {
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)), "{text}");
            let s = parse(&format!("timeout = \"{text}\"\n")).unwrap();
            assert_eq!(s.timeout, TimeoutSetting::After(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(parse_duration("1500ms 2us"), Ok(Duration::from_micros(1_500_002)));
    }

    /// Past the 7-day cap however it is written, too large for any integer, negative,
    /// not a number, zero, or not a duration at all: each an error naming the file and
    /// line and saying which.
    #[test]
    fn hostile_durations_are_refused_with_the_file_and_line() {
        for (text, want) in [
            ("8d", "too long"),
            ("7d 1ms", "too long"),
            ("1w 1d", "too long"),
            ("2 weeks", "too long"),
            ("1y", "too long"),
            ("1e400d", "too long"),
            ("99999999999999999999d", "too long"),
            ("18446744073709551615s 1s", "too long"),
            ("9999999999999999999h", "too long"),
            ("-1d", "not a positive"),
            ("-1h30m", "not a positive"),
            ("0d", "0 would fail every call"),
            ("0h 0m", "0 would fail every call"),
            ("1ns", "too short"),
            ("NaN", "not a duration"),
            ("nand", "not a duration"),
            ("inf", "not a duration"),
            ("infd", "not a duration"),
            ("1d garbage", "not a duration"),
            ("1 parsec", "not a duration"),
            ("d", "not a duration"),
            ("1h30", "not a duration"),
        ] {
            let e = parse(&format!("\ntimeout = \"{text}\"\n")).unwrap_err();
            assert_eq!(e.line, Some(2), "{text}: {e}");
            let message = e.to_string();
            assert!(message.starts_with("h.toml:2:"), "{text}: {message}");
            assert!(message.contains(want), "{text}: {message}");
            assert!(message.contains(&format!("`{text}`")), "{text}: {message}");
        }
    }

    /// `parse_span` reads the same grammar without a timeout's bounds (`hookctl log
    /// --since 30d`), and still refuses what is not a length of time.
    #[test]
    fn spans_take_the_grammar_without_the_bounds() {
        assert_eq!(parse_span("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_span("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_span("1h30m"), Ok(Duration::from_secs(5_400)));
        for (text, want) in [
            ("-1d", "not a positive"),
            ("1e400d", "too long"),
            ("99999999999999999999d", "too long"),
            ("NaN", "not a duration"),
            ("1 parsec", "not a duration"),
        ] {
            let e = parse_span(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("100kB"), Some(100_000));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }
}

/// No input makes the parsers panic, and what they accept is within the limits.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn durations_never_panic_and_stay_in_range(text in ".{0,24}") {
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(d >= MIN_TIMEOUT && d <= MAX_TIMEOUT);
            }
        }

        #[test]
        fn numeric_durations_of_any_magnitude(n in any::<f64>(), unit in prop::sample::select(vec!["", "ms", "s", "m", "h"])) {
            let text = format!("{n}{unit}");
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(d >= MIN_TIMEOUT && d <= MAX_TIMEOUT, "{text} -> {d:?}");
            }
        }

        #[test]
        fn millisecond_durations_read_back(ms in 1u64..=MAX_TIMEOUT.as_millis() as u64) {
            prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }

        #[test]
        fn hours_and_minutes_read_as_humantime_writes_them(h in 0u64..=168, m in 0u64..60) {
            let secs = h * 3600 + m * 60;
            for text in [format!("{h}h {m}m"), format!("{h}h{m}m"), format!("{h} hours {m} min")] {
                match parse_duration(&text) {
                    Ok(d) => prop_assert_eq!(d, Duration::from_secs(secs), "{}", text),
                    Err(e) => prop_assert!(secs == 0 || secs > MAX_TIMEOUT.as_secs(), "{}: {}", text, e),
                }
            }
        }

        #[test]
        fn sizes_never_panic(text in "[0-9]{0,30} ?[KMGkiB]{0,3}") {
            let _ = parse_size(&text);
        }

        #[test]
        fn settings_files_never_panic(
            timeout in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), any::<f64>().prop_map(|f| format!("{f:?}")), ".{0,12}".prop_map(|s| format!("{s:?}"))],
            memory in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), "[0-9]{0,25}[A-Za-z]{0,3}".prop_map(|s| format!("{s:?}"))],
        ) {
            let text = format!("timeout = {timeout}\nmemory = {memory}\n");
            match HookSettings::parse(Path::new("p.toml"), &text) {
                Ok(s) => {
                    prop_assert!(s.timeout.or(None).is_none_or(|t| t >= MIN_TIMEOUT && t <= MAX_TIMEOUT));
                    prop_assert!(s.memory.is_none_or(|m| m > 0 && m <= MAX_MEMORY));
                }
                Err(e) => prop_assert!(e.line.is_some(), "{e}"),
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = HookSettings::parse(Path::new("p.toml"), &text);
        }
    }

    #[test]
    fn the_reported_panics_are_errors_with_lines() {
        for (text, want) in [
            ("timeout = 1e20\n", "too long"),
            ("timeout = 9223372036854775807\n", "too long"),
            ("timeout = nan\n", "not a positive"),
            ("timeout = -1\n", "not a positive"),
            ("timeout = 0\n", "0 would fail every call"),
            ("timeout = \"0s\"\n", "0 would fail every call"),
            ("timeout = \"2 weeks\"\n", "too long"),
            ("timeout = 5e-324\n", "too short"),
            ("memory = \"99999999999999999999GiB\"\n", "positive size"),
            ("memory = \"5GiB\"\n", "too large"),
            ("memory = 0\n", "positive size"),
            ("memory = -5\n", "positive size"),
            ("max_output = 1e3\n", "positive size"),
        ] {
            let e = HookSettings::parse(Path::new("p.toml"), &format!("\n{text}")).unwrap_err();
            assert_eq!(e.line, Some(2), "{text}: {e}");
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        let ok = HookSettings::parse(Path::new("p.toml"), "timeout = \"500ms\"\n").unwrap();
        assert_eq!(ok.timeout, TimeoutSetting::After(Duration::from_millis(500)));
        let ok = HookSettings::parse(Path::new("p.toml"), "timeout = \"1m\"\nmemory = 1048576\n").unwrap();
        assert_eq!(ok.timeout, TimeoutSetting::After(Duration::from_secs(60)));
        let never = HookSettings::parse(Path::new("p.toml"), "timeout = \"none\"\n").unwrap();
        assert_eq!(never.timeout, TimeoutSetting::Never);
        assert_eq!(ok.memory, Some(1 << 20));
    }
}
