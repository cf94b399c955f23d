/*
 * virt_hook.h - the C ABI for native hook plugins (version 1).
 *
 * A plugin is a shared object (`*.so`) that exports one function,
 * `virt_hook_plugin_v1`, returning a descriptor. The host (hooks-dylib, hookctl)
 * calls `call` once per hook event with libvirt's four arguments and the input
 * document, exactly what an executable hook gets as argv and stdin.
 *
 * Ownership and lifetimes:
 *   - Every pointer in `virt_hook_invocation` is owned by the host and valid only
 *     during the call. Copy what you need to keep.
 *   - The descriptor returned by `virt_hook_plugin_v1` and the `name` it points to
 *     are owned by the plugin and must stay valid for the life of the process
 *     (return a pointer to a static). The host never unloads a plugin.
 *   - `call` may be called from several threads at once, for different events:
 *     it must be thread-safe.
 *
 * Result: `call` returns 0 for success; anything else is an exit status, and the
 * event fails as when a hook script exits non-zero (libvirt's policy for that
 * event decides what happens). Bytes written with `io.write_stderr` are the message
 * shown on failure. For `migrate` and `restore`, bytes written with
 * `io.write_stdout` replace the domain XML (write nothing to keep it); for other
 * events stdout is recorded and ignored.
 *
 * A native call cannot be interrupted: a host timeout reports the hook as timed
 * out, but the call keeps running. Native plugins are trusted code, running in the
 * host process with its privileges.
 *
 * Per-guest state: a plugin whose sidecar (`<plugin>.so.toml`) says `state = true`
 * gets a directory that lives from the guest's first event until after its
 * `release` (for networks, until after `stopped`):
 * `/run/virt-hooks/state/<driver>/<object>/<plugin file name>/`, root's, 0700.
 * hookctl runs each call in its own `hookctl-native` process and names the directory
 * in that process's environment:
 *
 *     const char *state = getenv(VIRT_HOOK_STATE_ENV);  // NULL: no state asked
 *
 * A host that loads plugins into its own process (hooks-dylib embedded in a driver)
 * cannot set it per call and refuses to load a plugin that asks for state.
 */
#ifndef VIRT_HOOK_H
#define VIRT_HOOK_H

#include <stddef.h>
#include <stdint.h>

/* The environment variable naming the plugin's state directory (see above). */
#define VIRT_HOOK_STATE_ENV "VIRT_HOOK_STATE"

#ifdef __cplusplus
extern "C" {
#endif

#define VIRT_HOOK_ABI_VERSION 1

/* Where the plugin writes its output. Pass `ctx` back unchanged.
 * The callbacks may be called only during `call` and only from the thread that runs
 * `call`. Do not keep this struct: a call after `call` has returned, or from another
 * thread, is ignored (the host reports it as a warning); it is never undefined
 * behaviour, but the bytes are lost. */
typedef struct virt_hook_io {
    void *ctx; /* host-owned; pass back unchanged */
    void (*write_stdout)(void *ctx, const uint8_t *buf, size_t len);
    void (*write_stderr)(void *ctx, const uint8_t *buf, size_t len);
} virt_hook_io;

/* One hook event. */
typedef struct virt_hook_invocation {
    uint32_t abi_version;                              /* VIRT_HOOK_ABI_VERSION */
    const char *driver, *object, *op, *subop, *extra;  /* NUL-terminated, "-" if absent */
    const uint8_t *input; size_t input_len;            /* NULL/0 when there is no input; NOT
                                                          NUL-terminated: use input_len */
    virt_hook_io io;
} virt_hook_invocation;

/* What `virt_hook_plugin_v1` returns. */
typedef struct virt_hook_plugin {
    uint32_t abi_version;                              /* VIRT_HOOK_ABI_VERSION */
    const char *name;                                  /* NUL-terminated, static */
    int32_t (*call)(const virt_hook_invocation *inv);  /* 0 = success, else an exit status */
} virt_hook_plugin;

/* The one exported symbol. */
const virt_hook_plugin *virt_hook_plugin_v1(void);

#ifdef __cplusplus
}
#endif

#endif /* VIRT_HOOK_H */
