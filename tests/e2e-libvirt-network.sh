#!/usr/bin/env bash
# End to end against a real libvirtd: libvirt's NETWORK hooks, through hookctl installed
# as the network hook, with shell-script plugins in network.plugins/.
#
# What it checks, on an isolated network (no <forward>, no IP, so no DHCP and no dnsmasq;
# <dns enable='no'/>) and a tiny TCG guest with an interface on it:
#   - the calls libvirt makes, step by step (net-start, net-update, guest start, daemon
#     restart with the guest running, guest destroy, net-destroy, ...), and the hookData
#     document of each, against golden data in tests/golden/libvirt-9.0-network/;
#   - that the plugin sees exactly what libvirt gives a plain hook script (a recorder in
#     network.d/ that libvirt runs itself, beside hookctl): the same arguments, the same
#     stdin byte for byte;
#   - a plugin that exits 1 at `start begin` makes `virsh net-start` fail, with an error
#     naming the plugin and carrying its stderr, and the network stays inactive.
#
# Isolation (it cannot touch the host's interfaces, firewall or libvirt state):
#   the test re-runs itself under `unshare --net --mount --pid --fork --kill-child
#   --mount-proc`: a new network namespace (libvirt's bridge, tap device and the iptables
#   rules libvirt adds even for an isolated network all live and die there), a private
#   mount namespace (propagation private) with fresh tmpfs over /run, /etc/libvirt,
#   /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt and a sysfs of the new
#   network namespace (so /sys/class/net is the namespace's, and no cgroup or securityfs
#   mount is visible: libvirt makes no cgroups and loads no AppArmor profile), no D-Bus
#   (the private /run has no bus socket, so no firewalld and no machined), and a PID
#   namespace whose init is the test itself: when it exits, the kernel kills every
#   process left in it (libvirtd, virtlogd, QEMU); when the outer script is interrupted
#   it kills unshare, and --kill-child takes the namespace down the same way.
#   Nothing is written outside the namespace except the test's own mktemp dir and any of
#   those mount points that did not exist (both removed on exit) and, with
#   UPDATE_GOLDEN=1, the golden files; a root-only /dev/kvm is replaced, inside the
#   namespace only, by a node of group kvm. The script checks after the run
#   that no process of its namespace is left and that /etc/libvirt, /run/libvirt,
#   /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and the host's interfaces are
#   as they were.
#
# Needs root (skips loudly otherwise); installs libvirt and QEMU from Debian's packages
# if they are missing. Without QEMU (or when the guest cannot start) the guest steps are
# SKIPPED, loudly, and the rest still runs.
#
# Usage: tests/e2e-libvirt-network.sh   (from anywhere, after `cargo build -p hookctl`)
#   HOOKCTL_INSTALLED=1  test /usr/bin/hookctl (the Debian package) instead of
#                        ${CARGO_TARGET_DIR:-target}/debug/hookctl
#   UPDATE_GOLDEN=1      rewrite tests/golden/libvirt-9.0-network/ from this run
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
self=$root/tests/$(basename "$0")
golden=$root/tests/golden/libvirt-9.0-network
net=hooknet
guest=hooknet-guest
hooks=/etc/libvirt/hooks
# Hidden in the test's mount namespace under fresh tmpfs (and /run too).
private_dirs="/etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt"

say() { printf 'e2e-libvirt-network: %s\n' "$*"; }
# "PID COMMAND" of the running processes whose command matches the extended regex $1
# (from /proc: procps may not be installed).
running() {
  local p c
  for p in /proc/[0-9]*; do
    c=$(cat "$p/comm" 2>/dev/null) || continue
    [[ "$c" =~ ^($1)$ ]] && echo "${p#/proc/} $c"
  done
  return 0
}
skip() { say "SKIPPED: $*"; exit 0; }

