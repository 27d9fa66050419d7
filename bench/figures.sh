#!/usr/bin/env bash
# Runs every command behind the figures of bench/README.md (and of docs/redis.md's "Scaling
# out", and "Sweeps and snapshots" in bench/README.md), pinned as bench/README.md says: servers on CPU 1, the bench on CPU 0.
# Each throughput and http command runs three times as written and three times with
# --reverse, alternating; the million-key and memory runs three times each on fresh servers.
# Prints the commands and their result lines. Needs redis-server and a free 6379, 7070, 7072,
# 8080 and 8090. About 25 minutes on the project's 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p gonest-sessiond -p gonest-session-bench -p example-app
R="$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release"
B="taskset -c 0 $R/gonest-session-bench"
T="throughput --sessiond http://127.0.0.1:7070 --redis redis://127.0.0.1:6379"
H="http --ours http://127.0.0.1:8080 --ours-store 7070 --theirs http://127.0.0.1:8090 --theirs-store 6379 --clients 50 --duration 10s"

servers=()
logs=$(mktemp -d "${TMPDIR:-/tmp}/gonest-figures.XXXXXX")

# Whether something accepts connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts a server pinned to CPU 1 and waits until it listens on port $1 (its output goes to
# $logs/$1.log).
serve() {
    local port=$1
    shift
    if listening "$port"; then
        echo "port $port is taken; stop what listens there first" >&2
        exit 1
    fi
    taskset -c 1 "$@" >"$logs/$port.log" 2>&1 &
    local pid=$!
    servers+=("$pid")
    until listening "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$1 exited before listening on $port; see $logs/$port.log" >&2
            exit 1
        fi
        sleep 0.1
    done
}

# Stops the servers started so far and waits until they are gone (a daemon holding a million
# sessions takes a moment to shut down, and its port is busy until then).
stop() {
    if ((${#servers[@]})); then
        kill "${servers[@]}" 2>/dev/null || true
        wait "${servers[@]}" 2>/dev/null || true
    fi
    servers=()
}
trap stop EXIT

daemon() { serve 7070 "$R/gonest-sessiond" --listen 127.0.0.1:7070 "$@"; }
redis() { serve 6379 redis-server --port 6379 --save '' --appendonly no; }

run() {
    echo "### $*"
    $B "$@" 2>&1 | grep -E "^(throughput|http|memory|sessiond|redis|ours|theirs|ratio|round|during|without|p99|Error)" || true
}

echo "== $(date -u) commit $(git rev-parse --short HEAD)"
daemon
redis
for _ in 1 2 3; do
    run $T --clients 50 --size 1024 --duration 10s --mix get:90,save:10
    run $T --clients 50 --size 1024 --duration 10s --mix get:90,save:10 --reverse
done
for _ in 1 2 3; do
    run $T --clients 1 --size 1024 --duration 10s
    run $T --clients 1 --size 1024 --duration 10s --reverse
done
for _ in 1 2 3; do
    run $T --clients 50 --size 16384 --duration 10s
    run $T --clients 50 --size 16384 --duration 10s --reverse
done
# The same loads in alternating pairs, Redis as A and the daemon as B: mean and standard error.
C="compare --a redis://127.0.0.1:6379 --b http://127.0.0.1:7070 --duration 8s"
run $C --pairs 10 --clients 50 --size 1024
run $C --pairs 8 --clients 50 --size 16384
run $C --pairs 6 --clients 1 --size 1024
for _ in 1 2 3; do
    stop; daemon; redis
    run $T --clients 50 --size 1024 --keys 1000000 --duration 10s
done
for _ in 1 2 3; do
    stop; daemon; redis
    run memory --sessiond http://127.0.0.1:7070 --redis redis://127.0.0.1:6379 --sessions 1000000 --size 1024
done

# End to end: example-app on the daemon against tower-sessions-app on Redis.
stop
daemon --max-sessions-per-owner 0
redis
serve 8080 "$R/example-app" --listen 127.0.0.1:8080 --store http://127.0.0.1:7070
serve 8090 "$R/tower-sessions-app" --listen 127.0.0.1:8090 --redis redis://127.0.0.1:6379
for route in profile login; do
    for _ in 1 2 3; do
        run $H --route $route
        run $H --route $route --reverse
    done
done

# The daemon on Redis, RedisSessionStore and raw Redis.
stop
redis
serve 7072 "$R/gonest-sessiond" --listen 127.0.0.1:7072 --backend redis://127.0.0.1:6379
for _ in 1 2 3; do
    run throughput --sessiond http://127.0.0.1:7072 --redis-store redis://127.0.0.1:6379 --redis redis://127.0.0.1:6379 --clients 50 --size 1024 --duration 10s
done

# Gets during sweeps of a million expired sessions.
stop
daemon --sweep-interval 30s
run sweep --sessiond http://127.0.0.1:7070 --sessions 1000000 --size 1024 --ttl 25s --rounds 3
stop
echo "== done $(date -u)"
