"""The wire proxy's bounds (lab/wire.py), on loopback against a dummy upstream HTTP server
(no Flower deployment needed): bodies over the limit are refused before they are read, idle
connections are closed, connections are bounded, what finished or abandoned exchanges held
is freed, and valid traffic keeps flowing through all of it."""

import http.client
import socket
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from lab.wire import MiB, Limits, WireTap, serve

LIMIT = MiB


class _Upstream(BaseHTTPRequestHandler):
    """Echoes a body's length; /big answers more than the proxy allows (chunked or with a
    Content-Length), from one buffer made beforehand so it allocates nothing itself."""

    protocol_version = "HTTP/1.1"
    big = memoryview(b"x" * (8 * LIMIT))
    seen: list = []

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        self.seen.append((self.path, len(body)))
        if self.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(self.big), LIMIT // 2):
                chunk = self.big[start:start + LIMIT // 2]
                self.wfile.write(b"%x\r\n" % len(chunk))
                self.wfile.write(chunk)
                self.wfile.write(b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        data = self.big if self.path == "/big" else f"got {len(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the proxy hung up on /big
        pass


@pytest.fixture
def upstream():
    server = _QuietServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Upstream.seen = []
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _proxy(tmp_path, upstream, **limits):
    limits = Limits.derived(**{"max_body_bytes": LIMIT, **limits})
    server = serve("127.0.0.1:0", f"127.0.0.1:{upstream}", lambda: None,
                   tmp_path / "wire.json", limits=limits)
    return server, server.server_address[1]


def _post(port, path="/echo", body=b"hello", timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def _raw(port, timeout=30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _eventually(predicate, guard_s=30.0) -> bool:
    """A bound against hangs only, never a timing assertion."""
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_an_oversized_request_body_is_refused_without_being_buffered(tmp_path, upstream):
    server, port = _proxy(tmp_path, upstream)
    try:
        payload = memoryview(b"y" * (16 * LIMIT))  # made before memory is traced
        tracemalloc.start()
        try:
            sock = _raw(port)
            sock.sendall(b"POST /api/v1/fleet/push-object HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 200000000\r\n\r\n")
            sender = threading.Thread(target=_send_quietly, args=(sock, payload), daemon=True)
            sender.start()
            answer = sock.recv(4096)
            sender.join(30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert peak < 4 * LIMIT, f"{peak} bytes traced while a 200 MB body arrived"
        assert server.tap.stats["refused_bodies"] == 1
        assert not any(path == "/api/v1/fleet/push-object" for path, _ in _Upstream.seen)
        # a body within the limit still goes through, on a fresh connection
        assert _post(port, body=b"z" * (LIMIT - 100)) == (200, f"got {LIMIT - 100}".encode())
    finally:
        server.shutdown()


def _send_quietly(sock, payload) -> None:
    try:
        sock.sendall(payload)
    except OSError:  # the proxy closed the connection after its 413: expected
        pass


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_an_oversized_response_is_refused_and_not_held(tmp_path, upstream, path):
    server, port = _proxy(tmp_path, upstream)
    try:
        tracemalloc.start()
        try:
            status, _ = _post(port, path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 502
        assert peak < 4 * LIMIT, f"{peak} bytes traced for an 8 MiB response"
        assert server.tap.stats["refused_bodies"] == 1
        assert _post(port) == (200, b"got 5")
    finally:
        server.shutdown()


def test_an_idle_connection_is_closed_after_the_timeout(tmp_path, upstream):
    server, port = _proxy(tmp_path, upstream, idle_timeout_s=0.5)
    try:
        silent = _raw(port)                       # never says anything
        used = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        used.request("POST", "/echo", body=b"abc")  # one exchange, then silence
        assert used.getresponse().read() == b"got 3"
        assert silent.recv(1) == b""              # closed by the proxy, not by the guard
        assert used.sock.recv(1) == b""
        assert _eventually(lambda: server.open_connections() == 0)
        assert _post(port) == (200, b"got 5")
        silent.close()
        used.close()
    finally:
        server.shutdown()


def test_connections_are_bounded_and_valid_traffic_still_flows(tmp_path, upstream):
    """20 silent connections against a bound of 4: each new one closes the longest idle,
    so at most 4 are held (and as many threads), and every valid request is answered."""
    server, port = _proxy(tmp_path, upstream, max_connections=4, idle_timeout_s=60)
    before = _handler_threads()
    silent = []
    try:
        for i in range(20):
            silent.append(_raw(port))
            if i % 5 == 4:
                assert _post(port, body=b"v" * i) == (200, f"got {i}".encode())
            assert server.open_connections() <= 4
        assert _eventually(lambda: _handler_threads() - before <= 4)
        assert server.tap.stats["idle_closed_for_room"] >= 16
        closed = sum(s.recv(1) == b"" for s in silent[:10])  # the oldest were closed
        assert closed == 10
    finally:
        for s in silent:
            s.close()
        server.shutdown()


def test_when_every_connection_is_busy_a_new_one_is_refused_until_one_frees(tmp_path,
                                                                            upstream):
    """Connections mid-request (a body that stalls) cannot be closed for room: a new one is
    refused and counted; once the stalled ones time out, traffic flows again."""
    server, port = _proxy(tmp_path, upstream, max_connections=3, idle_timeout_s=1.0)
    stalled = []
    try:
        for _ in range(3):
            sock = _raw(port)
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            stalled.append(sock)
        assert _eventually(lambda: all(v is None for v in server._open.values())
                           and len(server._open) == 3)
        refused = _raw(port)
        assert refused.recv(1) == b""
        assert server.tap.stats["refused_connections"] == 1
        assert all(s.recv(1) == b"" for s in stalled)  # timed out mid-body, closed
        assert _eventually(lambda: server.open_connections() == 0)
        assert _post(port) == (200, b"got 5")
        refused.close()
    finally:
        for s in stalled:
            s.close()
        server.shutdown()


def test_a_malformed_address_is_one_line(tmp_path):
    from fedsim.config import ConfigError

    for listen in ("nonsense", "host:port", ":9093", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match=r"^--listen .*expected HOST:PORT"):
            serve(listen, "127.0.0.1:9093", lambda: None, tmp_path / "wire.json")


def test_fedsim_eavesdrop_with_a_nonsense_address_exits_2_with_one_line(tmp_path, capsys):
    from lab.cli import main

    assert main(["eavesdrop", "--listen", "nonsense", "--upstream", "127.0.0.1:9093",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("--listen 'nonsense': expected HOST:PORT")
    assert main(["eavesdrop", "--listen", "127.0.0.1:0", "--upstream", "superlink",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith("--upstream 'superlink'")
    assert not (tmp_path / "run").exists()


# what the tap holds: Flower's own messages and objects, and a clock of the test's

def _metadata(message_id, src, dst, reply_to=""):
    from flwr.app import Metadata

    return Metadata(run_id=1, message_id=message_id, src_node_id=src, dst_node_id=dst,
                    reply_to_message_id=reply_to, group_id="1", created_at=0.0, ttl=3600.0,
                    message_type="train")


def _train_message(node: int, weights):
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    msg = Message(RecordDict({"arrays": ArrayRecord(weights),
                              "config": ConfigRecord({"server-round": 1, "lr": 0.1})}),
                  metadata=_metadata("", 1, node))
    msg.metadata.__dict__["_message_id"] = msg.object_id  # as the SuperLink sets it
    return msg


def _reply(train, partition: int, update):
    """A reply as fedsim's clients make it: the update, metrics, and an "update" record
    that is the same for every client (so Flower stores it once)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    return Message(RecordDict({"arrays": ArrayRecord(update),
                               "metrics": MetricRecord({"partition-id": partition,
                                                        "num-examples": 4}),
                               "update": ConfigRecord({"kind": "weights"})}),
                   metadata=_metadata("", train.metadata.dst_node_id, 1,
                                      reply_to=train.metadata.message_id))


def _pull(tap, msg) -> None:
    """The exchanges of a node pulling `msg`: the message tree, then each object."""
    from flwr.proto import fleet_pb2, message_pb2
    from flwr.supercore.inflatable.inflatable_object import (get_all_nested_objects,
                                                             get_object_tree)

    tap.exchange("/api/v1/fleet/pull-messages", b"", fleet_pb2.PullMessagesResponse(
        message_object_trees=[get_object_tree(msg)]).SerializeToString())
    for object_id, obj in get_all_nested_objects(msg).items():
        tap.exchange("/api/v1/fleet/pull-object",
                     message_pb2.PullObjectRequest(object_id=object_id).SerializeToString(),
                     message_pb2.PullObjectResponse(object_content=obj.deflate())
                     .SerializeToString())


def _push(tap, msg, stored=()) -> set:
    """The exchanges of a node pushing its reply: the tree, then each object the SuperLink
    does not store yet (`stored`: it asks only for the others). Returns the ids pushed."""
    from flwr.proto import fleet_pb2, message_pb2
    from flwr.supercore.inflatable.inflatable_object import (get_all_nested_objects,
                                                             get_object_tree)

    tap.exchange("/api/v1/fleet/push-messages", fleet_pb2.PushMessagesRequest(
        message_object_trees=[get_object_tree(msg)]).SerializeToString(), b"")
    pushed = set()
    for object_id, obj in get_all_nested_objects(msg).items():
        if object_id not in stored:
            pushed.add(object_id)
            tap.exchange("/api/v1/fleet/push-object", message_pb2.PushObjectRequest(
                object_id=object_id, object_content=obj.deflate()).SerializeToString(), b"")
    return pushed


def _tap(tmp_path, clock=None, **limits):
    from fedsim.capture_facts import CaptureFacts
    from fedsim.reply_capture import ReplyCapture

    facts = CaptureFacts(image_shape=(1, 4, 4), num_classes=2, mean=(0.0,), std=(1.0,),
                         algorithm="fedavg", lr=0.1, batch_size=4, model="lenet")
    writer = ReplyCapture(tmp_path / "run", facts, observer="wire")
    kwargs = {"clock": clock} if clock else {}
    return WireTap(writer, tmp_path / "run" / "wire.json",
                   Limits.derived(**{"object_ttl_s": 60.0, **limits}), **kwargs)


def _weights(value: float):
    from flwr.app import Array

    return {"w": Array(np.full((8, 8), value, dtype=np.float32)),
            "b": Array(np.full((8,), value, dtype=np.float32))}


def test_a_reply_made_of_objects_an_earlier_reply_pushed_is_still_captured(tmp_path):
    """Seen in a real deployment: the second node's reply shares an object with the first
    node's, which the SuperLink already stores and so never asks for again. The proxy
    keeps a finished exchange's objects (marked finished, first to go over the byte cap)
    and captures both."""
    tap = _tap(tmp_path)
    weights = _weights(1.0)
    a, b = _train_message(11, weights), _train_message(12, weights)
    _pull(tap, a)
    pushed = _push(tap, _reply(a, 0, _weights(0.5)))
    assert tap.stats["captures"] == 1 and len(tap.sent) == 0 and len(tap.replies) == 0
    assert tap.done and tap.done <= set(tap.objects.items)
    _pull(tap, b)  # the same weight objects again: open, no longer finished
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    assert not tap.done & set(get_all_nested_objects(b))
    _push(tap, _reply(b, 1, _weights(0.25)), stored=pushed)
    assert tap.stats["captures"] == 2 and len(tap.replies) == 0
    assert sorted(p.name for p in (tmp_path / "run" / "captures" / "round_001").glob(
        "wire_client_*.pt")) == ["wire_client_000.pt", "wire_client_001.pt"]


def test_over_the_byte_cap_finished_exchanges_go_first(tmp_path):
    """A finished exchange's objects are dropped before those of a message still open, so
    a flood of objects costs the open exchange nothing until nothing finished is left."""
    from flwr.proto import message_pb2
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    def exchanges(tap):
        first, live = _train_message(11, _weights(1.0)), _train_message(12, _weights(2.0))
        _pull(tap, first)
        _push(tap, _reply(first, 0, _weights(0.5)))
        _pull(tap, live)
        return live

    probe = _tap(tmp_path / "probe")
    exchanges(probe)
    finished_bytes = sum(len(probe.objects.get(k)) for k in probe.done)
    # room for everything but the finished objects once 3 more of 15 kB arrive
    cap = probe.held_bytes + 45_000 - finished_bytes
    tap = _tap(tmp_path, max_held_bytes=cap)
    live = exchanges(tap)
    finished = set(tap.done)
    for i in range(3):
        tap.exchange("/api/v1/fleet/push-object", message_pb2.PushObjectRequest(
            object_id=f"{i:064x}", object_content=bytes(15_000)).SerializeToString(), b"")
    assert tap.held_bytes <= cap and tap.stats["evicted_objects"] == len(finished)
    assert not finished & set(tap.objects.items)
    assert set(get_all_nested_objects(live)) <= set(tap.objects.items)  # still complete


def test_stale_objects_and_messages_are_dropped_after_the_age_limit(tmp_path):
    """A node that pulled its message and died, a reply whose message was never seen,
    objects pushed for nothing: all dropped once no exchange touched them for the TTL."""
    from flwr.proto import message_pb2

    now = [1000.0]
    tap = _tap(tmp_path, clock=lambda: now[0], object_ttl_s=60.0)
    _pull(tap, _train_message(11, _weights(1.0)))      # its node never answers
    orphan = _reply(_train_message(99, _weights(3.0)), 5, _weights(2.0))
    _push(tap, orphan)                                  # answers a message never pulled here
    tap.exchange("/api/v1/fleet/push-object", message_pb2.PushObjectRequest(
        object_id="f" * 64, object_content=b"x" * 100_000).SerializeToString(), b"")
    assert len(tap.sent) == 1 and len(tap.replies) == 1 and tap.held_bytes > 100_000
    now[0] += 30.0
    fresh = _train_message(13, _weights(4.0))
    _pull(tap, fresh)                                   # a live exchange, half the TTL later
    now[0] += 45.0                                      # the first ones are 75 s old now
    tap.exchange("/api/v1/fleet/send-node-heartbeat", b"", b"")
    assert list(tap.sent.items) == [fresh.object_id] and len(tap.replies) == 0
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    assert set(tap.objects.items) == set(get_all_nested_objects(fresh))
    assert tap.stats["expired"] > 0
    now[0] += 61.0
    tap.exchange("/api/v1/fleet/send-node-heartbeat", b"", b"")
    assert len(tap.objects) == 0 and len(tap.sent) == 0 and tap.held_bytes == 0


def test_held_objects_stay_under_the_byte_cap_oldest_first(tmp_path):
    from flwr.proto import message_pb2

    tap = _tap(tmp_path, max_held_bytes=1_000_000)
    for i in range(50):
        tap.exchange("/api/v1/fleet/push-object", message_pb2.PushObjectRequest(
            object_id=f"{i:064x}", object_content=bytes(100_000)).SerializeToString(), b"")
        assert tap.held_bytes <= 1_000_000
    assert f"{49:064x}" in tap.objects and f"{0:064x}" not in tap.objects
    assert tap.stats["evicted_objects"] == 40


def test_the_default_limits_cover_every_flower_body_and_grow_with_the_model():
    from flwr.common.constant import FAB_MAX_SIZE, FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

    floor = Limits.derived()
    assert floor.max_body_bytes > max(FAB_MAX_SIZE, FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE)
    assert Limits.derived(1000).max_body_bytes == floor.max_body_bytes
    big = Limits.derived(100 * MiB)
    assert big.max_body_bytes == 201 * MiB and big.max_held_bytes == 16 * 201 * MiB
    assert Limits.derived(100 * MiB, max_body_bytes=5).max_body_bytes == 5
