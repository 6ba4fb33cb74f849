"""Write a Backworks plugin in Python.

A plugin is a program that speaks the Backworks wire protocol (``docs/protocol.md``): one
JSON-RPC 2.0 message per line on stdin and stdout, logs on stderr. This module speaks it for you;
you register functions with decorators and call ``run()``::

    from backworks_plugin import Plugin, PluginError, Response

    plugin = Plugin(name="greeter", version="0.1.0", description="Says hello")

    @plugin.init
    def init(config):
        plugin.greeting = config.get("greeting", "Hello")

    @plugin.endpoint
    def handle(request):
        name = request.param("name")
        if not name:
            raise PluginError(400, "no name")
        return Response.json({"message": f"{plugin.greeting}, {name}!"})

    @plugin.hook("after_response")
    def tag(request, response):
        response.headers.set("x-greeter", "1")
        return response

    if __name__ == "__main__":
        plugin.run()

Standard library only, Python 3.8 or newer. Calls run concurrently on a pool of threads, so
handlers that share state must lock it. ``print()`` in a handler goes to stderr (the log stream):
stdout belongs to the protocol.
"""

import base64
import binascii
import json
import logging
import os
import queue
import sys
import threading
import traceback

__all__ = [
    "PROTOCOL_VERSION",
    "Headers",
    "HookResult",
    "Plugin",
    "PluginError",
    "Request",
    "Response",
]

#: The protocol version this module speaks.
PROTOCOL_VERSION = "1.0"

#: The largest frame read or written, in bytes, unless ``Plugin(max_frame=...)`` says otherwise.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

#: Seconds the calls still running when stdin ends get to finish before ``run()`` returns.
END_GRACE = 2.0

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
PLUGIN_ERROR = -32000

_KIND_OF_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    500: "internal",
    503: "unavailable",
}

_LEVELS = {
    "error": "error",
    "critical": "error",
    "fatal": "error",
    "warn": "warn",
    "warning": "warn",
    "info": "info",
    "debug": "debug",
    "trace": "trace",
}

_HOOKS = ("before_request", "after_response")

_VERBOSITY = {"off": -1, "error": 0, "warn": 1, "info": 2, "debug": 3, "trace": 4}


def _env_max_frame():
    try:
        value = int(os.environ.get("BACKWORKS_PLUGIN_MAX_FRAME", ""))
    except ValueError:
        return DEFAULT_MAX_FRAME
    return value if value > 0 else DEFAULT_MAX_FRAME


class PluginError(Exception):
    """An error to answer the call with: the host responds with ``status``.

    ``kind`` is the machine-readable name the host shows (``"not_found"``, ...); by default it
    follows from the status (400 ``bad_request``, 401 ``unauthorized``, 403 ``forbidden``,
    404 ``not_found``, 500 ``internal``, 503 ``unavailable``, any other 4xx/5xx ``status``).
    Use ``kind="config"`` in ``init`` for an invalid configuration.
    """

    def __init__(self, status=500, message="", kind=None):
        super().__init__(message)
        self.status = int(status)
        self.message = str(message)
        self.kind = kind or _KIND_OF_STATUS.get(self.status, "status")


class Headers:
    """HTTP headers in order; names are lower case, lookups ignore case."""

    def __init__(self, pairs=None):
        self._pairs = []
        if isinstance(pairs, dict):
            pairs = pairs.items()
        for name, value in pairs or ():
            self.add(name, value)

    def get(self, name, default=None):
        """The first value of ``name``, or ``default``."""
        name = name.lower()
        for k, v in self._pairs:
            if k == name:
                return v
        return default

    def get_all(self, name):
        """Every value of ``name``, in order."""
        name = name.lower()
        return [v for k, v in self._pairs if k == name]

    def set(self, name, value):
        """Sets ``name`` to ``value``, replacing its earlier values."""
        self.remove(name)
        self.add(name, value)

    def add(self, name, value):
        """Adds a value of ``name``, keeping the earlier ones."""
        self._pairs.append((str(name).lower(), str(value)))

    def remove(self, name):
        """Removes every value of ``name``."""
        name = name.lower()
        self._pairs = [(k, v) for k, v in self._pairs if k != name]

    def items(self):
        """Every ``(name, value)`` pair, in order."""
        return list(self._pairs)

    def __getitem__(self, name):
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name, value):
        self.set(name, value)

    def __contains__(self, name):
        return self.get(name) is not None

    def __iter__(self):
        return iter(self._pairs)

    def __len__(self):
        return len(self._pairs)

    def __eq__(self, other):
        return isinstance(other, Headers) and self._pairs == other._pairs

    def __repr__(self):
        return "Headers(%r)" % self._pairs


