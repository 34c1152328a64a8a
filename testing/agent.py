#!/usr/bin/python3
"""The test agent: runs in the guest of a test VM, never in a user image.

It listens on TCP port 5555 (qemu forwards it from the host's 127.0.0.1 only) and runs one
command per connection as root. Standard library only: the test image copies this one file to
/usr/lib/amber-test/agent.py and starts it with the guest's /usr/bin/python3.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import IO

AGENT_PORT = 5555
MAGIC = b"AMBER-AGENT-1\n"

# ---- the wire format -----------------------------------------------------------------------
# request:  MAGIC, one JSON line {"argv": [...], "timeout": float|null, "stdin": n}, n bytes
# response: frames of kind (1 byte) + length (4 bytes, big endian) + payload;
#           b"o" stdout, b"e" stderr, b"x" the end: JSON {"code": int, "timed_out": bool}

_FRAME = struct.Struct(">cI")


def send_frame(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(_FRAME.pack(kind, len(payload)) + payload)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> tuple[bytes, bytes]:
    kind, size = _FRAME.unpack(recv_exact(sock, _FRAME.size))
    return kind, recv_exact(sock, size)


def recv_line(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        if len(data) > limit:
            raise ConnectionError("request line too long")
        data += recv_exact(sock, 1)
    return bytes(data)


# ---- the agent ---------------------------------------------------------

def _pump(stream: IO[bytes], sock: socket.socket, kind: bytes, lock: threading.Lock) -> None:
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        with lock:
            send_frame(sock, kind, chunk)


def _feed(stream: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError):
        stream.write(data)
    with contextlib.suppress(BrokenPipeError):
        stream.close()


def serve_one(sock: socket.socket) -> None:
    if recv_exact(sock, len(MAGIC)) != MAGIC:
        return
    request = json.loads(recv_line(sock))
    stdin = recv_exact(sock, int(request["stdin"]))
    lock = threading.Lock()
    try:
        proc = subprocess.Popen(request["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        send_frame(sock, b"e", f"agent: cannot run {request['argv'][0]}: {e}\n".encode())
        send_frame(sock, b"x", json.dumps({"code": 127, "timed_out": False}).encode())
        return
    assert proc.stdin and proc.stdout and proc.stderr
    threads = [threading.Thread(target=_feed, args=(proc.stdin, stdin)),
               threading.Thread(target=_pump, args=(proc.stdout, sock, b"o", lock)),
               threading.Thread(target=_pump, args=(proc.stderr, sock, b"e", lock))]
    for thread in threads:
        thread.start()
    timed_out = False
    try:
        proc.wait(timeout=request.get("timeout"))
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for thread in threads[1:]:
        # A child left in the background may hold the pipes open; do not wait for it forever.
        thread.join(timeout=None if not timed_out else 5)
    with lock:
        send_frame(sock, b"x", json.dumps({"code": proc.returncode,
                                           "timed_out": timed_out}).encode())


def agent_main(port: int = AGENT_PORT) -> None:
    class Handler(threading.Thread):
        def __init__(self, conn: socket.socket):
            super().__init__(daemon=True)
            self.conn = conn

        def run(self) -> None:
            with self.conn, contextlib.suppress(OSError, ValueError, KeyError):
                serve_one(self.conn)

    server = socket.create_server(("0.0.0.0", port), reuse_port=False)
    while True:
        conn, _ = server.accept()
        Handler(conn).start()



def main(argv: list[str]) -> int:
    port = int(argv[1]) if len(argv) > 1 else AGENT_PORT
    agent_main(port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
