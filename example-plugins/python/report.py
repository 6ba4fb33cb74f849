#!/usr/bin/env python3
"""report: a Backworks plugin written in Python, run as a child process over the wire protocol.

- It observes every response (``hooks: [observe]`` in ``backworks.yaml``: its ``after_response``
  hook is called after the response has left, off the response path) and counts them by status
  class, by status and by endpoint path. Paths are chosen by clients, so at most ``max_paths``
  distinct ones are counted; the rest are counted together under ``"(other)"``.
- ``GET .../report`` answers those counts as JSON, with the notifications received so far.
- ``POST .../notify`` takes a notification ``{"channel": "...", "message": "...",
  "severity": "info|warning|critical"}``, checks it against the configured channels, keeps the
  last ``max_notifications`` and answers ``202 {"id": N, "channel": ...}``; a malformed one is
  answered 400 and an unknown channel 422.

Config (all optional)::

    channels: [ops, billing]     # the channels /notify accepts (default: [ops])
    max_notifications: 100       # how many notifications are kept (default: 100)
    max_paths: 1000              # how many distinct paths are counted (default: 1000)

Run by the host as ``command: ["python3", "example-plugins/python/report.py"]``; it needs only
``python3`` (3.8 or newer) and the helper module in ``sdk/python``.
"""

import os
import sys
import threading
import time
from collections import Counter, deque

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))

from backworks_plugin import Plugin, PluginError, Response  # noqa: E402

SEVERITIES = ("info", "warning", "critical")
MAX_MESSAGE = 2000

plugin = Plugin(
    name="report",
    version="0.1.0",
    description="Counts responses and collects notifications",
    # Checked by the host before init (and by `backworks validate`); init checks again, for a
    # host that does not.
    config_schema={
        "type": "object",
        "properties": {
            "channels": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "description": "the channels /notify accepts",
            },
            "max_notifications": {"type": "integer", "minimum": 1, "maximum": 100000},
            "max_paths": {"type": "integer", "minimum": 1, "maximum": 100000},
        },
        "additionalProperties": False,
    },
)

_lock = threading.Lock()
_started = time.time()
_by_class = Counter()
_by_status = Counter()
_by_path = Counter()
_notifications = deque(maxlen=100)
_next_id = 1
_channels = ["ops"]
_max_paths = 1000
OTHER_PATHS = "(other)"


@plugin.init
def init(config):
    global _channels, _notifications, _max_paths
    config = config or {}
    if not isinstance(config, dict):
        raise PluginError(500, "config must be a map", kind="config")
    unknown = sorted(set(config) - {"channels", "max_notifications", "max_paths"})
    if unknown:
        raise PluginError(500, "unknown config key(s): %s" % ", ".join(unknown), kind="config")
    channels = config.get("channels", ["ops"])
    if (not isinstance(channels, list) or not channels
            or not all(isinstance(c, str) and c for c in channels)):
        raise PluginError(500, "channels must be a non-empty list of names", kind="config")
    keep = config.get("max_notifications", 100)
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= 100000:
        raise PluginError(500, "max_notifications must be a number from 1 to 100000",
                          kind="config")
    max_paths = config.get("max_paths", 1000)
    if not isinstance(max_paths, int) or isinstance(max_paths, bool) or not 1 <= max_paths <= 100000:
        raise PluginError(500, "max_paths must be a number from 1 to 100000", kind="config")
    with _lock:
        _channels = list(channels)
        _notifications = deque(_notifications, maxlen=keep)
        _max_paths = max_paths
    plugin.log("info", "report plugin ready", channels=_channels, max_notifications=keep)


@plugin.endpoint
def handle(request):
    if request.path.endswith("/report"):
        if request.method != "GET":
            raise PluginError(405, "use GET for %s" % request.path)
        return Response.json(report())
    if request.path.endswith("/notify"):
        if request.method != "POST":
            raise PluginError(405, "use POST for %s" % request.path)
        return notify(request)
    raise PluginError(404, "no such route: %s %s" % (request.method, request.path))


def report():
    with _lock:
        return {
            "uptime_secs": int(time.time() - _started),
            "responses": sum(_by_status.values()),
            "by_class": dict(sorted(_by_class.items())),
            "by_status": {str(k): v for k, v in sorted(_by_status.items())},
            "by_path": dict(_by_path.most_common(20)),
            "distinct_paths": len(_by_path),
            "notifications": list(_notifications),
        }


def notify(request):
    global _next_id
    body = request.json()
    if not isinstance(body, dict):
        raise PluginError(400, "the body must be a JSON object")
    channel, message = body.get("channel"), body.get("message")
    severity = body.get("severity", "info")
    if not isinstance(channel, str) or not channel:
        raise PluginError(400, "`channel` must be a non-empty string")
    if not isinstance(message, str) or not message.strip():
        raise PluginError(400, "`message` must be a non-empty string")
    if len(message) > MAX_MESSAGE:
        raise PluginError(400, "`message` is longer than %d characters" % MAX_MESSAGE)
    if severity not in SEVERITIES:
        raise PluginError(400, "`severity` must be one of %s" % ", ".join(SEVERITIES))
    with _lock:
        if channel not in _channels:
            raise PluginError(422, "unknown channel %r (configured: %s)"
                              % (channel, ", ".join(_channels)))
        entry = {"id": _next_id, "channel": channel, "severity": severity, "message": message,
                 "at": int(time.time())}
        _next_id += 1
        _notifications.append(entry)
    level = {"info": "info", "warning": "warn", "critical": "error"}[severity]
    plugin.log(level, "notification for %s: %s" % (channel, message), id=entry["id"])
    return Response.json({"id": entry["id"], "channel": channel}, status=202)


@plugin.hook("after_response")
def count(request, response):
    with _lock:
        _by_class["%dxx" % (response.status // 100)] += 1
        _by_status[response.status] += 1
        # Clients choose paths: a flood of distinct ones must not grow the map without bound.
        path = request.path
        if path not in _by_path and len(_by_path) >= _max_paths:
            path = OTHER_PATHS
        _by_path[path] += 1
    return response


@plugin.health
def health():
    with _lock:
        full = len(_notifications) == _notifications.maxlen
    if full:
        return ("degraded", "notification buffer full; the oldest are being dropped")
    return "healthy"


if __name__ == "__main__":
    plugin.run()
