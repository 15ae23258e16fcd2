#!/usr/bin/python3
"""End-to-end test of client/python/verdict_client.py (VerdictClient).

Starts the simulated ClickPatrol and verdictd on 127.0.0.1, each on a port the OS picks (port 0,
reported through --port_file), in a temporary directory, and talks to verdictd through
VerdictClient. Three servers, started once for the whole class: an open one (--max_batch=2), a
keyed one over TLS in front of a slow simulator (3 s), and one that requires a client certificate
(mutual TLS). Run by ctest (python_client) with:

  VERDICTD_BIN     path of verdictd          (default: build/verdictd)
  SIM_BIN          path of clickpatrol_sim   (default: build/clickpatrol_sim)
  VERDICT_PY_GEN   generated verdict_pb2 dir (default: build/python)
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.normpath(os.path.join(_HERE, "..", ".."))
_BUILD = os.path.join(_ROOT, "build")

VERDICTD_BIN = os.environ.get("VERDICTD_BIN", os.path.join(_BUILD, "verdictd"))
SIM_BIN = os.environ.get("SIM_BIN", os.path.join(_BUILD, "clickpatrol_sim"))
# verdict_client reads VERDICT_PY_GEN when it is imported.
os.environ.setdefault("VERDICT_PY_GEN", os.path.join(_BUILD, "python"))
sys.path.insert(0, os.path.join(_ROOT, "client", "python"))

import grpc  # noqa: E402
from verdict_client import VerdictClient, verdict_pb2  # noqa: E402

TOKEN = "python-client-test-token"
GOOD_KEY = "vk_python_good_7d2e9b41c6a0f358"
OTHER_KEY = "vk_python_other_e4a1c09b7f2d6385"
START_TIMEOUT_S = 15


def _wait_for_port(process, port_file, log_file):
    """The port the child wrote to port_file, once it has; fails if the child exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if os.path.exists(port_file):
            with open(port_file) as f:
                text = f.read().strip()
            if text:
                return int(text)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    with open(log_file, errors="replace") as f:
        log = f.read()
    raise AssertionError("%s did not start (exit %s); its log:\n%s"
                         % (process.args[0], process.poll(), log))


