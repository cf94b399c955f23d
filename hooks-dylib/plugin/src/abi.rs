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

/// `VIRT_HOOK_ABI_VERSION_2`.
pub const VIRT_HOOK_ABI_VERSION_2: u32 = 2;

/// The version 2 symbol's name.
pub const VIRT_HOOK_SYMBOL_V2: &[u8] = b"virt_hook_plugin_v2\0";

/// `enum virt_hook_level`: `VIRT_HOOK_DEBUG`.
pub const VIRT_HOOK_DEBUG: i32 = 0;
/// `VIRT_HOOK_INFO`.
pub const VIRT_HOOK_INFO: i32 = 1;
/// `VIRT_HOOK_WARN`.
pub const VIRT_HOOK_WARN: i32 = 2;
/// `VIRT_HOOK_ERROR`.
pub const VIRT_HOOK_ERROR: i32 = 3;

/// `virt_hook_config_item`: one `[config]` entry, both NUL-terminated.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct virt_hook_config_item {
    /// The key.
    pub key: *const c_char,
    /// The value as text.
    pub value: *const c_char,
}

/// A write callback.
pub type virt_hook_write_fn = unsafe extern "C" fn(ctx: *mut c_void, buf: *const u8, len: usize);

/// The log callback.
pub type virt_hook_log_fn = unsafe extern "C" fn(ctx: *mut c_void, level: i32, msg: *const c_char, len: usize);

/// `virt_hook_output`: where a version 2 plugin writes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct virt_hook_output {
    /// `sizeof(virt_hook_output)` as the host built it.
    pub size: u32,
    /// Host-owned; passed back unchanged.
    pub ctx: *mut c_void,
    /// Appends to the hook's stdout.
    pub write_stdout: Option<virt_hook_write_fn>,
    /// Appends to the hook's stderr.
    pub write_stderr: Option<virt_hook_write_fn>,
    /// One log line.
    pub log: Option<virt_hook_log_fn>,
}

/// `virt_hook_init`: what `init` receives.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct virt_hook_init {
    /// `sizeof(virt_hook_init)` as the host built it.
    pub size: u32,
    /// The plugin's own file, NUL-terminated.
    pub path: *const c_char,
    /// The `[config]` table, sorted by key.
    pub config: *const virt_hook_config_item,
    /// Its length.
    pub config_len: usize,
    /// Where `init` writes why it refused, and logs.
    pub out: *const virt_hook_output,
}

/// `virt_hook_event`: one event (version 2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct virt_hook_event {
    /// `sizeof(virt_hook_event)` as the host built it.
    pub size: u32,
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
    /// The input document, or null; `input[input_len]` is a NUL byte.
    pub input: *const u8,
    /// Its length, 0 when null.
    pub input_len: usize,
    /// Output callbacks.
    pub out: *const virt_hook_output,
    /// What `init` stored.
    pub instance: *mut c_void,
    /// The state directory, or null.
    pub state_dir: *const c_char,
    /// The `[config]` table, sorted by key.
    pub config: *const virt_hook_config_item,
    /// Its length.
    pub config_len: usize,
}

/// `virt_hook_descriptor`: what `virt_hook_plugin_v2` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct virt_hook_descriptor {
    /// `VIRT_HOOK_ABI_VERSION_2`.
    pub abi_version: u32,
    /// `sizeof(virt_hook_descriptor)` as the plugin built it.
    pub size: u32,
    /// NUL-terminated static name.
    pub name: *const c_char,
    /// Makes the instance; 0 = ready. Optional.
    pub init: Option<unsafe extern "C" fn(init: *const virt_hook_init, instance: *mut *mut c_void) -> i32>,
    /// Ends the instance. Optional.
    pub fini: Option<unsafe extern "C" fn(instance: *mut c_void)>,
    /// The hook: 0 = success, else an exit status.
    pub call: Option<unsafe extern "C" fn(event: *const virt_hook_event) -> i32>,
}

/// `virt_hook_plugin_v2`'s type.
pub type virt_hook_plugin_v2_fn = unsafe extern "C" fn() -> *const virt_hook_descriptor;
