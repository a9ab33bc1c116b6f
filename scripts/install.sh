#!/usr/bin/env bash
# Installs viewportd as a systemd service on Debian 12. Idempotent: run it again to upgrade.
#
#   sudo scripts/install.sh                   build the release binary and install it
#   sudo scripts/install.sh --binary PATH     install an already built binary
#   DESTDIR=/tmp/root scripts/install.sh ...  install into a staging root (no systemctl calls)
#
# Puts the binary at /usr/local/bin/viewportd, the unit at /etc/systemd/system/viewportd.service and the
# commented config at /etc/viewportd/viewportd.yaml. An existing config is never overwritten: the shipped one
# is always written beside it as viewportd.yaml.dist for comparison. Creates the system user viewportd the
# unit runs as.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
if [ "${1:-}" = "--binary" ]; then
  binary="${2:?--binary needs a path}"
fi
root="${DESTDIR:-}"

if [ -z "$binary" ]; then
  ./scripts/install-deps.sh
  swift build -c release --product viewportd
  binary="$(swift build -c release --show-bin-path)/viewportd"
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/viewportd" \
  "$root/usr/local/share/doc/viewportd"
install -m 0755 "$binary" "$root/usr/local/bin/viewportd.new"
mv -f "$root/usr/local/bin/viewportd.new" "$root/usr/local/bin/viewportd"   # atomic: a running daemon keeps its file
install -m 0644 systemd/viewportd.service "$root/etc/systemd/system/viewportd.service"
install -m 0644 config/viewportd.yaml "$root/etc/viewportd/viewportd.yaml.dist"
if [ ! -e "$root/etc/viewportd/viewportd.yaml" ]; then
  # The config holds API keys and webhook secrets: root writes it, the service user only reads it.
  install -m 0640 config/viewportd.yaml "$root/etc/viewportd/viewportd.yaml"
fi
if [ -z "$root" ]; then
  getent passwd viewportd > /dev/null || useradd --system --user-group --no-create-home \
    --home-dir /var/lib/viewportd --shell /usr/sbin/nologin --comment "viewportd service" viewportd
  chgrp viewportd /etc/viewportd/viewportd.yaml
fi
install -m 0644 README.md "$root/usr/local/share/doc/viewportd/README.md"

"$root/usr/local/bin/viewportd" check-config "$root/etc/viewportd/viewportd.yaml" > /dev/null

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "installed. Add api_keys to /etc/viewportd/viewportd.yaml, then: systemctl enable --now viewportd"
else
  echo "installed into ${root:-/} (systemd is not running here: no daemon-reload)"
fi
