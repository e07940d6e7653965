#!/usr/bin/env bash
# Install the headless browser the browser tests drive: Debian's `chromium` (never `playwright install`,
# which downloads its own build). Idempotent: does nothing when chromium is already on PATH.
#
#   bash tools/install_browser.sh        # then: pytest -m browser tests/browser
#
# Without root (and without passwordless sudo) it prints what to run and exits 0, so callers such as
# `make test` carry on; the browser tests then skip with a clear reason.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  echo ">> [browser] chromium present: $(command -v chromium)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo ">> [browser] chromium is missing and this system has no apt-get; install Chromium with your package" \
       "manager so that 'chromium' is on PATH (the browser tests skip until then)"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo ">> [browser] chromium is missing; as root run:"
  echo "     apt-get update && apt-get install -y chromium"
  echo "   (the browser tests skip until /usr/bin/chromium exists)"
  exit 0
fi

echo ">> [browser] installing Debian's chromium"
command -v chromium >/dev/null 2>&1 || ($SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium)
echo ">> [browser] $(chromium --version 2>/dev/null || echo 'chromium installed')"
