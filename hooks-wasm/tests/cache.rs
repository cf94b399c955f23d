//! The on-disk module cache cannot be planted: entries are bound to the module they
//! were compiled from, and only entries the effective uid owns (and no one else can
//! write), in a directory that passes the trust rule, are ever deserialized.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use common::heap::peak_during;
use common::{block_on, inv, printer, sandbox, write_module};
use virt_hooks_core::Hook;
use virt_hooks_wasm::{cache_dir_for, CacheSource, Sandbox, WasmHook, WasmOptions};

#[global_allocator]
static HEAP: common::heap::Counting = common::heap::Counting;

fn is_root() -> bool {
    virt_hooks_core::backend::TrustPolicy::current_user().uid() == 0
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache entry of a loaded module (its file name starts with the module's digest;
/// its compile lock beside it ends in `.lock`).
fn entry_of(cache: &Path, hook: &WasmHook) -> PathBuf {
    let prefix = hex(&hook.module().digest());
    fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".cwasm")
        })
        .expect("an entry was written")
}

fn load(sb: Arc<Sandbox>, path: &Path) -> WasmHook {
    WasmHook::load_in(sb, path, WasmOptions::default()).unwrap()
}

fn run(hook: &WasmHook) -> String {
    let out = block_on(hook.call(&inv("vm", "prepare")));
    assert!(out.status.is_success(), "{:?}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

/// Two modules, A and B, both compiled into a fresh cache.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let a = write_module(tmp.path(), "a.wasm", &printer("module A"));
    let b = write_module(tmp.path(), "b.wasm", &printer("module B"));
    let sb = sandbox(Some(&cache));
    assert_eq!(load(Arc::clone(&sb), &a).module().source(), CacheSource::Compiled);
    assert_eq!(load(sb, &b).module().source(), CacheSource::Compiled);
    Fixture { _tmp: tmp, cache, a, b }
}

#[test]
fn an_entry_copied_over_another_modules_name_is_not_run() {
    let f = fixture();
    let (a_entry, b_entry) = {
        let sb = sandbox(Some(&f.cache));
        (
            entry_of(&f.cache, &load(Arc::clone(&sb), &f.a)),
            entry_of(&f.cache, &load(sb, &f.b)),
        )
    };
    // A's compiled code under B's name: a valid entry, with a valid checksum.
    fs::copy(&a_entry, &b_entry).unwrap();
    let hook = load(sandbox(Some(&f.cache)), &f.b);
    let output = run(&hook);
    println!("B's hook printed: {output:?}");
    assert_eq!(output, "module B", "B's hook ran A's code");
    assert_eq!(
        hook.module().source(),
        CacheSource::Compiled,
        "the foreign entry was not used"
    );
    // And the entry was rewritten with B's code.
    let again = load(sandbox(Some(&f.cache)), &f.b);
    assert_eq!(again.module().source(), CacheSource::Disk);
    assert_eq!(run(&again), "module B");
    assert_eq!(run(&load(sandbox(Some(&f.cache)), &f.a)), "module A");
}

#[test]
fn an_entry_writable_by_group_or_others_is_not_used() {
    let f = fixture();
    for mode in [0o666, 0o620] {
        let entry = entry_of(&f.cache, &load(sandbox(Some(&f.cache)), &f.a));
        chmod(&entry, mode);
        let hook = load(sandbox(Some(&f.cache)), &f.a);
        assert_eq!(hook.module().source(), CacheSource::Compiled, "mode {mode:o} was used");
        assert_eq!(run(&hook), "module A");
        // Rewritten as a private file, and used again.
        let mode_now = fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode_now & 0o022, 0, "rewritten entry has mode {mode_now:o}");
        assert_eq!(load(sandbox(Some(&f.cache)), &f.a).module().source(), CacheSource::Disk);
    }
}

