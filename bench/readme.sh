#!/usr/bin/env bash
# Runs every command behind the two tables of the README's "Performance" section, three runs
# each, pinned as bench/README.md says (servers on CPU 1, the bench on CPU 0): the store
# against Redis, then the apps against the same routes on tower-sessions + Redis. Throughput
# and http runs go in the order N, R, N (R: --reverse, the other target first); memory and
# sweep runs each on fresh servers. Prints the commands and their result lines. Needs
# redis-server and a free 6379, 7070, 8080, 8082, 8083 and 8090. About 25 minutes on the
# project's 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p gonest-sessiond -p gonest-session-bench -p example-app \
    -p tower-sessions-example
# shellcheck source=bench/lib.sh
source bench/lib.sh

# Three runs of a two-target bench command: as written, reversed, as written.
thrice() {
    run "$@"
    run "$@" --reverse
    run "$@"
}

echo "== $(date -u) commit $(git rev-parse --short HEAD)"

# The store.
daemon
redis
thrice $T --clients 50 --size 1024 --duration 10s --mix get:90,save:10
thrice $T --clients 50 --size 16384 --duration 10s --mix get:90,save:10
run compare --a redis://127.0.0.1:6379 --b http://127.0.0.1:7070 --duration 8s --pairs 8 \
    --clients 50 --size 16384
thrice $T --clients 1 --size 1024 --duration 10s
for _ in 1 2 3; do
    stop
    daemon
    redis
    run memory --sessiond http://127.0.0.1:7070 --redis redis://127.0.0.1:6379 --sessions 200000 --size 1024
done
# Gets during sweeps of a million expired sessions, and Stats right after they expire.
for _ in 1 2 3; do
    stop
    daemon --sweep-interval 30s
    run sweep --sessiond http://127.0.0.1:7070 --sessions 1000000 --size 1024 --ttl 25s --rounds 3
done

# The apps: example-app, and a tower-sessions app that switched its store, on the daemon;
# tower-sessions-app on Redis.
apps
serve 8082 "$R/tower-sessions-example" --listen 127.0.0.1:8082 --store http://127.0.0.1:7070
serve 8083 "$R/tower-sessions-example" --listen 127.0.0.1:8083 --store http://127.0.0.1:7070 \
    --near-cache-entries 0
theirs="--theirs http://127.0.0.1:8090 --theirs-store 6379 --clients 50 --duration 10s"
for route in profile login; do
    thrice http --ours http://127.0.0.1:8080 --ours-store 7070 $theirs --route $route
done
thrice http --ours http://127.0.0.1:8083 --ours-store 7070 $theirs --route profile
thrice http --ours http://127.0.0.1:8082 --ours-store 7070 $theirs --route profile
stop
echo "== done $(date -u)"
