#!/usr/bin/env bash
# Install the bare-metal toolchain used by firmware_tests/ (arm-none-eabi-gcc + newlib for
# semihosting, qemu-system-arm for the mps2-an386 Cortex-M4 board).
# Idempotent: does nothing when the tools are already on PATH.
# Exits non-zero with a clear message when it cannot install (not root, no apt-get).
set -euo pipefail

need=()
command -v arm-none-eabi-gcc >/dev/null 2>&1 || need+=(gcc-arm-none-eabi)
# newlib provides rdimon.specs (semihosting libc); check the file, not just the compiler.
if command -v arm-none-eabi-gcc >/dev/null 2>&1; then
  specs="$(arm-none-eabi-gcc -print-file-name=rdimon.specs 2>/dev/null || true)"
  [ -f "$specs" ] || need+=(libnewlib-arm-none-eabi)
else
  need+=(libnewlib-arm-none-eabi)
fi
command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)

if [ "${#need[@]}" -eq 0 ]; then
  echo "setup-firmware: toolchain already present:"
  echo "  $(arm-none-eabi-gcc --version | head -n1)"
  echo "  $(qemu-system-arm --version | head -n1)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-firmware: apt-get not found; install ${need[*]} with your package manager" >&2
  exit 2
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    echo "setup-firmware: need root (or passwordless sudo) to apt-get install ${need[*]}" >&2
    exit 3
  fi
fi

echo "setup-firmware: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${need[@]}"

for tool in arm-none-eabi-gcc qemu-system-arm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "setup-firmware: $tool still missing after install" >&2; exit 4; }
done
echo "setup-firmware: done"
echo "  $(arm-none-eabi-gcc --version | head -n1)"
echo "  $(qemu-system-arm --version | head -n1)"