#[test]
fn a_symlinked_entry_is_not_used() {
    let f = fixture();
    let entry = entry_of(&f.cache, &load(sandbox(Some(&f.cache)), &f.a));
    // The genuine entry, moved aside (still trusted, in the trusted dir) and linked.
    let aside = f.cache.join("elsewhere.bin");
    fs::rename(&entry, &aside).unwrap();
    symlink(&aside, &entry).unwrap();
    let hook = load(sandbox(Some(&f.cache)), &f.a);
    assert_eq!(hook.module().source(), CacheSource::Compiled, "a symlink was followed");
    assert_eq!(run(&hook), "module A");
    // The rewrite replaced the link itself, not its target.
    assert!(!fs::symlink_metadata(&entry).unwrap().file_type().is_symlink());
}

#[test]
fn entries_and_dirs_owned_by_another_user_are_not_used() {
    if !is_root() {
        eprintln!("skipped: only root can give files away");
        return;
    }
    let f = fixture();
    let entry = entry_of(&f.cache, &load(sandbox(Some(&f.cache)), &f.a));
    std::os::unix::fs::chown(&entry, Some(1000), None).unwrap();
    let hook = load(sandbox(Some(&f.cache)), &f.a);
    assert_eq!(
        hook.module().source(),
        CacheSource::Compiled,
        "another user's entry was used"
    );
    assert_eq!(run(&hook), "module A");
    assert_eq!(
        load(sandbox(Some(&f.cache)), &f.a).module().source(),
        CacheSource::Disk,
        "rewritten"
    );

    std::os::unix::fs::chown(&f.cache, Some(1000), None).unwrap();
    let sb = sandbox(Some(&f.cache));
    assert_eq!(sb.cache_dir(), None, "another user's dir was used");
    assert_eq!(load(sb, &f.a).module().source(), CacheSource::Compiled);
}

#[test]
fn a_world_writable_cache_dir_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    fs::create_dir(&cache).unwrap();
    chmod(&cache, 0o777);
    let a = write_module(tmp.path(), "a.wasm", &printer("module A"));
    let sb = sandbox(Some(&cache));
    assert_eq!(sb.cache_dir(), None, "an untrusted dir is not the cache");
    let hook = load(sb, &a);
    assert_eq!(hook.module().source(), CacheSource::Compiled);
    assert_eq!(run(&hook), "module A");
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "nothing written there");
    assert_eq!(load(sandbox(Some(&cache)), &a).module().source(), CacheSource::Compiled);

    // A dir below a world-writable (non-sticky) one fails too, and is not created.
    let below = cache.join("sub/wasm");
    assert_eq!(sandbox(Some(&below)).cache_dir(), None);
    assert!(!cache.join("sub").exists(), "created below an untrusted dir");
}

#[test]
fn a_dot_dot_in_the_cache_path_cannot_lead_below_an_untrusted_dir() {
    // `trusted/nope/../../att/evil/planted`: `trusted` passes, `nope` does not exist, and
    // `att/evil` is another user's symlink (in a world-writable dir) to a dir of ours.
    let tmp = tempfile::tempdir().unwrap();
    let trusted = tmp.path().join("trusted");
    let target = tmp.path().join("target");
    let att = tmp.path().join("att");
    for d in [&trusted, &target, &att] {
        fs::create_dir(d).unwrap();
    }
    chmod(&att, 0o777);
    symlink(&target, att.join("evil")).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&att, Some(1000), Some(1000)).unwrap();
        lchown(att.join("evil"), Some(1000), Some(1000)).unwrap();
    }
    let path = trusted.join("nope/../../att/evil/planted");
    let sb = sandbox(Some(&path));
    assert_eq!(sb.cache_dir(), None, "{} was used", path.display());
    assert!(
        !target.join("planted").exists(),
        "created through the untrusted symlink"
    );
    assert!(
        !trusted.join("nope").exists(),
        "created a dir named only to be left by `..`"
    );
}

#[test]
fn a_relative_or_dotted_cache_path_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    for dotted in ["./cache", "a/./cache", "cache/.", "a/../cache", "cache/.."] {
        let path = PathBuf::from(format!("{}/{dotted}", tmp.path().display()));
        assert_eq!(sandbox(Some(&path)).cache_dir(), None, "{} was used", path.display());
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "{} created something",
            path.display()
        );
    }
    // Relative to the working directory, which is nobody's choice of cache dir.
    let relative = PathBuf::from(format!("relative-wasm-cache-{}", std::process::id()));
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = Cleanup(&relative);
    assert_eq!(sandbox(Some(&relative)).cache_dir(), None);
    assert!(!relative.exists(), "created a relative cache dir");
}