# ======================================================================================
# Inside the namespaces: the daemons, the hooks and the virsh steps.
# ======================================================================================
inner() {
  # Globals: the EXIT trap needs them after this function has returned.
  work=$E2E_NET_WORK hookctl=$E2E_NET_HOOKCTL
  mark=0 guest_ok=1 bridge=""
  export LIBVIRT_DEFAULT_URI=qemu:///system

  fail() {
    say "FAILED: $*"
    if [ -s "$work/raw/count" ]; then
      echo "--- network hook calls so far (as libvirt made them)"
      for f in "$work"/raw/[0-9]*.args; do sed -n '2,5p' "$f" | paste -sd ' '; done
    fi
    [ -s "$work/audit.jsonl" ] && { echo "--- hookctl audit log (last 3 lines)"; tail -n 3 "$work/audit.jsonl"; }
    [ -s "$work/libvirtd.log" ] && { echo "--- libvirtd.log (last 15 lines)"; tail -n 15 "$work/libvirtd.log"; }
    exit 1
  }

  stop_daemons() {
    local pid f
    for f in libvirtd virtlogd; do
      pid=$(cat "$work/$f.pid" 2>/dev/null) || continue
      kill "$pid" 2>/dev/null || continue
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$work/$f.pid"
    done
  }
  cleanup_inner() {
    set +e
    virsh -q destroy "$guest" >/dev/null 2>&1
    virsh -q net-destroy "$net" >/dev/null 2>&1
    stop_daemons
    # Anything still running here dies with this shell (the PID namespace's init).
  }
  trap cleanup_inner EXIT

  # --- the private world -------------------------------------------------------------
  readlink /proc/self/ns/net > "$work/netns"
  [ "$(cat "$work/netns")" != "$E2E_NET_HOST_NETNS" ] || fail "not in a new network namespace"
  [ "$(findmnt -no PROPAGATION /)" = private ] || fail "the mount namespace is not private: $(findmnt -no PROPAGATION /)"
  # A sysfs of this network namespace (the inherited one shows the host's interfaces);
  # lazily detaching the old /sys also drops its cgroup and securityfs mounts here.
  umount -l /sys
  mount -t sysfs sysfs /sys
  [ "$(ls /sys/class/net)" = lo ] || fail "the new network namespace is not empty: $(ls /sys/class/net)"
  local d
  for d in /run $private_dirs; do   # the outer part made any that were missing
    mount -t tmpfs -o mode=0755 hooknet-e2e "$d" || fail "cannot mount a private tmpfs on $d"
  done
  # Built-in defaults for everything (the host's own /etc/libvirt is not read), except: no
  # SELinux/AppArmor driver (an AppArmor profile per guest would be loaded into the
  # host's kernel).
  mkdir -p /etc/libvirt/qemu/networks
  echo 'security_driver = "none"' > /etc/libvirt/qemu.conf
  # libvirt re-probes QEMU on every call when /dev/kvm is root-only; give this
  # namespace its own node with group kvm, 0660, leaving the host's /dev/kvm alone.
  if [ -c /dev/kvm ] && [ "$(stat -c %a /dev/kvm)" = 600 ] && getent group kvm >/dev/null; then
    mkdir /run/hooknet-e2e-dev
    mknod -m 0660 /run/hooknet-e2e-dev/kvm c "$((0x$(stat -c %t /dev/kvm)))" "$((0x$(stat -c %T /dev/kvm)))"
    chgrp kvm /run/hooknet-e2e-dev/kvm
    mount --bind /run/hooknet-e2e-dev/kvm /dev/kvm
  fi

  # --- hooks, before the daemon starts (libvirt caches their presence at start) --------
  mkdir -p "$hooks/network.d" "$work/raw" "$work/plugin" "$work/events"
  if [ -z "${HOOKCTL_INSTALLED:-}" ]; then
    # The copy made at start, where Debian's libvirtd AppArmor profile lets libvirtd
    # execute it (/etc/libvirt/hooks/**), read-only.
    mkdir "$hooks/.hookctl-bin"
    mount --bind "$work/bin" "$hooks/.hookctl-bin"
    mount -o remount,bind,ro "$hooks/.hookctl-bin"
    hookctl=$hooks/.hookctl-bin/hookctl
  fi
  "$hookctl" --hooks-dir "$hooks" install network >/dev/null || fail "hookctl install network failed"
  [ "$(readlink "$hooks/network")" = "$hookctl" ] || fail "$hooks/network is not a link to $hookctl: $(ls -l "$hooks/network")"
  printf 'log = "%s"\n' "$work/audit.jsonl" > "$hooks/network.plugins/hookctl.toml"
  # Records one call: argv ($0 first, one per line) and stdin, byte for byte.
  recorder() {
    cat <<EOF
#!/bin/sh
set -e
dir=$1
n=\$((\$(cat "\$dir/count" 2>/dev/null || echo 0) + 1))
echo "\$n" > "\$dir/count"
f=\$dir/\$(printf %03d "\$n")
printf '%s\n' "\$0" "\$@" > "\$f.args"
cat > "\$f.stdin"
EOF
  }
  recorder "$work/plugin" > "$hooks/network.plugins/10-record.sh"
  cat > "$hooks/network.plugins/20-refuse.sh" <<EOF
#!/bin/sh
cat > /dev/null
if [ "\$2 \$3" = "start begin" ] && [ -e "$work/refuse" ]; then
  echo "this stdout must not reach virsh"
  echo "hooknet-e2e: refusing to start \$1 as asked" >&2
  exit 1
fi
exit 0
EOF
  # libvirt runs network.d/ itself, after the main script (hookctl): what libvirt sends.
  recorder "$work/raw" > "$hooks/network.d/50-raw.sh"
  chmod 0755 "$hooks/network.plugins/10-record.sh" "$hooks/network.plugins/20-refuse.sh" "$hooks/network.d/50-raw.sh"
  "$hookctl" --hooks-dir "$hooks" check network >/dev/null 2>&1 \
    || fail "hookctl check network failed: $("$hookctl" --hooks-dir "$hooks" check network 2>&1)"

  # --- daemons, with a clean environment as systemd gives them ---------------------------
  start_libvirtd() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      LIBVIRT_LOG_OUTPUTS="3:file:$work/libvirtd.log" /usr/sbin/libvirtd -d -p "$work/libvirtd.pid" \
      || fail "libvirtd -d failed"
    for _ in $(seq 1 150); do
      [ -s "$work/libvirtd.pid" ] && virsh version >/dev/null 2>&1 && return 0
      sleep 0.1
    done
    fail "libvirtd did not answer within 15 s"
  }
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/sbin/virtlogd -d -p "$work/virtlogd.pid" || fail "virtlogd -d failed"
  start_libvirtd
  [ "$(readlink "/proc/$(cat "$work/libvirtd.pid")/ns/net")" = "$(cat "$work/netns")" ] \
    || fail "libvirtd is not in the test's network namespace"

  # --- steps ---------------------------------------------------------------------------
  # step NAME DESCRIPTION: names the next batch of calls (NAME sorts in run order; a step
  # that needs the guest has "guest" in its name, so that it can be left out).
  step() {
    cur_step=$1
    printf '%s\t%s\n' "$1" "$2" >> "$work/events/steps"
    say "$1: $2"
  }
  # expect_calls "OP SUBOP EXTRA"...: the network hook calls of the current step, in
  # order; each must have reached the plugin exactly as libvirt sent it. Files them
  # under events/ for the golden comparison.
  expect_calls() {
    local n np i k=0 want got="" op sub
    n=$(cat "$work/raw/count" 2>/dev/null || echo 0)
    for ((i = mark + 1; i <= n; i++)); do
      got+="$(sed -n '2,5p' "$work/raw/$(printf %03d "$i").args" | paste -sd ' ')"$'\n'
    done
    want=""
    [ $# -eq 0 ] || want=$(printf "$net %s\n" "$@")
    [ "${got%$'\n'}" = "$want" ] || fail "$cur_step: expected these network hook calls:
${want:-(none)}
got:
${got:-(none)}"
    np=$(cat "$work/plugin/count" 2>/dev/null || echo 0)
    [ "$np" = "$n" ] || fail "$cur_step: libvirt made $n network hook calls so far, the plugin behind hookctl saw $np"
    for ((i = mark + 1; i <= n; i++)); do
      k=$((k + 1))
      local raw=$work/raw/$(printf %03d "$i") plug=$work/plugin/$(printf %03d "$i")
      [ "$(sed -n 1p "$raw.args")" = "$hooks/network.d/50-raw.sh" ] \
        || fail "$cur_step: libvirt ran the network.d script as $(sed -n 1p "$raw.args"), not by its full path"
      [ "$(sed -n 1p "$plug.args")" = "$hooks/network.plugins/10-record.sh" ] \
        || fail "$cur_step: hookctl ran the plugin as $(sed -n 1p "$plug.args")"
      [ "$(sed -n '2,$p' "$plug.args")" = "$(sed -n '2,$p' "$raw.args")" ] \
        || fail "$cur_step: the plugin got arguments [$(sed -n '2,$p' "$plug.args" | paste -sd ' ')], libvirt sent [$(sed -n '2,$p' "$raw.args" | paste -sd ' ')]"
      cmp -s "$plug.stdin" "$raw.stdin" || fail "$cur_step: the plugin's stdin differs from what libvirt sent:
$(diff <(cat "$raw.stdin"; echo) <(cat "$plug.stdin"; echo))"
      read -r _ op sub _ < <(sed -n '2,5p' "$raw.args" | paste -sd ' ')
      cp "$plug.args" "$work/events/$cur_step.$k.$op-$sub.args"
      cp "$plug.stdin" "$work/events/$cur_step.$k.$op-$sub.stdin"
    done
    mark=$n
  }
  net_active() { virsh net-info "$net" | awk '$1 == "Active:" { print $2 }'; }
  # Waits (up to 10 s) until libvirt has made N network hook calls in all.
  wait_calls() {
    for _ in $(seq 1 100); do
      [ "$(cat "$work/raw/count" 2>/dev/null || echo 0)" -ge "$1" ] && return 0
      sleep 0.1
    done
    return 0   # expect_calls says what is missing
  }

  cat > "$work/$net.xml" <<EOF
<network>
  <name>$net</name>
  <dns enable='no'/>
</network>
EOF
  # As in e2e-libvirt.sh: no disk, no graphics, 64 MiB, TCG. No option ROM on the NIC:
  # nothing boots from it, and the test does not need the iPXE ROM files.
  cat > "$work/$guest.xml" <<EOF
<domain type='qemu'>
  <name>$guest</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <interface type='network'>
      <source network='$net'/>
      <rom enabled='no'/>
    </interface>
    <console type='pty'/>
  </devices>
</domain>
EOF

  step 00-define "virsh net-define, virsh define"
  virsh -q net-define "$work/$net.xml" >/dev/null || fail "virsh net-define failed"
  virsh -q define "$work/$guest.xml" >/dev/null || fail "virsh define failed"
  expect_calls

  step 10-net-start "virsh net-start $net"
  virsh -q net-start "$net" >/dev/null || fail "virsh net-start failed"
  expect_calls "start begin -" "started begin -"
  [ "$(net_active)" = yes ] || fail "$net is not active after net-start"
  bridge=$(virsh net-info "$net" | awk '$1 == "Bridge:" { print $2 }')
  [ -d "/sys/class/net/$bridge/bridge" ] || fail "no bridge '$bridge' in the test's network namespace"
  if [ -n "$(running dnsmasq)" ]; then fail "libvirt started dnsmasq for a network without IP or DNS"; fi

  step 20-net-update "virsh net-update $net add portgroup <portgroup name='hook-pg'/> --live --config"
  virsh -q net-update "$net" add portgroup "<portgroup name='hook-pg'/>" --live --config >/dev/null \
    || fail "virsh net-update failed"
  expect_calls "updated begin -"

  # --- the guest: port-created / port-deleted ------------------------------------------
  step 30-guest-start "virsh start $guest"
  local out why=""
  if ! command -v qemu-system-x86_64 >/dev/null; then
    why="qemu-system-x86_64 is not installed"
  elif ! out=$(virsh -q start "$guest" 2>&1); then
    case "$out" in
      *"Hook script"* | *hookctl* | *network.plugins*) fail "virsh start failed because of a hook: $out" ;;
    esac
    why="a QEMU guest cannot start here: virsh start said: ${out//$'\n'/ }"
    [ -s "/var/log/libvirt/qemu/$guest.log" ] && { echo "--- QEMU log"; tail -n 10 "/var/log/libvirt/qemu/$guest.log"; }
    # The failed start may have created and deleted its port; those calls are not checked.
    mark=$(cat "$work/raw/count" 2>/dev/null || echo 0)
  fi
  if [ -n "$why" ]; then
    guest_ok=0
    say "SKIPPED: the guest steps (port-created, port-deleted, port-created at reconnect, net-destroy under a guest): $why"
    echo "$why" > "$work/guest-skipped"
  fi
  if [ "$guest_ok" = 1 ]; then
    expect_calls "port-created begin -"
    [ "$(virsh domstate "$guest")" = running ] || fail "$guest is not running"
    compgen -G "/sys/class/net/$bridge/brif/*" >/dev/null || fail "no tap device on $bridge after the guest started"

    step 40-daemon-restart-guest-running "libvirtd restarted (SIGTERM, start) with $guest running"
    local before pid
    before=$(cat "$work/raw/count")
    pid=$(cat "$work/libvirtd.pid")
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "libvirtd did not stop within 10 s of SIGTERM"
    rm -f "$work/libvirtd.pid"
    start_libvirtd
    wait_calls $((before + 1))   # the reconnect runs in its own thread
    [ "$(virsh domstate "$guest")" = running ] || fail "$guest did not survive the daemon restart"
    expect_calls "port-created begin -"

    step 50-guest-destroy "virsh destroy $guest"
    virsh -q destroy "$guest" >/dev/null || fail "virsh destroy failed"
    expect_calls "port-deleted begin -"
    if compgen -G "/sys/class/net/$bridge/brif/*" >/dev/null; then fail "the tap device is still on $bridge"; fi
  fi

  step 60-net-destroy "virsh net-destroy $net"
  virsh -q net-destroy "$net" >/dev/null || fail "virsh net-destroy failed"
  expect_calls "stopped end -"
  [ "$(net_active)" = no ] || fail "$net is still active after net-destroy"
  [ ! -e "/sys/class/net/$bridge" ] || fail "the bridge $bridge is still there after net-destroy"

  # --- a refusing plugin ----------------------------------------------------------------
  step 70-net-start-refused "virsh net-start $net, 20-refuse.sh exits 1 at start begin"
  touch "$work/refuse"
  if out=$(virsh net-start "$net" 2>&1); then
    fail "virsh net-start succeeded although 20-refuse.sh exits 1 at start begin: $out"
  fi
  rm "$work/refuse"
  local want
  for want in "error: Failed to start network $net" \
      "Hook script execution failed" \
      "$hooks/network $net start begin -) unexpected exit status 1" \
      "$hooks/network.plugins/20-refuse.sh" \
      "hooknet-e2e: refusing to start $net as asked"; do
    case "$out" in *"$want"*) ;; *) fail "virsh's error lacks \"$want\"; it said:
