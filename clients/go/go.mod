module example.invalid/gonestsession

go 1.19

// The versions Debian 12 ships (golang-google-grpc-dev, golang-google-protobuf-dev,
// golang-github-golang-protobuf-1-5-dev), which CI builds against in GOPATH mode; a module user
// fetches these. (No go.sum: CI has no module proxy to compute it from.)
require (
	github.com/golang/protobuf v1.5.2 // indirect
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
