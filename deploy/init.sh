#!/bin/sh
# The one step before `docker compose up`: creates the daemon's bearer token (32 random bytes,
# hex, readable by its owner only) unless there is one, and the .env that tells compose where it
# is. Run from anywhere; run again at will: an existing token is kept.
set -eu
cd "$(dirname "$0")/.."
token=deploy/secrets/sessiond.token
if [ ! -s "$token" ]; then
  umask 077
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$token"
  echo >> "$token"
  echo "created $token"
fi
if ! grep -qs '^SESSIOND_TOKEN_FILE=' .env; then
  echo "SESSIOND_TOKEN_FILE=./$token" >> .env
  echo "named it in .env"
fi
