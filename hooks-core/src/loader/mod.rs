//! Loading hooks from a hooks directory: `<dir>/<driver>`, then `<dir>/<driver>.d/*` in
//! strcmp order, each entry handed to the first backend that claims it.
//!
//! Backends announce a [`HookLoader`] with [`register_loader!`](crate::register_loader) so the core finds them
//! without depending on them:
//!
//! ```
//! use std::{fs::Metadata, path::Path, sync::Arc};
//! use virt_hooks_core::{Hook, LoadError};
//! use virt_hooks_core::error::LoadErrorKind;
//! use virt_hooks_core::backend::{HookLoader, HookSettings, LoaderRegistration};
//!
//! struct LuaLoader;
//! impl HookLoader for LuaLoader {
//!     fn backend(&self) -> &'static str { "lua" }
//!     fn claims(&self, path: &Path, _meta: &Metadata) -> bool {
//!         path.extension().is_some_and(|e| e == "lua")
//!     }
//!     fn load(&self, path: &Path, _settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
//!         Err(LoadError::new(path, "lua", LoadErrorKind::Backend))
//!     }
//! }
//! virt_hooks_core::register_loader!(&LuaLoader);
//! ```
//!
//! A backend crate is linked only if the program uses something from it: call its
//! `link()` (or name any item) from `main` so its loader is registered. A program that
//! forgets the exec backend does not silently skip scripts: an executable that libvirt
//! would run, and no linked backend does, fails the event and names `virt_hooks_exec::link()`.

use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::{
    Driver, Hook, HookOutcome, HookSettings, Invocation, LoadError, OnReconnectFailure, SettingsError, TrustPolicy,
    Untrusted,
};

mod backend;
mod dir;
mod entry;
mod wrap;