class Request:
    """An HTTP request routed to the plugin.

    ``method`` (upper case), ``path`` (no query string), ``params`` (dict of the endpoint's
    ``{param}`` values), ``query`` (list of ``(name, value)`` pairs), ``headers``
    (:class:`Headers`) and ``body`` (bytes).
    """

    def __init__(self, method="GET", path="/", params=None, query=None, headers=None, body=b""):
        self.method = method
        self.path = path
        self.params = dict(params or {})
        self.query = list(query or [])
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = _to_bytes(body)

    def param(self, name, default=None):
        """The value of the ``{name}`` path segment."""
        return self.params.get(name, default)

    def query_param(self, name, default=None):
        """The first value of query parameter ``name``."""
        for k, v in self.query:
            if k == name:
                return v
        return default

    def header(self, name, default=None):
        """The first value of header ``name`` (any case)."""
        return self.headers.get(name, default)

    @property
    def text(self):
        """The body as UTF-8 text (undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self):
        """The body parsed as JSON; invalid JSON raises a 400 :class:`PluginError`."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise PluginError(400, "invalid JSON body: %s" % e)

    def __repr__(self):
        return "Request(%s %s)" % (self.method, self.path)


class Response:
    """An HTTP response. ``body`` may be bytes, a str (sent as UTF-8) or a dict/list (sent as
    JSON with ``content-type: application/json``)."""

    def __init__(self, status=200, headers=None, body=b""):
        self.status = int(status)
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        if isinstance(body, (dict, list)):
            if "content-type" not in self.headers:
                self.headers.set("content-type", "application/json")
            body = json.dumps(body, separators=(",", ":"))
        self.body = _to_bytes(body)

    @staticmethod
    def json(value, status=200):
        """A JSON response."""
        return Response(
            status,
            {"content-type": "application/json"},
            json.dumps(value, separators=(",", ":")),
        )

    @staticmethod
    def text(text, status=200):
        """A plain-text response."""
        return Response(status, {"content-type": "text/plain; charset=utf-8"}, text)

    def __eq__(self, other):
        return (
            isinstance(other, Response)
            and (self.status, self.headers, self.body) == (other.status, other.headers, other.body)
        )

    def __repr__(self):
        return "Response(%d, %d bytes)" % (self.status, len(self.body))


class HookResult:
    """What a ``before_request`` hook decided: see :meth:`Plugin.continue_` and
    :meth:`Plugin.respond`."""

    def __init__(self, action, request=None, response=None):
        self.action = action
        self.request = request
        self.response = response


def _to_bytes(body):
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    return bytes(body)


def _b64decode(text):
    if text is None:
        return b""
    if not isinstance(text, str):
        raise ValueError("body must be a base64 string")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError("invalid base64 body: %s" % e)


def _pairs(value, what):
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in value
    ):
        raise ValueError("%s must be a list of [name, value] pairs of strings" % what)
    return [(k, v) for k, v in value]


def _request_from_wire(d):
    if not isinstance(d, dict):
        raise ValueError("request must be an object")
    method, path = d.get("method"), d.get("path")
    if not isinstance(method, str) or not isinstance(path, str):
        raise ValueError("request needs string members method and path")
    return Request(
        method=method,
        path=path,
        params=dict(_pairs(d.get("params"), "params")),
        query=_pairs(d.get("query"), "query"),
        headers=Headers(_pairs(d.get("headers"), "headers")),
        body=_b64decode(d.get("body")),
    )


def _request_to_wire(r):
    return {
        "method": r.method,
        "path": r.path,
        "query": [[k, v] for k, v in r.query],
        "params": [[k, v] for k, v in r.params.items()],
        "headers": [[k, v] for k, v in r.headers],
        "body": base64.b64encode(r.body).decode("ascii"),
    }


def _response_from_wire(d):
    if not isinstance(d, dict) or not isinstance(d.get("status"), int):
        raise ValueError("response must be an object with an integer status")
    return Response(
        d["status"], Headers(_pairs(d.get("headers"), "headers")), _b64decode(d.get("body"))
    )


def _response_to_wire(r):
    return {
        "status": r.status,
        "headers": [[k, v] for k, v in r.headers],
        "body": base64.b64encode(r.body).decode("ascii"),
    }


