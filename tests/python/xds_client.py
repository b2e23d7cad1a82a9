#!/usr/bin/env python3
"""Calls market.ratings.v1.Ratings/Get over xDS with Python's stock grpcio.

Usage: python3 tests/python/xds_client.py BOOTSTRAP TARGET

BOOTSTRAP is a gRPC xDS bootstrap file (`registryctl xds-bootstrap`); it is
given to grpcio as GRPC_XDS_BOOTSTRAP in this process only. TARGET is what
to dial, e.g. xds:///ratings. No generated code: the request is encoded by
hand (field 1, string thing_id) and only the answer's field 3 (served_by,
a string) is read.

The caller drives it on stdin, one command a line, and reads one JSON object
a line on stdout:

  calls N            N calls, each with a 5 s deadline; then a summary
  window SECONDS     calls one after another for SECONDS; then a summary
                     with, for each instance, when (in seconds from the
                     window's start) it answered last
  until SECONDS ID...
                     calls one after another until each instance ID has
                     answered, or for SECONDS at most; then a summary
  no-deadline        one call without a deadline of its own
  retries on|off     a new channel, with gRPC's retries (on by default in
                     grpcio: the xDS route's retry policy applies) or with
                     them off (grpc.enable_retries 0); then {"retries": ...}
  quit               exit

Every call prints {"served_by": ...} or {"code": ..., "details": ...}, with
"elapsed" (seconds). A summary is {"summary": COMMAND, "served": {...},
"first": {...}, "last": {...}, "errors": {...}}, the times in seconds from
the command's start. It prints {"started": TARGET} once the
channel exists. It exits with 2 when called wrongly or grpcio is missing.
"""

import json
import os
import sys
import time

INSTALL = "python3 -m pip install grpcio"


def encode_request(thing_id):
    data = thing_id.encode()
    if len(data) > 127:
        raise ValueError("thing_id too long for this encoder")
    # Field 1, wire type 2 (length-delimited).
    return bytes([0x0A, len(data)]) + data


def read_varint(data, at):
    shift = value = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def decode_served_by(data):
    """Field 3 (a string) of a GetRatingResponse; the other fields skipped."""
    at, served_by = 0, ""
    while at < len(data):
        key, at = read_varint(data, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, at = read_varint(data, at)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            length, at = read_varint(data, at)
            if field == 3:
                served_by = data[at : at + length].decode()
            at += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return served_by


def emit(value):
    print(json.dumps(value), flush=True)


def main(argv):
    if len(argv) != 3:
        print("usage: xds_client.py BOOTSTRAP TARGET", file=sys.stderr)
        return 2
    bootstrap, target = argv[1], argv[2]
    # Read by gRPC's C-core when the first xds:/// channel is made.
    os.environ["GRPC_XDS_BOOTSTRAP"] = bootstrap
    try:
        import grpc
    except ImportError as error:
        print(f"cannot import grpc ({error}); {INSTALL}", file=sys.stderr)
        return 2

    def connect(options):
        channel = grpc.insecure_channel(target, options=options)
        get = channel.unary_unary(
            "/market.ratings.v1.Ratings/Get",
            request_serializer=lambda thing: encode_request(thing),
            response_deserializer=decode_served_by,
        )
        return channel, get

    channel, get = connect([])
    emit({"started": target})

    def call(timeout):
        started = time.monotonic()
        try:
            served_by = get("camera", timeout=timeout)
            result = {"served_by": served_by}
        except grpc.RpcError as error:
            result = {"code": error.code().name, "details": error.details()}
        result["elapsed"] = round(time.monotonic() - started, 3)
        emit(result)
        return result

    def summary(command, results, started):
        served, first, last, errors = {}, {}, {}, {}
        for at, result in results:
            if "served_by" in result:
                who = result["served_by"]
                served[who] = served.get(who, 0) + 1
                first.setdefault(who, round(at - started, 3))
                last[who] = round(at - started, 3)
            else:
                errors[result["code"]] = errors.get(result["code"], 0) + 1
        emit(
            {
                "summary": command,
                "served": served,
                "first": first,
                "last": last,
                "errors": errors,
            }
        )

    def calls_for(command, seconds, waiting=None):
        """Calls one after another for `seconds`, or until each instance in
        `waiting` has answered; then a summary."""
        started = time.monotonic()
        results = []
        while time.monotonic() - started < seconds:
            result = call(5.0)
            results.append((time.monotonic(), result))
            if waiting is not None:
                waiting.discard(result.get("served_by"))
                if not waiting:
                    break
        summary(command, results, started)

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command = words[0]
        if command == "quit":
            break
        if command == "calls":
            started = time.monotonic()
            results = []
            for _ in range(int(words[1])):
                result = call(5.0)
                results.append((time.monotonic(), result))
            summary(command, results, started)
        elif command == "window":
            calls_for(command, float(words[1]))
        elif command == "until" and len(words) > 2:
            calls_for(command, float(words[1]), set(words[2:]))
        elif command == "no-deadline":
            call(None)
        elif command == "retries" and words[1:] in (["on"], ["off"]):
            channel.close()
            enable = 1 if words[1] == "on" else 0
            channel, get = connect([("grpc.enable_retries", enable)])
            emit({"retries": words[1]})
        else:
            emit({"error": f"unknown command {command!r}"})
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
