#!/usr/bin/env bash
# End to end against a real libvirtd: hookctl installed as the qemu, daemon and network
# hook, with a plugins dir holding a shell script, a native plugin and a WASM module;
# virsh starts, destroys, saves and restores a tiny TCG guest, and a refusing and a
# hanging plugin are checked. Needs root; installs libvirt and QEMU from Debian's
# packages if they are missing. Skips (loudly) only where it cannot run.
#
# Usage: tests/e2e-libvirt.sh   (from the workspace root, after `cargo build`)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d /tmp/hookctl-e2e.XXXXXX)
hooks=/etc/libvirt/hooks
domain=hooktest
started_libvirtd=""
started_virtlogd=""

say() { printf 'e2e-libvirt: %s\n' "$*"; }
skip() { say "SKIPPED: $*"; exit 0; }
fail() {
  say "FAILED: $*"
  [ -f "$work/calls.log" ] && { echo "--- calls.log"; cat "$work/calls.log"; }
  [ -f "$work/audit.jsonl" ] && { echo "--- audit.jsonl (last 5)"; tail -n 5 "$work/audit.jsonl"; }
  exit 1
}

[ "$(id -u)" = 0 ] || skip "needs root: it installs packages, starts libvirtd and writes $hooks"

if ! command -v virsh >/dev/null || [ ! -x /usr/sbin/libvirtd ] || ! command -v qemu-system-x86_64 >/dev/null; then
  say "installing libvirt and QEMU (about 30 MB)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libvirt-daemon-system libvirt-clients qemu-system-x86 >/dev/null; }; then
    skip "libvirt and QEMU cannot be installed here"
  fi
fi

hookctl=$target/debug/hookctl
plugin_so=$target/debug/libfixture_plugin.so
wat2wasm=$target/debug/wat2wasm
for f in "$hookctl" "$plugin_so" "$wat2wasm"; do
  [ -x "$f" ] || [ -f "$f" ] || fail "$f is missing: run cargo build --workspace first"
done
# `install` refuses a binary that anyone but root could replace (the checkout may sit
# under a user's directory): install a copy where only root can write, as the README
# says (/usr/bin, where AppArmor lets libvirtd run it), unless one is there already.
# HOOKCTL_INSTALLED=1 (.ci/run, after installing the Debian package): test the
# package's /usr/bin/hookctl itself, and leave it in place.
if [ -n "${HOOKCTL_INSTALLED:-}" ]; then
  [ -x /usr/bin/hookctl ] || fail "HOOKCTL_INSTALLED is set, but /usr/bin/hookctl is missing"
  hookctl=/usr/bin/hookctl
  say "testing the installed $hookctl ($(dpkg-query -W -f '${Package} ${Version}' hookctl 2>/dev/null || echo 'not from a package'))"
elif [ -e /usr/bin/hookctl ]; then
  # hookctl runs native plugins through hookctl-native, found beside it.
  install -D -m 0755 "$hookctl" "$work/bin/hookctl"
  install -m 0755 "$target/debug/hookctl-native" "$work/bin/hookctl-native"
  hookctl=$work/bin/hookctl
else
  install -m 0755 "$hookctl" /usr/bin/hookctl
  install -m 0755 "$target/debug/hookctl-native" /usr/bin/hookctl-native
  hookctl=/usr/bin/hookctl
  installed_usr_bin=1
fi

# The dispatcher's default WASM cache: made by this test's events when there was none.
[ -e /var/cache/virt-hooks ] || made_cache=1
cleanup() {
  set +e
  virsh -q destroy "$domain" >/dev/null 2>&1
  virsh -q undefine "$domain" >/dev/null 2>&1
  # Stop the daemons we started, and wait until they are gone.
  for pid in $started_libvirtd $started_virtlogd; do
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  "$hookctl" --hooks-dir "$hooks" uninstall qemu daemon network >/dev/null 2>&1
  [ -n "${installed_usr_bin:-}" ] && rm -f /usr/bin/hookctl /usr/bin/hookctl-native
  rm -rf "$hooks/qemu.plugins" "$hooks/daemon.plugins" "$hooks/network.plugins" "$work"
  # The dispatchers' records of the state roots they used.
  rm -f "$hooks"/.*.state-roots
  [ -n "${made_cache:-}" ] && rm -rf /var/cache/virt-hooks
}
trap cleanup EXIT

if pgrep -x libvirtd >/dev/null || pgrep -x virtqemud >/dev/null; then
  skip "a libvirt daemon is already running here; this test starts its own"
fi