$out" ;; esac
  done
  case "$out" in *"must not reach virsh"*) fail "the plugin's stdout reached virsh: $out" ;; esac
  say "virsh said: $out"
  # No stopped/cleanup hook follows a refused start (and the network.d script still ran
  # after the failed main script: libvirt runs them all).
  expect_calls "start begin -"
  [ "$(net_active)" = no ] || fail "$net is active although its start hook failed"
  [ ! -e "/sys/class/net/$bridge" ] || fail "the bridge $bridge exists although the start hook failed"
  tail -n 1 "$work/audit.jsonl" | grep -q "\"failed_plugin\":\"$hooks/network.plugins/20-refuse.sh\"" \
    || fail "the audit log does not name 20-refuse.sh as the failed plugin: $(tail -n 1 "$work/audit.jsonl")"

  # --- a network destroyed under a running guest --------------------------------------
  step 80-net-start-again "virsh net-start $net"
  virsh -q net-start "$net" >/dev/null || fail "virsh net-start failed after the refusal"
  expect_calls "start begin -" "started begin -"
  if [ "$guest_ok" = 1 ]; then
    step 85-guest-start-again "virsh start $guest"
    virsh -q start "$guest" >/dev/null || fail "virsh start failed the second time"
    expect_calls "port-created begin -"

    step 90-net-destroy-guest-running "virsh net-destroy $net with $guest running"
    virsh -q net-destroy "$net" >/dev/null || fail "virsh net-destroy failed with the guest running"
    expect_calls "stopped end -"
    [ "$(virsh domstate "$guest")" = running ] || fail "$guest stopped with its network"

    step 95-guest-destroy-network-gone "virsh destroy $guest (its network already destroyed)"
    virsh -q destroy "$guest" >/dev/null || fail "virsh destroy failed"
    expect_calls   # libvirt 9.0: no port-deleted for a port of a destroyed network
  else
    step 91-net-destroy-without-guest "virsh net-destroy $net"
    virsh -q net-destroy "$net" >/dev/null || fail "virsh net-destroy failed"
    expect_calls "stopped end -"
  fi

  step 99-undefine "virsh undefine, virsh net-undefine"
  virsh -q undefine "$guest" >/dev/null || fail "virsh undefine failed"
  virsh -q net-undefine "$net" >/dev/null || fail "virsh net-undefine failed"
  expect_calls
  stop_daemons
  local left
  left=$(running 'libvirtd|virtlogd|qemu-system-x86|dnsmasq')
  [ -z "$left" ] || fail "still running after the daemons were stopped: $left"
  touch "$work/inner-passed"
}