def _as_response(value):
    """What an endpoint returned, as a Response."""
    if isinstance(value, Response):
        return value
    if value is None:
        return Response(204)
    if isinstance(value, (dict, list)):
        return Response.json(value)
    if isinstance(value, str):
        return Response.text(value)
    if isinstance(value, (bytes, bytearray)):
        return Response(200, {"content-type": "application/octet-stream"}, bytes(value))
    if isinstance(value, tuple) and len(value) == 2:
        status, body = value
        response = _as_response(body)
        response.status = int(status)
        return response
    raise TypeError("an endpoint must return a Response, dict, list, str, bytes, "
                    "(status, body) or None, not %s" % type(value).__name__)


def _as_health(value):
    if value is None or value is True:
        return {"status": "healthy", "message": ""}
    if value is False:
        return {"status": "unhealthy", "message": ""}
    if isinstance(value, str):
        status, message = value, ""
    elif isinstance(value, tuple) and len(value) == 2:
        status, message = value
    elif isinstance(value, dict):
        status, message = value.get("status"), value.get("message", "")
    else:
        raise TypeError("a health check must return a status string, (status, message), "
                        "a dict or a bool")
    if status not in ("healthy", "degraded", "unhealthy"):
        raise ValueError("unknown health status %r" % (status,))
    return {"status": status, "message": str(message or "")}


class _LogHandler(logging.Handler):
    """Sends Python ``logging`` records to the host as ``log`` notifications."""

    def __init__(self, plugin):
        super().__init__()
        self._plugin = plugin

    def emit(self, record):
        try:
            level = _LEVELS.get(record.levelname.lower(), "info")
            if record.levelno < logging.DEBUG:
                level = "trace"
            message = self.format(record)
            self._plugin.log(level, message, logger=record.name)
        except Exception:  # never let logging break a call
            self.handleError(record)


