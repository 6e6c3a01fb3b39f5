#!/usr/bin/env bash
# Installs, upgrades and purges the package in a throwaway Debian root (debootstrap, minbase +
# adduser), as root: the user and state directory appear, an edited config survives the
# upgrade, purge removes config, history and user. Uses the host-architecture .deb (cargo deb),
# since the maintainer scripts are the same for every architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (chroot)"; exit 1; }
command -v debootstrap >/dev/null 2>&1 || apt-get install -y -q debootstrap

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mirror=$(grep -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk '{print $2}')
debootstrap --variant=minbase --include=adduser bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >/dev/null

# cargo-deb replaces an older revision in target/debian: copy each as soon as it is made.
cp "$(cargo deb --no-strip 2>/dev/null | tail -1)" "$root/tmp/v1.deb"
cp "$(cargo deb --no-strip --no-build --deb-revision 2 2>/dev/null | tail -1)" "$root/tmp/v2.deb"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

in_root dpkg -i /tmp/v1.deb
in_root test -x /usr/bin/fieldbridge
in_root getent passwd fieldbridge
in_root id -nG fieldbridge | grep -qw dialout
in_root test -d /var/lib/fieldbridge
in_root test "$(in_root stat -c %U /var/lib/fieldbridge)" = fieldbridge
in_root fieldbridge check -c /etc/fieldbridge/config.toml >/dev/null
echo "# edited by the user" >> "$root/etc/fieldbridge/config.toml"
echo "history" > "$root/var/lib/fieldbridge/history.db"

in_root dpkg -i /tmp/v2.deb
grep -q "edited by the user" "$root/etc/fieldbridge/config.toml"
test -f "$root/var/lib/fieldbridge/history.db"
in_root dpkg -s fieldbridge | grep -q "Version: 0.1.0-2"

in_root dpkg --purge fieldbridge
test ! -e "$root/etc/fieldbridge/config.toml"
test ! -e "$root/var/lib/fieldbridge"
! in_root getent passwd fieldbridge
echo "install, upgrade (config and history kept), purge: ok"
