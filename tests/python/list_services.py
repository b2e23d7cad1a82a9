#!/usr/bin/env python3
"""Lists the services of a gRPC server as Python's stock reflection client sees them.

Usage: python3 tests/python/list_services.py HOST:PORT

It connects in plaintext and asks through grpcio-reflection's
ProtoReflectionDescriptorDatabase, which speaks the v1alpha reflection protocol
(the package ships no v1 client). It prints the full name of each service on a
line of its own. It exits with 2 when it is called wrongly or the Python
packages are missing, and with 1 when the server cannot be reached or does not
answer.
"""

import sys

INSTALL = "python3 -m pip install grpcio grpcio-reflection"

# How long to wait for the connection; the caller bounds the whole run.
CONNECT_TIMEOUT_SECONDS = 20


def main(argv):
    if len(argv) != 2:
        print("usage: list_services.py HOST:PORT", file=sys.stderr)
        return 2
    target = argv[1]
    try:
        import grpc
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )
    except ImportError as error:
        print(
            f"list_services.py needs the Python packages grpcio and grpcio-reflection "
            f"({error}); install them with `{INSTALL}` (tests/run.sh does when they "
            f"are missing)",
            file=sys.stderr,
        )
        return 2

    # A proxy named in the environment (http_proxy, grpc_proxy) could not
    # reach the caller's loopback server: connect directly.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_SECONDS)
        except grpc.FutureTimeoutError:
            print(
                f"cannot connect to {target} within {CONNECT_TIMEOUT_SECONDS} s; "
                f"give the HOST:PORT of a plaintext gRPC server",
                file=sys.stderr,
            )
            return 1
        try:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
        except grpc.RpcError as error:
            print(
                f"{target} refused the v1alpha reflection request "
                f"(grpc.reflection.v1alpha.ServerReflection): {error.code()}: "
                f"{error.details()}",
                file=sys.stderr,
            )
            return 1
    for name in services:
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
