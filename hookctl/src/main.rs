//! `hookctl`: run, simulate, list and check libvirt-style hooks.
// Doc comments on the argument types are the `--help` text, where `<DIR>` is meant.
#![allow(rustdoc::invalid_html_tags)]

// First: its `outln!` is used by the modules below.
#[macro_use]
mod output;
mod audit;
mod cli;
mod commands;
mod config;
mod journal;
#[cfg(feature = "dylib")]
mod native;

use std::process::ExitCode;

/// The `argv[0]` that makes hookctl a WASM compiler child (`virt_hooks_wasm::Compiler::Child`):
/// never an argument, since a dispatcher's first argument is a guest's name.
#[cfg(feature = "wasm")]
const COMPILE_WASM: &str = "hookctl-compile-wasm";

fn main() -> ExitCode {
    #[cfg(feature = "wasm")]
    {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if args.first().is_some_and(|a| a == COMPILE_WASM) {
            return virt_hooks_wasm::compiler_child_main(&args[1..]);
        }
    }
    // No child subreaper needed: each exec hook has a containment of its own.
    #[cfg(feature = "exec")]
    virt_hooks_exec::link();
    #[cfg(feature = "wasm")]
    {
        virt_hooks_wasm::link();
        // One event per process: allocating an instance on demand costs less than
        // reserving the pool (a 258 GB mapping and a guard page per stack).
        let one_shot = virt_hooks_wasm::EngineConfig {
            pooling: false,
            ..virt_hooks_wasm::EngineConfig::default()
        };
        let _ = virt_hooks_wasm::Sandbox::configure_global(one_shot);
        // Modules are compiled by a child of this very binary (the inode running now,
        // even if an upgrade replaced the file), under a memory limit and killed at the
        // hook's timeout: a module built to exhaust the compiler cannot hold an event.
        let _ = virt_hooks_wasm::Sandbox::configure_compiler(virt_hooks_wasm::Compiler::Child {
            program: "/proc/self/exe".into(),
            arg0: Some(COMPILE_WASM.into()),
            args: vec![],
            memory: virt_hooks_wasm::DEFAULT_COMPILE_MEMORY,
        });
    }
    if let Ok(filter) = std::env::var("HOOKCTL_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    cli::main()
}