if [ "${E2E_NET_INNER:-}" = 1 ]; then
  inner
  exit 0
fi

# ======================================================================================
# Outside: preconditions, the namespaces, then the golden comparison and host checks.
# ======================================================================================
started=$SECONDS
work=""
ns_pid=""
made_dirs=""
fail() {
  say "FAILED: $*"
  exit 1
}
[ "$(id -u)" = 0 ] || skip "needs root: it starts its own libvirtd in a network namespace"

if ! command -v virsh >/dev/null || [ ! -x /usr/sbin/libvirtd ] || [ ! -x /usr/sbin/virtlogd ] \
    || ! command -v qemu-system-x86_64 >/dev/null; then
  say "installing libvirt and QEMU (about 30 MB)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libvirt-daemon-system libvirt-clients qemu-system-x86 >/dev/null; }; then
    { command -v virsh >/dev/null && [ -x /usr/sbin/libvirtd ]; } || skip "libvirt cannot be installed here"
    say "QEMU could not be installed: the guest steps will be skipped"
  fi
fi
for tool in unshare findmnt mount umount mknod cmp diff; do
  command -v "$tool" >/dev/null || skip "needs $tool (util-linux, mount, coreutils, diffutils)"
done
if ! why=$(unshare --net --mount --pid --fork --kill-child --mount-proc true 2>&1); then
  skip "cannot create network, mount and PID namespaces here: $why"