# --- hooks, before the daemon starts (libvirt caches their presence at start) --------
mkdir -p "$hooks"
"$hookctl" --hooks-dir "$hooks" install --force qemu daemon network >/dev/null
plugins=$hooks/qemu.plugins
cat > "$plugins/hookctl.toml" <<EOF
log = "$work/audit.jsonl"
state = "$work/state"
EOF
cp "$plugins/hookctl.toml" "$hooks/daemon.plugins/hookctl.toml"
cat > "$plugins/10-script.sh" <<EOF
#!/bin/sh
# Records every call with whether the domain XML arrived on stdin; refuses or hangs
# when the test asks for it.
xml=\$(cat)
case "\$xml" in *"</domain>"*) got=xml ;; *) got=none ;; esac
echo "\$* \$got" >> "$work/calls.log"
if [ "\$2" = prepare ] && [ -e "$work/refuse" ]; then
  echo "e2e: refusing \$1 as asked" >&2
  exit 1
fi
if [ "\$2" = start ] && [ -e "$work/hang" ]; then
  sleep 600
fi
# The commonest hook: a case whose default refuses what it does not know.
if [ "\$2" = reconnect ] && [ -e "$work/fail-reconnect" ]; then
  echo "e2e: unknown op \$2" >&2
  exit 1
fi
exit 0
EOF
chmod 755 "$plugins/10-script.sh"
printf 'timeout = 3\n' > "$plugins/10-script.sh.toml"
cp "$plugin_so" "$plugins/20-native.so"
# The native fixture rewrites br-legacy too; keep it off restore so the WASM filter
# is the one that does it there.
printf '[match]\nops = ["prepare", "start", "started", "stopped", "release"]\n' > "$plugins/20-native.so.toml"
"$wat2wasm" "$root/examples/wasm/migrate-rewrite.wat" "$plugins/30-rewrite.wasm"
cat > "$hooks/daemon.plugins/10-daemon.sh" <<EOF
#!/bin/sh
echo "daemon \$*" >> "$work/calls.log"
EOF
chmod 755 "$hooks/daemon.plugins/10-daemon.sh"
"$hookctl" --hooks-dir "$hooks" list >/dev/null || fail "hookctl list failed"

# --- daemons ---------------------------------------------------------------------------
if [ -e /dev/kvm ] && [ "$(stat -c %a /dev/kvm)" = 600 ]; then
  chgrp kvm /dev/kvm 2>/dev/null && chmod 0660 /dev/kvm
fi
mkdir -p /run/libvirt
/usr/sbin/virtlogd -d -p "$work/virtlogd.pid"
started_virtlogd=$(cat "$work/virtlogd.pid")
/usr/sbin/libvirtd -d -p "$work/libvirtd.pid"
for _ in $(seq 1 100); do
  [ -s "$work/libvirtd.pid" ] && virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
started_libvirtd=$(cat "$work/libvirtd.pid" 2>/dev/null || true)
[ -n "$started_libvirtd" ] || fail "libvirtd did not start"
export LIBVIRT_DEFAULT_URI=qemu:///system
virsh version >/dev/null || fail "libvirtd does not answer"
grep -q '^daemon - start - start$' "$work/calls.log" || fail "the daemon hook did not see '- start - start'"

# --- a tiny TCG guest ------------------------------------------------------------------
cat > "$work/$domain.xml" <<EOF
<domain type='qemu'>
  <name>$domain</name>
  <description>on br-legacy</description>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><console type='pty'/></devices>
</domain>
EOF
virsh -q define "$work/$domain.xml" >/dev/null

expect_calls() { # expect_calls "line"...: the calls since the last mark, in order
  local got
  got=$(tail -n +"$((mark + 1))" "$work/calls.log")
  [ "$got" = "$(printf '%s\n' "$@")" ] || fail "expected calls:
$(printf '%s\n' "$@")
got:
$got"
  mark=$(wc -l < "$work/calls.log")
}
mark=$(wc -l < "$work/calls.log")

say "start"
virsh -q start "$domain" >/dev/null || fail "virsh start failed"
expect_calls "$domain prepare begin - xml" "$domain start begin - xml" "$domain started begin - xml"
# Every plugin ran for each of those events: script, native, wasm.
for op in prepare start started; do
  line=$(grep "\"op\":\"$op\"" "$work/audit.jsonl" | tail -n 1)
  for name in 10-script.sh 20-native.so 30-rewrite.wasm; do
    case "$line" in *"$name"*) ;; *) fail "$name did not run at $op: $line" ;; esac
  done
done

say "destroy"
virsh -q destroy "$domain" >/dev/null
expect_calls "$domain stopped end - xml" "$domain release end - xml"

