//! Per-object state: a directory that a hook asking for it (`state = true` in its
//! sidecar) keeps from an object's first event until after its last, so that what it did
//! at `start` is still known at `release`, whatever its configuration says by then.
//!
//! Layout: `<root>/<driver>/<object>/<plugin file name>/`, every level owned by the
//! effective user and mode 0700. The last event of an object (`release end` for guests,
//! `stopped end` for networks) removes its directories, except those of hooks that
//! failed it: they are kept, with a note under `<root>/.kept/`, for the operator.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::trust::TrustPolicy;
use crate::{Driver, HookEvent};

/// Where hookctl keeps state unless its `hookctl.toml` says otherwise: on tmpfs, so it
/// goes with the guests at a reboot.
pub const SYSTEM_STATE_ROOT: &str = "/run/virt-hooks/state";

/// The default cap on a WASM hook's state directory (`state_max`): 1 MiB.
pub const DEFAULT_STATE_MAX: u64 = 1 << 20;

/// Where notes on kept directories go: a name no driver has.
const KEPT: &str = ".kept";

/// The root of the state directories of one hooks dir.
///
/// ```
/// use hooks_core::{Driver, StateRoot};
/// let tmp = tempfile::tempdir().unwrap();
/// let root = StateRoot::new(tmp.path().join("state"));
/// let dir = root.open(Driver::Qemu, "web1".as_ref(), "10-forward".as_ref()).unwrap();
/// assert!(dir.ends_with("qemu/web1/10-forward"));
/// assert!(root.open(Driver::Qemu, "../etc".as_ref(), "10-forward".as_ref()).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRoot {
    root: PathBuf,
}

/// A state directory that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The object's or the hook's name cannot name a directory.
    #[error("{what} {name:?} cannot name a state directory (empty, `.`, `..`, longer than 255 bytes, or holds `/`)")]
    BadName {
        /// `object` or `hook file name`.
        what: &'static str,
        /// The name.
        name: OsString,
    },
    /// Daemon events have no object.
    #[error("daemon events have no object to keep state for")]
    NoObject,
    /// The hook asks for state, and whoever runs it keeps none.
    #[error("the hook asks for a state directory (`state = true`) but whoever runs it keeps none (libvirt itself never does; hookctl's dispatcher does for `<driver>.plugins/`)")]
    NoRoot,
    /// A directory on the way is not safe to use.
    #[error("state directory `{}` refused: {why}", path.display())]
    Refused {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The file system said no.
    #[error("state directory `{}`: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// A state directory found under a root, for `hookctl list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// The object (guest or network).
    pub object: OsString,
    /// The hook's file name.
    pub hook: OsString,
    /// The directory.
    pub path: PathBuf,
    /// Why it was kept past the object's last event, when it was.
    pub kept: Option<String>,
}

/// Whether an event is its object's last: `release end` for guests, `stopped end` for
/// networks. Daemon events have no object.
///
/// ```
/// use hooks_core::{state_ends_object, Driver, RawEvent};
/// assert!(state_ends_object(&RawEvent::new(Driver::Qemu, ["vm", "release", "end", "-"])));
/// assert!(!state_ends_object(&RawEvent::new(Driver::Qemu, ["vm", "stopped", "end", "-"])));
/// assert!(state_ends_object(&RawEvent::new(Driver::Network, ["net", "stopped", "end", "-"])));
/// ```
pub fn state_ends_object(event: &dyn HookEvent) -> bool {
    let (op, subop) = (event.op(), event.subop());
    match event.driver() {
        Driver::Daemon => false,
        Driver::Network => op == "stopped" && subop == "end",
        _ => op == "release" && subop == "end",
    }
}

