/*
 * vcpu_limit.c - the vCPU limit as a sandboxed WASM hook, in C.
 *
 * A WASI command: libvirt's four arguments in argv, the domain XML on stdin, the
 * sidecar's [config] in the environment (VIRT_HOOK_CONFIG_MAX_VCPUS), log lines on
 * stderr with syslog priorities (<3> error, <6> info), exit status 1 to refuse. It can
 * read no file and open no socket. Build with Debian's clang, lld, wasi-libc and
 * libclang-rt-14-dev-wasm32:
 *
 *   bash examples/wasm/build-c.sh      # writes examples/wasm/vcpu-limit.wasm
 *
 * then copy vcpu-limit.wasm to DIR/qemu.plugins/30-vcpu-limit.wasm and
 * vcpu-limit.wasm.toml beside it as 30-vcpu-limit.wasm.toml.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* All of stdin, NUL-terminated (a domain's XML is kilobytes). */
static char *read_all(void)
{
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, stdin)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger) {
                free(buf);
                return NULL;
            }
            buf = bigger;
        }
    }
    if (buf)
        buf[len] = '\0';
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 5 || strcmp(argv[2], "prepare") != 0)
        return 0;
    const char *max_text = getenv("VIRT_HOOK_CONFIG_MAX_VCPUS");
    char *end = NULL;
    long max = max_text ? strtol(max_text, &end, 10) : 0;
    if (!max_text || *end != '\0' || max < 1) {
        fprintf(stderr, "<3>[config] max_vcpus must be a positive number (got %s)\n",
                max_text ? max_text : "nothing");
        return 2;
    }
    char *xml = read_all();
    const char *vcpu = xml ? strstr(xml, "<vcpu") : NULL;
    const char *value = vcpu ? strchr(vcpu, '>') : NULL;
    long vcpus = value ? strtol(value + 1, NULL, 10) : 1;
    if (vcpus > max) {
        fprintf(stderr, "<3>guest '%s' asks for %ld vCPUs; this host allows %ld\n", argv[1], vcpus, max);
        return 1;
    }
    fprintf(stderr, "<6>guest '%s': %ld vCPUs, within the limit of %ld\n", argv[1], vcpus, max);
    return 0;
}
