#!/usr/bin/env bash
# Renders an HTML load report to PNG in headless Chromium, to see that the
# page renders (Debian: apt-get install chromium).
#   reports/render-png.sh reports/load-….html [out.png]
set -euo pipefail
html=$(realpath "$1")
out=${2:-${html%.html}.png}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1400,2400 --screenshot="$out" "file://$html" 2>/dev/null
test -s "$out"
echo "wrote $out"
