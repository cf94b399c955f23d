//! `<driver>.plugins/hookctl.toml`: the dispatcher's own settings.
//!
//! ```toml
//! log = "/var/log/libvirt/hookctl.jsonl"   # the audit log (an absolute path)
//! timeout = "30s"                         # default per plugin (30 s): seconds, "500ms", "2m", or "none"
//! journal = false                         # no journald entry per dispatch (default: true)
//! state = "/run/virt-hooks/state"         # where `state = true` plugins keep theirs
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use hooks_core::backend::{Timeout, TrustPolicy};
use serde::Deserialize;

/// Where the audit log goes unless `hookctl.toml` says otherwise.
pub(crate) const DEFAULT_LOG: &str = "/var/log/libvirt/hookctl.jsonl";

/// A plugin whose settings set no timeout gets this one from the dispatcher, so that a
/// hung plugin cannot hang libvirtd (which has no timeout of its own). At most 30 s: libvirtd
/// holds the guest's lock meanwhile (`virsh list` waited two minutes at 120 s).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The dispatcher's settings in effect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DispatchConfig {
    /// The audit log.
    pub(crate) log: PathBuf,
    /// The default time limit per plugin; `None` after `timeout = "none"`.
    pub(crate) timeout: Option<Duration>,
    /// Whether each dispatch also sends an entry to journald (when it listens).
    pub(crate) journal: bool,
    /// The root of plugins' per-object state directories.
    pub(crate) state: PathBuf,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            log: PathBuf::from(DEFAULT_LOG),
            timeout: Some(DEFAULT_TIMEOUT),
            journal: true,
            state: PathBuf::from(hooks_core::SYSTEM_STATE_ROOT),
        }
    }
}

/// A `hookctl.toml` that cannot be used: the file, the line when known, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub(crate) struct ConfigError {
    pub(crate) path: PathBuf,
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    log: Option<toml::Spanned<PathBuf>>,
    timeout: Option<toml::Spanned<toml::Value>>,
    journal: Option<bool>,
    state: Option<toml::Spanned<PathBuf>>,
}

/// `<plugins>/hookctl.toml`.
pub(crate) fn path(plugins: &Path) -> PathBuf {
    plugins.join("hookctl.toml")
}

/// Reads the settings; defaults when there is no file.
///
/// # Errors
/// A file that fails the trust rule (it names where root writes the log), does not
/// parse, has unknown keys, a relative `log` or a bad `timeout`.
pub(crate) fn read(plugins: &Path) -> Result<DispatchConfig, ConfigError> {
    let path = path(plugins);
    let fail = |line: Option<usize>, message: String| ConfigError {
        path: path.clone(),
        line,
        message,
    };
    let bytes = match TrustPolicy::current_user().read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(DispatchConfig::default()),
        Err(e) => return Err(fail(None, format!("refused: {}", e.reason()))),
    };
    let text = String::from_utf8(bytes).map_err(|_| fail(None, "not UTF-8 text".into()))?;
    parse(&path, &text)
}

/// Parses the text of `hookctl.toml`; `path` names it in errors.
///
/// # Errors
/// As [`read`], but for the trust rule.
pub(crate) fn parse(path: &Path, text: &str) -> Result<DispatchConfig, ConfigError> {
    let fail = |line: Option<usize>, message: String| ConfigError {
        path: path.to_owned(),
        line,
        message,
    };
    let line_at = |span: std::ops::Range<usize>| Some(text[..span.start.min(text.len())].matches('\n').count() + 1);
    let file: File =
        toml::from_str(text).map_err(|e| fail(e.span().and_then(line_at), e.message().trim().to_owned()))?;
    let mut config = DispatchConfig::default();
    // libvirtd's working directory is `/`: a relative path would land there.
    let absolute = |key: &str, value: toml::Spanned<PathBuf>| {
        let line = line_at(value.span());
        let path = value.into_inner();
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(fail(
                line,
                format!("{key} must be an absolute path, not `{}`", path.display()),
            ))
        }
    };
    if let Some(log) = file.log {
        config.log = absolute("log", log)?;
    }
    if let Some(state) = file.state {
        config.state = absolute("state", state)?;
    }
    if let Some(timeout) = file.timeout {
        let line = line_at(timeout.span());
        let text = match timeout.into_inner() {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                let kind = other.type_str();
                return Err(fail(
                    line,
                    format!("timeout: expected a duration or \"none\", not a {kind}"),
                ));
            }
        };
        config.timeout = Timeout::parse(&text)
            .map_err(|e| fail(line, format!("timeout: {e}")))?
            .or(None);
    }
    if let Some(journal) = file.journal {
        config.journal = journal;
    }
    Ok(config)
}

/// [`read`], for the dispatcher: a broken file is reported on stderr and the defaults
/// apply, so the event itself goes on.
pub(crate) fn load(plugins: &Path) -> (DispatchConfig, Option<ConfigError>) {
    match read(plugins) {
        Ok(config) => (config, None),
        Err(e) => {
            let why = crate::output::message(&e.to_string()).into_owned();
            eprintln!("hookctl: ignoring {why} (using the defaults; run `hookctl check`)");
            (DispatchConfig::default(), Some(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn with(text: &str) -> Result<DispatchConfig, ConfigError> {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(path(tmp.path()), text).unwrap();
        read(tmp.path())
    }

    #[test]
    fn defaults_and_values() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read(tmp.path()).unwrap(), DispatchConfig::default());
        let c = with("log = \"/var/log/x.jsonl\"\ntimeout = \"30s\"\n").unwrap();
        assert_eq!(c.log, Path::new("/var/log/x.jsonl"));
        assert_eq!(c.timeout, Some(Duration::from_secs(30)));
        assert_eq!(with("timeout = \"none\"\n").unwrap().timeout, None);
        assert_eq!(with("timeout = 5\n").unwrap().timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn mistakes_name_file_and_line() {
        let e = with("\nlogfile = \"/x\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("unknown field `logfile`"), "{e}");
        let e = with("log = \"relative.jsonl\"\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("absolute path"), "{e}");
        let e = with("timeout = 0\n").unwrap_err();
        assert!(e.message.contains("0 would fail every call"), "{e}");
        let e = with("timeout = true\n").unwrap_err();
        assert!(e.message.contains("expected a duration"), "{e}");
        let e = with("journal = true\nstate = \"state\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("state must be an absolute path"), "{e}");
        assert_eq!(with("state = \"/srv/state\"\n").unwrap().state, Path::new("/srv/state"));
    }
}
