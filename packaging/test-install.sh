#!/usr/bin/env bash
# Installs, upgrades and purges the package in a throwaway Debian root (debootstrap, minbase +
# adduser), as root: the user and state directory appear, an edited config survives the
# upgrade, purge removes config, history and user. Uses the host-architecture .deb (cargo deb),
# since the maintainer scripts are the same for every architecture.
#
#   packaging/test-install.sh [V1.deb V2.deb]
#
# With no arguments it builds both (release, revisions 1 and 2); tests/packaging.rs passes the
# ones it packed from the test build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (chroot)"; exit 1; }
command -v debootstrap >/dev/null 2>&1 || apt-get install -y -q debootstrap

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mirror=$(grep -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk '{print $2}')
debootstrap --variant=minbase --include=adduser bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >/dev/null

if [ "$#" -eq 2 ]; then
  cp "$1" "$root/tmp/v1.deb"
  cp "$2" "$root/tmp/v2.deb"
else
  # cargo-deb replaces an older revision in target/debian: copy each as soon as it is made.
  cp "$(cargo deb --no-strip 2>/dev/null | tail -1)" "$root/tmp/v1.deb"
  cp "$(cargo deb --no-strip --no-build --deb-revision 2 2>/dev/null | tail -1)" "$root/tmp/v2.deb"
fi
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

in_root dpkg -i /tmp/v1.deb
in_root test -x /usr/bin/fieldbridge
in_root getent passwd fieldbridge
in_root id -nG fieldbridge | grep -qw dialout
in_root test -d /var/lib/fieldbridge
in_root test "$(in_root stat -c %U /var/lib/fieldbridge)" = fieldbridge
in_root fieldbridge check -c /etc/fieldbridge/config.toml >/dev/null
wants=/etc/systemd/system/multi-user.target.wants/fieldbridge.service
test -L "$root$wants" || { echo "the service is not enabled"; exit 1; }
echo "# edited by the user" >> "$root/etc/fieldbridge/config.toml"
echo "history" > "$root/var/lib/fieldbridge/history.db"

in_root dpkg -i /tmp/v2.deb
grep -q "edited by the user" "$root/etc/fieldbridge/config.toml"
test -f "$root/var/lib/fieldbridge/history.db"
in_root dpkg -s fieldbridge | grep -q "^Version: .*-2$"
test -L "$root$wants" || { echo "the upgrade disabled the service"; exit 1; }
# The user disables it (what `systemctl disable` does); the next upgrade leaves it disabled.
rm "$root$wants"
in_root dpkg -i /tmp/v2.deb
if [ -L "$root$wants" ]; then echo "an upgrade enabled a service the user disabled"; exit 1; fi

in_root dpkg --purge fieldbridge
test ! -e "$root/etc/fieldbridge/config.toml"
test ! -e "$root/var/lib/fieldbridge"
if in_root getent passwd fieldbridge; then echo "purge left the user behind"; exit 1; fi
if [ -e "$root$wants" ] || [ -L "$root$wants" ]; then echo "purge left the unit enabled"; exit 1; fi
echo "install (enabled, not started), upgrade (config, history and enablement kept), purge: ok"
