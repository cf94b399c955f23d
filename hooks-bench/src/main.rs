//! The reporter: measures the library against baselines in the same run and prints the
//! ratios as JSON. `cargo run --release -p hooks-bench [-- --quick]`.
//!
//! Library and baseline runs are interleaved round by round, and medians are compared,
//! so machine noise hits both sides alike.

mod dispatcher;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hooks_bench::{
    dir_registry, direct_call, domain_xml, exec_registry, mock_registry, prepare_event, raw_spawn, Scripts,
    TRIVIAL_SCRIPT,
};
use serde_json::json;
use virt_hooks_core::testing::MockHook;
use virt_hooks_core::{Hook, HookEvent, Invocation};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn time<T>(f: impl FnOnce() -> T) -> f64 {
    let start = Instant::now();
    black_box(f());
    start.elapsed().as_secs_f64()
}

/// Times `f`, which must report success: a benchmark of a failing path measures nothing.
fn time_ok(what: &str, f: impl FnOnce() -> bool) -> f64 {
    let start = Instant::now();
    let ok = black_box(f());
    let elapsed = start.elapsed().as_secs_f64();
    assert!(ok, "benchmark step `{what}` did not succeed");
    elapsed
}

/// Alternates `a` and `b` for `rounds` rounds; returns their median times in seconds.
pub(crate) fn interleaved(rounds: usize, mut a: impl FnMut() -> bool, mut b: impl FnMut() -> bool) -> (f64, f64) {
    let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 0..rounds {
        if i % 2 == 0 {
            ta.push(time_ok("measured", &mut a));
            tb.push(time_ok("baseline", &mut b));
        } else {
            tb.push(time_ok("baseline", &mut b));
            ta.push(time_ok("measured", &mut a));
        }
    }
    (median(ta), median(tb))
}

/// Like [`interleaved`], but each round runs `a` `batch_a` times and `b` `batch_b` times
/// back to back, so each side is measured warm (caches and predictors its own), as in
/// steady use; returns median per-call seconds.
fn interleaved_batches(
    rounds: usize,
    (batch_a, mut a): (usize, impl FnMut() -> bool),
    (batch_b, mut b): (usize, impl FnMut() -> bool),
) -> (f64, f64) {
    let (ta, tb) = interleaved(rounds, || (0..batch_a).all(|_| a()), || (0..batch_b).all(|_| b()));
    (ta / batch_a as f64, tb / batch_b as f64)
}

