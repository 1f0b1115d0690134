#!/usr/bin/env bash
# edge-server scale-out on PostgreSQL, measured side by side (issue 10):
# one SQLite instance, and 1, 2, 3 PostgreSQL instances on one database.
#
#   reports/pg-scale-bench.sh [options]          # full run: ~30-40 min
#   reports/pg-scale-bench.sh --runs 1 --commands 2000 --latency-agents 500 \
#       --duration 5s                            # a smoke test: ~2 min
#
# Two measurements per configuration, each run --runs times (fresh SQLite
# file or fresh PostgreSQL schema, fresh processes every run), medians
# printed as a markdown table on stdout (and to --out FILE):
#
#   throughput  closed loop: --commands posted with --concurrency in flight
#               to --agents agents that ack at once; commands/s from the
#               first post to the last `completed` in the store.
#   latency     open model: --rate commands/s for --duration to
#               --latency-agents connected agents; p50/p99 from the
#               scheduled send time to the agent holding the command
#               ("accept→push"), and the 202 alone.
#
# Each run also reports its host steal: the share of the machine's CPU time
# the hypervisor gave to others meanwhile (/proc/stat). On a shared host it
# is what makes one hour slower than the next; compare runs with a low one.
#
# Who talks to whom (every command crosses instances when there are several):
#
#   sqlite  S (SQLite file): posts to S, agents on S
#   pg1     A:               posts to A, agents on A
#   pg2     A, B:            posts to A, agents on B
#   pg3     A, B, C:         posts round-robin over A and B, agents on C
#
# pg3 spreads the accepting side over two instances and keeps all sockets
# on a third, so it shows whether accepting scales out while every push
# still crosses an instance (the deployment behind a load balancer whose
# agents happen to sit on one instance is the worst case for NOTIFY).
#
# --spread puts posts and agents on every instance instead (a load balancer
# in front of all of them): command i is posted to instance i mod N and its
# agent sits on instance (i + 1) mod N, so with two or three instances every
# command still crosses one, and each instance accepts, pushes and acks a
# 1/N share. --agents and --latency-agents must then be multiples of 6.
#
# --instance-cpu CORES gives each instance its own CPU budget (a cgroup v1
# `cpu` quota, e.g. 0.25 = a quarter of a core; needs root), a stand-in for
# instances on separate machines: on this shared machine the instances,
# PostgreSQL and the bench otherwise compete for the same cores, and a third
# instance adds CPU demand, not capacity. With a budget the instances are
# the bottleneck, and what is measured is whether the cluster adds up their
# capacity, or serialises somewhere (PostgreSQL and the bench stay
# unlimited). The table then also gives the share of the instances' 10 ms
# scheduling periods in which their budget ran out ("throttled").
#
# Environment: DATABASE_URL (default postgres://edge_ci:edge_ci@127.0.0.1:5432/edge_ci;
# the role needs CREATE on the database: each run makes a schema
# edge_bench_PID_N and drops it at the end), CARGO_TARGET_DIR (where the
# release binaries are built; default ./target). Needs psql and curl.
# Instances listen on 127.0.0.1:PORT_BASE.. (default 18181..18183), log at
# warn, with no rate limits (RATE_*=0), a ping timeout of 10 min (the
# bench's agents do not ping) and MAX_CONNECTIONS 19000. Each process may
# hold at most 20,000 open files here: 10,000 agents fit in one bench
# process and one instance. PostgreSQL's max_connections must allow 3 x 17
# (pool of 16 + LISTEN per instance) beside anything else.
#
# Every process the script starts is ended on exit (trap), every wait is
# bounded, and the schemas it made are dropped. Exit code 0 when every run
# finished, 1 when one failed (its log is printed), 2 on bad usage.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