fi
libvirt_version=$(/usr/sbin/libvirtd --version | awk '{ print $NF }')

# hookctl: copied now (the build may be replaced while the test runs) into a dir only
# root can write (hookctl refuses to install a binary others could replace), with its
# companion hookctl-native when there is one. HOOKCTL_INSTALLED=1: the package's own.
work=$(mktemp -d /tmp/hookctl-e2e-network.XXXXXX)
cleanup() {
  set +e
  if [ -n "$ns_pid" ] && kill -0 "$ns_pid" 2>/dev/null; then
    # unshare ignores SIGTERM while it waits; once it is gone, --kill-child kills the
    # namespace's init, and with it every process of the PID namespace.
    kill -KILL "$ns_pid"
    wait "$ns_pid" 2>/dev/null
  fi
  rm -rf "$work"
  # The mount points this test had to create (empty: only tmpfs was mounted on them).
  for d in $made_dirs; do rmdir "$d"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ -n "${HOOKCTL_INSTALLED:-}" ]; then
  [ -x /usr/bin/hookctl ] || fail "HOOKCTL_INSTALLED is set, but /usr/bin/hookctl is missing"
  hookctl=/usr/bin/hookctl
  say "testing the installed $hookctl ($(dpkg-query -W -f '${Package} ${Version}' hookctl 2>/dev/null || echo 'not from a package'))"
