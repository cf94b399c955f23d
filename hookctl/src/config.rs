//! `<driver>.plugins/hookctl.toml`: the dispatcher's own settings.
//!
//! ```toml
//! log = "/var/log/libvirt/hookctl.jsonl"   # the audit log (an absolute path)
//! timeout = "30s"                         # default per plugin (30 s): seconds, "500ms", "2m", or "none"
//! journal = false                         # no journald entry per dispatch (default: true)
//! state = "/run/virt-hooks/state"         # where `state = true` plugins keep theirs
//! ```
//!
//! The defaults of `log` and `state` are the system's only for the plugins dirs of the
//! system hooks dir ([`SYSTEM_HOOKS_DIR`]): any other (a plugin author's scratch dir,
//! `install --user`'s) keeps no audit log and keeps state under itself
//! ([`DispatchConfig::defaults_for`]), so a trial never mixes with the real guests'.
//!
//! Read key by key ([`Settings`]): a mistake in one key never changes another. A `log`
//! or `state` that cannot be used is never replaced by the default path: the file meant
//! another place, and the default would split the audit trail or hide a guest's state
//! from the plugin that wrote it. What the dispatcher does instead is in
//! `commands/dispatch_settings.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use virt_hooks_core::backend::{TimeoutSetting, TrustPolicy};

/// Where the audit log of the system hooks dir's dispatchers goes unless `hookctl.toml`
/// says otherwise.
pub(crate) const DEFAULT_LOG: &str = "/var/log/libvirt/hookctl.jsonl";

/// libvirt's hooks dir: only its plugins dirs default to [`DEFAULT_LOG`] and the system
/// state root.
pub(crate) const SYSTEM_HOOKS_DIR: &str = "/etc/libvirt/hooks";

/// Where `state = true` plugins of a plugins dir outside the system hooks dir keep their
/// state unless `hookctl.toml` says otherwise: `<plugins dir>/.state` (a dotfile, which
/// no scan runs).
pub(crate) const OWN_STATE_DIR: &str = ".state";

