#!/usr/bin/env bash
# Prepare a Debian 12 host for fluid: packages, libvirt daemons (systemd's units where systemd
# runs, started by hand elsewhere), the .venv. Idempotent.
# Usage: setup-host.sh [EXTRAS]: fluid's extras to install, comma-separated (default: test;
# "none" for fluid alone, as `make demo` does). Chromium (for the UI tests) comes with test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
extras=${1:-test}

packages=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
  libvirt-dev pkg-config gcc python3-dev python3-venv debootstrap openssh-client openssh-server
  nftables genisoimage tmux make curl fdisk tini
)
# Chromium for the UI tests, zsh for the completion test.
case ",$extras," in *,test,*) packages+=(chromium zsh) ;; esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# Without udev, /dev/kvm keeps root-only modes; libvirt then re-probes QEMU on every call
# ("KVM was enabled when probing ... but it is not available now"), which costs ~45 s per
# define. Apply the group and mode Debian's udev rule would.
if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 660 /dev/kvm
fi

if [ -d /run/systemd/system ]; then
  # systemd runs here: its sockets start libvirtd on demand (and it exits when idle), so a
  # daemon started by hand would run unmanaged beside them. Debian 12 ships the monolithic
  # libvirtd (no virtqemud units). A daemon left running outside systemd holds the sockets'
  # paths: say so rather than start a second one.
  for daemon in virtlogd libvirtd; do
    managed=$(systemctl show -p MainPID --value "$daemon.service")
    for pid in $(pgrep -x "$daemon" || true); do
      if [ "$pid" != "$managed" ]; then
        echo "setup: $daemon (pid $pid) runs outside systemd; stop it (kill $pid) and run" \
          "this again, so systemd's units take over" >&2
        exit 1
      fi
    done
  done
  systemctl enable --now virtlogd.socket libvirtd.socket libvirtd-ro.socket \
    libvirtd-admin.socket >&2
else
  # No init system here (containers, CI): start the daemons ourselves. libvirtd runs under
  # tini as a subreaper: a destroyed QEMU is an orphan, and libvirt waits until it is reaped;
  # a container's PID 1 may reap only every second or two (a destroy took 1.6-2 s, 0.2 s so).
  if ! pgrep -x virtlogd >/dev/null; then virtlogd -d; fi
  if ! pgrep -x libvirtd >/dev/null; then
    mkdir -p /var/log/libvirt
    setsid tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd.log 2>&1 &
  fi
fi
for _ in $(seq 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/pip ] || ! .venv/bin/python -c "import pip" 2>/dev/null; then
  # Missing, or left half-made by an interrupted run.
  echo "setup: creating .venv" >&2
  rm -rf .venv
  "$python" -m venv .venv
  rm -f .venv/.fluid-installed*
fi
stamp=.venv/.fluid-installed-${extras//,/-}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing fluid into .venv (extras: $extras)" >&2
  .venv/bin/pip install -q --upgrade pip >&2
  # The versions scripts/lock.sh recorded: every machine installs the same ones.
  spec=.; [ "$extras" = none ] || spec=".[$extras]"
  .venv/bin/pip install -q -c constraints.txt -e "$spec" >&2
  touch "$stamp"
fi
# fluid's store at the newest schema before anything uses it (idempotent, locked).
.venv/bin/fluid db upgrade >&2
echo "setup: host ready ($root/.venv)" >&2
