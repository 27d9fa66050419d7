"""Another language's client, generated from session.proto alone, against the daemon binary.

Usage: python3 tests/interop/python_client.py PATH/TO/gonest-sessiond
Needs grpcio and grpcio-tools. Exits non-zero, saying what failed, if any check fails.
"""

import json
import os
import subprocess
import sys
import tempfile

from grpc_tools import protoc


def generate(out_dir: str) -> None:
    proto_root = os.path.join(os.path.dirname(__file__), "..", "..", "proto", "proto")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    status = protoc.main([
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "gonest/session/v1/session.proto",
    ])
    if status != 0:
        sys.exit("protoc failed on session.proto")
    for package in ["gonest", "gonest/session", "gonest/session/v1"]:
        open(os.path.join(out_dir, package, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)


def start(binary: str) -> tuple[subprocess.Popen, str]:
    daemon = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--log-format", "json"],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in daemon.stderr:
        record = json.loads(line)
        if record["fields"].get("message") == "gonest-sessiond listening":
            return daemon, record["fields"]["addr"]
    sys.exit("the daemon exited before listening")


def main() -> None:
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as out_dir:
        generate(out_dir)
        import grpc
        from google.protobuf import duration_pb2
        from gonest.session.v1 import session_pb2 as pb
        from gonest.session.v1 import session_pb2_grpc as rpc

        daemon, addr = start(binary)
        try:
            store = rpc.SessionStoreStub(grpc.insecure_channel(addr))
            saved = store.Save(pb.SaveRequest(
                session=pb.Session(id="py-1", data={"user_id": b"42"}),
                expected_version=0,
                ttl=duration_pb2.Duration(seconds=60),
            ))
            assert saved.version == 1, saved
            got = store.Get(pb.GetRequest(id="py-1")).session
            assert got.data["user_id"] == b"42" and got.version == 1, got
            try:
                store.Save(pb.SaveRequest(session=pb.Session(id="py-1"), expected_version=0))
                sys.exit("a conflicting save was accepted")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.ABORTED, err
            try:
                store.Get(pb.GetRequest(id="not valid"))
                sys.exit("an invalid id was accepted")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            answers = list(store.Pipeline(iter([
                pb.PipelineRequest(tag=7, touch=pb.TouchRequest(id="py-1")),
                pb.PipelineRequest(tag=8, destroy=pb.DestroyRequest(id="py-1")),
                pb.PipelineRequest(tag=9, get=pb.GetRequest(id="py-1")),
            ])))
            assert [a.tag for a in answers] == [7, 8, 9], answers
            assert answers[0].touch.found and answers[1].destroy.existed, answers
            assert not answers[2].get.HasField("session"), answers
            stats = store.Stats(pb.StatsRequest())
            assert stats.live_sessions == 0, stats
            # Values of 8 KiB and more come back as HTTP/2 frames of their own.
            large = {"a": bytes(range(256)) * 80, "b": b"small", "c": b"\x07" * (300 << 10)}
            store.Save(pb.SaveRequest(session=pb.Session(id="py-2", data=large)))
            answers = list(store.Pipeline(iter([
                pb.PipelineRequest(tag=10, get=pb.GetRequest(id="py-2")),
                pb.PipelineRequest(tag=11, batch=[
                    pb.PipelineRequest(tag=12, get=pb.GetRequest(id="py-2")),
                ]),
            ])))
            sessions = [answers[0].get.session, answers[1].batch[0].get.session]
            assert all(dict(s.data) == large for s in sessions), "large values differ"
            stored = store.Stats(pb.StatsRequest(as_stored=True))
            assert stored.live_sessions == 1 and stored.max_session_bytes > 0, stored
            print("python client: 8 checks passed against", addr)
        finally:
            daemon.terminate()
            daemon.wait(timeout=15)


if __name__ == "__main__":
    main()
