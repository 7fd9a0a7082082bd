#!/bin/sh
# Configure a debootstrapped Debian root filesystem as a fluid golden image.
# Usage: configure-image.sh ROOTFS GUEST_FILES_DIR
set -eu
root=$1
files=$2
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

echo sandbox > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 sandbox\n::1 localhost ip6-localhost ip6-loopback\n' \
  > "$root/etc/hosts"
echo 'LABEL=rootfs / ext4 defaults,errors=remount-ro 0 1' > "$root/etc/fstab"

# DHCP on the first NIC through systemd-networkd; SLIRP's DNS is static.
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/10-dhcp.network"
rm -f "$root/etc/resolv.conf"
echo 'nameserver 10.0.2.3' > "$root/etc/resolv.conf"

# apt: full sources, no translations or recommends; empty lists must look stale (see README).
cat > "$root/etc/apt/sources.list" <<'SRC'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
printf 'Acquire::Languages "none";\nAPT::Install-Recommends "false";\n' \
  > "$root/etc/apt/apt.conf.d/90fluid"

# sshd: certificates from fluid's CA only; keys may still be added by root inside its sandbox.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/ssh/sshd_config.d/10-fluid.conf" <<'SSHD'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
TrustedUserCAKeys /etc/ssh/fluid_user_ca.pub
AuthorizedPrincipalsFile /etc/ssh/fluid_principals
SSHD

install -m 0755 "$files/fluid-instance" "$root/usr/local/sbin/fluid-instance"
install -m 0644 "$files/fluid-instance.service" "$root/etc/systemd/system/fluid-instance.service"

in_root systemctl enable systemd-networkd fluid-instance.service serial-getty@ttyS0.service
in_root systemctl mask systemd-networkd-wait-online.service systemd-firstboot.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
  man-db.timer fstrim.timer

# No motd scripts on every SSH session: each costs a process start under TCG, nobody reads them.
sed -i '/pam_motd.so/d' "$root/etc/pam.d/sshd"

# No password works anywhere.
in_root passwd -l root >/dev/null
# Each boot derives its machine-id from the kernel command line (systemd.machine_id=).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/tmp/* "$root"/root/.bash_history
mkdir -p "$root/var/lib/apt/lists/partial"
touch -d @0 "$root/var/lib/apt/lists"
