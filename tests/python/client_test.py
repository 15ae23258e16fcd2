#!/usr/bin/python3
"""End-to-end test of client/python/verdict_client.py (VerdictClient).

Starts the simulated ClickPatrol and verdictd on 127.0.0.1, each on a port the OS picks (port 0,
reported through --port_file), in a temporary directory, and talks to verdictd through
VerdictClient. Run by ctest (python_client) with:

  VERDICTD_BIN     path of verdictd          (default: build/verdictd)
  SIM_BIN          path of clickpatrol_sim   (default: build/clickpatrol_sim)
  VERDICT_PY_GEN   generated verdict_pb2 dir (default: build/python)
"""

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

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="verdict_client_test_")
        self.addCleanup(self._tmp.cleanup)
        self.sim = None
        self.verdictd = None
        self.addCleanup(self._stop_all)  # runs before the directory is removed
        d = self._tmp.name

        sim_log = os.path.join(d, "sim.log")
        sim_port_file = os.path.join(d, "sim.port")
        with open(sim_log, "wb") as log:
            self.sim = subprocess.Popen(
                [SIM_BIN, "--listen=127.0.0.1:0", "--port_file=" + sim_port_file,
                 "--token=" + TOKEN, "--threads=8"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.sim_port = _wait_for_port(self.sim, sim_port_file, sim_log)

        self.verdictd_log = os.path.join(d, "verdictd.log")
        port_file = os.path.join(d, "verdictd.port")
        env = dict(os.environ)
        env["CLICKPATROL_TOKEN"] = TOKEN
        with open(self.verdictd_log, "wb") as log:
            self.verdictd = subprocess.Popen(
                [VERDICTD_BIN, "--listen=127.0.0.1:0", "--port_file=" + port_file,
                 "--db=" + os.path.join(d, "verdicts.db"),
                 "--upstream_url=http://127.0.0.1:%d/" % self.sim_port],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        port = _wait_for_port(self.verdictd, port_file, self.verdictd_log)

        self.client = VerdictClient("127.0.0.1:%d" % port, caller="python-test")
        self.addCleanup(self.client.close)

    def _stop_all(self):
        _stop(self.verdictd)
        _stop(self.sim)

    def sim_stats(self):
        url = "http://127.0.0.1:%d/_sim/stats" % self.sim_port
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def test_miss_then_hit(self):
        first = self.client.check_ip("8.8.8.8", user_agent="Mozilla/5.0")
        self.assertEqual(first.source, verdict_pb2.SOURCE_UPSTREAM)
        self.assertTrue(first.click_spent)
        self.assertEqual(first.verdict.ip, "8.8.8.8")
        self.assertEqual(first.verdict.caller, "python-test")
        self.assertEqual(first.verdict.user_agent, "Mozilla/5.0")
        self.assertNotEqual(first.verdict.score, verdict_pb2.SCORE_UNSPECIFIED)

        second = self.client.check_ip("8.8.8.8")
        self.assertEqual(second.source, verdict_pb2.SOURCE_CACHE)
        self.assertFalse(second.click_spent)
        self.assertEqual(second.verdict.score, first.verdict.score)
        self.assertEqual(second.verdict.checked_at, first.verdict.checked_at)

        # Only the miss reached ClickPatrol.
        self.assertEqual(self.sim_stats()["requests"], 1)

    def test_batch_with_a_bad_ip_gets_a_per_item_error(self):
        response = self.client.check_batch(["1.1.1.1", "not-an-ip", "9.9.9.9"])
        self.assertEqual(len(response.results), 3)
        self.assertEqual(response.results[0].WhichOneof("outcome"), "result")
        self.assertEqual(response.results[0].result.verdict.ip, "1.1.1.1")
        self.assertEqual(response.results[1].WhichOneof("outcome"), "error")
        self.assertEqual(response.results[1].error.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        self.assertEqual(response.results[1].error.code, 3)
        self.assertIn("not-an-ip", response.results[1].error.message)
        self.assertEqual(response.results[2].WhichOneof("outcome"), "result")
        self.assertEqual(response.results[2].result.verdict.ip, "9.9.9.9")
        self.assertEqual(self.sim_stats()["requests"], 2)

    def test_invalid_ip_is_invalid_argument(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.client.check_ip("1.2.3.4:80")
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("1.2.3.4:80", raised.exception.details())
        self.assertEqual(self.sim_stats()["requests"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
