/*
 * name_policy.c - a native hook plugin in C.
 *
 * Refuses to prepare a guest whose name starts with "tmp-" (throwaway guests must run
 * on the scratch host), and logs nothing otherwise. Build:
 *
 *   cc -shared -fPIC -O2 -I hooks-dylib/include -o 40-name-policy.so examples/plugins/c/name_policy.c
 *
 * then copy the .so into /etc/libvirt/hooks/qemu.plugins/ on a libvirt host (no execute
 * bit needed; hookctl's dispatcher runs it), or into qemu.d/ of the hooks dir of a driver
 * that embeds virt-hooks-dylib.
 */
#include <string.h>
#include "virt_hook.h"

static void say(const virt_hook_invocation *inv, const char *text)
{
    inv->io.write_stderr(inv->io.ctx, (const uint8_t *)text, strlen(text));
}

static int32_t name_policy_call(const virt_hook_invocation *inv)
{
    if (inv->abi_version != VIRT_HOOK_ABI_VERSION)
        return 2;
    if (strcmp(inv->op, "prepare") == 0 && strncmp(inv->object, "tmp-", 4) == 0) {
        say(inv, "guest '");
        say(inv, inv->object);
        say(inv, "' is a throwaway guest (tmp-*): run it on the scratch host\n");
        return 1;
    }
    return 0;
}

static const virt_hook_plugin plugin = {
    .abi_version = VIRT_HOOK_ABI_VERSION,
    .name = "name-policy",
    .call = name_policy_call,
};

const virt_hook_plugin *virt_hook_plugin_v1(void)
{
    return &plugin;
}
