//! The C ABI of `virt_hook.h`, mirrored as `#[repr(C)]` types. No logic here.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};

/// `VIRT_HOOK_ABI_VERSION`.
pub const VIRT_HOOK_ABI_VERSION: u32 = 1;

/// The exported symbol's name.
pub const VIRT_HOOK_SYMBOL: &[u8] = b"virt_hook_plugin_v1\0";

/// `virt_hook_io`: where the plugin writes its output.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct virt_hook_io {
    /// Host-owned; passed back unchanged.
    pub ctx: *mut c_void,
    /// Appends to the hook's stdout.
    pub write_stdout: Option<unsafe extern "C" fn(ctx: *mut c_void, buf: *const u8, len: usize)>,
    /// Appends to the hook's stderr.
    pub write_stderr: Option<unsafe extern "C" fn(ctx: *mut c_void, buf: *const u8, len: usize)>,
}

/// `virt_hook_invocation`: one event.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct virt_hook_invocation {
    /// `VIRT_HOOK_ABI_VERSION`.
    pub abi_version: u32,
    /// NUL-terminated driver name.
    pub driver: *const c_char,
    /// NUL-terminated object, `-` if absent.
    pub object: *const c_char,
    /// NUL-terminated operation.
    pub op: *const c_char,
    /// NUL-terminated sub-operation.
    pub subop: *const c_char,
    /// NUL-terminated extra argument.
    pub extra: *const c_char,
    /// The input document, or null.
    pub input: *const u8,
    /// Its length, 0 when null.
    pub input_len: usize,
    /// Output callbacks.
    pub io: virt_hook_io,
}

/// `virt_hook_plugin`: the descriptor `virt_hook_plugin_v1` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct virt_hook_plugin {
    /// `VIRT_HOOK_ABI_VERSION`.
    pub abi_version: u32,
    /// NUL-terminated static name.
    pub name: *const c_char,
    /// The hook: 0 = success, else an exit status.
    pub call: Option<unsafe extern "C" fn(inv: *const virt_hook_invocation) -> i32>,
}

/// `virt_hook_plugin_v1`'s type.
pub type virt_hook_plugin_v1_fn = unsafe extern "C" fn() -> *const virt_hook_plugin;
