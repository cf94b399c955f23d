//! An entry of a hooks directory: its role, what becomes of it, and its settings.

use super::*;

/// Where an entry sits in the run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryRole {
    /// `<dir>/<driver>`, run first.
    Main,
    /// An entry of `<dir>/<driver>.d/`.
    DropIn,
}

/// What happens to an entry of a hooks directory.
#[derive(Clone)]
pub enum Disposition {
    /// It runs, through this backend.
    Hook(Arc<dyn HookLoader>),
    /// It does not run, for this reason.
    Skipped(SkipReason),
    /// It would run (through this backend, if one claims it) but fails the trust rule or
    /// cannot be examined: it fails the event instead of running.
    Refused(Option<Arc<dyn HookLoader>>, Untrusted),
}

impl fmt::Debug for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disposition::Hook(l) => f.debug_tuple("Hook").field(&l.backend()).finish(),
            Disposition::Skipped(why) => f.debug_tuple("Skipped").field(why).finish(),
            Disposition::Refused(l, why) => f
                .debug_tuple("Refused")
                .field(&l.as_ref().map(|l| l.backend()))
                .field(&why.reason())
                .finish(),
        }
    }
}

/// Why an entry of a hooks directory does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SkipReason {
    /// A directory (libvirt skips them; per-guest trees of other dispatchers live there).
    Directory,
    /// A FIFO, socket or device.
    NotRegular,
    /// A `*.toml` sidecar or `hookctl.toml`.
    Settings,
    /// A file with no execute bit that no backend claims.
    NotExecutable,
    /// Executable, but no linked backend runs it.
    Unclaimed,
    /// A WebAssembly module (`*.wasm`) or native plugin (`*.so`) whose backend is not
    /// linked into this program: its name (`"wasm"`, `"dylib"`).
    Unlinked(&'static str),
    /// A symlink to nothing (libvirt skips it).
    DanglingSymlink,
    /// Gone between the listing and the look at it.
    Vanished,
    /// An editor backup or a package manager's leftover in a plugins dir.
    Leftover,
    /// A copy set aside with `.disabled` at the end of its name, in a plugins dir.
    Disabled,
    /// A `*.toml` that is the sidecar of no entry beside it (`10-x.toml` for
    /// `10-x.sh`, whose sidecar is `10-x.sh.toml`): settings that apply to nothing.
    StraySettings,
}

impl SkipReason {
    /// Whether the entry looks meant to run but never will (`hookctl check` fails on
    /// these in a plugins dir): a script without its execute bit, a file no backend
    /// takes, a link to nothing.
    pub fn is_likely_mistake(self) -> bool {
        matches!(
            self,
            SkipReason::NotExecutable | SkipReason::Unclaimed | SkipReason::Unlinked(_) | SkipReason::DanglingSymlink
        )
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Directory => "directory",
            SkipReason::NotRegular => "not a regular file",
            SkipReason::Settings => "settings file, never a hook",
            SkipReason::NotExecutable => "not executable",
            SkipReason::Unclaimed => "no backend claims it",
            SkipReason::Unlinked("wasm") => "a WebAssembly module, but no linked backend runs them",
            SkipReason::Unlinked(_) => "a native plugin, but no linked backend loads them",
            SkipReason::DanglingSymlink => "dangling symlink",
            SkipReason::Vanished => "vanished",
            SkipReason::Leftover => "backup or package-manager leftover, never run",
            SkipReason::Disabled => "disabled (`.disabled`), never run",
            SkipReason::StraySettings => "settings file that matches no hook",
        })
    }
}

