#!/usr/bin/env bash
# System packages the test suite needs beyond Python: libcoap's command-line client for the
# LwM2M/CoAP interop tests (coap-client, coap-client-openssl for the DTLS-PSK variant), and
# Debian's chromium for the console's browser tests (Playwright drives /usr/bin/chromium; it never
# downloads a browser of its own), and autoconf, automake and libtool, which pip needs to build
# DTLSSocket (requirements.txt, sdist only: its setup runs tinydtls's autogen.sh and configure),
# so run this before `pip install -r requirements.txt`.
# Idempotent: does nothing when everything is already installed; runs `apt-get update` only when
# a package is missing. Runs as root (CI and developer machines are root here).
set -euo pipefail

# gcc: the delta benchmark and tests compile two builds of one program (benchmarks/_firmware_builds.py).
PACKAGES=(libcoap3-bin chromium autoconf automake libtool gcc)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-system-deps: all present (${PACKAGES[*]})"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"
