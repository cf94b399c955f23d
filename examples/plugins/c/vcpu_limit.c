/*
 * vcpu_limit.c - a native hook plugin in C, ABI version 2.
 *
 * Refuses to prepare a guest that asks for more vCPUs than `max_vcpus` in its sidecar's
 * [config] table, and logs what it decided. Build and try it:
 *
 *   cc -shared -fPIC -O2 -Wall -I hooks-dylib/include \
 *      -o 30-vcpu-limit.so examples/plugins/c/vcpu_limit.c
 *   cp 30-vcpu-limit.so examples/plugins/c/vcpu_limit.so.toml DIR/qemu.plugins/
 *   (rename the sidecar to 30-vcpu-limit.so.toml)
 *   hookctl --hooks-dir DIR simulate qemu start vm --input examples/domain.xml
 *
 * The sidecar:
 *   [config]
 *   max_vcpus = 8
 */
#include <stdlib.h>
#include <string.h>
#include "virt_hook.h"

struct limit {
    long max_vcpus;
};

/* Once per load: read the config, refuse to start without a usable limit. */
static int32_t vcpu_limit_init(const virt_hook_init *init, void **instance)
{
    const char *max = virt_hook_config(init->config, init->config_len, "max_vcpus");
    char *end = NULL;
    long value = max ? strtol(max, &end, 10) : 0;
    if (!max || *end != '\0' || value < 1) {
        virt_hook_errorf(init->out, "[config] max_vcpus must be a positive number (got %s)",
                         max ? max : "nothing");
        return 1;
    }
    struct limit *limit = malloc(sizeof *limit);
    if (!limit)
        return 1;
    limit->max_vcpus = value;
    *instance = limit;
    return 0;
}

static void vcpu_limit_fini(void *instance)
{
    free(instance);
}

/* The <vcpu> element's number; 1 (libvirt's default) when there is none. The input is
 * followed by a NUL byte, so strstr and strtol may read it as a C string. */
static long vcpus_of(const virt_hook_event *event)
{
    const char *vcpu = event->input ? strstr((const char *)event->input, "<vcpu") : NULL;
    const char *value = vcpu ? strchr(vcpu, '>') : NULL;
    return value ? strtol(value + 1, NULL, 10) : 1;
}

static int32_t vcpu_limit_call(const virt_hook_event *event)
{
    const struct limit *limit = event->instance;
    if (strcmp(event->op, "prepare") != 0)
        return 0;
    long vcpus = vcpus_of(event);
    if (vcpus > limit->max_vcpus) {
        virt_hook_logf(event->out, VIRT_HOOK_ERROR, "guest '%s' asks for %ld vCPUs; this host allows %ld",
                       event->object, vcpus, limit->max_vcpus);
        virt_hook_errorf(event->out, "guest '%s' asks for %ld vCPUs; this host allows %ld\n",
                         event->object, vcpus, limit->max_vcpus);
        return 1;
    }
    virt_hook_logf(event->out, VIRT_HOOK_INFO, "guest '%s': %ld vCPUs, within the limit of %ld",
                   event->object, vcpus, limit->max_vcpus);
    return 0;
}

static const virt_hook_descriptor descriptor = {
    .abi_version = VIRT_HOOK_ABI_VERSION_2,
    .size = sizeof(virt_hook_descriptor),
    .name = "vcpu-limit",
    .init = vcpu_limit_init,
    .fini = vcpu_limit_fini,
    .call = vcpu_limit_call,
};

const virt_hook_descriptor *virt_hook_plugin_v2(void)
{
    return &descriptor;
}