/// The system hooks dir. Tests of debug builds may name another with
/// `HOOKCTL_TEST_SYSTEM_HOOKS_DIR`, so that the system defaults can be tried (in a mount
/// namespace of their own) without the host's `/etc/libvirt`.
pub(crate) fn system_hooks_dir() -> PathBuf {
    #[cfg(debug_assertions)]
    if let Some(dir) = std::env::var_os("HOOKCTL_TEST_SYSTEM_HOOKS_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(SYSTEM_HOOKS_DIR)
}

/// Whether `dir` is the system hooks dir ([`system_hooks_dir`]).
pub(crate) fn is_system_hooks_dir(dir: &Path) -> bool {
    same_dir(dir, &system_hooks_dir())
}

/// Whether `dir` is `system`: the same path, or the same directory under another name
/// (a link, a bind mount: its plugins are the system's).
fn same_dir(dir: &Path, system: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    if absolute(dir) == absolute(system) {
        return true;
    }
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    id(dir).is_some_and(|i| Some(i) == id(system))
}

/// The hooks dir a plugins dir belongs to: its parent (`.` for a bare name).
pub(crate) fn hooks_dir_of(plugins: &Path) -> PathBuf {
    match plugins.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Checks a path given for `log` or `state` (in `hookctl.toml`, or on the command
/// line as `key`): absolute, since libvirtd's working directory is `/` and a relative
/// path would land there.
pub(crate) fn absolute_path(key: &str, value: &str) -> Result<PathBuf, String> {
    match Path::new(value).is_absolute() {
        true => Ok(PathBuf::from(value)),
        false => Err(format!("{key} must be an absolute path, not `{value}`")),
    }
}

/// A plugin whose settings set no timeout gets this one from the dispatcher, so that a
/// hung plugin cannot hang libvirtd (which has no timeout of its own). At most 30 s: libvirtd
/// holds the guest's lock meanwhile (`virsh list` waited two minutes at 120 s).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The keys `hookctl.toml` knows.
const KEYS: [&str; 4] = ["log", "timeout", "journal", "state"];

/// The dispatcher's settings in effect, when the whole file is sound.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DispatchConfig {
    /// The audit log; `None`: no audit row is written.
    pub(crate) log: Option<PathBuf>,
    /// The default time limit per plugin; `None` after `timeout = "none"`.
    pub(crate) timeout: Option<Duration>,
    /// Whether each dispatch also sends an entry to journald (when it listens).
    pub(crate) journal: bool,
    /// The root of plugins' per-object state directories.
    pub(crate) state: PathBuf,
}

impl DispatchConfig {
    /// What the plugins dir `plugins` gets for the keys its `hookctl.toml` does not set:
    /// in the system hooks dir, the system's audit log and state root; elsewhere no audit
    /// log, and state under the dir itself ([`OWN_STATE_DIR`]).
    pub(crate) fn defaults_for(plugins: &Path) -> Self {
        Self::defaults_in(plugins, &system_hooks_dir())
    }

    /// [`DispatchConfig::defaults_for`] with `system` as the system hooks dir.
    fn defaults_in(plugins: &Path, system: &Path) -> Self {
        if same_dir(&hooks_dir_of(plugins), system) {
            return DispatchConfig::system();
        }
        // The state root must be absolute and without `..`.
        let plugins = std::fs::canonicalize(plugins)
            .or_else(|_| std::path::absolute(plugins))
            .unwrap_or_else(|_| plugins.to_owned());
        DispatchConfig {
            log: None,
            state: plugins.join(OWN_STATE_DIR),
            ..DispatchConfig::system()
        }
    }

    /// The defaults of the system hooks dir's plugins dirs.
    pub(crate) fn system() -> Self {
        DispatchConfig {
            log: Some(PathBuf::from(DEFAULT_LOG)),
            timeout: Some(DEFAULT_TIMEOUT),
            journal: true,
            state: PathBuf::from(virt_hooks_core::state::SYSTEM_STATE_ROOT),
        }
    }
}

/// A mistake in `hookctl.toml`: the file, the line when known, and why. When a file
/// has several, the first is the error and `also` holds the others (shown after it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConfigError {
    pub(crate) path: PathBuf,
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
    /// The file's other mistakes: line and message.
    pub(crate) also: Vec<(Option<usize>, String)>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)?;
        for (line, message) in &self.also {
            match line {
                Some(line) => write!(f, "; line {line}: {message}")?,
                None => write!(f, "; {message}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The file's `log` is sound, but the log itself cannot be opened.
    pub(crate) fn unopenable_log(log: &Path, why: &str) -> Self {
        ConfigError::new(log, None, format!("cannot be opened: {why}"))
    }

    fn new(path: &Path, line: Option<usize>, message: String) -> Self {
        ConfigError {
            path: path.to_owned(),
            line,
            message,
            also: Vec::new(),
        }
    }
}

/// `hookctl.toml` key by key: every key that is sound, the defaults for keys not
/// given, and each mistake.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// The file.
    pub(crate) path: PathBuf,
    /// The audit log (`None`: none is written), or why the file's `log` cannot be used
    /// (then no other path is).
    pub(crate) log: Result<Option<PathBuf>, ConfigError>,
    /// The state root, or why the file's `state` cannot be used (then no other path is).
    pub(crate) state: Result<PathBuf, ConfigError>,
    /// The default time limit per plugin (the default when the key is wrong).
    pub(crate) timeout: Option<Duration>,
    /// Whether to send journal entries (yes when the key is wrong: a record too many
    /// rather than none).
    pub(crate) journal: bool,
    /// Every mistake, in the order of the file.
    pub(crate) mistakes: Vec<ConfigError>,
    /// What the keys not set default to.
    pub(crate) defaults: DispatchConfig,
}

/// `log` and `state` given for one run (`--log FILE|none`, `--state DIR`), in place of
/// the file's: already checked as the file's keys are ([`absolute_path`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Overrides {
    /// `Some(None)`: `--log none`.
    pub(crate) log: Option<Option<PathBuf>>,
    pub(crate) state: Option<PathBuf>,
}

impl Overrides {
    /// Whether anything is overridden.
    pub(crate) fn is_empty(&self) -> bool {
        self.log.is_none() && self.state.is_none()
    }
}

impl Settings {
    /// The defaults: what a plugins dir without `hookctl.toml` gets.
    fn defaults(path: PathBuf, defaults: DispatchConfig) -> Self {
        Settings {
            path,
            log: Ok(defaults.log.clone()),
            state: Ok(defaults.state.clone()),
            timeout: defaults.timeout,
            journal: defaults.journal,
            mistakes: Vec::new(),
            defaults,
        }
    }

    /// A file that exists but cannot be used at all (refused by the trust rule, not
    /// text): where it puts the log and the state is unknown.
    fn unusable(path: PathBuf, defaults: DispatchConfig, why: ConfigError) -> Self {
        Settings {
            log: Err(why.clone()),
            state: Err(why.clone()),
            mistakes: vec![why],
            ..Settings::defaults(path, defaults)
        }
    }

    /// The settings with `overrides` in place of the file's `log` and `state`, whether
    /// those were usable or not. The file's mistakes stay mistakes (reported, and in the
    /// audit line), but one that spoiled only an overridden key no longer stops anything.
    pub(crate) fn overridden(mut self, overrides: &Overrides) -> Self {
        if let Some(log) = &overrides.log {
            self.log = Ok(log.clone());
        }
        if let Some(state) = &overrides.state {
            self.state = Ok(state.clone());
        }
        self
    }

    /// The settings as the whole: `Ok` when the file has no mistake, else the first
    /// (with the others in [`ConfigError::also`]).
    pub(crate) fn config(&self) -> Result<DispatchConfig, ConfigError> {
        let mut mistakes = self.mistakes.iter();
        if let Some(first) = mistakes.next() {
            let mut e = first.clone();
            e.also = mistakes.map(|m| (m.line, m.message.clone())).collect();
            return Err(e);
        }
        match (&self.log, &self.state) {
            (Ok(log), Ok(state)) => Ok(DispatchConfig {
                log: log.clone(),
                timeout: self.timeout,
                journal: self.journal,
                state: state.clone(),
            }),
            // A log that cannot be opened; otherwise an unusable key is a mistake too.
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        }
    }

    /// What a view (`list`, `check`, `simulate`) shows as in effect: every usable key as
    /// the dispatcher applies it, the default for the others (where `log` or `state`
    /// cannot be used, [`Settings::log`]/[`Settings::state`] say so: the dispatcher uses
    /// no other path).
    pub(crate) fn in_effect(&self) -> DispatchConfig {
        DispatchConfig {
            log: self.log.as_ref().map_or(self.defaults.log.clone(), Clone::clone),
            timeout: self.timeout,
            journal: self.journal,
            state: self.state.as_ref().map_or(self.defaults.state.clone(), Clone::clone),
        }
    }
}

/// `<plugins>/hookctl.toml`.
pub(crate) fn path(plugins: &Path) -> PathBuf {
    plugins.join("hookctl.toml")
}

/// Reads the settings key by key; the defaults ([`DispatchConfig::defaults_for`]) when
/// there is no file.
pub(crate) fn settings(plugins: &Path) -> Settings {
    let path = path(plugins);
    let defaults = DispatchConfig::defaults_for(plugins);
    let bytes = match TrustPolicy::current_user().read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Settings::defaults(path, defaults),
        Err(e) => {
            let why = ConfigError::new(&path, None, format!("refused: {}", e.reason()));
            return Settings::unusable(path, defaults, why);
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => parse_settings(&path, &text, defaults),
        Err(_) => {
            let why = ConfigError::new(&path, None, "not UTF-8 text".into());
            Settings::unusable(path, defaults, why)
        }
    }
}

/// Parses the text of `hookctl.toml` key by key, with `defaults` for the keys it does
/// not set; `path` names it in mistakes.
///
/// A syntax error spoils only the keys on its lines (toml's recovering parser reads
/// on); a line whose key cannot be told spoils `log` and `state`, since it may have
/// meant either.
pub(crate) fn parse_settings(path: &Path, text: &str, defaults: DispatchConfig) -> Settings {
    use toml::de::{DeTable, DeValue};
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut settings = Settings::defaults(path.to_owned(), defaults);
    let mut mistakes: Vec<ConfigError> = Vec::new();
    let (table, errors) = DeTable::parse_recoverable(text);
    // Lines with a syntax error: no key on them, or whose value runs through them, is
    // used, and a path key among them is unusable rather than the default.
    let mut broken_lines = Vec::new();
    for e in &errors {
        let line = e.span().map(|s| line_of(s.start));
        let why = ConfigError::new(path, line, e.message().trim().to_owned());
        match line.and_then(|l| key_on_line(text, l)) {
            Some("log") => settings.log = Err(why.clone()),
            Some("state") => settings.state = Err(why.clone()),
            // Another key's line, known or not: no path of ours.
            Some(_) => {}
            None => {
                settings.log = Err(why.clone());
                settings.state = Err(why.clone());
            }
        }
        broken_lines.extend(line);
        mistakes.push(why);
    }
    for (key, value) in table.into_inner().iter() {
        let key_line = line_of(key.span().start);
        let line = Some(key_line);
        let value_lines = line_of(value.span().start)..=line_of(value.span().end);
        let name: &str = key.get_ref();
        let Some(known) = KEYS.into_iter().find(|&k| k == name) else {
            let why = format!(
                "unknown field `{}`, expected one of `log`, `timeout`, `journal`, `state`",
                name.escape_debug()
            );
            mistakes.push(ConfigError::new(path, line, why));
            continue;
        };
        if let Some(&broken) = broken_lines.iter().find(|l| **l == key_line || value_lines.contains(l)) {
            // The syntax error names the line already; what was recovered of it is not used.
            let why = ConfigError::new(path, Some(broken), format!("{known}: its line {broken} does not parse"));
            match known {
                "log" if settings.log.is_ok() => settings.log = Err(why),
                "state" if settings.state.is_ok() => settings.state = Err(why),
                _ => {}
            }
            continue;
        }
        let mut mistake = |why: String| {
            let e = ConfigError::new(path, line, why);
            mistakes.push(e.clone());
            e
        };
        match (known, value.get_ref()) {
            ("log" | "state", value) => {
                let chosen = match value {
                    DeValue::String(s) => absolute_path(known, s).map_err(&mut mistake),
                    other => Err(mistake(format!(
                        "{known}: expected an absolute path (a string), not {}",
                        a(other.type_str())
                    ))),
                };
                match known {
                    "log" => settings.log = chosen.map(Some),
                    _ => settings.state = chosen,
                }
            }
            ("journal", DeValue::Boolean(b)) => settings.journal = *b,
            ("journal", other) => {
                mistake(format!("journal: expected true or false, not {}", a(other.type_str())));
            }
            (_timeout, value) => {
                let text = match value {
                    DeValue::String(s) => Some(s.to_string()),
                    DeValue::Integer(n) if n.radix() == 10 => Some(n.as_str().to_owned()),
                    DeValue::Float(f) => Some(f.as_str().to_owned()),
                    _ => None,
                };
                let parsed = match text {
                    Some(text) => TimeoutSetting::parse(&text).map_err(|e| format!("timeout: {e}")),
                    None => Err(format!(
                        "timeout: expected a duration or \"none\", not {}",
                        a(value.type_str())
                    )),
                };
                match parsed {
                    Ok(t) => settings.timeout = t.or(None),
                    Err(why) => drop(mistake(why)),
                }
            }
        }
    }
    mistakes.sort_by_key(|m| m.line.unwrap_or(usize::MAX));
    settings.mistakes = mistakes;
    settings
}

/// A TOML type's name with its article: `a string`, `an integer`.
fn a(kind: &str) -> String {
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {kind}")
}

/// The key a line of TOML sets, as written (quotes taken off), when it has one.
fn key_on_line(text: &str, line: usize) -> Option<&str> {
    let l = text.split('\n').nth(line - 1)?;
    let (key, _) = l.split_once('=')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'').trim();
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn with(text: &str) -> Result<DispatchConfig, ConfigError> {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(path(tmp.path()), text).unwrap();
        settings(tmp.path()).config()
    }

    fn keys(text: &str) -> Settings {
        parse_settings(Path::new("/x/hookctl.toml"), text, DispatchConfig::system())
    }

    #[test]
    fn defaults_and_values() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            settings(tmp.path()).config().unwrap(),
            DispatchConfig::defaults_for(tmp.path())
        );
        let c = with("log = \"/var/log/x.jsonl\"\ntimeout = \"30s\"\n").unwrap();
        assert_eq!(c.log.as_deref(), Some(Path::new("/var/log/x.jsonl")));
        assert_eq!(c.timeout, Some(Duration::from_secs(30)));
        assert_eq!(with("timeout = \"none\"\n").unwrap().timeout, None);
        assert_eq!(with("timeout = 5\n").unwrap().timeout, Some(Duration::from_secs(5)));
        assert_eq!(
            with("timeout = 1.5\n").unwrap().timeout,
            Some(Duration::from_millis(1500))
        );
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

    /// The issue's file: a mistyped `journal` threw `log` and `state` away, and the
    /// dispatcher wrote to the defaults.
    #[test]
    fn one_bad_value_spoils_only_its_own_key() {
        let s = keys("log = \"/srv/audit.jsonl\"\nstate = \"/srv/state\"\njournal = \"no\"\ntimeout = \"forever\"\n");
        assert_eq!(s.log, Ok(Some(PathBuf::from("/srv/audit.jsonl"))));
        assert_eq!(s.state, Ok(PathBuf::from("/srv/state")));
        assert!(s.journal, "a wrong journal key keeps the default");
        assert_eq!(s.timeout, Some(DEFAULT_TIMEOUT));
        let lines: Vec<_> = s.mistakes.iter().map(|m| m.line).collect();
        assert_eq!(lines, [Some(3), Some(4)], "{:?}", s.mistakes);
        let e = s.config().unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with("/x/hookctl.toml:3: journal: expected true or false, not a string; line 4: timeout:"),
            "{shown}"
        );
    }

    #[test]
    fn a_syntax_error_spoils_the_keys_on_its_line_only() {
        // `no` is not a TOML value: the line breaks, the others are read on.
        let s = keys("log = \"/srv/audit.jsonl\"\njournal = no\nstate = \"/srv/state\"\n");
        assert_eq!(s.log, Ok(Some(PathBuf::from("/srv/audit.jsonl"))), "{:?}", s.mistakes);
        assert_eq!(s.state, Ok(PathBuf::from("/srv/state")));
        assert!(s.journal);
        assert_eq!(s.mistakes[0].line, Some(2), "{:?}", s.mistakes);
        // The broken line is the log's: no recovered half of it is used.
        let s = keys("log = \"/srv/audit.jsonl\ntimeout = 5\n");
        assert!(s.log.is_err(), "{s:?}");
        assert_eq!(s.state, Ok(PathBuf::from(virt_hooks_core::state::SYSTEM_STATE_ROOT)));
        // A line whose key cannot be told may have been either path.
        let s = keys("journal = false\n= \"/srv/x\"\n");
        assert!(s.log.is_err() && s.state.is_err(), "{s:?}");
        assert!(!s.journal);
    }

    #[test]
    fn wrong_types_and_relative_paths_make_the_path_unusable_not_the_default() {
        for text in [
            "log = 5\n",
            "log = \"rel.jsonl\"\n",
            "[log]\nx = 1\n",
            "log = [\"/a\"]\n",
        ] {
            let s = keys(text);
            assert!(s.log.is_err(), "{text:?}: {s:?}");
            assert_eq!(
                s.state,
                Ok(PathBuf::from(virt_hooks_core::state::SYSTEM_STATE_ROOT)),
                "{text:?}"
            );
            assert!(!s.mistakes.is_empty());
        }
        let s = keys("state = false\n");
        assert!(s.state.is_err() && s.log.is_ok(), "{s:?}");
    }

    #[test]
    fn an_unreadable_file_leaves_both_paths_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(path(tmp.path()), b"log = \"/srv/\xff\"\n").unwrap();
        let s = settings(tmp.path());
        assert!(s.log.is_err() && s.state.is_err(), "{s:?}");
        assert_eq!(s.mistakes.len(), 1);
        assert!(s.mistakes[0].message.contains("not UTF-8"));
    }

    /// Only the system hooks dir's plugins dirs default to the system's audit log and
    /// state root (issue 22: a scratch dir's trial went into both).
    #[test]
    fn only_the_system_hooks_dir_defaults_to_the_system_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let system = tmp.path().join("etc-hooks");
        let scratch = tmp.path().join("scratch");
        for dir in [&system, &scratch] {
            fs::create_dir_all(dir.join("qemu.plugins")).unwrap();
        }
        let in_system = DispatchConfig::defaults_in(&system.join("qemu.plugins"), &system);
        assert_eq!(in_system, DispatchConfig::system());
        assert_eq!(in_system.log.as_deref(), Some(Path::new(DEFAULT_LOG)));
        // Under another name: a link to it, or a path with `..` in it.
        std::os::unix::fs::symlink(&system, tmp.path().join("link")).unwrap();
        for other_name in [
            tmp.path().join("link/qemu.plugins"),
            scratch.join("../etc-hooks/qemu.plugins"),
        ] {
            assert_eq!(
                DispatchConfig::defaults_in(&other_name, &system),
                DispatchConfig::system(),
                "{}",
                other_name.display()
            );
        }
        // Anywhere else: no audit log, state under the plugins dir itself (absolute,
        // without `..`, as a state root must be).
        let own = DispatchConfig::defaults_in(&scratch.join("qemu.plugins"), &system);
        assert_eq!(own.log, None);
        let real = fs::canonicalize(scratch.join("qemu.plugins")).unwrap();
        assert_eq!(own.state, real.join(OWN_STATE_DIR));
        assert_eq!(own.timeout, Some(DEFAULT_TIMEOUT));
        assert!(own.journal);
        let own = DispatchConfig::defaults_in(&system.join("../scratch/qemu.plugins"), &system);
        assert_eq!(own.state, real.join(OWN_STATE_DIR));
        // A plugins dir that does not exist (yet) still gets an absolute root.
        let missing = DispatchConfig::defaults_in(Path::new("rel/qemu.plugins"), &system);
        assert!(missing.state.is_absolute(), "{}", missing.state.display());
        // The system hooks dir's own parent, or a dir inside it, is not it.
        for not_it in [tmp.path().join("qemu.plugins"), system.join("qemu.plugins/x")] {
            assert_eq!(DispatchConfig::defaults_in(&not_it, &system).log, None);
        }
    }

    /// `--log`/`--state` replace the file's keys, usable or not; the file's mistakes
    /// stay reported.
    #[test]
    fn overrides_replace_the_files_paths_and_keep_its_mistakes() {
        let s = keys("log = \"relative.jsonl\"\nstate = 5\n");
        assert!(s.log.is_err() && s.state.is_err(), "{s:?}");
        let overrides = Overrides {
            log: Some(Some(PathBuf::from("/trial/audit.jsonl"))),
            state: Some(PathBuf::from("/trial/state")),
        };
        let o = s.clone().overridden(&overrides);
        assert_eq!(o.log, Ok(Some(PathBuf::from("/trial/audit.jsonl"))));
        assert_eq!(o.state, Ok(PathBuf::from("/trial/state")));
        assert_eq!(o.mistakes, s.mistakes);
        assert!(o.config().is_err(), "the file still has its mistakes");
        let none = keys("log = \"/srv/audit.jsonl\"\n").overridden(&Overrides {
            log: Some(None),
            state: None,
        });
        assert_eq!(none.log, Ok(None));
        assert_eq!(none.state, Ok(PathBuf::from(virt_hooks_core::state::SYSTEM_STATE_ROOT)));
        let nothing = keys("log = \"/srv/audit.jsonl\"\n");
        assert_eq!(nothing.clone().overridden(&Overrides::default()), nothing);
        // The command line's paths are checked as the file's are.
        assert_eq!(
            absolute_path("--log", "audit.jsonl").unwrap_err(),
            "--log must be an absolute path, not `audit.jsonl`"
        );
    }
}