else
  built=${CARGO_TARGET_DIR:-$root/target}/debug
  [ -x "$built/hookctl" ] || fail "$built/hookctl is missing: run cargo build -p hookctl first"
  install -d -m 0755 "$work/bin"
  install -m 0755 "$built/hookctl" "$work/bin/hookctl"
  [ -e "$built/hookctl-native" ] && install -m 0755 "$built/hookctl-native" "$work/bin/hookctl-native"
  hookctl=$work/bin/hookctl
fi
"$hookctl" --version >/dev/null 2>&1 || "$hookctl" --help >/dev/null 2>&1 || fail "$hookctl does not run"

# Mount points for the private tmpfs must exist; any made here are removed on exit.
made_dirs=""
for d in $private_dirs; do
  [ -d "$d" ] || { mkdir -p "$d" && made_dirs="$d $made_dirs"; }
done
# What the host looks like; compared after the run.
host_state() {
  find /run/libvirt $private_dirs -xdev 2>/dev/null | sort
  echo "--- interfaces"
  ls /sys/class/net
}
host_state > "$work/host.before"

# --- the run, in its namespaces -----------------------------------------------------------
ns_started=$SECONDS
E2E_NET_INNER=1 E2E_NET_WORK=$work E2E_NET_HOOKCTL=$hookctl E2E_NET_HOST_NETNS=$(readlink /proc/self/ns/net) \
  unshare --net --mount --propagation private --pid --fork --kill-child --mount-proc \
  bash "$self" &
