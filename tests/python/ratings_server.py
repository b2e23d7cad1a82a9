#!/usr/bin/env python3
"""A ratings instance in Python: serves market.ratings.v1.Ratings/Get and
keeps itself registered with the market's registry, with stock grpcio only.

Usage: python3 tests/python/ratings_server.py --registry HOST:PORT
           --token SERVICE_TOKEN [--instance-id ratings-py-1] [--ttl 30]

It is the whole life of an instance written in another language, as
proto/market/registry/v1/registry.proto describes it:

  1. listen on 127.0.0.1 (a free port) and serve Ratings/Get;
  2. Register the address under a lease of --ttl seconds;
  3. Heartbeat the lease every third of its TTL, and Register again when
     Heartbeat answers NOT_FOUND (the lease is gone: it expired during a long
     pause, a registry on the memory store restarted, an operator removed
     the instance);
  4. on SIGTERM or SIGINT, Deregister first, so that consumers stop calling,
     then stop the server with a grace period for the calls in flight.

Every call to the registry carries `authorization: Bearer TOKEN`. For a
supervisor it prints, flushed, one JSON line on stdout when it listens and
one when it is registered (the lines of crates/daemon/src/ready.rs); its log
goes to stderr. It exits 0 after a signal, 1 when the registry refuses it for
good, 2 when called wrongly or grpcio is missing.

No generated code: the few protobuf fields used are encoded and decoded by
hand (see the `Messages` section), so grpcio is the only dependency.
Linux (or another POSIX system with sigtimedwait).
"""

import argparse
import json
import re
import signal
import sys
from concurrent import futures

INSTALL = "python3 -m pip install grpcio"
SERVICE = "ratings"
# The ratings served, in tenths of a star, as crates/ratings-server serves them.
RATINGS = {"basketball": 21, "briefcase": 35, "camera": 45, "football": 22}
ITEM_ID = re.compile(r"[a-z0-9-]{1,63}")
# How long one call to the registry may take.
CALL_TIMEOUT = 5.0
# How long the calls in flight may take to finish once deregistered.
GRACE = 5.0
SIGNALS = {signal.SIGTERM, signal.SIGINT}


def log(message):
    print(message, file=sys.stderr, flush=True)


def announce(event):
    print(json.dumps(event, separators=(",", ":")), flush=True)


# === Messages ===
#
# Protobuf's wire format: each field is a varint key (number << 3 | wire
# type) then a varint (type 0) or a length and bytes (type 2). Fields at
# their default value are left out, as proto3 does.


def varint(value):
    value &= (1 << 64) - 1  # Negative int32/int64 go out as 10 bytes.
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def int_field(number, value):
    return varint(number << 3) + varint(value) if value else b""


def bytes_field(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data if data else b""


def str_field(number, text):
    return bytes_field(number, text.encode())


def decode(data):
    """The fields of a message: number -> last value (int or bytes)."""
    fields, at = {}, 0

    def read_varint():
        nonlocal at
        shift = value = 0
        while True:
            if at >= len(data):
                raise ValueError("truncated message")
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    while at < len(data):
        key = read_varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number] = read_varint()
        elif wire == 2:
            length = read_varint()
            fields[number] = data[at : at + length]
            at += length
        elif wire in (1, 5):  # fixed64, fixed32: none used here.
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return fields


def register_request(instance_id, address, ttl):
    # RegisterRequest: service 1, instance_id 2, address 3, metadata 4 (a
    # map: one entry message {key 1, value 2} per label), ttl_seconds 5.
    label = str_field(1, "lang") + str_field(2, "python")
    return (
        str_field(1, SERVICE)
        + str_field(2, instance_id)
        + str_field(3, address)
        + bytes_field(4, label)
        + int_field(5, ttl)
    )


def lease_request(lease_id):
    # HeartbeatRequest and DeregisterRequest: lease_id 1.
    return int_field(1, lease_id)


def register_response(data):
    # RegisterResponse: instance 1, lease_id 2, ttl_seconds 3.
    fields = decode(data)
    return fields.get(2, 0), fields.get(3, 0)


# === The ratings service ===


def ratings_handler(instance_id, grpc):
    def get(thing_id, context):
        if not thing_id:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                'thing_id is empty; give an item id such as "camera"',
            )
        if not ITEM_ID.fullmatch(thing_id):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"thing_id {json.dumps(thing_id)} is malformed; item ids are "
                "1 to 63 lowercase letters, digits and '-'",
            )
        if thing_id not in RATINGS:
            log(f"GET {thing_id} => not found")
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no rating for {json.dumps(thing_id)}; "
                f"rated items are {', '.join(RATINGS)}",
            )
        log(f"GET {thing_id} => {RATINGS[thing_id]}")
        # Rating: thing_id 1, rating 2, served_by 3.
        return (
            str_field(1, thing_id)
            + int_field(2, RATINGS[thing_id])
            + str_field(3, instance_id)
        )

    return grpc.method_handlers_generic_handler(
        "market.ratings.v1.Ratings",
        {
            "Get": grpc.unary_unary_rpc_method_handler(
                get,
                # GetRatingRequest: thing_id 1.
                request_deserializer=lambda data: decode(data).get(1, b"").decode(),
                response_serializer=lambda data: data,
            )
        },
    )


