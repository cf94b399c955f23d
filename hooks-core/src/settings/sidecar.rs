//! A hook's settings and its sidecar file: the model, and reading and checking it.

use super::grammar::seconds;
use super::*;
use crate::plugin_config::{ConfigValue, PluginConfig};

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
    /// Whether it keeps a directory per object (`state = true`; see [`StateRoot`](crate::state::StateRoot)).
    pub state: bool,
    /// The cap on that directory's size in bytes where the backend can hold it (wasm);
    /// `None` leaves [`DEFAULT_STATE_MAX`](crate::state::DEFAULT_STATE_MAX).
    pub state_max: Option<u64>,
    /// The plugin's own settings, its sidecar's `[config]` table: handed to it by every
    /// backend (see [`crate::backend::PluginConfig`]).
    pub config: PluginConfig,
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
    config: Option<toml::Spanned<toml::Table>>,
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

/// The largest `memory` accepted: a 32-bit WebAssembly memory's whole address space.
pub(super) const MAX_MEMORY: u64 = 4 << 30;

/// The largest `state_max`: state lives on tmpfs, in the host's memory.
const MAX_STATE: u64 = 1 << 30;

/// A `[config]` table as the plugin gets it: strings, numbers and booleans only.
fn plugin_config(table: toml::Table) -> Result<PluginConfig, String> {
    let mut entries = Vec::with_capacity(table.len());
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => ConfigValue::String(s),
            toml::Value::Integer(n) => ConfigValue::Integer(n),
            toml::Value::Float(x) => ConfigValue::Float(x),
            toml::Value::Boolean(b) => ConfigValue::Boolean(b),
            other => {
                let kind = other.type_str();
                let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "an"
                } else {
                    "a"
                };
                return Err(format!(
                    "`{}` is {article} {kind}: values are strings, numbers or booleans",
                    key.escape_debug()
                ));
            }
        };
        entries.push((key, value));
    }
    PluginConfig::from_entries(entries)
}

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
        let config = match file.config {
            None => PluginConfig::new(),
            Some(table) => {
                let header = line_at(table.span());
                plugin_config(table.into_inner()).map_err(|why| {
                    // The line of the first key the message names, below the table's header.
                    let key = why.split('`').nth(1).unwrap_or_default();
                    let line = header.and_then(|from| {
                        text.lines()
                            .enumerate()
                            .skip(from)
                            .find(|(_, l)| {
                                let l = l.trim_start();
                                !key.is_empty()
                                    && (l.starts_with(&format!("{key} "))
                                        || l.starts_with(&format!("{key}="))
                                        || l.starts_with(&format!("\"{key}\"")))
                            })
                            .map(|(i, _)| i + 1)
                    });
                    fail(line.or(header), format!("[config]: {why}"))
                })?
            }
        };
        Ok(HookSettings {
            config,
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
        if !self.config.is_empty() {
            let keys: Vec<&str> = self.config.iter().map(|(k, _)| k).collect();
            parts.push(format!("config: {}", keys.join(",")));
        }
        if !self.matcher.is_empty() {
            parts.push(format!("match: {}", self.matcher));
        }
        parts.join(" ")
    }
}