fn check_name(what: &'static str, name: &OsStr) -> Result<(), StateError> {
    let bytes = name.as_bytes();
    let bad = bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.len() > 255 || bytes.contains(&b'/');
    if bad || bytes.contains(&0) {
        return Err(StateError::BadName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Makes `path` (its parent exists) a directory of ours, mode 0700, or checks that it is
/// one: never follows a symlink, never accepts a directory someone else could use.
fn own_dir(path: &Path) -> Result<(), StateError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                source,
            })
        }
    }
    let meta = fs::symlink_metadata(path).map_err(|source| StateError::Io {
        path: path.to_owned(),
        source,
    })?;
    let refuse = |why: String| {
        Err(StateError::Refused {
            path: path.to_owned(),
            why,
        })
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return refuse(format!("owned by uid {}, not {euid}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "mode {:04o} lets others in (0700 expected)",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

impl StateRoot {
    /// A root at `path`; nothing is created until a hook asks for its directory.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateRoot { root: path.into() }
    }

    /// [`SYSTEM_STATE_ROOT`].
    pub fn system() -> Self {
        Self::new(SYSTEM_STATE_ROOT)
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The directory of `hook` (its file name) for `object`, without creating it.
    ///
    /// # Errors
    /// When the driver has no objects or a name cannot name a directory.
    pub fn dir(&self, driver: Driver, object: &OsStr, hook: &OsStr) -> Result<PathBuf, StateError> {
        if driver == Driver::Daemon {
            return Err(StateError::NoObject);
        }
        check_name("object", object)?;
        check_name("hook file name", hook)?;
        Ok(self.root.join(driver.as_str()).join(object).join(hook))
    }

    /// The directory of `hook` for `object`, created (with the root) when missing.
    ///
    /// The root's ancestors must pass the trust rule, and the root and each level below
    /// must be directories of the effective user with mode 0700: state is private to
    /// the hooks, and nobody else may swap a level for a link.
    ///
    /// # Errors
    /// A [`StateError`] naming the directory and what is wrong with it.
    pub fn open(&self, driver: Driver, object: &OsStr, hook: &OsStr) -> Result<PathBuf, StateError> {
        let dir = self.dir(driver, object, hook)?;
        self.open_root()?;
        let mut path = self.root.join(driver.as_str());
        own_dir(&path)?;
        path.push(object);
        own_dir(&path)?;
        path.push(hook);
        own_dir(&path)?;
        debug_assert_eq!(path, dir);
        Ok(path)
    }

    fn open_root(&self) -> Result<(), StateError> {
        if !self.root.is_absolute() {
            return Err(StateError::Refused {
                path: self.root.clone(),
                why: "not an absolute path".into(),
            });
        }
        if let Some(parent) = self.root.parent() {
            if !parent.exists() {
                // `/run/virt-hooks` on a fresh boot: ours too, and private.
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|source| StateError::Io {
                        path: parent.to_owned(),
                        source,
                    })?;
            }
            TrustPolicy::current_user()
                .check_dir(parent)
                .map_err(|why| StateError::Refused {
                    path: self.root.clone(),
                    why: why.reason(),
                })?;
        }
        own_dir(&self.root)
    }

    /// After an object's last event: removes its hooks' directories, except those for
    /// which `kept` gives a reason (the hook failed that event); a note with the reason
    /// goes to `<root>/.kept/<driver>/<object>/<hook>`. Returns the directories kept.
    ///
    /// # Errors
    /// The first directory that could not be removed or noted; the others are still
    /// handled.
    pub fn finish(
        &self,
        driver: Driver,
        object: &OsStr,
        kept: &dyn Fn(&OsStr) -> Option<String>,
    ) -> Result<Vec<PathBuf>, StateError> {
        if driver == Driver::Daemon || check_name("object", object).is_err() {
            return Ok(Vec::new());
        }
        let dir = self.root.join(driver.as_str()).join(object);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Io { path: dir, source }),
        };
        let notes = self.root.join(KEPT).join(driver.as_str()).join(object);
        let mut first_error = None;
        let mut kept_dirs = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(source) => {
                    first_error.get_or_insert(StateError::Io {
                        path: dir.clone(),
                        source,
                    });
                    continue;
                }
            };
            let name = entry.file_name();
            let path = entry.path();
            let note = notes.join(&name);
            let done = match kept(&name) {
                Some(why) => {
                    kept_dirs.push(path.clone());
                    write_note(&self.root, &notes, &note, &why)
                }
                None => {
                    // Never follows links: a hook's own symlinks go, not what they name.
                    let removed = match entry.file_type() {
                        Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                        _ => fs::remove_file(&path),
                    };
                    match fs::remove_file(&note) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => removed.and(Err(e)),
                        _ => removed,
                    }
                }
            };
            if let Err(source) = done {
                first_error.get_or_insert(StateError::Io { path, source });
            }
        }
        // Empty levels go too; a level still in use stays (ENOTEMPTY).
        for level in [
            dir,
            notes.clone(),
            notes.parent().map(Path::to_owned).unwrap_or_default(),
        ] {
            let _ = fs::remove_dir(level);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(kept_dirs),
        }
    }

    /// Every state directory of `driver`'s objects, with the note of those kept past
    /// their object's last event.
    pub fn entries(&self, driver: Driver) -> Vec<StateEntry> {
        let mut found = Vec::new();
        let base = self.root.join(driver.as_str());
        let Ok(objects) = fs::read_dir(&base) else { return found };
        for object in objects.flatten() {
            let Ok(hooks) = fs::read_dir(object.path()) else {
                continue;
            };
            for hook in hooks.flatten() {
                let note = self
                    .root
                    .join(KEPT)
                    .join(driver.as_str())
                    .join(object.file_name())
                    .join(hook.file_name());
                found.push(StateEntry {
                    object: object.file_name(),
                    hook: hook.file_name(),
                    path: hook.path(),
                    kept: fs::read_to_string(note).ok().map(|n| n.trim_end().to_owned()),
                });
            }
        }
        found.sort_by(|a, b| (&a.object, &a.hook).cmp(&(&b.object, &b.hook)));
        found
    }
}

