"""The link against a fake daemon on a real Unix socket: handshake, replies by id, timeouts,
disconnect and reconnect, and every callback delivered through ``post`` (the UI thread)."""

from __future__ import annotations

import json
import queue
import socket
import threading

import pytest

from kiosk.link import Link

WAIT_S = 5.0  # an upper bound for a step to happen, never a speed assertion


class FakeDaemon:
    """Answers hello; replies to commands from ``replies`` (cmd -> result, or None = never
    answer; missing -> UNKNOWN_COMMAND); ``events`` lines are pushed on demand."""

    def __init__(self, path):
        self.path = str(path)
        self.replies = {"status": {"state": "ready"}}
        self.got: queue.Queue = queue.Queue()
        self.conns: list[socket.socket] = []
        self.srv = None
        self.listen()

    def listen(self):
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen()
        threading.Thread(target=self._accept, args=(self.srv,), daemon=True).start()

    def _accept(self, srv):
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        while True:
            try:
                chunk = c.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                self.got.put(req)
                cmd = req["cmd"]
                if cmd == "hello":
                    self.send(
                        c,
                        {
                            "id": req["id"],
                            "ok": True,
                            "result": {"sim": True, "lease_ms": 300.0, "level_count": 10},
                        },
                    )
                    self.send(c, {"event": "status", "data": {"state": "ready"}})
                elif cmd not in self.replies:
                    self.send(
                        c,
                        {
                            "id": req["id"],
                            "ok": False,
                            "error": {
                                "code": "UNKNOWN_COMMAND",
                                "message": f"unknown command {cmd!r}",
                            },
                        },
                    )
                elif self.replies[cmd] is not None:
                    self.send(c, {"id": req["id"], "ok": True, "result": self.replies[cmd]})

    def send(self, c, msg):
        try:
            c.sendall((json.dumps(msg) + "\n").encode())
        except OSError:
            pass

    def push(self, msg):
        for c in self.conns:
            self.send(c, msg)

    def kill(self):
        try:
            self.srv.shutdown(socket.SHUT_RDWR)  # wakes the accept thread (close alone does not)
        except OSError:
            pass
        self.srv.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns.clear()
        import os

        os.unlink(self.path)


class UiThread:
    """Plays Kivy's Clock: ``post`` queues; the test runs the queued calls on its own thread."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.log: list = []

    def post(self, fn):
        self.q.put(fn)

    def run_until(self, pred, timeout_s=WAIT_S):
        import time

        deadline = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached; log {self.log}")
            try:
                fn = self.q.get(timeout=0.02)
            except queue.Empty:
                continue  # the predicate may watch the link itself (attempts)
            fn()


@pytest.fixture
def rig(tmp_path):
    d = FakeDaemon(tmp_path / "d.sock")
    ui = UiThread()
    main = threading.get_ident()

    def rec(kind):
        def cb(x):
            assert threading.get_ident() == main, "callback ran off the UI thread"
            ui.log.append((kind, x))

        return cb

    link = Link(
        d.path,
        "kiosk",
        post=ui.post,
        on_connected=rec("up"),
        on_disconnected=rec("down"),
        on_message=rec("msg"),
        backoff_s=(0.05,),
    )
    yield d, ui, link
    link.close()
    try:
        d.kill()
    except OSError:
        pass


def kinds(ui):
    return [k for k, _ in ui.log]


def test_hello_subscribes_and_events_arrive_on_the_ui_thread(rig):
    d, ui, link = rig
    link.start()
    ui.run_until(lambda: "msg" in kinds(ui))
    hello = d.got.get(timeout=WAIT_S)
    assert hello["cmd"] == "hello" and hello["args"] == {
        "protocol": 1,
        "client": "kiosk",
        "status": True,
    }
    assert kinds(ui)[:2] == ["up", "msg"] and ui.log[0][1]["sim"] is True


def test_reply_matched_by_id_and_unknown_command(rig):
    d, ui, link = rig
    link.start()
    ui.run_until(lambda: "up" in kinds(ui))
    done = []
    link.request("status", callback=done.append)
    link.request("screening_status", callback=done.append)
    ui.run_until(lambda: len(done) == 2)
    by = {r.cmd: r for r in done}
    assert by["status"].ok and by["status"].result == {"state": "ready"}
    assert not by["screening_status"].ok
    assert by["screening_status"].error["code"] == "UNKNOWN_COMMAND"


def test_timeout_without_reply(rig):
    d, ui, link = rig
    d.replies["lease"] = None  # the daemon never answers
    link.start()
    ui.run_until(lambda: "up" in kinds(ui))
    done = []
    link.request("lease", callback=done.append, timeout_s=0.2)
    ui.run_until(lambda: done)
    assert done[0].error["code"] == "TIMEOUT"


def test_disconnect_fails_pending_and_reconnects(rig, tmp_path):
    d, ui, link = rig
    d.replies["history"] = None
    link.start()
    ui.run_until(lambda: "up" in kinds(ui))
    done = []
    link.request("history", callback=done.append, timeout_s=30.0)
    d.got.get(timeout=WAIT_S)  # hello
    assert d.got.get(timeout=WAIT_S)["cmd"] == "history"
    d.kill()
    ui.run_until(lambda: "down" in kinds(ui) and done)
    assert done[0].error["code"] == "DISCONNECTED"
    now = []
    link.request("status", callback=now.append)  # while down: fails at once, never hangs
    ui.run_until(lambda: now)
    assert now[0].error["code"] == "DISCONNECTED"
    d.listen()  # the daemon comes back
    ui.run_until(lambda: kinds(ui).count("up") == 2)
    again = []
    link.request("status", callback=again.append)
    ui.run_until(lambda: again)
    assert again[0].ok


def test_no_daemon_reports_once_then_keeps_trying(tmp_path):
    ui = UiThread()
    link = Link(
        str(tmp_path / "none.sock"),
        post=ui.post,
        backoff_s=(0.02,),
        on_disconnected=lambda r: ui.log.append(("down", r)),
        on_connected=lambda h: ui.log.append(("up", h)),
    )
    link.start()
    try:
        ui.run_until(lambda: ui.log)
        assert ui.log[0][0] == "down"
        ui.run_until(lambda: link.attempts >= 5)
        assert kinds(ui) == ["down"]  # one message, not one per attempt
        d = FakeDaemon(tmp_path / "none.sock")
        ui.run_until(lambda: "up" in kinds(ui))
        d.kill()
    finally:
        link.close()