runs=3 commands=20000 concurrency=64 agents=100
latency_agents=10000 rate=1000 duration=30s settle=0s
configs=sqlite,pg1,pg2,pg3 modes=throughput,latency
out= build=yes port_base=18181 run_limit=900 spread=no instance_cpu=
database_url=${DATABASE_URL:-postgres://edge_ci:edge_ci@127.0.0.1:5432/edge_ci}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    cat <<EOF
Options (default):
  --runs N              runs per configuration and measurement ($runs)
  --configs LIST        comma-separated: sqlite,pg1,pg2,pg3 ($configs)
  --modes LIST          throughput,latency ($modes)
  --commands N          throughput: commands per run ($commands)
  --concurrency N       throughput: posts in flight ($concurrency)
  --agents N            throughput: agents ($agents)
  --latency-agents N    latency: agents connected ($latency_agents)
  --rate N              latency: commands per second ($rate)
  --duration D          latency: how long, e.g. 30s ($duration)
  --settle D            latency: wait after the agents connected, before the
                        first command, e.g. 20s ($settle): each connection
                        costs the server a durable write, and a storm of
                        10,000 is not what this measures
  --port-base P         first port of the instances ($port_base)
  --run-limit S         seconds one bench run may take before it fails ($run_limit)
  --spread              posts and agents on every instance (see above)
  --instance-cpu CORES  each instance's CPU budget, e.g. 0.25 (see above)
  --out FILE            also write the markdown table to FILE
  --no-build            use the release binaries already built
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift ;;
        --configs) configs=$2; shift ;;
        --modes) modes=$2; shift ;;
        --commands) commands=$2; shift ;;
        --concurrency) concurrency=$2; shift ;;
        --agents) agents=$2; shift ;;
        --latency-agents) latency_agents=$2; shift ;;
        --rate) rate=$2; shift ;;
        --duration) duration=$2; shift ;;
        --settle) settle=$2; shift ;;
        --port-base) port_base=$2; shift ;;
        --run-limit) run_limit=$2; shift ;;
        --out) out=$2; shift ;;
        --no-build) build=no ;;
        --spread) spread=yes ;;
        --instance-cpu) instance_cpu=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for n in "$runs" "$commands" "$concurrency" "$agents" "$latency_agents" "$rate" "$port_base" "$run_limit"; do
    case $n in '' | *[!0-9]*) echo "not a number: $n" >&2; exit 2 ;; esac
done
if [ "$spread" = yes ] && { { [[ ,$modes, == *,throughput,* ]] && [ $((agents % 6)) -ne 0 ]; } ||
    { [[ ,$modes, == *,latency,* ]] && [ $((latency_agents % 6)) -ne 0 ]; }; }; then
    echo "--spread needs --agents and --latency-agents that are multiples of 6 (e.g. 120 and 9996)," >&2
    echo "so every instance holds the agents of the commands posted to the one before it" >&2
    exit 2
fi
# The cgroup v1 cpu controller (this machine's); a quota per 10 ms period.
cgroup_root=/sys/fs/cgroup/cpu cgroup_period=10000 cgroup_quota=
if [ -n "$instance_cpu" ]; then
    cgroup_quota=$(awk -v c="$instance_cpu" -v p="$cgroup_period" \
        'BEGIN { if (c !~ /^[0-9]*\.?[0-9]+$/ || c < 0.1) exit 1; print int(c * p) }') || {
        echo "--instance-cpu takes a number of cores, at least 0.1 (the kernel's smallest quota), e.g. 0.25; got $instance_cpu" >&2
        exit 2
    }
    if [ ! -w "$cgroup_root/cpu.cfs_quota_us" ] && [ ! -w "$cgroup_root" ]; then
        echo "--instance-cpu needs the cgroup v1 cpu controller writable at $cgroup_root (run as root)" >&2
        exit 2
    fi
fi
for tool in curl psql; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 2; }
done

log() { echo "[$(date +%T)] $*" >&2; }

