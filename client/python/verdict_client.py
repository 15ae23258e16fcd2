#!/usr/bin/python3
"""A small Python client for verdictd, on Debian's python3-grpcio.

The message classes are generated from proto/verdict/v1/verdict.proto at build time into
build/python (set VERDICT_PY_GEN to use another directory); none are committed. The library:

  from verdict_client import VerdictClient
  with VerdictClient("127.0.0.1:50051", api_key=os.environ["VERDICT_API_KEY"],
                     root_certificates=open("ca.pem", "rb").read()) as client:
      response = client.check_ip("8.8.8.8", user_agent="Mozilla/5.0")

Every call has a deadline (`timeout`, 10 s unless the client or the call says otherwise). Errors
raise grpc.RpcError, with .code() a grpc.StatusCode and .details() the server's message. Nothing
is retried: a CheckIp or CheckBatch that failed may still have spent a click (the request may have
reached ClickPatrol), and a retry could spend another.

The command line (the API key comes only from the environment, VERDICT_API_KEY):

  /usr/bin/python3 client/python/verdict_client.py [--server HOST:PORT] [--caller NAME] \
      [--ca CA.pem [--cert CERT.pem --key KEY.pem]] \
      check IP [--ua USER_AGENT] [--max_age SECONDS] [--cache_only]
  ... batch IP [IP ...]
  ... history IP
  ... usage [--of CALLER]

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
DEFAULT_TIMEOUT_S = 10.0


class VerdictClient:
    """Typed calls to verdict.v1.VerdictService over one channel.

    target: "host:port". Identity: api_key (sent as `authorization: Bearer <key>`, keyed mode) or
    caller (sent as `x-caller`, open mode). TLS: root_certificates (PEM bytes of the CA; without it
    the channel is plaintext), with private_key and certificate_chain (PEM bytes) for mutual TLS;
    server_name overrides the name the server's certificate must carry. timeout: the default
    deadline of every call, in seconds.
    """

    def __init__(self, target, caller=None, api_key=None, root_certificates=None,
                 private_key=None, certificate_chain=None, server_name=None,
                 timeout=DEFAULT_TIMEOUT_S):
        options = []
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
            options.append(("grpc.default_authority", server_name))
        if root_certificates is None:
            if private_key or certificate_chain:
                raise ValueError("a client certificate needs root_certificates (TLS)")
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates, private_key=private_key,
                certificate_chain=certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._metadata = []
        if api_key:
            self._metadata.append(("authorization", "Bearer " + api_key))
        elif caller:
            self._metadata.append(("x-caller", caller))
        self._timeout = timeout
        self._max_batch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, response_type, timeout):
        rpc = self._channel.unary_unary(
            _SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return rpc(request, timeout=self._timeout if timeout is None else timeout,
                   metadata=self._metadata)

    def check_ip(self, ip, user_agent="", max_age_seconds=None, cache_only=False, timeout=None):
        """One IP: a CheckIpResponse. max_age_seconds 0 always asks ClickPatrol."""
        return self._call("CheckIp", _check_ip_request(ip, user_agent, max_age_seconds, cache_only),
                          verdict_pb2.CheckIpResponse, timeout)

    def get_server_info(self, timeout=None):
        return self._call("GetServerInfo", verdict_pb2.GetServerInfoRequest(),
                          verdict_pb2.GetServerInfoResponse, timeout)

    def check_batch(self, ips, timeout=None):
        """Many IPs (strings, or CheckIpRequest messages), sent as CheckBatch calls of at most the
        server's max_batch (asked once, from GetServerInfo), one after another. Returns the
        CheckBatchResult messages in input order; a bad item is its own result's `error` (a
        google.rpc code and message), not an exception. `timeout` applies to each call."""
        if self._max_batch is None:
            max_batch = self.get_server_info(timeout).max_batch
            self._max_batch = max_batch if max_batch > 0 else 1000
        items = [verdict_pb2.CheckIpRequest(ip=i) if isinstance(i, str) else i for i in ips]
        results = []
        for start in range(0, len(items), self._max_batch):
            request = verdict_pb2.CheckBatchRequest(items=items[start:start + self._max_batch])
            response = self._call("CheckBatch", request, verdict_pb2.CheckBatchResponse, timeout)
            results.extend(response.results)
        return results

    def list_verdict_history(self, ip, since=None, until=None, page_size=0, timeout=None):
        """Every stored verdict for ip, newest first, following page tokens (since/until: datetime,
        aware or UTC). `timeout` applies to each page."""
        request = verdict_pb2.ListVerdictHistoryRequest(ip=ip, page_size=page_size)
        if since is not None:
            request.since.FromDatetime(since)
        if until is not None:
            request.until.FromDatetime(until)
        verdicts = []
        while True:
            page = self._call("ListVerdictHistory", request,
                              verdict_pb2.ListVerdictHistoryResponse, timeout)
            verdicts.extend(page.verdicts)
            if not page.next_page_token:
                return verdicts
            request.page_token = page.next_page_token

    def get_usage(self, caller="", since=None, until=None, timeout=None):
        """A GetUsageResponse for caller; "" means every caller (open mode and auditors only)."""
        request = verdict_pb2.GetUsageRequest(caller=caller)
        if since is not None:
            request.since.FromDatetime(since)
        if until is not None:
            request.until.FromDatetime(until)
        return self._call("GetUsage", request, verdict_pb2.GetUsageResponse, timeout)

    def close(self):
        self._channel.close()


def _check_ip_request(ip, user_agent, max_age_seconds, cache_only):
    request = verdict_pb2.CheckIpRequest(ip=ip, user_agent=user_agent, cache_only=cache_only)
    if max_age_seconds is not None:
        request.max_age.SetInParent()  # present even when 0, which means "always ask"
        request.max_age.seconds = int(max_age_seconds)
    return request


def _print(message):
    print(json.dumps(json_format.MessageToDict(message), sort_keys=True))


def _read(path):
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--caller", default=os.environ.get("VERDICT_CALLER", "python-client"),
                        help="open mode's x-caller (ignored when VERDICT_API_KEY is set)")
    parser.add_argument("--ca", help="PEM CA certificates: TLS")
    parser.add_argument("--cert", help="PEM client certificate chain (mutual TLS)")
    parser.add_argument("--key", help="PEM client private key (mutual TLS)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check")
    check.add_argument("ip")
    check.add_argument("--ua", default="")
    check.add_argument("--max_age", type=int)
    check.add_argument("--cache_only", action="store_true")
    batch = sub.add_parser("batch")
    batch.add_argument("ips", nargs="+")
    history = sub.add_parser("history")
    history.add_argument("ip")
    usage = sub.add_parser("usage")
    usage.add_argument("--of", default="", help="one caller (default: every caller; open mode and auditors only)")
    args = parser.parse_args(argv)

    client = VerdictClient(args.server, caller=args.caller,
                           api_key=os.environ.get("VERDICT_API_KEY"),
                           root_certificates=_read(args.ca), private_key=_read(args.key),
                           certificate_chain=_read(args.cert), timeout=args.timeout)
    try:
        if args.command == "check":
            _print(client.check_ip(args.ip, args.ua, args.max_age, args.cache_only))
        elif args.command == "batch":
            for result in client.check_batch(args.ips):
                _print(result)
        elif args.command == "history":
            for verdict in client.list_verdict_history(args.ip):
                _print(verdict)
        else:
            _print(client.get_usage(args.of))
    except grpc.RpcError as e:
        print("error: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
        return e.code().value[0]
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