# === The registration ===


class Lease:
    """One instance's registration: Register, Heartbeat, Deregister."""

    def __init__(self, grpc, channel, token, instance_id, address, ttl):
        self.grpc = grpc
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.instance_id, self.address, self.ttl = instance_id, address, ttl
        self.lease_id = 0

        def method(name, decoder):
            return channel.unary_unary(
                f"/market.registry.v1.Registry/{name}",
                request_serializer=lambda data: data,
                response_deserializer=decoder,
            )

        self._register = method("Register", register_response)
        self._heartbeat = method("Heartbeat", lambda data: decode(data).get(1, 0))
        self._deregister = method("Deregister", lambda data: data)

    def call(self, method, request):
        return method(request, metadata=self.metadata, timeout=CALL_TIMEOUT)

    def register(self):
        request = register_request(self.instance_id, self.address, self.ttl)
        self.lease_id, self.ttl = self.call(self._register, request)
        log(
            f"registered {self.instance_id} at {self.address} "
            f"(lease {self.lease_id:x}, ttl {self.ttl} s)"
        )

    def heartbeat(self):
        """Renews the lease; forgets it when the registry no longer has it."""
        try:
            self.call(self._heartbeat, lease_request(self.lease_id))
        except self.grpc.RpcError as error:
            if error.code() != self.grpc.StatusCode.NOT_FOUND:
                raise
            log(f"lease {self.lease_id:x} is gone ({error.details()}); registering again")
            self.lease_id = 0

    def deregister(self):
        self.call(self._deregister, lease_request(self.lease_id))
        log(f"deregistered {self.instance_id} (lease {self.lease_id:x})")


def keep_registered(lease, grpc):
    """Registers, then heartbeats every third of the TTL and registers again
    when the lease is lost, until a signal (True) or a refusal that trying
    again cannot cure (False). A failed call is tried again after a second:
    a heartbeat that fails now and then still lands well within the TTL."""
    fatal = {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
    }
    announced, wait = False, 0.0
    while True:
        # A signal that came while calling stays pending until this wait.
        if wait and signal.sigtimedwait(SIGNALS, wait) is not None:
            return True
        step = lease.heartbeat if lease.lease_id else lease.register
        try:
            step()
        except grpc.RpcError as error:
            log(f"{step.__name__} failed: {error.code().name}: {error.details()}")
            if error.code() in fatal:
                return False
            wait = 1.0
            continue
        if not lease.lease_id:
            wait = 0.0  # The lease is gone: register again at once.
            continue
        if not announced:
            announced = True
            announce(
                {"ready": "registered", "service": SERVICE, "instance": lease.instance_id}
            )
        wait = max(lease.ttl, 1) / 3


def main(argv):
    parser = argparse.ArgumentParser(description="A ratings instance in Python.")
    parser.add_argument("--registry", required=True, help="the registry, HOST:PORT")
    parser.add_argument("--token", required=True, help="the ratings service token")
    parser.add_argument("--instance-id", default="ratings-py-1")
    parser.add_argument("--ttl", type=int, default=30, help="lease TTL, 1 to 300 s")
    args = parser.parse_args(argv[1:])
    registry = args.registry.removeprefix("http://")
    if "://" in registry:
        parser.error(
            f"--registry {args.registry}: give HOST:PORT or http://HOST:PORT "
            "(this example speaks plaintext only)"
        )

    # The signals are taken with sigtimedwait, by the main thread alone:
    # blocked before any thread starts, so that every thread inherits it.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        import grpc
    except ImportError as error:
        log(f"cannot import grpc ({error}); {INSTALL}")
        return 2

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", 4096)],
    )
    server.add_generic_rpc_handlers((ratings_handler(args.instance_id, grpc),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"http://127.0.0.1:{port}"
    log(f"listening on port {port}")
    announce(
        {
            "ready": "listening",
            "service": SERVICE,
            "instance": args.instance_id,
            "address": address,
        }
    )

    # A heartbeat must land within the TTL: reconnect to a registry that was
    # down within a second, not after gRPC's default backoff of up to 2 min.
    channel = grpc.insecure_channel(
        registry, options=[("grpc.max_reconnect_backoff_ms", 1000)]
    )
    lease = Lease(grpc, channel, args.token, args.instance_id, address, args.ttl)
    signalled = keep_registered(lease, grpc)
    # Deregister first, so that consumers stop calling before the server stops.
    if lease.lease_id:
        log("shutting down: deregistering, then finishing calls in flight")
        try:
            lease.deregister()
        except grpc.RpcError as error:
            log(f"could not deregister: {error.details()}; the lease will expire instead")
    server.stop(GRACE).wait()
    channel.close()
    return 0 if signalled else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