/// Whether a plugins-dir entry is an editor backup or a package manager's leftover
/// (`run-parts` and `sudoers.d` skip these too), which must never run.
pub(crate) fn is_leftover(name: &std::ffi::OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const SUFFIXES: [&[u8]; 17] = [
        b".dpkg-old",
        b".dpkg-new",
        b".dpkg-dist",
        b".dpkg-tmp",
        b".dpkg-bak",
        b".dpkg-remove",
        b".ucf-old",
        b".ucf-new",
        b".ucf-dist",
        b".rpmnew",
        b".rpmsave",
        b".rpmorig",
        b".swp",
        b".bak",
        b".orig",
        b".rej",
        b"~",
    ];
    let name = name.as_bytes();
    name.starts_with(b".")
        || (name.starts_with(b"#") && name.ends_with(b"#"))
        || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Whether a plugins-dir entry was set aside as `<name>.disabled` (an operator's way of
/// switching a plugin off; it ran before, as any executable would).
pub(super) fn is_disabled(name: &[u8]) -> bool {
    name.len() > b".disabled".len() && name.ends_with(b".disabled")
}

/// One entry of a hooks directory, in run order.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The full path (what libvirt passes as argv\[0\]).
    pub path: PathBuf,
    /// Main script or drop-in.
    pub role: EntryRole,
    /// Whether and how it runs.
    pub disposition: Disposition,
    /// The file's identity when it was scanned (to reuse a loaded hook).
    pub(crate) stamp: Option<FileStamp>,
    /// Whether a sidecar `<path>.toml` was there when it was scanned.
    pub(super) has_sidecar: bool,
    /// The rule its sidecar is read under.
    pub(super) trust: Option<TrustPolicy>,
    /// The directory's default time limit for hooks that set none.
    pub(super) default_timeout: Option<std::time::Duration>,
    /// What a failure at `reconnect` does when the sidecar says nothing; `None` in
    /// libvirt's own layout, where sidecars cannot change it (libvirt kills).
    pub(super) reconnect_failure: Option<OnReconnectFailure>,
    /// The driver it was scanned for (its `[match]` is checked against its operations).
    pub(super) driver: Driver,
    /// Where hooks asking for state keep it.
    pub(super) state_root: Option<Arc<crate::StateRoot>>,
    /// For a stray sidecar: the entry it was probably meant for.
    pub(super) stray_hint: Option<std::ffi::OsString>,
}

/// For a `*.toml` in a hooks dir whose name is no entry's plus `.toml`: `Some` with the
/// entry it was likely meant for (`10-x.sh` for `10-x.toml`), if one is there. `None`
/// for a real sidecar and for the dispatcher's own `hookctl.toml`.
pub(super) fn stray_settings(
    path: &Path,
    names: &std::collections::HashSet<&std::ffi::OsStr>,
    flat: bool,
) -> Option<Option<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let name = path.file_name()?;
    let hook = name.as_bytes().strip_suffix(b".toml")?;
    if (flat && name == "hookctl.toml") || names.contains(std::ffi::OsStr::from_bytes(hook)) {
        return None;
    }
    // The settings of a plugin set aside (`10-x` moved to `10-x.disabled`): they apply
    // again when it is moved back, and renaming them would lose them then.
    let set_aside = [hook, b".disabled"].concat();
    if names.contains(std::ffi::OsStr::from_bytes(&set_aside)) {
        return None;
    }
    // A hook whose name less its extension is this one's: `10-x.sh` (or `10-x.wasm`).
    let mut meant: Vec<&std::ffi::OsStr> = names
        .iter()
        .copied()
        .filter(|n| {
            let n = n.as_bytes();
            !n.ends_with(b".toml")
                && n.len() > hook.len() + 1
                && n.starts_with(hook)
                && n[hook.len()] == b'.'
                && !n[hook.len() + 1..].contains(&b'.')
        })
        .collect();
    meant.sort_unstable();
    Some(meant.first().map(|n| n.to_os_string()))
}