target=${CARGO_TARGET_DIR:-target}
if [ "$build" = yes ]; then
    log "building release binaries"
    cargo build --release --locked -p edge-server --bin edge-server --example bench >&2
fi
server_bin=$target/release/edge-server bench_bin=$target/release/examples/bench
for bin in "$server_bin" "$bench_bin"; do
    [ -x "$bin" ] || { echo "$bin is missing: build it (drop --no-build)" >&2; exit 2; }
done
# As many open files as allowed (10,000 agents = 10,000 sockets per side).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d /tmp/pg-scale-bench.XXXXXX)
pids=() schemas=() cgroups=()
stop_instances() {
    local pid i
    [ ${#pids[@]} -eq 0 ] && return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do
        for i in $(seq 1 100); do # 10 s, then SIGKILL
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
psql_admin() { psql "$database_url" -v ON_ERROR_STOP=1 -qAt "$@"; }
cleanup() {
    local status=$?
    stop_instances
    local s
    for s in "${schemas[@]}"; do
        psql_admin -c "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 \
            || echo "could not drop schema $s" >&2
    done
    for s in "${cgroups[@]}"; do
        rmdir "$s" 2>/dev/null || echo "could not remove cgroup $s" >&2
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A fresh database for one run, in $db: a SQLite file, or a PostgreSQL
# schema (recorded for the trap; so not called in $(…)).
db_seq=0 db=
fresh_database() {
    db_seq=$((db_seq + 1))
    if [ "$1" = sqlite ]; then
        db="sqlite://$work/run$db_seq.db"
    else
        local schema="edge_bench_$$_$db_seq"
        psql_admin -c "CREATE SCHEMA $schema" >/dev/null
        schemas+=("$schema")
        local separator='?'
        case $database_url in *\?*) separator='&' ;; esac
        db="$database_url${separator}options=-c%20search_path%3D$schema"
    fi
}

# instance_cgroup NAME: the cgroup that instance NAME runs in with
# --instance-cpu, in $cgroup (made once, quota set, recorded for the trap;
# so not called in $(…)).
instance_cgroup() {
    cgroup=$cgroup_root/edge-bench-$$-$1
    [ ! -d "$cgroup" ] || return 0
    mkdir "$cgroup"
    cgroups+=("$cgroup")
    echo "$cgroup_period" >"$cgroup/cpu.cfs_period_us"
    echo "$cgroup_quota" >"$cgroup/cpu.cfs_quota_us"
}
# throttled_periods: "THROTTLED PERIODS" summed over the instances' cgroups.
throttled_periods() {
    local dir throttled=0 periods=0 key value
    for dir in "${cgroups[@]}"; do
        while read -r key value; do
            case $key in
                nr_periods) periods=$((periods + value)) ;;
                nr_throttled) throttled=$((throttled + value)) ;;
            esac
        done <"$dir/cpu.stat"
    done
    echo "$throttled $periods"
}

# start_instance NAME PORT DATABASE_URL: in the background, logged to $work;
# in its cgroup with --instance-cpu (the shell joins it, then execs).
start_instance() {
    local cgroup=
    [ -z "$cgroup_quota" ] || instance_cgroup "$1"
    EDGE_SECRET=bench-edge-secret ADMIN_TOKEN=bench-admin-token \
        RATE_CONNECTS_PER_MIN=0 RATE_REJECTS_PER_MIN=0 RATE_MESSAGES_PER_MIN=0 \
        RATE_PING_INTERVAL=0s PING_TIMEOUT=10m MAX_CONNECTIONS=19000 \
        LOG_LEVEL=warn INSTANCE_ID="$1" DATABASE_URL="$3" CGROUP="$cgroup" \
        bash -c '[ -z "$CGROUP" ] || echo $$ >"$CGROUP/cgroup.procs"; unset CGROUP; exec "$0" "$@"' \
        "$server_bin" --listen "127.0.0.1:$2" >>"$work/$1.log" 2>&1 &
    pids+=($!)
    local i
    for i in $(seq 1 300); do # 30 s
        if curl -sf "http://127.0.0.1:$2/health" >/dev/null; then
            return 0
        fi
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "instance $1 on port $2 did not come up; its log:" >&2
    tail -n 20 "$work/$1.log" >&2
    return 1
}

# run_one CONFIG MODE: starts the configuration's instances on a fresh
# database, runs the bench once, stops them; the bench's output is left in
# $work/bench.out. (Not called in $(…): pids and schemas must reach the trap.)
run_one() {
    local config=$1 mode=$2 names agents_on posts_to
    case $config in
        sqlite) names=(S) ;;
        pg1) names=(A) ;;
        pg2) names=(A B) ;;
        pg3) names=(A B C) ;;
        *) echo "unknown configuration $config" >&2; return 1 ;;
    esac
    fresh_database "$config"
    local i url=()
    for i in "${!names[@]}"; do
        start_instance "${names[$i]}" $((port_base + i)) "$db"
        url+=("http://127.0.0.1:$((port_base + i))")
    done
    case $spread.$config in
        *.sqlite | *.pg1) agents_on=${url[0]} posts_to=${url[0]} ;;
        no.pg2) agents_on=${url[1]} posts_to=${url[0]} ;;
        no.pg3) agents_on=${url[2]} posts_to="${url[0]},${url[1]}" ;;
        # Agent i on the instance after the one command i is posted to
        # (the bench: command i → post URL i mod N, agent i mod agents).
        yes.pg2) agents_on="${url[1]},${url[0]}" posts_to="${url[0]},${url[1]}" ;;
        yes.pg3) agents_on="${url[1]},${url[2]},${url[0]}" posts_to="${url[0]},${url[1]},${url[2]}" ;;
    esac
    local args=(--url "$agents_on" --post-url "$posts_to")
    if [ "$mode" = throughput ]; then
        args+=(--agents "$agents" throughput --commands "$commands" --concurrency "$concurrency")
    else
        args+=(--agents "$latency_agents" latency --rate "$rate" --duration "$duration" --settle "$settle")
    fi
    local status=0 instances=("${pids[@]}") server0 pg0=- bench0 host0 throttled0
    host0=$(host_ticks)
    throttled0=$(throttled_periods)
    server0=$(ticks "${instances[@]}")
    [ "$config" = sqlite ] || pg0=$(postgres_ticks)
    children_ticks
    bench0=$children
    # In the background, so a TERM or Ctrl-C reaches the trap at once.
    timeout "$run_limit" "$bench_bin" "${args[@]}" >"$work/bench.out" 2>"$work/bench.err" &
    pids+=($!)
    wait "${pids[-1]}" || status=$?
    # CPU µs per command of this run (the throughput table's columns).
    children_ticks
    cpu_server=$(per_command $(($(ticks "${instances[@]}") - server0)))
    cpu_bench=$(per_command $((children - bench0)))
    cpu_pg=-
    [ "$pg0" = - ] || cpu_pg=$(per_command $(($(postgres_ticks) - pg0)))
    steal=$(steal_percent "$host0" "$(host_ticks)")
    throttled=$(steal_percent "$throttled0" "$(throttled_periods)")
    stop_instances
    if [ $status -ne 0 ]; then
        echo "bench $config $mode failed (exit $status): ${args[*]}" >&2
        tail -n 20 "$work/bench.err" "$work/bench.out" >&2
        for i in "${names[@]}"; do tail -n 5 "$work/$i.log" >&2; done
        return 1
    fi
}