#[test]
fn a_huge_entry_is_not_read_whole() {
    let f = fixture();
    let entry = entry_of(&f.cache, &load(sandbox(Some(&f.cache)), &f.a));
    // The genuine header, then zeros to 1 GiB (sparse): only its size gives it away.
    fs::OpenOptions::new()
        .write(true)
        .open(&entry)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let sb = sandbox(Some(&f.cache));
    let start = Instant::now();
    let (hook, heap) = peak_during(|| load(sb, &f.a));
    println!(
        "1 GiB entry: refused after {:?}, host heap peak +{} MiB",
        start.elapsed(),
        heap >> 20
    );
    assert_eq!(hook.module().source(), CacheSource::Compiled);
    assert_eq!(run(&hook), "module A");
    assert!(heap < 256 << 20, "read {heap} bytes of a 1 GiB entry");
    // Rewritten at its real size.
    assert!(fs::metadata(&entry).unwrap().len() < 1 << 20);
    assert_eq!(load(sandbox(Some(&f.cache)), &f.a).module().source(), CacheSource::Disk);
}

#[test]
fn a_cache_dir_loosened_after_the_sandbox_was_built_is_not_read() {
    let f = fixture();
    let sb = sandbox(Some(&f.cache));
    assert!(sb.cache_dir().is_some());
    chmod(&f.cache, 0o777);
    let hook = load(sb, &f.a);
    assert_eq!(hook.module().source(), CacheSource::Compiled);
    chmod(&f.cache, 0o700);
}

#[test]
fn a_missing_cache_dir_is_created_private() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("new/cache");
    let sb = sandbox(Some(&cache));
    assert_eq!(sb.cache_dir(), Some(cache.as_path()));
    for dir in [&cache, &tmp.path().join("new")] {
        assert_eq!(fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700);
    }
    let a = write_module(tmp.path(), "a.wasm", &printer("module A"));
    load(sb, &a);
    assert_eq!(load(sandbox(Some(&cache)), &a).module().source(), CacheSource::Disk);
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let vars: Vec<(String, OsString)> = vars.iter().map(|(k, v)| (k.to_string(), v.into())).collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

#[test]
fn root_never_caches_under_home_or_xdg_cache_home() {
    let user_env = [("HOME", "/home/dev"), ("XDG_CACHE_HOME", "/home/dev/.xdg")];
    assert_eq!(
        cache_dir_for(0, env(&user_env)),
        Some(PathBuf::from("/var/cache/virt-hooks/wasm")),
        "sudo -E keeps a user's HOME and XDG_CACHE_HOME"
    );
    assert_eq!(
        cache_dir_for(0, env(&[])),
        Some(PathBuf::from("/var/cache/virt-hooks/wasm"))
    );
    // An explicit dir is taken (and must still pass the trust rule when opened).
    assert_eq!(
        cache_dir_for(
            0,
            env(&[("VIRT_HOOKS_WASM_CACHE", "/srv/cache"), ("HOME", "/home/dev")])
        ),
        Some(PathBuf::from("/srv/cache"))
    );
    assert_eq!(cache_dir_for(0, env(&[("VIRT_HOOKS_WASM_CACHE", "off")])), None);

    // Other users: XDG first (absolute only), then HOME, else none.
    assert_eq!(
        cache_dir_for(1000, env(&user_env)),
        Some(PathBuf::from("/home/dev/.xdg/virt-hooks/wasm"))
    );
    assert_eq!(
        cache_dir_for(1000, env(&[("HOME", "/home/dev"), ("XDG_CACHE_HOME", "rel")])),
        Some(PathBuf::from("/home/dev/.cache/virt-hooks/wasm"))
    );
    assert_eq!(cache_dir_for(1000, env(&[("HOME", "")])), None);
    assert_eq!(
        cache_dir_for(1000, env(&[("VIRT_HOOKS_WASM_CACHE", "off"), ("HOME", "/h")])),
        None
    );
}
