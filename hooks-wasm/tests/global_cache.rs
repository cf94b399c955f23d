//! An embedder chooses the process-wide sandbox's module cache (its own process: the
//! choice holds for the life of the process, so it is the only test here).

use std::path::Path;

use virt_hooks_core::backend::{HookLoader, HookSettings};
use virt_hooks_wasm::{Sandbox, WasmLoader};

#[test]
fn a_driver_chooses_the_global_sandboxs_cache_dir_before_first_use() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("driver-cache");
    assert_eq!(Sandbox::configure_global_cache(Some(cache.clone())), Ok(()));
    let module = tmp.path().join("noop.wasm");
    std::fs::write(&module, wat::parse_str(r#"(module (func (export "_start")))"#).unwrap()).unwrap();
    let hook = WasmLoader::default().load(&module, &HookSettings::default());
    assert!(hook.is_ok(), "the module loads");
    let cached = walk(&cache);
    assert!(cached > 0, "nothing was cached in {}", cache.display());
    // Too late once the sandbox is built: the caller learns so.
    assert_eq!(Sandbox::configure_global_cache(None), Err(None));
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 })
            .sum()
    })
}
