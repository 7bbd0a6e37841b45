#!/usr/bin/env bash
# Install headless Chromium (Debian package) for the report's browser check, where it is missing.
# Exit 0 when a Chromium-family browser is on PATH afterwards, 1 otherwise (tests then skip).
set -u
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" >/dev/null 2>&1; then echo "browser: $(command -v "$b")"; exit 0; fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_browser: not root and no passwordless sudo; install chromium yourself (apt-get install chromium)" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get; install Chromium with your system's package manager" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
timeout 240 $SUDO apt-get update -qq >/dev/null && timeout 300 $SUDO apt-get install -y -qq chromium >/dev/null
if command -v chromium >/dev/null 2>&1; then echo "browser: $(command -v chromium)"; exit 0; fi
echo "install_browser: apt-get install chromium failed" >&2
exit 1