ns_pid=$!
rc=0
wait "$ns_pid" || rc=$?
ns_pid=""
inner_took=$((SECONDS - ns_started))

# Nothing of ours may outlive the namespace.
if [ -s "$work/netns" ]; then
  left=""
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$(cat "$work/netns")" ] && left+=" ${p#/proc/}($(cat "$p/comm" 2>/dev/null))"
  done
  [ -z "$left" ] || fail "processes of the test's namespace are still running:$left"
fi
host_state > "$work/host.after"
if ! diff -u "$work/host.before" "$work/host.after" > "$work/host.diff"; then
  if [ -n "$(running 'libvirtd|virtqemud|virtnetworkd')" ]; then
    say "WARNING: the host's libvirt state changed during the run, but a libvirt daemon of the host is running (not this test's):"
    cat "$work/host.diff"
  else
    fail "the host's libvirt state or interfaces changed during the run:
$(cat "$work/host.diff")"
  fi
fi
[ "$rc" = 0 ] && [ -e "$work/inner-passed" ] || fail "the run in the namespace failed (exit status $rc)"

# --- golden data ---------------------------------------------------------------------------
# Each call becomes one file, <step>.<n>.<op>-<subop>.txt: the step's virsh command, the
# plugin's argv, and its stdin. Volatile values are normalised by a sed script built from
# the run: every distinct UUID and MAC address, numbered in order of first appearance over
# the whole run, becomes 00000000-0000-0000-0000-00000000000N and 00:00:5e:00:53:0N (the
# documentation MAC range), so that a value recurring in another call keeps its number;
# bridge and tap names (virbrN, vnetN) become virbrX and vnetX. No timestamps appear.
mkdir "$work/actual"
uuid_re='[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
mac_re='[0-9a-f]{2}(:[0-9a-f]{2}){5}'
{
  u=0 m=0
  for v in $(cat "$work"/events/*.stdin | grep -oE "$uuid_re|$mac_re" | awk '!seen[$0]++'); do
    case "$v" in
      *:*) m=$((m + 1)); printf 's/%s/00:00:5e:00:53:%02x/g\n' "$v" "$m" ;;
      *) u=$((u + 1)); printf 's/%s/00000000-0000-0000-0000-%012d/g\n' "$v" "$u" ;;
    esac
  done
  echo 's/\bvirbr[0-9]+\b/virbrX/g'
  echo 's/\bvnet[0-9]+\b/vnetX/g'
} > "$work/normalise.sed"
for f in "$work"/events/*.stdin; do
  name=$(basename "$f" .stdin)
  step=${name%%.*}
  {
    printf '# %s: %s\n' "$step" "$(awk -F '\t' -v s="$step" '$1 == s { print $2 }' "$work/events/steps")"
    printf 'argv: %s\n' "$(paste -sd ' ' "${f%.stdin}.args")"
    if [ "$(tail -c 1 "$f" | od -An -c | tr -d ' ')" = '\n' ]; then
      echo "stdin (ends with a newline):"
      cat "$f"
    else
      echo "stdin (no trailing newline):"
      cat "$f"
      echo
    fi
  } | sed -E -f "$work/normalise.sed" > "$work/actual/$name.txt"
done

case "$libvirt_version" in
  9.0.*) ;;
  *)
    say "SKIPPED: the golden comparison: libvirtd is $libvirt_version, the golden data is libvirt 9.0's"
    say "passed in $((SECONDS - started)) s (behaviour only)"
    echo "e2e-libvirt-network: 1 passed, 0 failed"
    exit 0
    ;;
esac
if [ -n "${UPDATE_GOLDEN:-}" ]; then
  [ ! -e "$work/guest-skipped" ] || fail "not updating the golden data without the guest steps ($(cat "$work/guest-skipped"))"
  mkdir -p "$golden"
  rm -f "$golden"/*.txt
  cp "$work"/actual/*.txt "$golden/"
  say "UPDATED: $(ls "$golden"/*.txt | wc -l) files in ${golden#"$root"/}"
else
  [ -d "$golden" ] || fail "no golden data in $golden: run once with UPDATE_GOLDEN=1"
  mkdir "$work/expected"
  cp "$golden"/*.txt "$work/expected/"
  # Without the guest, the steps that need it ("guest" in their names) are left out.
  [ ! -e "$work/guest-skipped" ] || rm -f "$work"/expected/*guest* "$work"/actual/*guest*
  if ! (cd "$work" && diff -ru expected actual) > "$work/golden.diff"; then
    fail "what libvirt sent differs from ${golden#"$root"/} (UPDATE_GOLDEN=1 rewrites it):
$(cat "$work/golden.diff")
--- normalised with sed -E:
$(cat "$work/normalise.sed")"
  fi
fi
say "$(ls "$work"/actual | wc -l) network hook calls as recorded in ${golden#"$root"/}$([ -e "$work/guest-skipped" ] && echo ' (guest steps SKIPPED)')"
say "passed in $((SECONDS - started)) s (the namespace run took ${inner_took} s)"
echo "e2e-libvirt-network: 1 passed, 0 failed"
