#!/usr/bin/env bash
# Builds go-app to OUTPUT, offline, in GOPATH mode against Debian's Go packages (golang-go,
# golang-google-grpc-dev, golang-google-protobuf-dev), as .ci/run does:
#
#   bash examples/go-app/build.sh OUTPUT
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash examples/go-app/build.sh OUTPUT" >&2
  exit 2
fi
output="$(realpath -m "$1")"
root="$(cd "$(dirname "$0")/../.." && pwd)"
gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT
# The import paths, under a GOPATH of their own; Debian's packages are the second GOPATH entry.
mkdir -p "$gopath/src/example.invalid"
cp -r "$root/clients/go" "$gopath/src/example.invalid/gonestsession"
cp -r "$root/examples/go-app" "$gopath/src/example.invalid/go-app"
cd "$gopath/src/example.invalid/go-app"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" go build -o "$output" .
