#!/usr/bin/env bash
# Checks the Go client as .ci/run does, offline, in GOPATH mode against Debian's packages
# (golang-go, golang-google-grpc-dev, golang-google-protobuf-dev; protobuf-compiler,
# protoc-gen-go and protoc-gen-go-grpc for the staleness check): the generated code is what
# generate.sh makes from today's session.proto, gofmt -l prints nothing, go vet passes, and
# go test ./... passes against the daemon in GONEST_BIN_DIR (as go-app's sources are checked).
#
#   GONEST_BIN_DIR=target/debug bash clients/go/test.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
: "${GONEST_BIN_DIR:?set GONEST_BIN_DIR to the folder of a built gonest-sessiond}"
export GONEST_BIN_DIR="$(realpath "$GONEST_BIN_DIR")"
gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT

bash "$here/generate.sh" "$gopath/generated"
if ! diff -r "$gopath/generated" "$here/sessionpb"; then
  echo "clients/go/sessionpb is stale: run bash clients/go/generate.sh and commit it" >&2
  exit 1
fi

unformatted="$(gofmt -l "$here" "$root/examples/go-app")"
if [ -n "$unformatted" ]; then
  echo "not gofmt-formatted:" >&2
  echo "$unformatted" >&2
  exit 1
fi

mkdir -p "$gopath/src/example.invalid"
cp -r "$here" "$gopath/src/example.invalid/gonestsession"
cp -r "$root/examples/go-app" "$gopath/src/example.invalid/go-app"
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode"
cd "$gopath/src/example.invalid"
go vet ./gonestsession/... ./go-app/...
go test -count=1 ./gonestsession/...
