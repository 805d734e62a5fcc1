"""`fedsim eavesdrop`: an eavesdropper on the real wire between SuperNodes and the SuperLink.

A forwarding proxy: SuperNodes connect to it as if it were the SuperLink, and every byte
goes through to the real one unchanged. In insecure mode Flower's Fleet API is plain HTTP
with protobuf bodies, so the proxy also reads what passes: the training messages a node
pulls (and the objects they are made of), and the replies it pushes (and theirs). Once a
reply and the message it answers are complete it rebuilds both with Flower's own
inflation code and writes the reply as a capture (observer `wire`) with the weights and
the train config sent, the same format every other observer writes. Under TLS it sees only
ciphertext: it forwards the bytes and records that it decoded nothing.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Optional

from fedsim.reply_capture import ReplyCapture, carries_update, config_of, wire_round

log = logging.getLogger("fedsim")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "content-length"}


class WireTap:
    """Reassembles Fleet API traffic into (train message, reply) pairs and captures them."""

    def __init__(self, writer, status_path: Path):
        """`writer`: a ReplyCapture, or a function that makes one when the first reply is
        complete (the experiment's facts may only be known once the run has started)."""
        self._writer, self.status_path = writer, Path(status_path)
        self.objects: dict[str, bytes] = {}
        self.sent: dict[str, object] = {}       # train message id -> its ObjectTree
        self.replies: list[object] = []         # reply ObjectTrees not yet complete
        self.stats = {"http_exchanges": 0, "tls_connections": 0, "decoded_replies": 0,
                      "captures": 0}
        self.lock = threading.Lock()
        self._save()

    def exchange(self, path: str, request: bytes, response: bytes) -> None:
        from flwr.proto import fleet_pb2, message_pb2

        with self.lock:
            self.stats["http_exchanges"] += 1
            try:
                if path.endswith("/fleet/pull-messages"):
                    for tree in fleet_pb2.PullMessagesResponse.FromString(
                            response).message_object_trees:
                        self.sent[tree.object_id] = tree
                elif path.endswith("/fleet/pull-object"):
                    req = message_pb2.PullObjectRequest.FromString(request)
                    res = message_pb2.PullObjectResponse.FromString(response)
                    if res.object_content:
                        self.objects[req.object_id] = res.object_content
                elif path.endswith("/fleet/push-object"):
                    req = message_pb2.PushObjectRequest.FromString(request)
                    self.objects[req.object_id] = req.object_content
                elif path.endswith("/fleet/push-messages"):
                    self.replies.extend(fleet_pb2.PushMessagesRequest.FromString(
                        request).message_object_trees)
            except Exception as err:  # noqa: BLE001 - never break the wire for a parse
                log.warning("wire: could not read %s: %r", path, err)
            self._complete()
            self._save()

    @property
    def writer(self) -> ReplyCapture:
        if not isinstance(self._writer, ReplyCapture):
            self._writer = self._writer()
        return self._writer

    def tls(self) -> None:
        with self.lock:
            self.stats["tls_connections"] += 1
            self._save()

    def _have(self, tree) -> bool:
        from flwr.supercore.inflatable.inflatable_utils import iterate_object_tree

        return all(t.object_id in self.objects for t in iterate_object_tree(tree))

    def _message(self, tree):
        from flwr.app import Message
        from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

        message = inflate_object_from_contents(tree.object_id, self.objects,
                                               keep_object_contents=True)
        if not isinstance(message, Message):
            return None
        message.metadata.__dict__["_message_id"] = tree.object_id
        return message

    def _complete(self) -> None:
        """Capture every reply whose objects and whose train message are all seen; a reply
        that cannot be decoded or written is logged once and dropped, never retried."""
        waiting = []
        try:
            for tree in self.replies:
                if not self._have(tree):
                    waiting.append(tree)
                    continue
                try:
                    if not self._capture(tree):
                        waiting.append(tree)
                except Exception as err:  # noqa: BLE001 - the wire must keep flowing
                    self.stats["errors"] = self.stats.get("errors", 0) + 1
                    log.warning("wire: a reply could not be captured: %r", err)
        finally:
            self.replies = waiting

    def _capture(self, tree) -> bool:
        """False while the reply's train message is incomplete."""
        from flwr.supercore.inflatable.inflatable_utils import iterate_object_tree

        reply = self._message(tree)
        if reply is None:
            return True
        sent_tree = self.sent.get(reply.metadata.reply_to_message_id)
        if sent_tree is None or not self._have(sent_tree):
            return False
        train = self._message(sent_tree)
        self.stats["decoded_replies"] += 1
        rnd = wire_round(train)
        if (rnd is not None and not reply.has_error() and "arrays" in train.content
                and carries_update(reply)):
            before = len(self.writer.saved)
            self.writer(rnd, train.content["arrays"], reply, config_of(train))
            self.stats["captures"] += len(self.writer.saved) - before
        for t in iterate_object_tree(tree):  # the reply is done with: free its objects
            self.objects.pop(t.object_id, None)
        return True

    def _save(self) -> None:
        status = dict(self.stats)
        if status["tls_connections"] and not status["http_exchanges"]:
            status["note"] = "TLS: the proxy forwarded ciphertext only; nothing decodable"
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        self.status_path.write_text(json.dumps(status, indent=2))


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [a, b]
    while True:
        ready, _, _ = select.select(sockets, [], [], 60)
        if not ready:
            continue
        for s in ready:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


def make_handler(upstream: tuple[str, int], tap: WireTap):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        upstream_conn: Optional[http.client.HTTPConnection] = None

        def handle(self):
            first = self.connection.recv(1, socket.MSG_PEEK)
            if first[:1] == b"\x16":  # a TLS handshake: bytes only
                tap.tls()
                try:
                    with socket.create_connection(upstream, timeout=30) as up:
                        up.settimeout(None)
                        _relay(self.connection, up)
                except OSError as err:
                    log.warning("wire: TLS relay to %s:%s ended: %r", *upstream, err)
                return
            super().handle()

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
                    return res.status, res.reason, res.getheaders(), res.read()
                except (OSError, http.client.HTTPException):
                    self.upstream_conn.close()
                    self.upstream_conn = None
                    if attempt == 2:
                        raise

        def finish(self):
            if self.upstream_conn is not None:
                self.upstream_conn.close()
            super().finish()

        def _forward(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            try:
                status, reason, res_headers, data = self._upstream(body, headers)
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
    daemon_threads = True
    allow_reuse_address = True


def serve(listen: str, upstream: str, writer, status_path: Path,
          ready: Optional[threading.Event] = None) -> Proxy:
    """Start the proxy in a background thread; returns the server (shutdown() stops it)."""
    host, port = listen.rsplit(":", 1)
    up_host, up_port = upstream.rsplit(":", 1)
    tap = WireTap(writer, status_path)
    server = Proxy((host, int(port)), make_handler((up_host, int(up_port)), tap))
    server.tap = tap
    threading.Thread(target=server.serve_forever, daemon=True, name="fedsim-wire").start()
    if ready is not None:
        ready.set()
    return server