# CPU accounting for the throughput table, in clock ticks: what these
# processes used so far. PostgreSQL's is every live server process plus
# what the postmaster collected from the ones that exited (backends,
# autovacuum workers); "-" when no PostgreSQL runs on this machine.
ticks() {
    local pid total=0 f
    for pid in "$@"; do
        read -r -a f <"/proc/$pid/stat" 2>/dev/null || continue
        total=$((total + f[13] + f[14]))
    done
    echo "$total"
}
postgres_ticks() {
    local postmaster f
    postmaster=$(pgrep -o -x postgres) || { echo -; return; }
    read -r -a f <"/proc/$postmaster/stat"
    echo $(($(ticks $(pgrep -x postgres)) + f[15] + f[16]))
}
# The whole machine's CPU time (every core) in ticks, "STEAL TOTAL" (see
# host steal in the header).
host_ticks() {
    awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t }' /proc/stat
}
# steal_percent "STEAL0 TOTAL0" "STEAL1 TOTAL1": the share stolen between two readings.
steal_percent() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
        t = y[2] - x[2]; printf "%.0f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }'
}
# The shell's waited-for children (the bench, through `timeout`), in ticks,
# into $children: `times` in a $(…) subshell would count the subshell's.
children=0
children_ticks() {
    local user system
    times >"$work/times"
    { read -r _; read -r user system; } <"$work/times"
    children=$(awk -v u="$user" -v s="$system" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(u, a, /[ms]/); split(s, b, /[ms]/)
        printf "%d", ((a[1] * 60 + a[2]) + (b[1] * 60 + b[2])) * hz }')
}
# per_command TICKS: microseconds of CPU per command of the run.
per_command() {
    awk -v t="$1" -v n="$commands" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%d", t / hz * 1e6 / n }'
}

