//! A compiler child for [`virt_hooks_wasm::Compiler::Child`], for programs that cannot run
//! themselves as one: `Compiler::Child { program: "/usr/libexec/…/virt-hooks-wasm-compile",
//! args: vec![], memory }`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    virt_hooks_wasm::compiler_child_main(&args)
}
