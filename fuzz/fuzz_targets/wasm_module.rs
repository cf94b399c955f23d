//! WASM module acceptance: `Sandbox::load_bytes` in an in-process sandbox without a
//! disk cache or pooling (what `hookctl` builds), a new one every 256 inputs.
//!
//! Properties: nothing panics or hangs; a refusal names the file, the `wasm` backend and
//! one of the module kinds of error; an accepted module is, read independently with
//! wasmparser, a command module (`_start` a function of no parameters and no results),
//! with at most 4 memories and 4 tables, importing only WASI preview 1; loading the same
//! bytes again gives the module already compiled.
#![no_main]

use std::path::Path;
use std::sync::{Arc, Mutex};

use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_wasm::{EngineConfig, Sandbox};
use libfuzzer_sys::fuzz_target;
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

/// What wasmparser reads of a module: `_start`'s signature (params, results) if it is an
/// exported function, memories, tables, and the modules it imports from.
#[derive(Debug, Default)]
struct Shape {
    start: Option<(usize, usize)>,
    memories: u32,
    tables: u32,
    import_modules: Vec<String>,
}

fn shape(bytes: &[u8]) -> Option<Shape> {
    let mut types = Vec::new();
    let mut functions = Vec::new();
    let mut start = None;
    let mut shape = Shape::default();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    let ty = ty.ok()?;
                    types.push((ty.params().len(), ty.results().len()));
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.ok()?;
                    shape.import_modules.push(import.module.to_owned());
                    match import.ty {
                        TypeRef::Func(t) => functions.push(t),
                        TypeRef::Memory(_) => shape.memories += 1,
                        TypeRef::Table(_) => shape.tables += 1,
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for t in reader {
                    functions.push(t.ok()?);
                }
            }
            Payload::MemorySection(reader) => shape.memories += reader.count(),
            Payload::TableSection(reader) => shape.tables += reader.count(),
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.ok()?;
                    if export.name == "_start" && export.kind == ExternalKind::Func {
                        start = Some(export.index);
                    }
                }
            }
            _ => {}
        }
    }
    shape.start = match start {
        Some(f) => Some(*types.get(*functions.get(f as usize)? as usize)?),
        None => None,
    };
    Some(shape)
}

/// Inputs per sandbox: building one costs more than most inputs, and what it compiled
/// stays in it.
const INPUTS_PER_SANDBOX: u32 = 256;

fn sandbox() -> Arc<Sandbox> {
    static CURRENT: Mutex<Option<(Arc<Sandbox>, u32)>> = Mutex::new(None);
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    match current.as_mut() {
        Some((sandbox, used)) if *used < INPUTS_PER_SANDBOX => {
            *used += 1;
            Arc::clone(sandbox)
        }
        _ => {
            let config = EngineConfig {
                pooling: false,
                ..EngineConfig::default()
            };
            let sandbox = Arc::new(Sandbox::new(config, None).expect("an engine without pooling or cache"));
            *current = Some((Arc::clone(&sandbox), 1));
            sandbox
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let sandbox = sandbox();
    let path = Path::new("/etc/libvirt/hooks/qemu.d/30-x.wasm");
    match sandbox.load_bytes(path, data) {
        Err(e) => {
            assert_eq!((e.path.as_path(), e.backend), (path, "wasm"), "{e}");
            assert!(
                matches!(
                    e.kind,
                    LoadErrorKind::InvalidModule
                        | LoadErrorKind::UnsupportedModule { .. }
                        | LoadErrorKind::ExceedsLimit { .. }
                ),
                "{e}"
            );
        }
        Ok(module) => {
            let shape = shape(data).expect("accepted, yet wasmparser cannot read it");
            assert_eq!(
                shape.start,
                Some((0, 0)),
                "accepted without a `_start` of type [] -> []: {shape:?}"
            );
            assert!(shape.memories <= 4 && shape.tables <= 4, "{shape:?}");
            assert!(
                shape.import_modules.iter().all(|m| m == "wasi_snapshot_preview1"),
                "{shape:?}"
            );
            let again = sandbox.load_bytes(path, data).expect("accepted once, refused after");
            assert!(Arc::ptr_eq(&module, &again));
        }
    }
});