say "save and restore (the WASM filter rewrites the XML)"
virsh -q start "$domain" >/dev/null
virsh -q save "$domain" "$work/$domain.save" >/dev/null
mark=$(wc -l < "$work/calls.log")
virsh -q restore "$work/$domain.save" >/dev/null || fail "virsh restore failed"
expect_calls "$domain restore begin - xml" "$domain prepare begin - xml" "$domain start begin - xml" "$domain started begin - xml"
# Captured first: with pipefail, `virsh | grep -q` fails when grep exits before virsh
# has written everything (SIGPIPE).
live_xml=$(virsh dumpxml "$domain")
case "$live_xml" in *"<description>on br0</description>"*) ;; *) fail "the WASM filter's XML was not used on restore: $live_xml" ;; esac
virsh -q destroy "$domain" >/dev/null
mark=$(wc -l < "$work/calls.log")

say "a refusing plugin"
touch "$work/refuse"
if out=$(virsh -q start "$domain" 2>&1); then fail "virsh start succeeded despite the refusing plugin"; fi
case "$out" in *"10-script.sh: exit status 1: e2e: refusing $domain as asked"*) ;; *) fail "virsh did not show the plugin's message: $out" ;; esac
[ "$(virsh domstate "$domain")" = "shut off" ] || fail "the refused guest is not off"
say "virsh said: $out"
rm "$work/refuse"

say "a hanging plugin with a timeout"
touch "$work/hang"
begin=$(date +%s)
if out=$(virsh -q start "$domain" 2>&1); then fail "virsh start succeeded despite the hanging plugin"; fi
took=$(( $(date +%s) - begin ))
[ "$took" -lt 30 ] || fail "virsh start took ${took}s with a 3 s plugin timeout"
case "$out" in *"timed out after 3s"*) ;; *) fail "virsh did not say the plugin timed out: $out" ;; esac
say "virsh said: $out"
rm "$work/hang"
[ "$(virsh domstate "$domain")" = "shut off" ] || fail "the guest is not off after the timeout"

say "a sidecar typo, then a daemon restart with the guest running: the guest survives"
virsh -q start "$domain" >/dev/null || fail "virsh start failed"
cp "$plugins/20-native.so.toml" "$work/20-native.so.toml.good"
printf 'timout = 2\n[match]\nobjects = ["someone-else-*"]\n' > "$plugins/20-native.so.toml"
"$hookctl" --hooks-dir "$hooks" check qemu >/dev/null 2>&1 && fail "hookctl check passed a sidecar with a typo"
restart_libvirtd() {
  : > "$work/calls.log"
  kill "$started_libvirtd"
  for _ in $(seq 1 100); do kill -0 "$started_libvirtd" 2>/dev/null || break; sleep 0.1; done
  rm -f "$work/libvirtd.pid"
  /usr/sbin/libvirtd -d -p "$work/libvirtd.pid"
  for _ in $(seq 1 100); do
    [ -s "$work/libvirtd.pid" ] && virsh version >/dev/null 2>&1 && break
    sleep 0.2
  done
  started_libvirtd=$(cat "$work/libvirtd.pid" 2>/dev/null || true)
  [ -n "$started_libvirtd" ] || fail "libvirtd did not restart"
  for _ in $(seq 1 50); do grep -q "^$domain reconnect begin - xml$" "$work/calls.log" && break; sleep 0.2; done
  grep -q "^$domain reconnect begin - xml$" "$work/calls.log" || fail "no reconnect hook after the restart"
  # libvirt acts on the hook's status right after it: give it a moment.
  sleep 1
}
# And the script plugin fails at reconnect, as a `case` with a default `exit 1` does.
touch "$work/fail-reconnect"
restart_libvirtd
[ "$(virsh domstate "$domain")" = "running" ] || fail "libvirt killed the running guest over a sidecar typo or a plugin failing at reconnect"
grep '"op":"reconnect"' "$work/audit.jsonl" | tail -n 1 | grep -q 'unknown field `timout`' \
  || fail "the audit log does not record the ignored, unloadable plugin at reconnect"
grep '"op":"reconnect"' "$work/audit.jsonl" | tail -n 1 | grep -q '"spared_plugins":\[[^]]*10-script.sh' \
  || fail "the audit log does not record the script plugin's failure at reconnect as spared"
cp "$work/20-native.so.toml.good" "$plugins/20-native.so.toml"

