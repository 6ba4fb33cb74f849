"""Tests of backworks_plugin, driving a real plugin process through its pipes.

Run from this folder: python3 -m unittest
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

# A generous deadline for a plugin process to answer; never a measure of speed.
LIVENESS = 30

PLUGIN_SOURCE = textwrap.dedent('''
    import sys, threading, time
    sys.path.insert(0, %(here)r)
    from backworks_plugin import Plugin, PluginError, Response

    plugin = Plugin(name="probe", version="1.2.3", description="test plugin", max_frame=4096)
    first_arrived = threading.Event()
    second_arrived = threading.Event()

    @plugin.init
    def init(config):
        if config.get("fail"):
            raise PluginError(500, "fail is set", kind="config")
        plugin.log("info", "initialised", keys=sorted(config))

    @plugin.endpoint
    def handle(request):
        print("this print must not reach the protocol")
        if request.path == "/echo":
            return Response(200, request.headers, request.body)
        if request.path == "/json":
            return {"params": request.params, "q": request.query_param("q")}
        if request.path == "/first":
            first_arrived.set()
            second_arrived.wait(%(liveness)d)
            return "first"
        if request.path == "/second":
            first_arrived.wait(%(liveness)d)
            second_arrived.set()
            return "second"
        if request.path == "/missing":
            raise PluginError(404, "no such thing")
        if request.path == "/teapot":
            raise PluginError(418, "short and stout")
        if request.path == "/big":
            return b"x" * 8192
        if request.path == "/hold":
            # Holds the only worker until the host has cancelled something.
            deadline = time.time() + %(liveness)d
            while not plugin._cancelled and time.time() < deadline:
                time.sleep(0.01)
            return "held"
        return 1 / 0

    @plugin.hook("before_request")
    def before(request):
        if "x-block" in request.headers:
            return plugin.respond(Response.text("blocked", status=401))
        if "x-rewrite" in request.headers:
            request.headers.set("x-rewritten", "yes")
            return plugin.continue_(request)
        return plugin.continue_()

    @plugin.hook("after_response")
    def after(request, response):
        response.headers.set("x-after", request.path)
        return response

    @plugin.health
    def health():
        return ("degraded", "warming up")

    plugin.run()
''')


class PluginProcess:
    """The probe plugin in a child process."""

    def __init__(self, source=PLUGIN_SOURCE, env=None):
        self.dir = tempfile.TemporaryDirectory()
        path = os.path.join(self.dir.name, "probe.py")
        with open(path, "w") as f:
            f.write(source % {"here": HERE, "liveness": LIVENESS})
        self.proc = subprocess.Popen(
            [sys.executable, path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ, **(env or {})))
        self.next_id = 0
        self.unread = []

    def send(self, message):
        line = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def call(self, method, params=None):
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                   "params": {} if params is None else params})
        return self.answer(self.next_id)

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("the plugin closed stdout; stderr: %s"
                                 % self.proc.stderr.read().decode())
        return json.loads(line)

    def answer(self, call_id):
        for i, message in enumerate(self.unread):
            if message.get("id") == call_id and "method" not in message:
                return self.unread.pop(i)
        while True:
            message = self.read()
            if message.get("id") == call_id and "method" not in message:
                return message
            self.unread.append(message)

    def close(self):
        self.proc.stdin.close()
        code = self.proc.wait(LIVENESS)
        stderr = self.proc.stderr.read().decode()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.dir.cleanup()
        return code, stderr


def wire_request(method="GET", path="/", body=b"", headers=(), params=(), query=()):
    return {"request": {
        "method": method, "path": path, "params": [list(p) for p in params],
        "query": [list(q) for q in query], "headers": [list(h) for h in headers],
        "body": base64.b64encode(body).decode()}}


class ProtocolTest(unittest.TestCase):
    def setUp(self):
        self.plugin = PluginProcess()

    def tearDown(self):
        if self.plugin.proc.poll() is None:
            self.plugin.close()

    def test_handshake_lists_registered_features_and_passes_config(self):
        manifest = self.plugin.call("getmanifest", {
            "protocol": "1.0", "host": {"name": "backworks", "version": "0.1.0"}})
        self.assertEqual(manifest["result"], {
            "protocol": "1.0", "name": "probe", "version": "1.2.3",
            "description": "test plugin",
            "features": ["handle", "before_request", "after_response", "health_check"]})
        refused = self.plugin.call("init", {"name": "probe-1", "config": {"fail": True}})
        self.assertEqual(refused["error"], {"code": -32000, "message": "fail is set",
                                            "data": {"kind": "config", "status": 500}})
        self.assertEqual(self.plugin.call("init", {"name": "probe-1", "config": {"b": 1, "a": 2}}),
                         {"jsonrpc": "2.0", "id": 3, "result": {}})
        log = [m for m in self.plugin.unread if m.get("method") == "log"]
        self.assertEqual(log, [{"jsonrpc": "2.0", "method": "log", "params": {
            "level": "info", "message": "initialised", "fields": {"keys": ["a", "b"]}}}])

    def test_binary_bodies_round_trip(self):
        body = bytes(range(256)) + bytes(reversed(range(256)))
        answer = self.plugin.call("handle", wire_request(
            "POST", "/echo", body, headers=[("X-Trace", "t-1")]))
        response = answer["result"]["response"]
        self.assertEqual(response["status"], 200)
        self.assertEqual(base64.b64decode(response["body"]), body)
        self.assertEqual(response["headers"], [["x-trace", "t-1"]])

    def test_return_values_become_responses(self):
        answer = self.plugin.call("handle", wire_request(
            path="/json", params=[("name", "ana")], query=[("q", "1")]))
        response = answer["result"]["response"]
        self.assertEqual(response["headers"], [["content-type", "application/json"]])
        self.assertEqual(json.loads(base64.b64decode(response["body"])),
                         {"params": {"name": "ana"}, "q": "1"})

    def test_errors_carry_kind_and_status_and_prints_stay_off_stdout(self):
        missing = self.plugin.call("handle", wire_request(path="/missing"))
        self.assertEqual(missing["error"]["data"], {"kind": "not_found", "status": 404})
        teapot = self.plugin.call("handle", wire_request(path="/teapot"))
        self.assertEqual(teapot["error"]["data"], {"kind": "status", "status": 418})
        crash = self.plugin.call("handle", wire_request(path="/divide"))
        self.assertEqual(crash["error"]["code"], -32000)
        self.assertEqual(crash["error"]["message"], "ZeroDivisionError: division by zero")
        self.assertEqual(crash["error"]["data"], {"kind": "internal", "status": 500})
        big = self.plugin.call("handle", wire_request(path="/big"))
        self.assertEqual(big["error"]["data"], {"kind": "invalid_response", "status": 502})
        code, stderr = self.plugin.close()
        self.assertEqual(code, 0)
        self.assertIn("this print must not reach the protocol", stderr)
        self.assertIn("ERROR: Traceback (most recent call last):", stderr)

    def test_calls_run_concurrently_and_answer_out_of_order(self):
        self.plugin.send({"jsonrpc": "2.0", "id": 1, "method": "handle",
                          "params": wire_request(path="/first")})
        self.plugin.send({"jsonrpc": "2.0", "id": 2, "method": "handle",
                          "params": wire_request(path="/second")})
        # /first waits for /second to arrive: both are in flight together.
        first, second = self.plugin.answer(1), self.plugin.answer(2)
        self.assertEqual(base64.b64decode(first["result"]["response"]["body"]), b"first")
        self.assertEqual(base64.b64decode(second["result"]["response"]["body"]), b"second")

    def test_hooks_and_health(self):
        go_on = self.plugin.call("before_request", wire_request(path="/x"))
        self.assertEqual(go_on["result"], {"action": "continue"})
        block = self.plugin.call("before_request", wire_request(headers=[("x-block", "1")]))
        self.assertEqual(block["result"]["action"], "respond")
        self.assertEqual(block["result"]["response"]["status"], 401)
        rewrite = self.plugin.call("before_request", wire_request(headers=[("x-rewrite", "1")]))
        self.assertEqual(rewrite["result"]["action"], "continue")
        self.assertIn(["x-rewritten", "yes"], rewrite["result"]["request"]["headers"])
        params = wire_request(path="/p")
        params["response"] = {"status": 201, "headers": [], "body": ""}
        after = self.plugin.call("after_response", params)
        self.assertEqual(after["result"]["response"],
                         {"status": 201, "headers": [["x-after", "/p"]], "body": ""})
        self.assertEqual(self.plugin.call("health_check")["result"],
                         {"status": "degraded", "message": "warming up"})
        self.assertEqual(self.plugin.call("shutdown")["result"], {})

    def test_malformed_input_is_answered_and_serving_goes_on(self):
        self.plugin.send(b"not json")
        self.assertEqual(self.plugin.read()["error"]["code"], -32700)
        self.plugin.send(b'{"id": 1}')
        self.assertEqual(self.plugin.read()["error"]["code"], -32600)
        self.plugin.send(b"x" * 5000)
        too_long = self.plugin.read()
        self.assertEqual(too_long["error"], {"code": -32600,
                                             "message": "frame of over 4096 bytes"})
        self.assertEqual(self.plugin.call("fly")["error"]["code"], -32601)
        self.assertEqual(self.plugin.call("handle", {"request": {"path": "/"}})["error"]["code"],
                         -32602)
        self.plugin.send({"jsonrpc": "2.0", "id": {"not": "an id"}, "method": "handle"})
        self.assertEqual(self.plugin.read()["error"]["code"], -32600)
        self.plugin.send({"jsonrpc": "2.0", "method": "cancel", "params": {"id": [1]}})
        self.plugin.send({"jsonrpc": "2.0", "method": "cancel", "params": {"id": 99}})
        self.assertIn("result", self.plugin.call("handle", wire_request(path="/echo")))

    def test_end_of_input_ends_the_process(self):
        self.plugin.call("getmanifest")
        code, _ = self.plugin.close()
        self.assertEqual(code, 0)


class EnvironmentTest(unittest.TestCase):
    def test_log_lines_more_verbose_than_the_host_records_are_not_sent(self):
        plugin = PluginProcess(env={"BACKWORKS_PLUGIN_LOG": "warn"})
        try:
            self.assertEqual(plugin.call("init", {"name": "p", "config": {}})["result"], {})
            self.assertEqual(plugin.unread, [])
        finally:
            plugin.close()

    def test_the_frame_limit_comes_from_the_host(self):
        source = PLUGIN_SOURCE.replace(', max_frame=4096', '')
        plugin = PluginProcess(source, env={"BACKWORKS_PLUGIN_MAX_FRAME": "5000"})
        try:
            plugin.send(b"y" * 6000)
            self.assertEqual(plugin.read()["error"]["message"], "frame of over 5000 bytes")
        finally:
            plugin.close()


class CancelTest(unittest.TestCase):
    def test_a_queued_call_that_is_cancelled_is_never_run(self):
        plugin = PluginProcess(PLUGIN_SOURCE.replace("max_frame=4096", "max_frame=4096, max_workers=1"))
        try:
            for call_id, path in [(1, "/hold"), (2, "/echo")]:
                plugin.send({"jsonrpc": "2.0", "id": call_id, "method": "handle",
                             "params": wire_request(path=path)})
            plugin.send({"jsonrpc": "2.0", "method": "cancel", "params": {"id": 2}})
            plugin.send({"jsonrpc": "2.0", "id": 3, "method": "handle",
                         "params": wire_request(path="/echo")})
            self.assertEqual([plugin.read()["id"] for _ in range(2)], [1, 3])
            # Nothing for id 2 comes before the answer to a later call.
            plugin.send({"jsonrpc": "2.0", "id": 4, "method": "health_check", "params": {}})
            self.assertEqual(plugin.read()["id"], 4)
        finally:
            plugin.close()


class ValuesTest(unittest.TestCase):
    def test_headers_ignore_case_and_keep_order(self):
        sys.path.insert(0, HERE)
        from backworks_plugin import Headers, PluginError, Response
        h = Headers([("Accept", "a"), ("accept", "b")])
        self.assertEqual(h.get_all("ACCEPT"), ["a", "b"])
        h.set("Accept", "c")
        self.assertEqual(h.items(), [("accept", "c")])
        self.assertEqual(PluginError(503, "down").kind, "unavailable")
        self.assertEqual(PluginError(409, "taken").kind, "status")
        r = Response(200, None, {"a": 1})
        self.assertEqual((r.body, r.headers.get("content-type")),
                         (b'{"a":1}', "application/json"))


if __name__ == "__main__":
    unittest.main()


class ConfigSchemaTest(unittest.TestCase):
    @staticmethod
    def manifest(plugin):
        sent = []
        plugin._send = lambda message, answer_to=None: sent.append(message)
        plugin._dispatch(json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "getmanifest", "params": {}}).encode())
        return sent[0]["result"]

    def test_a_declared_schema_is_sent_in_the_manifest(self):
        sys.path.insert(0, HERE)
        from backworks_plugin import Plugin
        schema = {"type": "object", "properties": {"port": {"type": "integer"}},
                  "required": ["port"]}
        manifest = self.manifest(Plugin(name="s", config_schema=schema))
        self.assertEqual(manifest["config_schema"], schema)

    def test_without_a_schema_the_manifest_is_as_before(self):
        sys.path.insert(0, HERE)
        from backworks_plugin import Plugin
        self.assertNotIn("config_schema", self.manifest(Plugin(name="s")))