# median of the numbers on stdin ("-" when none).
median() {
    grep -E '^[0-9.]+$' | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        print (m == int(m)) ? m : sprintf("%.1f", m) }'
}
# field NAME LINE: the number after NAME= in a histogram line (ms).
field() { grep -o "$1=[0-9.]*" <<<"$2" | head -1 | cut -d= -f2 | xargs printf '%.1f'; }

topology() {
    case $spread.$1 in
        *.sqlite) echo "1 instance (SQLite): posts and agents on S" ;;
        *.pg1) echo "1 instance (PostgreSQL): posts and agents on A" ;;
        no.pg2) echo "2 instances: posts to A, agents on B" ;;
        no.pg3) echo "3 instances: posts to A+B, agents on C" ;;
        yes.pg2) echo "2 instances: posts and agents on A+B, each command crossing" ;;
        yes.pg3) echo "3 instances: posts and agents on A+B+C, each command crossing" ;;
    esac
}
# The throttled column, with --instance-cpu: "| 12, 30 " (runs).
throttled_cell() { [ -z "$cgroup_quota" ] || echo " $(each "$1") |"; }

IFS=, read -r -a config_list <<<"$configs"
IFS=, read -r -a mode_list <<<"$modes"
declare -A results
for config in "${config_list[@]}"; do
    for mode in "${mode_list[@]}"; do
        for run in $(seq 1 "$runs"); do
            log "$config $mode run $run/$runs"
            run_one "$config" "$mode"
            output=$(cat "$work/bench.out")
            if [ "$mode" = throughput ]; then
                value=$(grep -o '[0-9]* commands/s accepted→pushed' <<<"$output" | awk '{print $1}')
                [ -n "$value" ] || { echo "no throughput in: $output" >&2; exit 1; }
                results[$config.throughput]+="$value "
                results[$config.cpu_server]+="$cpu_server "
                results[$config.cpu_pg]+="$cpu_pg "
                results[$config.cpu_bench]+="$cpu_bench "
                results[$config.steal_throughput]+="$steal "
                results[$config.throttled_throughput]+="$throttled "
                log "  $value commands/s; CPU µs per command: instances $cpu_server, PostgreSQL $cpu_pg, bench $cpu_bench; host steal $steal %${cgroup_quota:+; instances throttled in $throttled % of periods}"
            else
                push=$(grep 'agent got it' <<<"$output") accepted=$(grep '202 accepted' <<<"$output")
                [ -n "$push" ] || { echo "no latency in: $output" >&2; exit 1; }
                results[$config.p50]+="$(field p50 "$push") "
                results[$config.p99]+="$(field p99 "$push") "
                results[$config.p999]+="$(field p99.9 "$push") "
                results[$config.a99]+="$(field p99 "$accepted") "
                results[$config.steal_latency]+="$steal "
                results[$config.throttled_latency]+="$throttled "
                log "  push p50 $(field p50 "$push") ms, p99 $(field p99 "$push") ms; host steal $steal %${cgroup_quota:+; instances throttled in $throttled % of periods}"
            fi
        done
    done
