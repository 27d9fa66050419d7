#!/usr/bin/env bash
# Generates sessionpb/ (the Go messages and gRPC client) from the repository's session.proto,
# with protoc, protoc-gen-go and protoc-gen-go-grpc (Debian: protobuf-compiler, protoc-gen-go,
# protoc-gen-go-grpc). The generated files are checked in, so that `go get` users need no
# protoc; .ci/run runs this script into a temporary folder and fails when they are stale.
#
#   bash clients/go/generate.sh [OUTPUT_DIR]   # default: clients/go/sessionpb
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto_root="$here/../../proto/proto"
out="${1:-$here/sessionpb}"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The .proto names no Go package (it is every language's contract); M maps it here.
map="Mgonest/session/v1/session.proto=example.invalid/gonestsession/sessionpb"
protoc -I "$proto_root" \
  --go_out="$work" --go_opt="$map" --go_opt=paths=source_relative \
  --go-grpc_out="$work" --go-grpc_opt="$map" --go-grpc_opt=paths=source_relative \
  gonest/session/v1/session.proto
cp "$work/gonest/session/v1/session.pb.go" "$work/gonest/session/v1/session_grpc.pb.go" "$out/"
