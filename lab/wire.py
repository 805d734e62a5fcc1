"""`fedsim eavesdrop`: an eavesdropper on the real wire between SuperNodes and the SuperLink.

A forwarding proxy: SuperNodes connect to it as if it were the SuperLink, and every byte
goes through to the real one unchanged. In insecure mode Flower's Fleet API is plain HTTP
with protobuf bodies, so the proxy also reads what passes: the training messages a node
pulls (and the objects they are made of), and the replies it pushes (and theirs). Once a
reply and the message it answers are complete it rebuilds both with Flower's own
inflation code and writes the reply as a capture (observer `wire`) with the weights and
the train config sent, the same format every other observer writes. Under TLS it sees only
ciphertext: it forwards the bytes and records that it decoded nothing.

What it holds is bounded (`Limits`): body sizes, the objects it has seen (dropped by age, and
over a byte cap those of finished exchanges first, then the oldest), the number of
connections, and how long one may sit idle. Objects of a finished exchange are not dropped
at once: the SuperLink stores objects by content and asks a node only for those it lacks,
so a later reply may be made of an object the proxy saw in an earlier one and never see it
again.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import socket
import socketserver
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable, Optional

from fedsim.config import ConfigError
from fedsim.reply_capture import ReplyCapture, carries_update, config_of, wire_round

log = logging.getLogger("fedsim")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "content-length"}
MiB = 1 << 20


def body_floor() -> int:
    """The largest body Flower itself puts on the Fleet API, whatever the experiment: a FAB
    (get-fab, at most FAB_MAX_SIZE) or one array chunk (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE;
    larger arrays travel in chunks), plus 1 MiB for the envelope."""
    from flwr.common.constant import FAB_MAX_SIZE, FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

    return max(FAB_MAX_SIZE, FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE) + MiB


@dataclass(frozen=True)
class Limits:
    """What the proxy holds at most (README, "The eavesdropper's limits")."""

    max_body_bytes: int           # a request or response body over it is refused (413/502)
    max_held_bytes: int           # objects held; finished exchanges' first, then the oldest
    object_ttl_s: float = 1800.0  # an object or message untouched this long is dropped
    idle_timeout_s: float = 120.0  # a connection silent this long is closed
    max_connections: int = 64     # at most this many at once; the longest idle makes room

    @classmethod
    def derived(cls, model_bytes: Optional[int] = None, **given) -> "Limits":
        """The body limit from what one Flower message of the experiment can be (twice its
        model's parameter bytes plus 1 MiB, when known), never below `body_floor()`; the
        byte cap 16 such bodies (at least 256 MiB). `given` (None values ignored) wins."""
        given = {k: v for k, v in given.items() if v is not None}
        body = given.pop("max_body_bytes", None) or max(
            body_floor(), 2 * model_bytes + MiB if model_bytes else 0)
        held = given.pop("max_held_bytes", None) or max(256 * MiB, 16 * body)
        return cls(max_body_bytes=int(body), max_held_bytes=int(held), **given)


def parse_address(value: str, flag: str, allow_any_port: bool = False) -> tuple[str, int]:
    """HOST:PORT, or one line naming the option."""
    host, sep, port = str(value).rpartition(":")
    low = 0 if allow_any_port else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) <= 65535:
        raise ConfigError(f"{flag} {value!r}: expected HOST:PORT with a port from {low} to "
                          "65535 (e.g. 0.0.0.0:9093)")
    return host.strip("[]"), int(port)


class _Held:
    """Entries by id, least recently touched first, each with the time it was touched."""

    def __init__(self):
        self.items: OrderedDict[str, tuple[float, object]] = OrderedDict()

    def put(self, key: str, value, now: float):
        old = self.items.pop(key, None)
        self.items[key] = (now, value)
        return old[1] if old else None

    def touch(self, key: str, now: float) -> None:
        if key in self.items:
            self.items[key] = (now, self.items[key][1])
            self.items.move_to_end(key)

    def get(self, key: str):
        item = self.items.get(key)
        return item[1] if item else None

    def pop(self, key: str):
        item = self.items.pop(key, None)
        return item[1] if item else None

    def oldest(self) -> Optional[tuple[str, float]]:
        key = next(iter(self.items), None)
        return (key, self.items[key][0]) if key is not None else None

    def __contains__(self, key) -> bool:
        return key in self.items

    def __len__(self) -> int:
        return len(self.items)


class WireTap:
    """Reassembles Fleet API traffic into (train message, reply) pairs and captures them."""

    def __init__(self, writer, status_path: Path, limits: Optional[Limits] = None,
                 clock: Callable[[], float] = time.monotonic):
        """`writer`: a ReplyCapture, or a function that makes one when the first reply is
        complete (the experiment's facts may only be known once the run has started).
        `clock`: seconds, for the ages of what is held (tests pass their own)."""
        self._writer, self.status_path = writer, Path(status_path)
        self.limits, self.clock = limits or Limits.derived(), clock
        self.objects = _Held()   # object id -> its content (pulled or pushed)
        self.done: set[str] = set()  # objects only finished exchanges refer to
        self.sent = _Held()      # train message id -> its ObjectTree
        self.replies = _Held()   # reply id -> its ObjectTree, until captured
        self.held_bytes = 0
        self.stats = {"http_exchanges": 0, "tls_connections": 0, "decoded_replies": 0,
                      "captures": 0, "refused_bodies": 0, "refused_connections": 0,
                      "idle_closed_for_room": 0, "expired": 0, "evicted_objects": 0}
        self.lock = threading.Lock()
        self._save()

    def exchange(self, path: str, request: bytes, response: bytes) -> None:
        from flwr.proto import fleet_pb2, message_pb2

        with self.lock:
            now = self.clock()
            self.stats["http_exchanges"] += 1
            try:
                if path.endswith("/fleet/pull-messages"):
                    for tree in fleet_pb2.PullMessagesResponse.FromString(
                            response).message_object_trees:
                        self._track(self.sent, tree, now)
                elif path.endswith("/fleet/pull-object"):
                    req = message_pb2.PullObjectRequest.FromString(request)
                    res = message_pb2.PullObjectResponse.FromString(response)
                    if res.object_content:
                        self._put_object(req.object_id, res.object_content, now)
                elif path.endswith("/fleet/push-object"):
                    req = message_pb2.PushObjectRequest.FromString(request)
                    self._put_object(req.object_id, req.object_content, now)
                elif path.endswith("/fleet/push-messages"):
                    for tree in fleet_pb2.PushMessagesRequest.FromString(
                            request).message_object_trees:
                        self._track(self.replies, tree, now)
            except Exception as err:  # noqa: BLE001 - never break the wire for a parse
                log.warning("wire: could not read %s: %r", path, err)
            self._complete()
            self._expire(now)
            self._save()

    def count(self, stat: str) -> None:
        with self.lock:
            self.stats[stat] += 1
            self._save()

    @property
    def writer(self) -> ReplyCapture:
        if not isinstance(self._writer, ReplyCapture):
            self._writer = self._writer()
        return self._writer

    def tls(self) -> None:
        self.count("tls_connections")

    # what is held, and when it goes
    def _track(self, held: _Held, tree, now: float) -> None:
        """A message tree; the objects already held for it are touched, so they live as
        long as it does."""
        from flwr.supercore.inflatable.inflatable_utils import iterate_object_tree

        held.put(tree.object_id, tree, now)
        for t in iterate_object_tree(tree):
            self.objects.touch(t.object_id, now)
            self.done.discard(t.object_id)

    def _put_object(self, object_id: str, content: bytes, now: float) -> None:
        old = self.objects.put(object_id, content, now)
        self.done.discard(object_id)
        self.held_bytes += len(content) - (len(old) if old is not None else 0)
        while self.held_bytes > self.limits.max_held_bytes and len(self.objects) > 1:
            key = next((k for k in self.objects.items if k in self.done), None)
            self._drop_object(key if key is not None else self.objects.oldest()[0])
            self.stats["evicted_objects"] += 1

    def _drop_object(self, object_id: str) -> None:
        content = self.objects.pop(object_id)
        self.done.discard(object_id)
        if content is not None:
            self.held_bytes -= len(content)

    def _expire(self, now: float) -> None:
        """Drop what no exchange has touched for `object_ttl_s` (a node that died, a reply
        whose message this proxy never saw, objects pushed for nothing)."""
        for held in (self.objects, self.sent, self.replies):
            while (oldest := held.oldest()) and now - oldest[1] > self.limits.object_ttl_s:
                if held is self.objects:
                    self._drop_object(oldest[0])
                else:
                    held.pop(oldest[0])
                self.stats["expired"] += 1

    def _finished(self, reply_tree, sent_id: Optional[str]) -> None:
        """A reply is done with (captured, or refused): it and the message it answers are
        forgotten; their objects that no open message refers to are the first to go over
        the byte cap (kept till then: a later message may be made of them)."""
        from flwr.supercore.inflatable.inflatable_utils import iterate_object_tree

        sent_tree = self.sent.pop(sent_id) if sent_id else None
        self.replies.pop(reply_tree.object_id)
        live = {t.object_id for held in (self.sent, self.replies)
                for _, tree in held.items.values() for t in iterate_object_tree(tree)}
        for tree in (reply_tree, sent_tree):
            for t in (iterate_object_tree(tree) if tree is not None else ()):
                if t.object_id not in live and t.object_id in self.objects:
                    self.done.add(t.object_id)

    # decoding and capturing
    def _have(self, tree) -> bool:
        from flwr.supercore.inflatable.inflatable_utils import iterate_object_tree

        return all(t.object_id in self.objects for t in iterate_object_tree(tree))

    def _message(self, tree):
        from flwr.app import Message
        from flwr.supercore.inflatable.inflatable_utils import (inflate_object_from_contents,
                                                                iterate_object_tree)

        contents = {t.object_id: self.objects.get(t.object_id)
                    for t in iterate_object_tree(tree)}
        message = inflate_object_from_contents(tree.object_id, contents,
                                               keep_object_contents=True)
        if not isinstance(message, Message):
            return None
        return message

    def _complete(self) -> None:
        """Capture every reply whose objects and whose train message are all seen; a reply
        that cannot be decoded or written is logged once and dropped, never retried."""
        for _, tree in list(self.replies.items.values()):
            if not self._have(tree):
                continue
            try:
                done = self._capture(tree)
            except Exception as err:  # noqa: BLE001 - the wire must keep flowing
                self.stats["errors"] = self.stats.get("errors", 0) + 1
                log.warning("wire: a reply could not be captured: %r", err)
                done = (None,)
            if done:
                self._finished(tree, done[0])

    def _capture(self, tree) -> Optional[tuple]:
        """(id of the message it answers,) once done; None while that message is
        incomplete."""
        reply = self._message(tree)
        if reply is None:
            return (None,)
        sent_id = reply.metadata.reply_to_message_id
        sent_tree = self.sent.get(sent_id)
        if sent_tree is None or not self._have(sent_tree):
            return None
        train = self._message(sent_tree)
        self.stats["decoded_replies"] += 1
        rnd = wire_round(train)
        if (rnd is not None and not reply.has_error() and "arrays" in train.content
                and carries_update(reply)):
            before = len(self.writer.saved)
            self.writer(rnd, train.content["arrays"], reply, config_of(train))
            self.stats["captures"] += len(self.writer.saved) - before
        return (sent_id,)

    def _save(self) -> None:
        status = {**self.stats, "held_objects": len(self.objects),
                  "held_bytes": self.held_bytes, "finished_objects": len(self.done),
                  "open_messages": len(self.sent), "waiting_replies": len(self.replies)}
        if status["tls_connections"] and not status["http_exchanges"]:
            status["note"] = "TLS: the proxy forwarded ciphertext only; nothing decodable"
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        self.status_path.write_text(json.dumps(status, indent=2))


def _relay(a: socket.socket, b: socket.socket, idle_timeout_s: float) -> None:
    """Copy bytes both ways until either side closes or both are silent too long."""
    sockets = [a, b]
    while True:
        ready, _, _ = select.select(sockets, [], [], idle_timeout_s)
        if not ready:
            return
        for s in ready:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


class _TooLarge(Exception):
    """The SuperLink's response body is over the limit."""


def make_handler(upstream: tuple[str, int], tap: WireTap):
    limits = tap.limits

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = limits.idle_timeout_s  # a silent connection is closed (socket timeout)
        upstream_conn: Optional[http.client.HTTPConnection] = None

        def handle(self):
            try:
                first = self.connection.recv(1, socket.MSG_PEEK)
            except OSError:  # silent past the timeout, or closed to make room
                return
            if first[:1] == b"\x16":  # a TLS handshake: bytes only
                self.server.busy(self.connection)
                tap.tls()
                try:
                    with socket.create_connection(upstream, timeout=limits.idle_timeout_s) as up:
                        _relay(self.connection, up, limits.idle_timeout_s)
                except OSError as err:
                    log.warning("wire: TLS relay to %s:%s ended: %r", *upstream, err)
                return
            super().handle()

        def handle_one_request(self):
            self.server.idle(self.connection)  # between requests: may be closed for room
            super().handle_one_request()

        def parse_request(self):
            self.server.busy(self.connection)
            return super().parse_request()

        def log_message(self, *args):  # quiet
            pass

        def _upstream(self, body: bytes, headers: dict):
            """(status, reason, headers, body) from the SuperLink; a connection the
            SuperLink closed while idle is reopened once."""
            for attempt in (1, 2):
                if self.upstream_conn is None:
                    self.upstream_conn = http.client.HTTPConnection(*upstream, timeout=600)
                try:
                    self.upstream_conn.request(self.command, self.path, body=body,
                                               headers=headers)
                    res = self.upstream_conn.getresponse()
                    return res.status, res.reason, res.getheaders(), self._read(res)
                except _TooLarge:
                    self._drop_upstream()
                    raise
                except (OSError, http.client.HTTPException):
                    self._drop_upstream()
                    if attempt == 2:
                        raise

        def _drop_upstream(self) -> None:
            self.upstream_conn.close()
            self.upstream_conn = None

        @staticmethod
        def _read(res) -> bytes:
            """The response body, never more than the limit in memory."""
            if res.length is not None and res.length > limits.max_body_bytes:
                raise _TooLarge(res.length)
            data = res.read(limits.max_body_bytes + 1)
            if len(data) > limits.max_body_bytes:
                raise _TooLarge(len(data))
            res.read()  # the end of a chunked body, if any (nothing is left to buffer)
            return data

        def finish(self):
            if self.upstream_conn is not None:
                self.upstream_conn.close()
            super().finish()

        def _body(self) -> Optional[bytes]:
            """The request body, or None once an error is answered: a body over the limit
            is refused before a byte of it is read."""
            if self.headers.get("transfer-encoding"):
                self.send_error(411, "the proxy forwards bodies with a Content-Length only")
                return None
            try:
                length = int(self.headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.send_error(400, "bad Content-Length")
                return None
            if length > limits.max_body_bytes:
                tap.count("refused_bodies")
                log.warning("wire: refused a %d-byte body to %s (limit %d bytes)", length,
                            self.path, limits.max_body_bytes)
                self.send_error(413, f"a body of {length} bytes is over the proxy's limit "
                                f"of {limits.max_body_bytes}")
                return None
            body = self.rfile.read(length) if length else b""
            if len(body) < length:  # the client went away mid-body
                self.close_connection = True
                return None
            return body

        def _forward(self):
            body = self._body()
            if body is None:
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            try:
                status, reason, res_headers, data = self._upstream(body, headers)
            except _TooLarge as err:
                tap.count("refused_bodies")
                log.warning("wire: refused a SuperLink response to %s over the limit of %d "
                            "bytes (%s)", self.path, limits.max_body_bytes, err)
                self.send_error(502, "the SuperLink's response is over the proxy's limit")
                return
            except (OSError, http.client.HTTPException) as err:
                log.warning("wire: the SuperLink at %s:%s is unreachable: %r", *upstream, err)
                self.send_error(502, "the SuperLink is unreachable through the proxy")
                return
            self.send_response(status, reason)
            for k, v in res_headers:
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if status == 200:
                tap.exchange(self.path, body, data)

        do_POST = do_GET = do_PUT = do_DELETE = _forward

    return Handler


class Proxy(socketserver.ThreadingTCPServer):
    """One thread per connection, at most `max_connections` of them: a new connection
    past that closes the one idle longest (between requests, or never spoken), and is
    itself closed when every connection is busy."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address, handler, tap: WireTap):
        self.tap, self.limits = tap, tap.limits
        self._open: dict[socket.socket, Optional[float]] = {}  # -> idle since, None: busy
        self._open_lock = threading.RLock()
        super().__init__(address, handler)

    def idle(self, sock: socket.socket) -> None:
        self._mark(sock, time.monotonic())

    def busy(self, sock: socket.socket) -> None:
        self._mark(sock, None)

    def _mark(self, sock, since: Optional[float]) -> None:
        with self._open_lock:
            if sock in self._open:
                self._open[sock] = since

    def process_request(self, request, client_address):
        with self._open_lock:
            if len(self._open) >= self.limits.max_connections and not self._make_room():
                self.tap.count("refused_connections")
                self.shutdown_request(request)
                return
            self._open[request] = time.monotonic()
        super().process_request(request, client_address)

    def _make_room(self) -> bool:
        idle = [(since, sock) for sock, since in self._open.items() if since is not None]
        if not idle:
            return False
        oldest = min(idle, key=lambda item: item[0])[1]
        del self._open[oldest]
        try:
            oldest.shutdown(socket.SHUT_RDWR)  # its handler reads the end and finishes
        except OSError:
            pass
        self.tap.count("idle_closed_for_room")
        return True

    def close_request(self, request):
        with self._open_lock:
            self._open.pop(request, None)
        super().close_request(request)

    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)

    def handle_error(self, request, client_address):
        """A client that went away mid-exchange: one debug line, not a traceback."""
        import sys

        log.debug("wire: connection from %s ended: %r", client_address, sys.exc_info()[1])


def serve(listen: str, upstream: str, writer, status_path: Path,
          limits: Optional[Limits] = None) -> Proxy:
    """Start the proxy in a background thread; returns the server (shutdown() stops it).
    A malformed address is a ConfigError; a port that cannot be bound an OSError."""
    host, port = parse_address(listen, "--listen", allow_any_port=True)
    up = parse_address(upstream, "--upstream")
    tap = WireTap(writer, status_path, limits)
    server = Proxy((host, port), make_handler(up, tap), tap)
    threading.Thread(target=server.serve_forever, daemon=True, name="fedsim-wire").start()
    return server


def message_bytes(model) -> int:
    """The bytes of a model's state: what one Flower message of its weights carries."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
