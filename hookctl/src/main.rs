//! `hookctl`: run, simulate, list and check libvirt-style hooks.
// Doc comments on the argument types are the `--help` text, where `<DIR>` is meant.
#![allow(rustdoc::invalid_html_tags)]

mod audit;
mod cli;
mod commands;
mod config;
mod journal;
#[cfg(feature = "dylib")]
mod native;
#[cfg(feature = "dylib")]
mod native_wire;
mod output;
mod sys;

use std::process::ExitCode;

fn main() -> ExitCode {
    // No child subreaper needed: each exec hook has a containment of its own.
    #[cfg(feature = "exec")]
    hooks_exec::link();
    #[cfg(feature = "wasm")]
    {
        hooks_wasm::link();
        // One event per process: allocating an instance on demand costs less than
        // reserving the pool (a 258 GB mapping and a guard page per stack).
        let one_shot = hooks_wasm::EngineConfig {
            pooling: false,
            ..hooks_wasm::EngineConfig::default()
        };
        let _ = hooks_wasm::Sandbox::configure_global(one_shot);
    }
    if let Ok(filter) = std::env::var("HOOKCTL_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    cli::main()
}