/// A file's identity and version: a loaded hook is reused while it is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileStamp {
    pub(super) fn of(m: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

impl DirEntry {
    /// The loader that runs it, if it runs.
    pub fn loader(&self) -> Option<&dyn HookLoader> {
        match &self.disposition {
            Disposition::Hook(l) => Some(l.as_ref()),
            Disposition::Skipped(_) | Disposition::Refused(..) => None,
        }
    }

    /// Why it is refused, if it is.
    pub fn refusal(&self) -> Option<&Untrusted> {
        match &self.disposition {
            Disposition::Refused(_, why) => Some(why),
            _ => None,
        }
    }

    /// For a hook that runs without the trust rule (an executable in libvirt's own
    /// layout, run exactly as libvirt would): what the rule would say about it.
    /// `hookctl check` warns with this.
    pub fn trust_warning(&self) -> Option<Untrusted> {
        self.loader()?;
        TrustPolicy::current_user().check_file(&self.path).err()
    }
}

impl DirEntry {
    /// The sidecar's identity now, if it had one when scanned: a changed sidecar means
    /// new settings.
    pub(crate) fn sidecar_stamp(&self) -> Option<FileStamp> {
        if !self.has_sidecar {
            return None;
        }
        fs::symlink_metadata(HookSettings::sidecar(&self.path))
            .ok()
            .map(|m| FileStamp::of(&m))
    }

    /// The directory's default time limit for this entry.
    pub(crate) fn default_timeout(&self) -> Option<std::time::Duration> {
        self.default_timeout
    }

    /// What this entry's failure at `reconnect` does with these settings (its own): in a
    /// plugins dir the sidecar's `on_reconnect_failure`, else the directory's default
    /// ([`HooksDir::with_reconnect_failure`]); in libvirt's own layout always
    /// [`OnReconnectFailure::Kill`], since libvirt runs it and kills the guest.
    pub fn on_reconnect_failure(&self, settings: &HookSettings) -> OnReconnectFailure {
        match self.reconnect_failure {
            Some(default) => settings.on_reconnect_failure.unwrap_or(default),
            None => OnReconnectFailure::Kill,
        }
    }

    /// For a `*.toml` that is no hook's sidecar ([`SkipReason::StraySettings`]): what to
    /// tell the operator, with the name it likely should have (`10-x.sh.toml`).
    pub fn stray_settings_warning(&self) -> Option<String> {
        if !matches!(self.disposition, Disposition::Skipped(SkipReason::StraySettings)) {
            return None;
        }
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        Some(match &self.stray_hint {
            Some(hook) => format!(
                "`{name}` matches no hook and is ignored: a hook's settings are its whole file name plus `.toml`; rename it `{}.toml` for `{}`",
                hook.to_string_lossy(),
                hook.to_string_lossy()
            ),
            None => format!(
                "`{name}` matches no hook here and is ignored: a hook's settings are its whole file name plus `.toml` (`10-x.sh.toml` for `10-x.sh`)"
            ),
        })
    }

    /// Whether its sidecar's `on_reconnect_failure` is ignored here (libvirt's layout).
    pub fn ignores_reconnect_setting(&self, settings: &HookSettings) -> bool {
        self.reconnect_failure.is_none() && settings.on_reconnect_failure.is_some()
    }

    /// Where this entry's state goes, if its directory keeps state.
    pub(crate) fn state_root(&self) -> Option<&Arc<crate::StateRoot>> {
        self.state_root.as_ref()
    }

    /// Its settings from the sidecar `<path>.toml`, or the defaults.
    ///
    /// # Errors
    /// When the sidecar exists but is not valid.
    pub fn settings(&self) -> Result<HookSettings, SettingsError> {
        let mut settings = if !self.has_sidecar {
            HookSettings::default()
        } else {
            match &self.trust {
                Some(trust) => HookSettings::for_hook_trusted(&self.path, trust)?,
                None => HookSettings::for_hook(&self.path)?,
            }
        };
        settings.default_timeout = self.default_timeout;
        let checked = settings.matcher.check_for(self.driver).and_then(|()| {
            if settings.state && self.driver == Driver::Daemon {
                Err((
                    "state",
                    "state: daemon events have no object to keep state for".to_owned(),
                ))
            } else {
                Ok(())
            }
        });
        if let Err((key, message)) = checked {
            let path = HookSettings::sidecar(&self.path);
            let line = fs::read_to_string(&path).ok().and_then(|text| {
                text.lines()
                    .position(|l| l.trim_start().starts_with(key))
                    .map(|i| i + 1)
            });
            return Err(SettingsError {
                path,
                line,
                column: None,
                message,
            });
        }
        Ok(settings)
    }
}