pub use self::backend::{registered_loaders, HookLoader, LoaderRegistration};
pub use self::dir::HooksDir;
pub(crate) use self::entry::{is_leftover, FileStamp};
pub use self::entry::{DirEntry, Disposition, EntryRole, SkipReason};
pub(crate) use self::wrap::{BrokenHook, Configured};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LoadErrorKind;
    use std::os::unix::fs::symlink;

    struct ExecLike;
    impl HookLoader for ExecLike {
        fn backend(&self) -> &'static str {
            "test-exec"
        }
        fn priority(&self) -> i32 {
            100
        }
        fn claims(&self, _path: &Path, meta: &Metadata) -> bool {
            meta.permissions().mode() & 0o111 != 0
        }
        fn load(&self, path: &Path, _settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
            Err(LoadError::new(path, "test-exec", LoadErrorKind::Backend))
        }
    }
    static EXEC_LIKE: ExecLike = ExecLike;

    fn write(path: &Path, mode: u32) {
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn scan_orders_and_skips_like_libvirt() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("qemu.d");
        fs::create_dir(&d).unwrap();
        write(&tmp.path().join("qemu"), 0o755);
        for name in ["9-y", "10-x", "B", "a", ".hidden"] {
            write(&d.join(name), 0o755);
        }
        write(&d.join("noexec"), 0o644);
        write(&d.join("conf.toml"), 0o755);
        fs::create_dir(d.join("subdir")).unwrap();
        symlink(d.join("missing"), d.join("dangling")).unwrap();
        symlink(d.join("a"), d.join("link-to-a")).unwrap();

        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        assert_eq!(
            labels(&entries, ""),
            [
                "qemu",
                ".hidden",
                "10-x",
                "9-y",
                "B",
                "a",
                "conf.toml (settings file that matches no hook)",
                "dangling (dangling symlink)",
                "link-to-a",
                "noexec (not executable)",
                "subdir (directory)",
            ]
        );
        assert_eq!(entries[0].role, EntryRole::Main);
        assert!(dir.is_present(Driver::Qemu));
        assert!(!dir.is_present(Driver::Lxc));
    }

    #[test]
    fn presence_needs_something_that_runs() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("lxc.d")).unwrap();
        write(&tmp.path().join("lxc.d/readme"), 0o644);
        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        assert!(!dir.is_present(Driver::Lxc));
        write(&tmp.path().join("lxc.d/hook"), 0o700);
        assert!(dir.is_present(Driver::Lxc));
    }

    /// Each entry's file name, with why it is skipped (after `skip`) or refused.
    fn labels(entries: &[DirEntry], skip: &str) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                let n = e.path.file_name().unwrap().to_string_lossy().into_owned();
                match &e.disposition {
                    Disposition::Hook(_) => n,
                    Disposition::Skipped(why) => format!("{n} ({skip}{why})"),
                    Disposition::Refused(_, why) => format!("{n} (REFUSED: {})", why.reason()),
                }
            })
            .collect()
    }

    fn listing(entries: &[DirEntry]) -> Vec<String> {
        labels(entries, "skip: ")
    }

    #[test]
    fn plugins_dirs_refuse_what_others_could_change() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("qemu.plugins");
        fs::create_dir(&p).unwrap();
        write(&p.join("10-ok"), 0o755);
        write(&p.join("20-world"), 0o777);
        write(&p.join("30-group"), 0o775);
        write(&p.join("40-sidecar"), 0o755);
        fs::write(p.join("40-sidecar.toml"), "timeout = 1\n").unwrap();
        fs::set_permissions(p.join("40-sidecar.toml"), fs::Permissions::from_mode(0o666)).unwrap();
        let elsewhere = tmp.path().join("build");
        fs::create_dir(&elsewhere).unwrap();
        write(&elsewhere.join("tool"), 0o755);
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o777)).unwrap();
        symlink(elsewhere.join("tool"), p.join("50-link")).unwrap();
        let dir = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        let real_build = fs::canonicalize(&elsewhere).unwrap();
        assert_eq!(
            listing(&entries),
            [
                "10-ok".to_owned(),
                "20-world (REFUSED: writable by others (mode 0777))".into(),
                "30-group (REFUSED: writable by group (mode 0775))".into(),
                "40-sidecar".into(),
                "40-sidecar.toml (skip: settings file, never a hook)".into(),
                format!(
                    "50-link (REFUSED: symlink into {}, writable by others (mode 0777))",
                    real_build.display()
                ),
            ]
        );
        // A sidecar others can write could switch a hook off: refused too.
        let err = entries[3].settings().unwrap_err();
        assert_eq!(err.message, "refused: writable by others (mode 0666)");
        assert!(dir.is_present(Driver::Qemu));

        // The same entries with the checks off (an embedder's explicit choice).
        let unchecked = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)]).with_trust(None);
        assert!(unchecked
            .scan(Driver::Qemu)
            .unwrap()
            .iter()
            .all(|e| e.refusal().is_none()));
    }

    #[test]
    fn a_writable_plugins_dir_refuses_everything_in_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("qemu.plugins");
        fs::create_dir(&p).unwrap();
        write(&p.join("10-ok"), 0o755);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        let entries = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)])
            .scan(Driver::Qemu)
            .unwrap();
        assert_eq!(entries.len(), 1);
        let why = entries[0].refusal().expect("the dir is refused");
        assert_eq!(why.culprit, p);
        assert!(why.reason().ends_with("writable by others (mode 0777)"), "{why}");
    }

    #[test]
    fn libvirt_layout_keeps_libvirts_behaviour_for_executables_but_not_plugins() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("qemu.d");
        fs::create_dir(&d).unwrap();
        write(&d.join("10-script"), 0o777);
        write(&d.join("20-native.so"), 0o777);
        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        assert_eq!(
            listing(&entries),
            ["10-script", "20-native.so (REFUSED: writable by others (mode 0777))"]
        );
        assert!(entries[0].trust_warning().is_some(), "check warns about it");
    }

    #[test]
    fn leftovers_are_skipped_in_plugins_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            "10-a~",
            ".10-a.swp",
            "10-a.swp",
            "10-a.dpkg-old",
            "10-a.dpkg-new",
            "10-a.dpkg-dist",
            "10-a.dpkg-tmp",
            "10-a.rpmnew",
            "10-a.rpmsave",
            "10-a.rpmorig",
            ".hidden",
            "10-a",
        ] {
            write(&tmp.path().join(name), 0o755);
        }
        let entries = HooksDir::plugins_with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)])
            .scan(Driver::Qemu)
            .unwrap();
        let running: Vec<_> = entries.iter().filter(|e| e.loader().is_some()).collect();
        assert_eq!(running.len(), 1, "{:?}", listing(&entries));
        assert_eq!(running[0].path.file_name().unwrap(), "10-a");
        assert!(entries
            .iter()
            .filter(|e| e.loader().is_none())
            .all(|e| matches!(&e.disposition, Disposition::Skipped(SkipReason::Leftover))));
    }

    /// `mv 10-a 10-a.disabled` is how an operator switches a plugin off; it ran anyway.
    #[test]
    fn disabled_copies_are_skipped_in_plugins_dirs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("qemu.plugins");
        let drop_ins = tmp.path().join("qemu.d");
        for dir in [&plugins, &drop_ins] {
            fs::create_dir(dir).unwrap();
            write(&dir.join("10-a.disabled"), 0o755);
            write(&dir.join("20-b"), 0o755);
            write(&dir.join(".disabled"), 0o755);
        }
        let entries = HooksDir::plugins_with_loaders(&plugins, vec![Arc::new(&EXEC_LIKE)])
            .scan(Driver::Qemu)
            .unwrap();
        assert_eq!(
            listing(&entries),
            [
                ".disabled (skip: backup or package-manager leftover, never run)",
                "10-a.disabled (skip: disabled (`.disabled`), never run)",
                "20-b"
            ]
        );
        // libvirt runs every executable of its own `<driver>.d/`: so does its layout here.
        let entries = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)])
            .with_trust(None)
            .scan(Driver::Qemu)
            .unwrap();
        assert_eq!(listing(&entries), [".disabled", "10-a.disabled", "20-b"]);
    }

    /// `10-x.toml` beside `10-x.sh` configures nothing (the sidecar is `10-x.sh.toml`):
    /// it is told apart from a real sidecar, with the name it should have.
    #[test]
    fn the_sidecar_of_a_plugin_set_aside_is_not_stray() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("qemu.plugins");
        fs::create_dir(&plugins).unwrap();
        for (name, mode) in [("20-stateful.disabled", 0o755), ("20-stateful.toml", 0o644)] {
            fs::write(plugins.join(name), "#!/bin/sh\n").unwrap();
            fs::set_permissions(plugins.join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        let entries = HooksDir::plugins(&plugins).scan(Driver::Qemu).unwrap();
        let sidecar = entries
            .iter()
            .find(|e| e.path.ends_with("20-stateful.toml"))
            .expect("listed");
        assert_eq!(
            sidecar.stray_settings_warning(),
            None,
            "renaming it would lose it when the plugin comes back"
        );
    }

    #[test]
    fn a_sidecar_named_after_the_stem_is_stray_and_names_the_hook() {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join("10-x.sh"), 0o755);
        write(&tmp.path().join("20-y"), 0o755);
        for toml in ["10-x.toml", "20-y.toml", "30-gone.toml", "hookctl.toml"] {
            fs::write(tmp.path().join(toml), "").unwrap();
        }
        let entries = HooksDir::plugins_with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)])
            .scan(Driver::Qemu)
            .unwrap();
        let by_name = |n: &str| entries.iter().find(|e| e.path.file_name().unwrap() == n).unwrap();
        let stray = by_name("10-x.toml").stray_settings_warning().unwrap();
        assert!(
            stray.contains("matches no hook") && stray.contains("rename it `10-x.sh.toml`"),
            "{stray}"
        );
        let gone = by_name("30-gone.toml").stray_settings_warning().unwrap();
        assert!(gone.contains("matches no hook") && !gone.contains("rename"), "{gone}");
        for real in ["20-y.toml", "hookctl.toml"] {
            assert!(by_name(real).stray_settings_warning().is_none(), "{real}");
            assert!(matches!(
                by_name(real).disposition,
                Disposition::Skipped(SkipReason::Settings)
            ));
        }
        assert!(by_name("10-x.sh").loader().is_some() && by_name("10-x.sh").settings().unwrap().source.is_none());
    }

    /// Only a plugins dir lets the dispatcher decide what a failure at `reconnect` does;
    /// libvirt's layout kills, whatever a sidecar says.
    #[test]
    fn on_reconnect_failure_applies_in_plugins_dirs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("qemu.d");
        fs::create_dir(&d).unwrap();
        for dir in [tmp.path(), d.as_path()] {
            write(&dir.join("10-log"), 0o755);
            fs::write(dir.join("10-log.toml"), "on_reconnect_failure = \"log\"\n").unwrap();
            write(&dir.join("20-kill"), 0o755);
            fs::write(dir.join("20-kill.toml"), "on_reconnect_failure = \"kill\"\n").unwrap();
            write(&dir.join("30-plain"), 0o755);
        }
        let decided = |dir: HooksDir| -> Vec<(String, OnReconnectFailure, bool)> {
            let entries = dir.with_trust(None).scan(Driver::Qemu).unwrap();
            entries
                .iter()
                .filter(|e| e.loader().is_some())
                .map(|e| {
                    let settings = e.settings().unwrap();
                    let name = e.path.file_name().unwrap().to_string_lossy().into_owned();
                    (
                        name,
                        e.on_reconnect_failure(&settings),
                        e.ignores_reconnect_setting(&settings),
                    )
                })
                .collect()
        };
        let (kill, log) = (OnReconnectFailure::Kill, OnReconnectFailure::Log);
        let flat = || HooksDir::plugins_with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        assert_eq!(
            decided(flat().with_reconnect_failure(log)),
            [
                ("10-log".into(), log, false),
                ("20-kill".into(), kill, false),
                ("30-plain".into(), log, false)
            ]
        );
        // The library's default is libvirt's.
        assert_eq!(decided(flat())[2], ("30-plain".into(), kill, false));
        let libvirt = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]).with_reconnect_failure(log);
        assert_eq!(
            decided(libvirt),
            [
                ("10-log".into(), kill, true),
                ("20-kill".into(), kill, true),
                ("30-plain".into(), kill, false)
            ]
        );
    }

    #[test]
    fn unreadable_dirs_fail_closed() {
        if rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED unreadable_dirs_fail_closed: root reads any directory (mode 000 does not stop it)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("qemu.d");
        fs::create_dir(&d).unwrap();
        write(&d.join("deny"), 0o755);
        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o000)).unwrap();
        assert!(dir.scan(Driver::Qemu).is_err());
        assert!(
            dir.is_present(Driver::Qemu),
            "an unreadable .d must not read as 'no hooks'"
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        // A hooks dir we cannot search: the main script cannot be stat'ed.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o600)).unwrap();
        let scanned = dir.scan(Driver::Qemu);
        let present = dir.is_present(Driver::Qemu);
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        match scanned {
            Ok(entries) => assert!(entries.iter().any(|e| e.refusal().is_some()), "{:?}", listing(&entries)),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied),
        }
        assert!(present);
    }

    #[test]
    fn a_refused_entry_cannot_be_turned_into_a_skipped_one() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("qemu.plugins");
        fs::create_dir(&p).unwrap();
        // Not executable, so it would be skipped; but others may write it.
        write(&p.join("60-deny"), 0o646);
        // A dangling link would be skipped by libvirt; in a plugins dir it is refused.
        symlink(tmp.path().join("gone/deny.sh"), p.join("70-deny")).unwrap();
        let dir = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        assert!(entries.iter().all(|e| e.refusal().is_some()), "{:?}", listing(&entries));
        // A plugins dir that is a link to something gone fails too, rather than 'no plugins'.
        let linked = tmp.path().join("linked.plugins");
        symlink(tmp.path().join("moved-away"), &linked).unwrap();
        let dir = HooksDir::plugins_with_loaders(&linked, vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].refusal().is_some());
        assert!(dir.is_present(Driver::Qemu));
        // No plugins dir at all is simply no plugins.
        let none = HooksDir::plugins_with_loaders(tmp.path().join("none.plugins"), vec![Arc::new(&EXEC_LIKE)]);
        assert!(none.scan(Driver::Qemu).unwrap().is_empty());
    }

    #[test]
    fn the_saved_original_is_run_first_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("qemu.plugins");
        fs::create_dir(&p).unwrap();
        write(&p.join("10-x"), 0o755);
        let saved = tmp.path().join("qemu.pre-hookctl");
        write(&saved, 0o755);
        let dir = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)]).with_main_script(&saved);
        assert_eq!(listing(&dir.scan(Driver::Qemu).unwrap()), ["qemu.pre-hookctl", "10-x"]);
        fs::set_permissions(&saved, fs::Permissions::from_mode(0o757)).unwrap();
        assert_eq!(
            listing(&dir.scan(Driver::Qemu).unwrap()),
            ["qemu.pre-hookctl (REFUSED: writable by others (mode 0757))", "10-x"]
        );
    }
}