class Plugin:
    """A Backworks plugin: register functions with the decorators, then :meth:`run`.

    ``max_workers`` calls run at once on daemon threads; more wait in a queue. ``max_frame`` is
    the frame limit in bytes; by default the host's (``BACKWORKS_PLUGIN_MAX_FRAME``), else 64 MiB.
    Log lines more verbose than the host records (``BACKWORKS_PLUGIN_LOG``) are not sent.
    ``config_schema`` is the JSON Schema of the plugin's config (a dict), sent in the manifest::

        plugin = Plugin(name="greeter", config_schema={
            "type": "object",
            "properties": {"greeting": {"type": "string"}, "port": {"type": "integer"}},
            "additionalProperties": False,
        })
    """

    def __init__(self, name, version="0.0.0", description="", max_workers=8, max_frame=None,
                 config_schema=None):
        self.name = name
        self.version = version
        self.description = description
        #: The JSON Schema of the plugin's config (a dict), or None. Sent in the manifest: the
        #: host checks the config against it before ``init`` (and ``backworks validate`` does so
        #: without starting the plugin), and turns a ``${VAR}`` the schema types as a number or
        #: a boolean into one.
        self.config_schema = config_schema
        self.max_workers = max_workers
        self.max_frame = max_frame or _env_max_frame()
        self._verbosity = _VERBOSITY.get(
            os.environ.get("BACKWORKS_PLUGIN_LOG", "trace").strip().lower(), 4)
        #: The instance name the host gave in ``init``.
        self.instance_name = None
        #: The config the host gave in ``init``.
        self.config = None
        self._init = None
        self._endpoint = None
        self._hooks = {}
        self._health = None
        self._shutdown = None
        self._out = None
        self._out_lock = threading.Lock()
        self._early_logs = []
        self._queue = queue.Queue()
        self._queued = set()  # ids of calls waiting for or running on a worker
        self._cancelled = set()  # ids among those the host gave up on
        self._cancel_lock = threading.Lock()
        self._idle = threading.Condition(self._cancel_lock)

    # -- registration ----------------------------------------------------------------------

    def init(self, fn):
        """Decorator: ``fn(config)`` runs once, before any other call, with the plugin's config
        (a dict, or None). Raise :class:`PluginError` (``kind="config"``) to refuse it."""
        self._init = fn
        return fn

    def endpoint(self, fn):
        """Decorator: ``fn(request)`` serves the endpoints routed to this plugin. It returns a
        :class:`Response` (or a dict/list for JSON, a str for text, bytes, ``(status, body)``,
        or None for 204)."""
        self._endpoint = fn
        return fn

    def hook(self, name):
        """Decorator factory: ``@plugin.hook("before_request")`` registers ``fn(request)``,
        which returns None or :meth:`continue_` to go on, :meth:`continue_(request)` to go on
        with a changed request, or :meth:`respond` to answer at once;
        ``@plugin.hook("after_response")`` registers ``fn(request, response)``, which returns
        the response to send (None keeps it)."""
        if name not in _HOOKS:
            raise ValueError("unknown hook %r (expected one of %s)" % (name, ", ".join(_HOOKS)))

        def register(fn):
            self._hooks[name] = fn
            return fn

        return register

    def health(self, fn):
        """Decorator: ``fn()`` reports the plugin's health: ``"healthy"``, ``"degraded"`` or
        ``"unhealthy"``, or ``(status, message)``."""
        self._health = fn
        return fn

    def shutdown(self, fn):
        """Decorator: ``fn()`` runs when the host shuts the plugin down."""
        self._shutdown = fn
        return fn

    @staticmethod
    def continue_(request=None):
        """A ``before_request`` result: go on (with ``request`` instead, if given)."""
        return HookResult("continue", request=request)

    @staticmethod
    def respond(response):
        """A ``before_request`` result: answer now with ``response``."""
        return HookResult("respond", response=_as_response(response))

    def features(self):
        """The features the manifest lists: what was registered."""
        features = []
        if self._endpoint:
            features.append("handle")
        features.extend(h for h in _HOOKS if h in self._hooks)
        if self._health:
            features.append("health_check")
        return features

    # -- logging ---------------------------------------------------------------------------

    def log(self, level, message, **fields):
        """Sends a log line to the host: ``level`` is ``error``, ``warn``, ``info``, ``debug``
        or ``trace``; ``fields`` are extra structured values."""
        level = _LEVELS.get(str(level).lower(), "info")
        if _VERBOSITY[level] > self._verbosity:
            return
        params = {"level": level, "message": str(message)}
        if fields:
            params["fields"] = fields
        note = {"jsonrpc": "2.0", "method": "log", "params": params}
        with self._out_lock:
            if self._out is None:
                self._early_logs.append(note)
                return
        self._send(note)

    # -- the loop --------------------------------------------------------------------------

    def run(self, stdin=None, stdout=None):
        """Serves the host until stdin ends (calls still running then get ``END_GRACE`` seconds
        to answer). With no arguments it uses the process's stdin and
        stdout, and points file descriptor 1 and ``sys.stdout`` at stderr, so that nothing but
        the protocol reaches the host's pipe. Python ``logging`` records go to the host as log
        lines unless the root logger already has handlers."""
        if stdin is None:
            stdin = sys.stdin.buffer
        if stdout is None:
            sys.stdout.flush()
            stdout = os.fdopen(os.dup(1), "wb")
            os.dup2(2, 1)
            sys.stdout = sys.stderr
        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(_LogHandler(self))
            if root.level == logging.WARNING:
                root.setLevel(logging.INFO)
        with self._out_lock:
            self._out = stdout
            early, self._early_logs = self._early_logs, []
        for note in early:
            self._send(note)
        for _ in range(max(1, self.max_workers)):
            threading.Thread(target=self._work, daemon=True).start()
        while True:
            line = stdin.readline(self.max_frame + 1)
            if not line:
                break
            if len(line) > self.max_frame and not line.endswith(b"\n"):
                self._error(None, INVALID_REQUEST, "frame of over %d bytes" % self.max_frame)
                while line and not line.endswith(b"\n"):
                    line = stdin.readline(65536)
                continue
            if line.strip():
                self._dispatch(line)
        # The input has ended: give the calls still queued or running a moment to answer.
        with self._idle:
            self._idle.wait_for(lambda: not self._queued, timeout=END_GRACE)

    def _dispatch(self, line):
        try:
            message = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self._error(None, PARSE_ERROR, "invalid JSON: %s" % e)
            return
        if (not isinstance(message, dict) or message.get("jsonrpc") != "2.0"
                or not isinstance(message.get("method"), str)):
            if isinstance(message, dict) and ("result" in message or "error" in message):
                return  # an answer: this side makes no calls
            self._error(None, INVALID_REQUEST, "not a JSON-RPC 2.0 request")
            return
        method, params, call_id = message["method"], message.get("params"), message.get("id")
        if call_id is None:
            if method == "cancel" and isinstance(params, dict) and _is_id(params.get("id")):
                with self._cancel_lock:
                    if params["id"] in self._queued:
                        self._cancelled.add(params["id"])
            return
        if not _is_id(call_id):
            self._error(None, INVALID_REQUEST, "an id must be a number or a string")
            return
        if method == "getmanifest":
            manifest = {
                "protocol": PROTOCOL_VERSION,
                "name": self.name,
                "version": self.version,
                "description": self.description,
                "features": self.features(),
            }
            if self.config_schema is not None:
                manifest["config_schema"] = self.config_schema
            self._answer(call_id, manifest)
        elif method == "init":
            # Inline: nothing else runs before init has answered.
            self._call(call_id, self._do_init, params)
        elif method in ("handle", "before_request", "after_response", "health_check",
                        "shutdown"):
            with self._cancel_lock:
                self._queued.add(call_id)
            self._queue.put((call_id, method, params))
        else:
            self._error(call_id, METHOD_NOT_FOUND, "method not found: %r" % method)

    def _work(self):
        while True:
            call_id, method, params = self._queue.get()
            with self._cancel_lock:
                skip = call_id in self._cancelled
            if not skip:
                # A call cancelled while it runs still answers; the host ignores the answer.
                self._call(call_id, getattr(self, "_do_" + method), params)
            with self._cancel_lock:
                self._queued.discard(call_id)
                self._cancelled.discard(call_id)
                if not self._queued:
                    self._idle.notify_all()

    def _call(self, call_id, fn, params):
        try:
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise _InvalidParams("params must be an object")
            result = fn(params)
        except _InvalidParams as e:
            self._error(call_id, INVALID_PARAMS, str(e))
        except _NotFound as e:
            self._error(call_id, METHOD_NOT_FOUND, str(e))
        except PluginError as e:
            self._plugin_error(call_id, e.kind, e.status, e.message)
        except Exception as e:  # any failure of plugin code is answered, never fatal
            for text in traceback.format_exc().rstrip().splitlines():
                sys.stderr.write("ERROR: %s\n" % text)
            sys.stderr.flush()
            self._plugin_error(call_id, "internal", 500, "%s: %s" % (type(e).__name__, e))
        else:
            self._answer(call_id, result)

    # -- the calls -------------------------------------------------------------------------

    def _do_init(self, params):
        self.instance_name = params.get("name")
        self.config = params.get("config")
        if self._init:
            self._init(self.config)
        return {}

    def _do_handle(self, params):
        if not self._endpoint:
            raise _NotFound("this plugin serves no endpoints")
        request = _wire(_request_from_wire, params, "request")
        return {"response": _response_to_wire(_as_response(self._endpoint(request)))}

    def _do_before_request(self, params):
        request = _wire(_request_from_wire, params, "request")
        fn = self._hooks.get("before_request")
        result = fn(request) if fn else None
        if result is None:
            return {"action": "continue"}
        if isinstance(result, Request):
            result = HookResult("continue", request=result)
        elif isinstance(result, Response):
            result = HookResult("respond", response=result)
        if not isinstance(result, HookResult):
            raise TypeError("before_request must return None, plugin.continue_(...), "
                            "plugin.respond(...), a Request or a Response")
        if result.action == "respond":
            return {"action": "respond", "response": _response_to_wire(result.response)}
        if result.request is not None:
            return {"action": "continue", "request": _request_to_wire(result.request)}
        return {"action": "continue"}

    def _do_after_response(self, params):
        request = _wire(_request_from_wire, params, "request")
        response = _wire(_response_from_wire, params, "response")
        fn = self._hooks.get("after_response")
        result = fn(request, response) if fn else None
        return {"response": _response_to_wire(response if result is None else result)}

    def _do_health_check(self, params):
        return _as_health(self._health() if self._health else None)

    def _do_shutdown(self, params):
        if self._shutdown:
            self._shutdown()
        return {}

    # -- output ----------------------------------------------------------------------------

    def _answer(self, call_id, result):
        self._send({"jsonrpc": "2.0", "id": call_id, "result": result}, call_id)

    def _error(self, call_id, code, message):
        self._send({"jsonrpc": "2.0", "id": call_id, "error": {"code": code, "message": message}})

    def _plugin_error(self, call_id, kind, status, message):
        self._send({"jsonrpc": "2.0", "id": call_id, "error": {
            "code": PLUGIN_ERROR, "message": message, "data": {"kind": kind, "status": status},
        }})

    def _send(self, message, answer_to=None):
        data = json.dumps(message, separators=(",", ":"), default=str).encode("utf-8")
        if len(data) > self.max_frame:
            if answer_to is None:
                return
            return self._plugin_error(
                answer_to, "invalid_response", 502,
                "answer of %d bytes is over the frame limit of %d bytes"
                % (len(data), self.max_frame))
        with self._out_lock:
            try:
                self._out.write(data + b"\n")
                self._out.flush()
            except (BrokenPipeError, ValueError):
                pass  # the host is gone; the loop ends when stdin does


class _InvalidParams(Exception):
    pass


class _NotFound(Exception):
    pass


def _is_id(value):
    return isinstance(value, (int, float, str))


def _wire(convert, params, member):
    try:
        return convert(params.get(member))
    except ValueError as e:
        raise _InvalidParams("invalid %s: %s" % (member, e))
