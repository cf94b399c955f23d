/*
 * virt_hook.h - the C ABI for native hook plugins (versions 1 and 2).
 *
 * Version 2 (below version 1 in this file) is what new plugins should use: it adds
 * init/fini with a per-instance context that receives the sidecar's `[config]`, a
 * leveled log channel, the plugin's own path and state directory, and structures that
 * grow by appending (each carries its size). A version 1 plugin keeps working as it
 * is; a plugin that exports both symbols is loaded through version 2.
 *
 * Version 1: a plugin is a shared object (`*.so`) that exports one function,
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
 * Loaded into a driver's own process (hooks-dylib), a native call cannot be
 * interrupted: a timeout reports the hook as timed out while the call keeps running.
 * Under hookctl's dispatcher each call runs in a `hookctl-native` process of its own,
 * which a timeout kills. Either way native plugins are trusted code, running with the
 * host's privileges.
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

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The environment variable naming the plugin's state directory (see above). */
#define VIRT_HOOK_STATE_ENV "VIRT_HOOK_STATE"

#ifdef __cplusplus
extern "C" {
#endif

#define VIRT_HOOK_ABI_VERSION 1

/* Where the plugin writes its output. Pass `ctx` back unchanged.
 * The callbacks may be called only during `call` and only from the thread that runs
 * `call`. Do not keep this struct: a call after `call` has returned, or from another
 * thread, is ignored; it is never undefined behaviour, but the bytes are lost. The
 * host reports such writes as a warning when it can tell: during a call of the
 * plugin, not from a thread still writing after it returned. */
typedef struct virt_hook_io {
    void *ctx; /* host-owned; pass back unchanged */
    void (*write_stdout)(void *ctx, const uint8_t *buf, size_t len);
    void (*write_stderr)(void *ctx, const uint8_t *buf, size_t len);
} virt_hook_io;

/* One hook event. */
typedef struct virt_hook_invocation {
    uint32_t abi_version;                              /* VIRT_HOOK_ABI_VERSION */
    const char *driver, *object, *op, *subop, *extra;  /* NUL-terminated, "-" if absent */
    const uint8_t *input; size_t input_len;            /* NULL/0 when there is no input;
                                                          input[input_len] is a NUL byte
                                                          not counted in input_len */
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

/* ---------------------------------------------------------------------------------
 * Version 2.
 *
 * The plugin exports `virt_hook_plugin_v2`, returning a `virt_hook_descriptor`. At
 * load the host calls `init` (if not NULL) once with the plugin's
 * path and the sidecar's `[config]`; what `init` stores in `*instance` is handed to
 * every `call` and, when the host is done with the plugin, to `fini` (if not NULL).
 * `init` returning non-zero refuses the plugin: every event it would have run fails
 * (as a load error naming the file), with what `init` wrote through its output as
 * the message.
 *
 * Everything the host passes is host-owned and valid only during the call that
 * received it (copy what you keep), except the config, which lives until `fini`.
 * `call` may run on several threads at once: `instance` must be safe to share.
 *
 * Growing without a new version: each structure starts with its size as its
 * builder saw it, and fields are only ever appended. The host fills and reads only
 * the fields both sides know; before reading a field added after the first v2
 * release, a plugin checks VIRT_HOOK_HAS(ptr, type, field).
 *
 * Output: `out->write_stdout` is the hook's stdout (the new XML at `migrate` and
 * `restore`, ignored and reported as a warning elsewhere), `out->write_stderr` the
 * message libvirt shows on failure, `out->log` a line for the report, the audit log,
 * the journal and `hookctl simulate`. The last line logged at VIRT_HOOK_ERROR is the
 * line that explains a failure. The callbacks may be used only during the call that
 * received them and only on its thread. `out` points into the host's call: never
 * keep the pointer (using it after the call returned is undefined behaviour). A copy
 * of the struct used later, or from another thread, has its writes dropped; the host
 * reports them as a warning when it can tell (during a call, or from `fini` under
 * hookctl).
 * ------------------------------------------------------------------------------- */

#define VIRT_HOOK_ABI_VERSION_2 2

/* Whether `ptr`, a `type` the other side built, has `field` (it was built by a
 * version that knows the field): VIRT_HOOK_HAS(event, virt_hook_event, config_len). */
#define VIRT_HOOK_HAS(ptr, type, field) \
    ((ptr)->size >= offsetof(type, field) + sizeof(((type *)0)->field))

/* Levels of `log`. */
enum virt_hook_level {
    VIRT_HOOK_DEBUG = 0,
    VIRT_HOOK_INFO = 1,
    VIRT_HOOK_WARN = 2,
    VIRT_HOOK_ERROR = 3
};

/* One entry of the sidecar's `[config]` table. Both are NUL-terminated; the value
 * is a string as written, an integer or float in decimal, or `true`/`false`. */
typedef struct virt_hook_config_item {
    const char *key;
    const char *value;
} virt_hook_config_item;

/* Where the plugin writes. Pass `ctx` back unchanged. */
typedef struct virt_hook_output {
    uint32_t size;      /* sizeof(virt_hook_output) as the host built it */
    void *ctx;          /* host-owned */
    void (*write_stdout)(void *ctx, const uint8_t *buf, size_t len);
    void (*write_stderr)(void *ctx, const uint8_t *buf, size_t len);
    /* One log line at `level` (a virt_hook_level); a trailing newline is dropped. */
    void (*log)(void *ctx, int32_t level, const char *msg, size_t len);
} virt_hook_output;

/* What `init` receives. */
typedef struct virt_hook_init {
    uint32_t size;                            /* sizeof(virt_hook_init) as built */
    const char *path;                         /* the plugin's own file, NUL-terminated */
    const virt_hook_config_item *config;      /* sorted by key; valid until `fini` */
    size_t config_len;
    const virt_hook_output *out;              /* stderr: why init refused; log */
} virt_hook_init;

/* One hook event. */
typedef struct virt_hook_event {
    uint32_t size;                            /* sizeof(virt_hook_event) as built */
    const char *driver, *object, *op, *subop, *extra;  /* NUL-terminated, "-" if absent */
    const uint8_t *input; size_t input_len;   /* NULL/0 without input; else
                                                 input[input_len] is a NUL byte not
                                                 counted in input_len */
    const virt_hook_output *out;
    void *instance;                           /* what `init` stored (NULL without init) */
    const char *state_dir;                    /* NULL unless the sidecar says state = true */
    const virt_hook_config_item *config;      /* the same table `init` got */
    size_t config_len;
} virt_hook_event;

/* What `virt_hook_plugin_v2` returns. */
typedef struct virt_hook_descriptor {
    uint32_t abi_version;                     /* VIRT_HOOK_ABI_VERSION_2 */
    uint32_t size;                            /* sizeof(virt_hook_descriptor) as built */
    const char *name;                         /* NUL-terminated, static */
    int32_t (*init)(const virt_hook_init *init, void **instance);  /* 0 = ready; may be NULL */
    void (*fini)(void *instance);                                   /* may be NULL */
    int32_t (*call)(const virt_hook_event *event);  /* 0 = success, else an exit status */
} virt_hook_descriptor;

/* The one exported symbol of a version 2 plugin. */
const virt_hook_descriptor *virt_hook_plugin_v2(void);

/* The value of config key `key`, or NULL. */
static inline const char *virt_hook_config(const virt_hook_config_item *config, size_t len,
                                           const char *key) {
    for (size_t i = 0; i < len; i++)
        if (strcmp(config[i].key, key) == 0)
            return config[i].value;
    return NULL;
}

/* printf-style helpers, of any length (what does not fit 1 KiB is formatted on the
 * heap; if that allocation fails, the first 1 KiB is written). */
#if defined(__GNUC__) || defined(__clang__)
#define VIRT_HOOK_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define VIRT_HOOK_PRINTF(f, a)
#endif

static inline void virt_hook_vformat_(const virt_hook_output *out, int stream, int32_t level,
                                      const char *fmt, va_list ap) {
    char small[1024];
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n < 0 || out == NULL) {
        va_end(again);
        return;
    }
    char *buf = small;
    size_t len = (size_t)n;
    if (len >= sizeof small) {
        char *big = (char *)malloc(len + 1);
        if (big != NULL && vsnprintf(big, len + 1, fmt, again) >= 0)
            buf = big;
        else
            len = sizeof small - 1;
        if (buf != big)
            free(big);
    }
    va_end(again);
    if (stream == 1 && out->write_stdout)
        out->write_stdout(out->ctx, (const uint8_t *)buf, len);
    else if (stream == 2 && out->write_stderr)
        out->write_stderr(out->ctx, (const uint8_t *)buf, len);
    else if (stream == 0 && VIRT_HOOK_HAS(out, virt_hook_output, log) && out->log)
        out->log(out->ctx, level, buf, len);
    if (buf != small)
        free(buf);
}

/* A log line: virt_hook_logf(event->out, VIRT_HOOK_INFO, "moved %d interfaces", n). */
static inline VIRT_HOOK_PRINTF(3, 4) void virt_hook_logf(const virt_hook_output *out, int32_t level,
                                                        const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    virt_hook_vformat_(out, 0, level, fmt, ap);
    va_end(ap);
}

/* To stderr: the message libvirt shows when the hook fails. */
static inline VIRT_HOOK_PRINTF(2, 3) void virt_hook_errorf(const virt_hook_output *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    virt_hook_vformat_(out, 2, 0, fmt, ap);
    va_end(ap);
}

/* To stdout: the new document at `migrate` and `restore`. */
static inline VIRT_HOOK_PRINTF(2, 3) void virt_hook_printf(const virt_hook_output *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    virt_hook_vformat_(out, 1, 0, fmt, ap);
    va_end(ap);
}

#ifdef __cplusplus
}
#endif

#endif /* VIRT_HOOK_H */