fn write_note(root: &Path, notes: &Path, note: &Path, why: &str) -> io::Result<()> {
    let mut level = root.to_owned();
    for part in notes.strip_prefix(root).unwrap_or(notes) {
        level.push(part);
        own_dir(&level).map_err(|e| io::Error::other(e.to_string()))?;
    }
    fs::write(note, format!("{why}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn root() -> (tempfile::TempDir, StateRoot) {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::new(tmp.path().join("run/virt-hooks/state"));
        (tmp, root)
    }

    #[test]
    fn directories_are_created_private_and_reused() {
        let (_tmp, root) = root();
        let dir = root.open(Driver::Qemu, "vm".as_ref(), "10-fw".as_ref()).unwrap();
        fs::write(dir.join("rules"), "a\n").unwrap();
        for level in [
            root.path(),
            &root.path().join("qemu"),
            &root.path().join("qemu/vm"),
            &dir,
        ] {
            let meta = fs::symlink_metadata(level).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o700, "{}", level.display());
        }
        let again = root.open(Driver::Qemu, "vm".as_ref(), "10-fw".as_ref()).unwrap();
        assert_eq!(fs::read_to_string(again.join("rules")).unwrap(), "a\n");
    }

    #[test]
    fn names_that_would_leave_the_root_are_refused() {
        let (_tmp, root) = root();
        for object in ["", ".", "..", "a/b", "../../etc", "x\0y"] {
            let object = OsStr::from_bytes(object.as_bytes());
            let err = root.open(Driver::Qemu, object, "h".as_ref()).unwrap_err();
            assert!(
                matches!(err, StateError::BadName { what: "object", .. }),
                "{object:?}: {err}"
            );
        }
        let long = "x".repeat(256);
        assert!(root.open(Driver::Qemu, long.as_ref(), "h".as_ref()).is_err());
        assert!(matches!(
            root.open(Driver::Daemon, "-".as_ref(), "h".as_ref()),
            Err(StateError::NoObject)
        ));
        assert!(!root.path().exists(), "nothing is created for a refused name");
    }

    #[test]
    fn a_level_swapped_for_a_link_or_opened_up_is_refused() {
        let (tmp, root) = root();
        root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
        let object = root.path().join("qemu/other");
        symlink(&elsewhere, &object).unwrap();
        let err = root.open(Driver::Qemu, "other".as_ref(), "h".as_ref()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!elsewhere.join("h").exists(), "nothing was created through the link");
        let vm = root.path().join("qemu/vm");
        fs::set_permissions(&vm, fs::Permissions::from_mode(0o755)).unwrap();
        let err = root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap_err();
        assert!(err.to_string().contains("mode 0755"), "{err}");
    }

    #[test]
    fn a_root_under_a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let root = StateRoot::new(open.join("state"));
        let err = root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap_err();
        assert!(matches!(err, StateError::Refused { .. }), "{err}");
        assert!(!open.join("state").exists());
        let relative = StateRoot::new("state");
        assert!(relative.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).is_err());
    }

    #[test]
    fn the_last_event_removes_all_but_the_failed_hooks_directories() {
        let (tmp, root) = root();
        let ok = root.open(Driver::Qemu, "vm".as_ref(), "ok".as_ref()).unwrap();
        let failed = root.open(Driver::Qemu, "vm".as_ref(), "failed".as_ref()).unwrap();
        let other_vm = root.open(Driver::Qemu, "other".as_ref(), "ok".as_ref()).unwrap();
        // A hook's own link out of its directory: removing the directory leaves the target.
        let outside = tmp.path().join("outside");
        fs::write(&outside, "keep me").unwrap();
        symlink(&outside, ok.join("link")).unwrap();
        let why = |name: &OsStr| (name == "failed").then(|| "release end: exit status 1".to_owned());
        let kept = root.finish(Driver::Qemu, "vm".as_ref(), &why).unwrap();
        assert_eq!(kept, vec![failed.clone()]);
        assert!(!ok.exists() && failed.exists() && other_vm.exists());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep me");
        let entries = root.entries(Driver::Qemu);
        let kept_entry = entries.iter().find(|e| e.object == "vm").unwrap();
        assert_eq!(kept_entry.kept.as_deref(), Some("release end: exit status 1"));
        assert!(entries.iter().any(|e| e.object == "other" && e.kept.is_none()));
        // The next lifecycle's last event succeeds: the directory and its note go.
        let kept = root.finish(Driver::Qemu, "vm".as_ref(), &|_| None).unwrap();
        assert!(kept.is_empty());
        assert!(!root.path().join("qemu/vm").exists());
        assert!(!root.path().join(".kept/qemu/vm").exists());
        assert_eq!(root.entries(Driver::Qemu).len(), 1);
    }

    #[test]
    fn finishing_an_object_without_state_does_nothing() {
        let (_tmp, root) = root();
        assert!(root.finish(Driver::Qemu, "vm".as_ref(), &|_| None).unwrap().is_empty());
        assert!(root.finish(Driver::Qemu, "..".as_ref(), &|_| None).unwrap().is_empty());
        assert!(!root.path().exists());
    }
}
