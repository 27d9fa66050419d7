# Helpers shared by bench/figures.sh and bench/readme.sh: servers pinned to CPU 1 and waited
# for, the bench pinned to CPU 0, and the result lines of each bench command. Sourced from the
# repository's root, under `set -euo pipefail`, once the release binaries are built.

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

# Fresh servers for the end-to-end runs: a daemon, Redis, example-app on the daemon (8080) and
# tower-sessions-app on Redis (8090).
apps() {
    stop
    daemon --max-sessions-per-owner 0
    redis
    serve 8080 "$R/example-app" --listen 127.0.0.1:8080 --store http://127.0.0.1:7070
    serve 8090 "$R/tower-sessions-app" --listen 127.0.0.1:8090 --redis redis://127.0.0.1:6379
}
