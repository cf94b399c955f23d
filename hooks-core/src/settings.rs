//! Per-hook settings, declared as data beside a hook: an optional sidecar
//! `<hook file name>.toml` (e.g. `40-slow.sh.toml`, `30-filter.wasm.toml`).
//!
//! ```toml
//! timeout = 2            # seconds (integer or float); default: none for exec, 10 for wasm
//! memory = "64MiB"       # wasm only
//! max_output = "16MiB"   # per stream
//! policy = "required"    # or "optional": its failure is logged, never fails the event
//! [match]                # all optional; a hook that does not match is not called
//! objects = ["win*", "db-?"]     # globs on the object (domain/network) name
//! ops = ["prepare", "release"]
//! subops = ["begin"]
//! ```
//!
//! Unknown keys and bad values are errors naming the file and the line.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::HookEvent;

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

/// Which events a hook wants; empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    objects: Vec<glob::Pattern>,
    ops: Vec<glob::Pattern>,
    subops: Vec<glob::Pattern>,
}

impl Matcher {
    /// Whether the event passes every non-empty list.
    pub fn matches(&self, event: &dyn HookEvent) -> bool {
        let any = |pats: &[glob::Pattern], s: &str| pats.is_empty() || pats.iter().any(|p| p.matches(s));
        any(&self.objects, event.object()) && any(&self.ops, event.op()) && any(&self.subops, event.subop())
    }

    /// Whether it matches everything.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.ops.is_empty() && self.subops.is_empty()
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
        f.write_str(&parts.join(" "))
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// A hook's settings. `Default` is libvirt's behaviour: no limits of its own, required,
/// every event.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct HookSettings {
    /// Time limit; `None` leaves the backend's default.
    pub timeout: Option<Duration>,
    /// Memory cap in bytes (wasm); `None` leaves the backend's default.
    pub memory: Option<u64>,
    /// Output cap per stream in bytes; `None` leaves the backend's default.
    pub max_output: Option<u64>,
    /// Whether its failure fails the event.
    pub policy: HookPolicy,
    /// Which events it wants.
    pub matcher: Matcher,
    /// The file these came from, if any.
    pub source: Option<PathBuf>,
}

/// A settings file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct SettingsError {
    /// The settings file.
    pub path: PathBuf,
    /// The line (1-based), when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    timeout: Option<Seconds>,
    memory: Option<Size>,
    max_output: Option<Size>,
    policy: Option<HookPolicy>,
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
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Int(u64),
    Float(f64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// `"64MiB"`, `"512KiB"`, `"1GiB"`, `"100kB"`, `"4096"` (bytes).
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
                message: format!("cannot read it: {e}"),
            }),
        }
    }

    /// Parses settings text; `path` names it in errors.
    ///
    /// ```
    /// use hooks_core::{HookPolicy, HookSettings};
    /// let s = HookSettings::parse("x.toml".as_ref(), "timeout = 1.5\npolicy = \"optional\"\n[match]\nops = [\"prepare\"]\n").unwrap();
    /// assert_eq!(s.timeout, Some(std::time::Duration::from_millis(1500)));
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
            message,
        };
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
            None => None,
            Some(Seconds::Int(s)) => Some(Duration::from_secs(s)),
            Some(Seconds::Float(s)) if s > 0.0 && s.is_finite() => Some(Duration::from_secs_f64(s)),
            Some(Seconds::Float(s)) => {
                return Err(fail(
                    line_of("timeout"),
                    format!("timeout must be a positive number of seconds, not {s}"),
                ))
            }
        };
        let size = |key: &str, v: Option<Size>| -> Result<Option<u64>, SettingsError> {
            match v {
                None => Ok(None),
                Some(Size::Bytes(b)) => Ok(Some(b)),
                Some(Size::Text(t)) => parse_size(&t).map(Some).ok_or_else(|| {
                    fail(
                        line_of(key),
                        format!("{key} must be a size like \"64MiB\", not \"{t}\""),
                    )
                }),
            }
        };
        let memory = size("memory", file.memory)?;
        let max_output = size("max_output", file.max_output)?;
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
            matcher = Matcher {
                objects: globs("objects", m.objects)?,
                ops: globs("ops", m.ops)?,
                subops: globs("subops", m.subops)?,
            };
        }
        Ok(HookSettings {
            timeout,
            memory,
            max_output,
            policy: file.policy.unwrap_or_default(),
            matcher,
            source: Some(path.to_owned()),
        })
    }

    /// A one-line summary of what differs from the defaults, for `hookctl list`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = self.timeout {
            parts.push(format!("timeout={}", crate::format_duration(t)));
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
        assert_eq!(s.timeout, Some(Duration::from_secs(2)));
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
    fn errors_name_file_and_line() {
        let e = parse("timeout = 1\n\n[match]\nobject = [\"x\"]\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.to_string().starts_with("h.toml:4: unknown field `object`"), "{e}");
        let e = parse("memory = \"lots\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "h.toml:1: memory must be a size like \"64MiB\", not \"lots\""
        );
        let e = parse("policy = \"maybe\"\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        let e = parse("timeout = -1.0\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        let e = parse("[match]\nops = [\"[\"]\n").unwrap_err();
        assert!(e.to_string().starts_with("h.toml:2: bad pattern `[`"), "{e}");
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