def _stop(process):
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class VerdictClientTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="verdict_client_test_")
        cls.addClassCleanup(cls._tmp.cleanup)
        cls._children = []
        cls.addClassCleanup(cls._stop_all)  # runs before the directory is removed
        cls.dir = cls._tmp.name

        cls.sim_port = cls._start("sim", [SIM_BIN, "--token=" + TOKEN, "--threads=8"])
        cls.slow_sim_port = cls._start("slow_sim", [SIM_BIN, "--token=" + TOKEN, "--latency=3s"])

        cls.pki = os.path.join(cls.dir, "pki")
        subprocess.run([os.path.join(_ROOT, "tests", "clients", "make_test_pki.sh"), cls.pki],
                       check=True)
        keys = os.path.join(cls.dir, "api_keys")
        with open(os.open(keys, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("python-team %s\n" % hashlib.sha256(GOOD_KEY.encode()).hexdigest())
        tls = ["--tls_cert=" + cls._pem("server.pem"), "--tls_key=" + cls._pem("server.key")]

        cls.open_port = cls._verdictd("open", cls.sim_port, ["--max_batch=2"])
        cls.keyed_port = cls._verdictd("keyed", cls.slow_sim_port,
                                       ["--api_keys_file=" + keys] + tls)
        cls.mtls_port = cls._verdictd("mtls", cls.sim_port,
                                      tls + ["--tls_client_ca=" + cls._pem("ca.pem")])

    @classmethod
    def _start(cls, name, argv, env=None):
        port_file = os.path.join(cls.dir, name + ".port")
        log_file = os.path.join(cls.dir, name + ".log")
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                argv + ["--listen=127.0.0.1:0", "--port_file=" + port_file],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        cls._children.append(process)
        return _wait_for_port(process, port_file, log_file)

    @classmethod
    def _verdictd(cls, name, sim_port, flags):
        env = dict(os.environ)
        env["CLICKPATROL_TOKEN"] = TOKEN
        return cls._start(name, [VERDICTD_BIN, "--db=" + os.path.join(cls.dir, name + ".db"),
                                 "--upstream_url=http://127.0.0.1:%d/" % sim_port] + flags, env)

    @classmethod
    def _stop_all(cls):
        for process in cls._children:
            _stop(process)

    @classmethod
    def _pem(cls, name):
        return os.path.join(cls.pki, name)

    def _read_pem(self, name):
        with open(self._pem(name), "rb") as f:
            return f.read()

    def _client(self, port, **kwargs):
        client = VerdictClient("127.0.0.1:%d" % port, **kwargs)
        self.addCleanup(client.close)
        return client

    def sim_requests(self, port=None):
        url = "http://127.0.0.1:%d/_sim/stats" % (port or self.sim_port)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)["requests"]

    def test_miss_then_hit_then_history_and_usage(self):
        client = self._client(self.open_port, caller="python-test")
        before = self.sim_requests()
        first = client.check_ip("8.8.8.8", user_agent="Mozilla/5.0")
        self.assertEqual(first.source, verdict_pb2.SOURCE_UPSTREAM)
        self.assertTrue(first.click_spent)
        self.assertEqual(first.verdict.ip, "8.8.8.8")
        self.assertEqual(first.verdict.caller, "python-test")
        self.assertEqual(first.verdict.user_agent, "Mozilla/5.0")
        self.assertNotEqual(first.verdict.score, verdict_pb2.SCORE_UNSPECIFIED)

        second = client.check_ip("8.8.8.8")
        self.assertEqual(second.source, verdict_pb2.SOURCE_CACHE)
        self.assertFalse(second.click_spent)
        self.assertEqual(second.verdict.score, first.verdict.score)
        self.assertEqual(second.verdict.checked_at, first.verdict.checked_at)
        # Only the miss reached ClickPatrol.
        self.assertEqual(self.sim_requests() - before, 1)

        # max_age 0 always asks ClickPatrol: a second verdict, so history has two pages of one.
        third = client.check_ip("8.8.8.8", max_age_seconds=0)
        self.assertEqual(third.source, verdict_pb2.SOURCE_UPSTREAM)
        self.assertTrue(third.click_spent)
        self.assertEqual(self.sim_requests() - before, 2)
        history = client.list_verdict_history("8.8.8.8", page_size=1)
        self.assertEqual([v.checked_at for v in history],
                         [third.verdict.checked_at, first.verdict.checked_at])

        usage = client.get_usage("python-test")
        self.assertEqual([c.caller for c in usage.callers], ["python-test"])
        self.assertEqual(usage.callers[0].clicks, 2)
        self.assertEqual(usage.callers[0].cache_hits, 1)
        self.assertEqual(usage.callers[0].requests, 3)

    def test_a_batch_larger_than_max_batch_is_split_in_order_with_per_item_errors(self):
        client = self._client(self.open_port, caller="python-batch")
        before = self.sim_requests()
        ips = ["1.1.1.1", "not-an-ip", "9.9.9.9", "1.0.0.1", "10.0.0.1"]
        results = client.check_batch(ips)
        self.assertEqual(len(results), len(ips))
        self.assertEqual(results[0].WhichOneof("outcome"), "result")
        self.assertEqual(results[0].result.verdict.ip, "1.1.1.1")
        self.assertEqual(results[1].WhichOneof("outcome"), "error")
        self.assertEqual(results[1].error.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        self.assertIn("not-an-ip", results[1].error.message)
        self.assertEqual(results[2].result.verdict.ip, "9.9.9.9")
        self.assertEqual(results[3].result.verdict.ip, "1.0.0.1")
        # A private address is refused without a click.
        self.assertEqual(results[4].error.code, grpc.StatusCode.FAILED_PRECONDITION.value[0])
        self.assertEqual(self.sim_requests() - before, 3)

    def test_invalid_ip_is_invalid_argument_and_spends_nothing(self):
        client = self._client(self.open_port, caller="python-test")
        before = self.sim_requests()
        with self.assertRaises(grpc.RpcError) as raised:
            client.check_ip("1.2.3.4:80")
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("1.2.3.4:80", raised.exception.details())
        self.assertEqual(self.sim_requests() - before, 0)

    def test_keyed_mode_over_tls_answers_the_right_key_and_refuses_a_wrong_one(self):
        ca = self._read_pem("ca.pem")
        good = self._client(self.keyed_port, api_key=GOOD_KEY, root_certificates=ca)
        info = good.get_server_info()
        self.assertTrue(info.keyed)
        self.assertEqual(info.caller, "python-team")
        wrong = self._client(self.keyed_port, api_key=OTHER_KEY, root_certificates=ca)
        with self.assertRaises(grpc.RpcError) as raised:
            wrong.get_server_info()
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        # Another caller's usage is not this key's to read.
        with self.assertRaises(grpc.RpcError) as raised:
            good.get_usage("someone-else")
        self.assertEqual(raised.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        # Plaintext to the TLS port does not get through.
        plain = self._client(self.keyed_port, api_key=GOOD_KEY, timeout=2)
        with self.assertRaises(grpc.RpcError) as raised:
            plain.get_server_info()
        self.assertIn(raised.exception.code(),
                      (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))

    def test_a_deadline_shorter_than_a_slow_upstream_is_deadline_exceeded(self):
        client = self._client(self.keyed_port, api_key=GOOD_KEY,
                              root_certificates=self._read_pem("ca.pem"), timeout=0.5)
        started = time.monotonic()
        with self.assertRaises(grpc.RpcError) as raised:
            client.check_ip("8.8.4.4")
        self.assertEqual(raised.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.monotonic() - started, 2.5, "it gave up at the deadline")
        # The click it started is billed to the key's caller, whatever the caller saw.
        patient = self._client(self.keyed_port, api_key=GOOD_KEY,
                               root_certificates=self._read_pem("ca.pem"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            usage = patient.get_usage("python-team")
            if usage.callers and usage.callers[0].clicks == 1:
                break
            time.sleep(0.2)
        self.assertEqual([(c.caller, c.clicks) for c in usage.callers], [("python-team", 1)])
        self.assertEqual(self.sim_requests(self.slow_sim_port), 1)

    def test_mutual_tls_needs_the_client_certificate(self):
        ca = self._read_pem("ca.pem")
        with_cert = self._client(self.mtls_port, caller="python-mtls", root_certificates=ca,
                                 private_key=self._read_pem("client.key"),
                                 certificate_chain=self._read_pem("client.pem"))
        response = with_cert.check_ip("1.0.0.2")
        self.assertEqual(response.source, verdict_pb2.SOURCE_UPSTREAM)
        self.assertEqual(response.verdict.caller, "python-mtls")
        without = self._client(self.mtls_port, caller="python-mtls", root_certificates=ca,
                               timeout=2)
        with self.assertRaises(grpc.RpcError) as raised:
            without.check_ip("1.0.0.3")
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)


if __name__ == "__main__":
    unittest.main(verbosity=2)
