#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for keypointnet-tf: Mesa's EGL/GL libraries for headless pyrender
# (when apt-get is available and we are root, or sudo works), then this package with its test extras.
# Usage: bash install.sh            # library, tools, tests
#        bash install.sh gpu        # also tensorflow[and-cuda]
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES="libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 libgl1"
if command -v apt-get >/dev/null 2>&1; then
  missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "install.sh: installing Debian packages: $missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
else
  echo "install.sh: no apt-get; make sure Mesa's EGL (libEGL, llvmpipe) or a GPU EGL driver is installed." >&2
fi

EXTRAS="test"
[ "${1:-}" = "gpu" ] && EXTRAS="test,gpu"
python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
echo "install.sh: done"