/// The same do-nothing C plugin built for ABI version 1 and version 2 (with an init
/// reading a config key): the cost per call of each through the registry, interleaved
/// against an empty registry so that only the plugin calls differ.
fn abi_versions(ev: &virt_hooks_core::events::QemuEvent, scale: usize) -> serde_json::Value {
    let scripts = Scripts::new().expect("fixture dir");
    let include = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks-dylib/include");
    let build = |name: &str, source: &str| {
        let src = scripts.path().join(format!("{name}.c"));
        let so = scripts.path().join(format!("{name}.so"));
        std::fs::write(&src, source).expect("source");
        let ok = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&so)
            .arg("-I")
            .arg(&include)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(so)
    };
    let v1 = build(
        "v1",
        "#include \"virt_hook.h\"\nstatic int32_t call(const virt_hook_invocation *i) { return i->input_len == 0; }\nstatic const virt_hook_plugin p = { VIRT_HOOK_ABI_VERSION, \"v1\", call };\nconst virt_hook_plugin *virt_hook_plugin_v1(void) { return &p; }\n",
    );
    let v2 = build(
        "v2",
        "#include \"virt_hook.h\"\nstatic long limit;\nstatic int32_t init(const virt_hook_init *in, void **inst) { limit = virt_hook_config(in->config, in->config_len, \"k\") != 0; *inst = &limit; return 0; }\nstatic int32_t call(const virt_hook_event *e) { return e->input_len == 0 && *(long *)e->instance; }\nstatic const virt_hook_descriptor d = { VIRT_HOOK_ABI_VERSION_2, sizeof d, \"v2\", init, 0, call };\nconst virt_hook_descriptor *virt_hook_plugin_v2(void) { return &d; }\n",
    );
    let (Some(v1), Some(v2)) = (v1, v2) else {
        return json!({"skipped": "no C compiler (cc)"});
    };
    let n = 50;
    let (r1, r2, none) = (
        hooks_bench::dylib_registry(&v1, n).expect("v1 loads"),
        hooks_bench::dylib_registry(&v2, n).expect("v2 loads"),
        mock_registry(0),
    );
    let rounds = 2000 / scale;
    let (t1, t0a) = interleaved(
        rounds,
        || r1.fire_blocking(ev).is_ok(),
        || none.fire_blocking(ev).is_ok(),
    );
    let (t2, t0b) = interleaved(
        rounds,
        || r2.fire_blocking(ev).is_ok(),
        || none.fire_blocking(ev).is_ok(),
    );
    let (v1_ns, v2_ns) = ((t1 - t0a) / n as f64 * 1e9, (t2 - t0b) / n as f64 * 1e9);
    json!({
        "v1_per_call_ns": v1_ns,
        "v2_per_call_ns": v2_ns,
        "v2_over_v1": v2_ns / v1_ns,
        "input_bytes": domain_xml().len(),
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--dylib-loop") {
        let so = hooks_bench::fixture_plugin().expect("fixture plugin");
        let (r, ev) = (hooks_bench::dylib_registry(&so, 1).expect("loads"), prepare_event());
        for _ in 0..100_000 {
            black_box(r.fire_blocking(&ev).is_ok());
        }
        return;
    }
    if std::env::args().any(|a| a == "--wasm-loop") {
        let scripts = Scripts::new().expect("fixture dir");
        let path = scripts.path().join("reader.wasm");
        std::fs::write(&path, hooks_bench::wasm_reader()).expect("module");
        let sb = Arc::new(virt_hooks_wasm::Sandbox::new(Default::default(), None).expect("engine"));
        eprintln!("pooling: {}", sb.pooling());
        let hook = virt_hooks_wasm::WasmHook::load_in(sb, &path, Default::default()).expect("loads");
        let (r, ev) = (
            virt_hooks_core::RegistryBuilder::new()
                .hook(virt_hooks_core::Driver::Qemu, hook)
                .build(),
            prepare_event(),
        );
        if let Err(e) = r.fire_blocking(&ev) {
            eprintln!("{e}");
        }
        for _ in 0..2000 {
            black_box(r.fire_blocking(&ev).is_ok());
        }
        return;
    }
    if std::env::args().any(|a| a == "--mock-loop") {
        // For profilers: only the mock registry path.
        let (r, ev) = (mock_registry(100), prepare_event());
        for _ in 0..2000 {
            black_box(r.fire_blocking(&ev).is_ok());
        }
        return;
    }
    let scale = if quick { 10 } else { 1 };
    let ev = prepare_event();
    let xml = domain_xml();
    if std::env::args().any(|a| a == "--abi") {
        // The two C ABI versions per call, in process: the same empty plugin as v1 and v2.
        let report = json!({ "dylib_abi": abi_versions(&ev, scale) });
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return;
    }
    if std::env::args().any(|a| a == "--dispatcher") {
        // Only the whole-process section: what libvirt pays per event.
        let report = json!({ "dispatcher": dispatcher::measure(200 / scale.min(4), xml.as_bytes()) });
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return;
    }

    // 1. Registry overhead per hook, with mocks; baseline: the same mock called directly.
    let batch = 1000;
    let (with_100, with_0) = {
        let (r100, r0) = (mock_registry(100), mock_registry(0));
        interleaved(
            2000 / scale,
            || (0..10).all(|_| r100.fire_blocking(&ev).is_ok()),
            || (0..10).all(|_| r0.fire_blocking(&ev).is_ok()),
        )
    };
    let per_hook_ns = (with_100 - with_0) / 10.0 / 100.0 * 1e9;
    let hook: Arc<dyn Hook> = Arc::new(MockHook::succeeding("direct"));
    let inv = Invocation::from_event(&ev);
    let direct_ns = median(
        (0..200 / scale)
            .map(|_| time_ok("direct mock calls", || (0..batch).all(|_| direct_call(&hook, &inv))) / batch as f64 * 1e9)
            .collect(),
    );
    // The mock's own cost: calls awaited back to back in one task, no registry.
    let bare_ns = median(
        (0..200 / scale)
            .map(|_| {
                time(|| {
                    pollster::block_on(async {
                        for _ in 0..batch {
                            black_box(hook.as_ref().call(&inv).await);
                        }
                    })
                }) / batch as f64
                    * 1e9
            })
            .collect(),
    );
    let overhead_ns = per_hook_ns - bare_ns;
    let empty_fire_ns = with_0 / 10.0 * 1e9;
    // The same with every limit on and one layer of the embedder's.
    let (limited_100, limited_0) = {
        let (r100, r0) = (
            hooks_bench::limited_mock_registry(100),
            hooks_bench::limited_mock_registry(0),
        );
        interleaved(
            2000 / scale,
            || (0..10).all(|_| r100.fire_blocking(&ev).is_ok()),
            || (0..10).all(|_| r0.fire_blocking(&ev).is_ok()),
        )
    };
    let limited_overhead_ns = (limited_100 - limited_0) / 10.0 / 100.0 * 1e9 - bare_ns;
    let limited_empty_fire_ns = limited_0 / 10.0 * 1e9;
    if std::env::args().any(|a| a == "--registry") {
        // Only the registry's own cost per hook (what a reshaped registry must not raise).
        let report = json!({ "registry": {
            "overhead_per_hook_ns": overhead_ns,
            "limited_overhead_per_hook_ns": limited_overhead_ns,
            "empty_fire_ns": empty_fire_ns,
            "limited_empty_fire_ns": limited_empty_fire_ns,
            "mock_call_ns": bare_ns,
            "direct_call_ns": direct_ns,
        }});
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return;
    }

    // 2. One exec hook: the registry vs std's Command (posix_spawn) on the same script.
    let scripts = Scripts::new().expect("fixture dir");
    let script = scripts.script("single/qemu", TRIVIAL_SCRIPT).expect("script");
    let registry = exec_registry(&script, None);
    let rounds = 1500 / scale;
    let (reg_s, raw_s) = interleaved(
        rounds,
        || registry.fire_blocking(&ev).is_ok(),
        || raw_spawn(&script, xml.as_bytes()),
    );
    let dir_registry_single = dir_registry(&scripts.path().join("single"));
    let (dir_s, raw2_s) = interleaved(
        rounds,
        || dir_registry_single.fire_blocking(&ev).is_ok(),
        || raw_spawn(&script, xml.as_bytes()),
    );
    let timed = exec_registry(&script, Some(Duration::from_secs(30)));
    let (timed_s, raw3_s) = interleaved(
        rounds,
        || timed.fire_blocking(&ev).is_ok(),
        || raw_spawn(&script, xml.as_bytes()),
    );

    // 3. Twenty `.d` scripts through the registry vs a plain sequential spawn loop.
    let many: Vec<_> = (0..20)
        .map(|i| {
            scripts
                .script(&format!("many/qemu.d/{i:02}-hook"), TRIVIAL_SCRIPT)
                .expect("script")
        })
        .collect();
    let many_registry = dir_registry(&scripts.path().join("many"));
    let (many_reg_s, many_raw_s) = interleaved(
        150 / scale,
        || many_registry.fire_blocking(&ev).is_ok_and(|r| r.hooks.len() == 20),
        || many.iter().all(|p| raw_spawn(p, xml.as_bytes())),
    );

    // 5. One native plugin through the registry vs the exec of /bin/true, same run.
    let dylib = hooks_bench::fixture_plugin().map(|so| {
        let plugin = hooks_bench::dylib_registry(&so, 1).expect("fixture plugin loads");
        let (fifty, none) = (hooks_bench::dylib_registry(&so, 50).expect("loads"), mock_registry(0));
        let (t50, t0) = interleaved(
            2000 / scale,
            || fifty.fire_blocking(&ev).is_ok(),
            || none.fire_blocking(&ev).is_ok(),
        );
        let per_hook_ns = (t50 - t0) / 50.0 * 1e9;
        let true_registry = exec_registry(std::path::Path::new("/bin/true"), None);
        let calls = 10_000;
        let per_call_ns = median(
            (0..100 / scale)
                .map(|_| {
                    time_ok("dylib fires", || (0..calls).all(|_| plugin.fire_blocking(&ev).is_ok())) / calls as f64
                        * 1e9
                })
                .collect(),
        );
        let true_ns = median(
            (0..300 / scale)
                .map(|_| time_ok("exec /bin/true", || true_registry.fire_blocking(&ev).is_ok()) * 1e9)
                .collect(),
        );
        json!({
            "event_with_one_plugin_ns": per_call_ns,
            "per_plugin_call_in_registry_ns": per_hook_ns,
            "exec_bin_true_ns": true_ns,
            "speedup_vs_exec": true_ns / per_call_ns,
            "target_per_call_ns": 300,
            "target_speedup": 2000,
            "met_per_call": per_hook_ns <= 300.0,
            "met_whole_event": per_call_ns <= 300.0,
            "met_speedup": true_ns / per_call_ns >= 2000.0,
        })
    });

    // 6. WASM: warm call, cold load from the disk cache, first compile, epoch checks.
    let wasm = {
        use virt_hooks_wasm::{CacheSource, EngineConfig, Sandbox, WasmHook, WasmOptions};
        let module_path = scripts.path().join("reader.wasm");
        std::fs::write(&module_path, hooks_bench::wasm_reader()).expect("module");
        let cache = scripts.path().join("wasm-cache");
        let sandbox =
            |cfg: EngineConfig, cache: Option<std::path::PathBuf>| Arc::new(Sandbox::new(cfg, cache).expect("engine"));
        let engine_build_us = median(
            (0..10)
                .map(|_| time(|| sandbox(EngineConfig::default(), None)) * 1e6)
                .collect(),
        );
        // First compile: a sandbox with an empty disk cache.
        let first_compile_us = median(
            (0..10)
                .map(|i| {
                    let sb = sandbox(EngineConfig::default(), Some(scripts.path().join(format!("fresh-{i}"))));
                    time(|| sb.load(&module_path).expect("compiles")) * 1e6
                })
                .collect(),
        );
        let _prime = sandbox(EngineConfig::default(), Some(cache.clone()))
            .load(&module_path)
            .expect("compiles");
        // Cold from the disk cache: a new sandbox (as in a new process), load + first call.
        let cold = (0..10)
            .map(|_| {
                let sb = sandbox(EngineConfig::default(), Some(cache.clone()));
                time_ok("cold wasm call", || {
                    let hook = WasmHook::load_in(sb, &module_path, WasmOptions::default()).expect("loads");
                    assert_eq!(hook.module().source(), CacheSource::Disk);
                    let inv = Invocation::from_event(&ev);
                    pollster::block_on(hook.call(&inv)).status.is_success()
                }) * 1e6
            })
            .collect::<Vec<_>>();
        let warm_hook = WasmHook::load_in(
            sandbox(EngineConfig::default(), None),
            &module_path,
            WasmOptions::default(),
        )
        .expect("loads");
        let warm_registry = virt_hooks_core::RegistryBuilder::new()
            .hook(virt_hooks_core::Driver::Qemu, warm_hook)
            .build();
        let true_registry = exec_registry(std::path::Path::new("/bin/true"), None);
        let (warm_s, true_s) = interleaved_batches(
            100 / scale,
            (50, || warm_registry.fire_blocking(&ev).is_ok()),
            (5, || true_registry.fire_blocking(&ev).is_ok()),
        );
        // Epoch checks: the same spinning module with and without them compiled in.
        let spin_path = scripts.path().join("spin.wasm");
        std::fs::write(&spin_path, hooks_bench::wasm_spinner(20_000_000)).expect("module");
        let with = WasmHook::load_in(
            sandbox(EngineConfig::default(), None),
            &spin_path,
            WasmOptions::default(),
        )
        .expect("loads");
        let without = WasmHook::load_in(
            sandbox(
                EngineConfig {
                    interruptible: false,
                    ..EngineConfig::default()
                },
                None,
            ),
            &spin_path,
            WasmOptions::default(),
        )
        .expect("loads");
        let spin_inv = Invocation::from_event(&ev);
        let (with_s, without_s) = interleaved(
            20 / (scale / 5).max(1),
            || pollster::block_on(with.call(&spin_inv)).status.is_success(),
            || pollster::block_on(without.call(&spin_inv)).status.is_success(),
        );
        json!({
            "warm_call_us": warm_s * 1e6,
            "exec_bin_true_us": true_s * 1e6,
            "speedup_vs_exec": true_s / warm_s,
            "cold_from_disk_cache_us": median(cold),
            "first_compile_us": first_compile_us,
            "engine_build_us": engine_build_us,
            "epoch_check_overhead_ratio": with_s / without_s,
            "targets": { "speedup_vs_exec": 30, "cold_from_disk_cache_us": 2000 },
            "met": true_s / warm_s >= 30.0,
        })
    };

    // 4. A hung hook with a timeout: how long after the timeout does the caller get back?
    let hang = scripts.script("hang/qemu", "#!/bin/sh\nsleep 1000\n").expect("script");
    let timeout = Duration::from_millis(100);
    let hung = exec_registry(&hang, Some(timeout));
    let overshoot_ms: Vec<f64> = (0..20 / (scale / 5).max(1))
        .map(|_| {
            (time_ok("hung hook times out", || {
                hung.fire_blocking(&ev).is_err_and(|f| {
                    f.report().hooks[0].status == virt_hooks_core::report::StatusRecord::TimedOut { after_ms: 100 }
                })
            }) - timeout.as_secs_f64())
                * 1e3
        })
        .collect();
    let max_overshoot = overshoot_ms.iter().copied().fold(0.0, f64::max);

    let dispatcher = dispatcher::measure(200 / scale.min(4), xml.as_bytes());

    let report = json!({
        "machine": { "cores": std::thread::available_parallelism().map_or(0, |n| n.get()) },
        "mock_registry": {
            "per_hook_ns": per_hook_ns,
            "bare_mock_call_ns": bare_ns,
            "registry_overhead_per_hook_ns": overhead_ns,
            "one_call_with_its_own_block_on_ns": direct_ns,
            "ratio_vs_bare_call": per_hook_ns / bare_ns,
            "empty_fire_ns": empty_fire_ns,
            "with_limits_and_a_layer_overhead_per_hook_ns": limited_overhead_ns,
            "with_limits_and_a_layer_empty_fire_ns": limited_empty_fire_ns,
            "target_overhead_per_hook_ns": 100,
            "met": overhead_ns <= 100.0,
        },
        "exec_one_script": {
            "registry_us": reg_s * 1e6,
            "raw_std_command_us": raw_s * 1e6,
            "ratio": reg_s / raw_s,
            "hooks_dir_registry_us": dir_s * 1e6,
            "hooks_dir_ratio": dir_s / raw2_s,
            "with_timeout_us": timed_s * 1e6,
            "with_timeout_ratio": timed_s / raw3_s,
            "target_ratio": 1.03,
            "met": reg_s / raw_s <= 1.03,
        },
        "exec_20_drop_ins": {
            "registry_ms": many_reg_s * 1e3,
            "spawn_loop_ms": many_raw_s * 1e3,
            "ratio": many_reg_s / many_raw_s,
        },
        "timeout": {
            "timeout_ms": timeout.as_millis() as u64,
            "median_overshoot_ms": median(overshoot_ms.clone()),
            "max_overshoot_ms": max_overshoot,
            "target_overshoot_ms": 20,
            "met": max_overshoot <= 20.0,
        },
        "dispatcher": dispatcher,
        "wasm": wasm,
        "dylib": dylib.unwrap_or_else(|| json!({"skipped": "fixture plugin not built"})),
        "event": format!("{} {} {} {} {}", ev.driver(), ev.object(), ev.op(), ev.subop(), ev.extra()),
        "quick": quick,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
}
