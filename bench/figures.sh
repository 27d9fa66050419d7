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
# shellcheck source=bench/lib.sh
source bench/lib.sh

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
apps
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
