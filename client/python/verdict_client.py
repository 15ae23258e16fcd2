#!/usr/bin/python3
"""A small Python client for verdictd, using Debian's python3-grpcio.

The message classes are generated from proto/verdict/v1/verdict.proto at build time into
build/python (set VERDICT_PY_GEN to use another directory). Usage:

  /usr/bin/python3 client/python/verdict_client.py [--server HOST:PORT] [--caller NAME] \
      check IP [--ua USER_AGENT] [--max_age SECONDS] [--cache_only]
  /usr/bin/python3 client/python/verdict_client.py batch IP [IP ...]

Prints each response as JSON. Exit code: 0 on success, else the gRPC status code.
"""

import argparse
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("VERDICT_PY_GEN", os.path.join(_HERE, "..", "..", "build", "python")))

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from verdict.v1 import verdict_pb2  # noqa: E402

_SERVICE = "/verdict.v1.VerdictService/"


class VerdictClient:
    """Typed calls to verdict.v1.VerdictService over one channel."""

    def __init__(self, target, caller=None, api_key=None, credentials=None):
        if credentials is None:
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, credentials)
        self._metadata = []
        if caller:
            self._metadata.append(("x-caller", caller))
        if api_key:
            self._metadata.append(("authorization", "Bearer " + api_key))

    def _call(self, method, request, response_type, timeout):
        rpc = self._channel.unary_unary(
            _SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return rpc(request, timeout=timeout, metadata=self._metadata)

    def check_ip(self, ip, user_agent="", max_age_seconds=None, cache_only=False, timeout=30):
        request = verdict_pb2.CheckIpRequest(ip=ip, user_agent=user_agent, cache_only=cache_only)
        if max_age_seconds is not None:
            request.max_age.seconds = int(max_age_seconds)
        return self._call("CheckIp", request, verdict_pb2.CheckIpResponse, timeout)

    def check_batch(self, ips, timeout=60):
        request = verdict_pb2.CheckBatchRequest(
            items=[verdict_pb2.CheckIpRequest(ip=ip) for ip in ips])
        return self._call("CheckBatch", request, verdict_pb2.CheckBatchResponse, timeout)

    def close(self):
        self._channel.close()


def _print(message):
    print(json.dumps(json_format.MessageToDict(message), sort_keys=True))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--caller", default=os.environ.get("VERDICT_CALLER", "python-client"))
    parser.add_argument("--api_key", default=os.environ.get("VERDICT_API_KEY"))
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check")
    check.add_argument("ip")
    check.add_argument("--ua", default="")
    check.add_argument("--max_age", type=int)
    check.add_argument("--cache_only", action="store_true")
    batch = sub.add_parser("batch")
    batch.add_argument("ips", nargs="+")
    args = parser.parse_args(argv)

    client = VerdictClient(args.server, caller=args.caller, api_key=args.api_key)
    try:
        if args.command == "check":
            _print(client.check_ip(args.ip, args.ua, args.max_age, args.cache_only))
        else:
            _print(client.check_batch(args.ips))
    except grpc.RpcError as e:
        print("error: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
        return e.code().value[0]
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
