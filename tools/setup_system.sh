#!/usr/bin/env bash
# Installs the Debian libraries probesuite needs (open3d imports only with libusb; the offscreen
# renderer needs Mesa's Vulkan/EGL/GL) and chromium, the headless browser tests/test_report_page.py draws
# the `featviz report` page with (that test skips without it; ~350 MB installed, about a minute).
# Runs apt-get only as root and only for missing packages.
set -euo pipefail
pkgs=(libusb-1.0-0 mesa-vulkan-drivers libvulkan1 libegl1 libgl1 chromium)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
else
  echo "setup: no dpkg here; make sure these libraries are installed: ${pkgs[*]}" >&2
  exit 0
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: not root, skipping Debian packages; ask an administrator to install: ${missing[*]}" >&2
  exit 0
fi
echo "setup: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
