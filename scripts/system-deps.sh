#!/usr/bin/env bash
# System packages the tests use: the distribution's ffmpeg (the media tests run with it and with
# the imageio-ffmpeg wheel's), Chromium with its driver (the web page's test), Redis and HAProxy
# (the fleet's tests). Installs what
# is missing with apt-get when it can (root, or sudo without a password); otherwise says what
# to install and carries on (the wheel's ffmpeg still works; the browser test then skips).
set -uo pipefail
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # the fleet tests' shared feature store
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)  # their router
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: install ${missing[*]} with your package manager for the full test suite" >&2
  exit 0
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then as_root=(sudo -n); else
    echo "note: run 'sudo apt-get install ${missing[*]}' for the full test suite" >&2
    exit 0
  fi
fi
echo "installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q >/dev/null && "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