done

med() { tr ' ' '\n' <<<"${results[$1]:-}" | grep . | median; }
each() { local v=${results[$1]:-}; v=${v% }; echo "${v// /, }"; }
table() {
    echo "## edge-server scale-out: SQLite vs PostgreSQL instances"
    echo
    local built=" (edge-server built $(date -u -r "$server_bin" +%H:%MZ); --no-build: maybe not from this commit)"
    [ "$build" = yes ] && built=
    echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$built, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(psql_admin -c 'SHOW server_version' 2>/dev/null || echo 'PostgreSQL ?'); medians of $runs run(s) each."
    echo
    if [[ ,$modes, == *,throughput,* ]]; then
        echo "Throughput, closed loop: $commands commands, $concurrency posts in flight, $agents agents acking at once (accepted → pushed → acked → completed):"
        echo
        echo "| configuration | commands/s (median) | runs | CPU µs/command: instances | PostgreSQL | bench | host steal % (runs) |${cgroup_quota:+ instances throttled % (runs) |}"
        echo "|---|---|---|---|---|---|---|${cgroup_quota:+---|}"
        for config in "${config_list[@]}"; do
            echo "| $(topology "$config") | **$(med "$config.throughput")** | $(each "$config.throughput") | $(med "$config.cpu_server") | $(med "$config.cpu_pg") | $(med "$config.cpu_bench") | $(each "$config.steal_throughput") |$(throttled_cell "$config.throttled_throughput")"
        done
        echo
        echo "CPU per command: user + system time over the bench run divided by the commands (medians); PostgreSQL's includes autovacuum and every backend. On $(nproc) cores, $(nproc) s of CPU per second caps throughput at about $(nproc),000,000 / (the three summed) commands/s."
        echo
    fi
    if [[ ,$modes, == *,latency,* ]]; then
        echo "Latency, open model: $rate commands/s for $duration to $latency_agents connected agents (first command $settle after they connected), from the scheduled send time (ms, medians):"
        echo
        echo "| configuration | accept→push p50 | accept→push p99 | p99.9 | 202 p99 | p99 of each run | host steal % (runs) |${cgroup_quota:+ instances throttled % (runs) |}"
        echo "|---|---|---|---|---|---|---|${cgroup_quota:+---|}"
        for config in "${config_list[@]}"; do
            echo "| $(topology "$config") | $(med "$config.p50") | **$(med "$config.p99")** | $(med "$config.p999") | $(med "$config.a99") | $(each "$config.p99") | $(each "$config.steal_latency") |$(throttled_cell "$config.throttled_latency")"
        done
        echo
    fi
    [ -z "$cgroup_quota" ] || echo "Each instance ran with a CPU budget of $instance_cpu cores (cgroup quota $cgroup_quota µs per $cgroup_period µs); PostgreSQL and the bench without one. Throttled: the share of the instances' periods in which their budget ran out (high: the instances were the bottleneck, as intended)."
    [ -z "$cgroup_quota" ] || echo
    echo "Host steal: the share of the machine's CPU time the hypervisor gave to others during each run (/proc/stat). Compare runs with a low steal; a run with a high one measured the host."
}
if [ -n "$out" ]; then
    table | tee "$out"
else
    table
fi