say "a plugin whose sidecar says on_reconnect_failure = \"kill\" fails at reconnect: libvirt kills the guest"
printf 'timeout = 3\non_reconnect_failure = "kill"\n' > "$plugins/10-script.sh.toml"
restart_libvirtd
for _ in $(seq 1 50); do [ "$(virsh domstate "$domain")" = "shut off" ] && break; sleep 0.2; done
[ "$(virsh domstate "$domain")" = "shut off" ] || fail "the guest still runs though its plugin asked for libvirt's behaviour at reconnect"
rm "$work/fail-reconnect"
printf 'timeout = 3\n' > "$plugins/10-script.sh.toml"
virsh -q destroy "$domain" >/dev/null 2>&1 || true

say "uninstall refuses while a running guest's plugin holds state, and release clears it"
cat > "$plugins/40-state.sh" <<EOF
#!/bin/sh
cat >/dev/null
[ "\$2" = prepare ] && echo "reserved for \$1" > "\$VIRT_HOOK_STATE/note"
exit 0
EOF
chmod 755 "$plugins/40-state.sh"
printf 'state = true\n' > "$plugins/40-state.sh.toml"
virsh -q start "$domain" >/dev/null || fail "virsh start failed"
if out=$("$hookctl" --hooks-dir "$hooks" uninstall qemu 2>&1); then
  fail "uninstall went ahead while $domain holds live state: $out"
fi
case "$out" in *"$domain"*) ;; *) fail "uninstall's refusal does not name $domain: $out" ;; esac
[ -L "$hooks/qemu" ] || fail "the refused uninstall removed the qemu hook"
state=$("$hookctl" --hooks-dir "$hooks" state qemu)
case "$state" in *"$domain"*) ;; *) fail "hookctl state does not list $domain's live state: $state" ;; esac
virsh -q destroy "$domain" >/dev/null
for _ in $(seq 1 50); do
  state=$("$hookctl" --hooks-dir "$hooks" state qemu)
  case "$state" in *"$domain"*) sleep 0.2 ;; *) break ;; esac
done
case "$state" in *"$domain"*) fail "the guest's release left its state behind: $state" ;; esac
rm "$plugins/40-state.sh" "$plugins/40-state.sh.toml"

say "install --force from a second hookctl, back and forth, while the guest starts and stops: no event finds the hook missing"
# Where AppArmor confines libvirtd, only /usr/bin/hookctl may run: skip this part there.
if [ -d /sys/kernel/security/apparmor ] && grep -q libvirtd /sys/kernel/security/apparmor/profiles 2>/dev/null; then
  say "skipped the relink step: libvirtd is confined by AppArmor here"
else
  mkdir -p "$work/bin2"
  install -m 0755 "$hookctl" "$work/bin2/hookctl"
  [ -x "$(dirname "$hookctl")/hookctl-native" ] && install -m 0755 "$(dirname "$hookctl")/hookctl-native" "$work/bin2/hookctl-native"
  (
    for _ in $(seq 1 6); do
      virsh -q start "$domain" >/dev/null 2>>"$work/relink-errors" || echo "start failed" >> "$work/relink-errors"
      virsh -q destroy "$domain" >/dev/null 2>>"$work/relink-errors" || echo "destroy failed" >> "$work/relink-errors"
    done
  ) &
  events=$!
  swaps=0
  while kill -0 "$events" 2>/dev/null; do
    swaps=$((swaps + 2))
    "$work/bin2/hookctl" --hooks-dir "$hooks" install --force qemu >/dev/null 2>&1 || fail "install --force from the second hookctl failed"
    "$hookctl" --hooks-dir "$hooks" install --force qemu >/dev/null 2>&1 || fail "install --force back failed"
  done
  wait "$events" || true
  if [ -s "$work/relink-errors" ]; then fail "events failed while hookctl was relinked: $(head -c 600 "$work/relink-errors")"; fi
  [ -e "$hooks/qemu.pre-hookctl" ] && fail "a hookctl was kept as the user's old hook ($hooks/qemu.pre-hookctl)"
  [ "$(readlink "$hooks/qemu")" = "$hookctl" ] || fail "the qemu hook does not point at $hookctl after relinking: $(readlink "$hooks/qemu")"
  [ "$swaps" -ge 10 ] || fail "only $swaps relinks happened during 12 guest events: the step tested nothing"
  say "$swaps relinks during 12 guest events, none failed"
fi

say "passed (start, destroy, save/restore filter, refusal, timeout; ${took}s for the hung start; a sidecar typo and a failing plugin at reconnect spared the guest; on_reconnect_failure = \"kill\" did not; uninstall refused over live state; relinking under events lost none)"
echo "e2e-libvirt: 1 passed, 0 failed"
