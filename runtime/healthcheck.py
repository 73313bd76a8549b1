"""``python -m runtime.healthcheck ADDRESS [SERVICE]``: exit 0 if the gRPC health service at ADDRESS
reports SERVICE ("" = the whole server) SERVING, else 1. The containers' health probe."""
from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.rpc_errors import describe


def check(address: str, service: str = "", timeout_s: float = 3.0) -> tuple[bool, str]:
    """(serving, what was seen) for ``service`` at ``address``."""
    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=timeout_s)
        except grpc.RpcError as e:
            return False, describe(e)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.healthcheck", description=__doc__)
    p.add_argument("address", help="host:port of a Grove service")
    p.add_argument("service", nargs="?", default="", help='e.g. grove.v1.Grove (default "": the server)')
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = p.parse_args(argv)
    ok, seen = check(args.address, args.service, args.timeout)
    print(f"{args.address} {args.service or '(server)'}: {seen}")  # noqa: T201 - the probe's output
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
