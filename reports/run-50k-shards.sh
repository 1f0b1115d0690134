#!/usr/bin/env bash
# 50,000 agents on one machine: three edge-server instances (each on its own
# SQLite file) and three `load --shard i/3` processes, every agent spread
# over the three with --url, then the shard reports merged into one.
#   cargo build --release -p edge-harness && reports/run-50k-shards.sh [OUT_DIR]
set -euo pipefail
h=./target/release/edge-harness
out=${1:-reports/50k}
rm -rf "$out" && mkdir -p "$out"
secret=$(grep -o 'EDGE_SECRET: &str = "[^"]*"' src/embedded.rs | cut -d'"' -f2)
admin=$(grep -o 'ADMIN_TOKEN: &str = "[^"]*"' src/embedded.rs | cut -d'"' -f2)
servers=() shards=() urls=()
for s in 0 1 2; do
  "$h" serve --listen "127.0.0.1:1808$s" --database "$out/edge$s.db" >"$out/serve$s.log" 2>&1 &
  servers+=($!) urls+=(--url "http://127.0.0.1:1808$s")
done
trap 'kill -TERM "${servers[@]}" 2>/dev/null || true' EXIT
for s in 0 1 2; do
  until curl -sf "http://127.0.0.1:1808$s/health" >/dev/null; do sleep 0.2; done
done
for s in 0 1 2; do
  "$h" load "${urls[@]}" --edge-secret "$secret" --admin-token "$admin" \
    --agents 50000 --rate 600/s --duration 40s --seed 7 --shard "$s/3" \
    --report "$out/shard$s" >"$out/load$s.log" 2>&1 &
  shards+=($!)
done
for p in "${shards[@]}"; do wait "$p"; done
"$h" report merge "$out"/shard*/load-*.json -o "$out/merged.json"
