#!/usr/bin/env bash
# The whole conformance suite against an external edge-server with the
# spec's timers (ping timeout 60 s, ack timeout 30 s, 10 attempts), the way a
# user gates a real deployment: --strict, a restart command for the
# WS-CONN-5/WS-DLV-6 checks, and (with --slow) the checks that take minutes.
#
#   reports/conform-spec-timers.sh            # ~8 min
#   reports/conform-spec-timers.sh --slow     # ~28 min (dead after 10 attempts, twice)
#
# Writes reports/conform-spec-timers{,-slow}.{json,html,txt}; prints the wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p edge-server -p edge-harness
slow=${1:-}
suffix=${slow:+-slow}
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
export EDGE_SECRET=spec-secret-$RANDOM ADMIN_TOKEN=spec-admin-$RANDOM REGISTRATION_TOKEN=spec-reg-$RANDOM
export DATABASE_URL=sqlite://$work/edge.db
server=$PWD/target/release/edge-server
cat > "$work/restart.sh" <<RESTART
#!/bin/sh
pkill -TERM -f '$server --listen 127.0.0.1:$port' || true
while pgrep -f '$server --listen 127.0.0.1:$port' >/dev/null; do sleep 0.1; done
setsid $server --listen 127.0.0.1:$port >> $work/server.log 2>&1 < /dev/null &
RESTART
chmod +x "$work/restart.sh"
"$work/restart.sh"
trap 'pkill -TERM -f "$server --listen 127.0.0.1:$port" || true' EXIT
for _ in $(seq 50); do curl -sf "127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
start=$(date +%s)
set +e
target/release/edge-harness conform --url "http://127.0.0.1:$port" --strict $slow \
    --restart-cmd "$work/restart.sh" --color never \
    --json "reports/conform-spec-timers$suffix.json" --html "reports/conform-spec-timers$suffix.html" \
    | tee "reports/conform-spec-timers$suffix.txt"
code=${PIPESTATUS[0]}
set -e
echo "exit $code, wall time $(( $(date +%s) - start )) s"
exit "$code"
