"""Slow clients against a running server: how long a connection that sends half a request
head and then nothing stays open, how long one that trickles a header byte every few seconds
stays open, and whether other clients are served meanwhile.

    python3 benches/slowloris.py HOST:PORT PATH [SECONDS=75]
"""
import socket
import sys
import threading
import time

host, port = sys.argv[1].rsplit(":", 1)
path = sys.argv[2]
limit = float(sys.argv[3]) if len(sys.argv) > 3 else 75
result = {}


def stalled():
    s = socket.create_connection((host, int(port)))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
    t = time.monotonic()
    s.settimeout(limit)
    try:
        data = s.recv(1024)
        result["stalled"] = (time.monotonic() - t, data[:12])
    except socket.timeout:
        result["stalled"] = (None, b"still open")


def trickle():
    s = socket.create_connection((host, int(port)))
    s.sendall(f"GET {path} HTTP/1.1\r\n".encode())
    t = time.monotonic()
    s.settimeout(0.1)
    while time.monotonic() - t < limit:
        try:
            s.sendall(b"X")
        except OSError:
            result["trickle"] = (time.monotonic() - t, b"cut")
            return
        try:
            if s.recv(1024) == b"":
                result["trickle"] = (time.monotonic() - t, b"closed")
                return
        except socket.timeout:
            pass
        time.sleep(5)
    result["trickle"] = (None, b"still open")


threads = [threading.Thread(target=stalled), threading.Thread(target=trickle)]
for th in threads:
    th.start()
ok = slow = 0
worst = 0.0
t0 = time.monotonic()
while any(th.is_alive() for th in threads):
    t = time.monotonic()
    c = socket.create_connection((host, int(port)), timeout=5)
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    ok += c.recv(64).startswith(b"HTTP/1.1 200")
    c.close()
    worst = max(worst, time.monotonic() - t)
    time.sleep(0.2)
for th in threads:
    th.join()
print(f"stalled head: {result['stalled']}; trickled head: {result['trickle']}; "
      f"meanwhile {ok} other requests answered 200, slowest {worst * 1000:.1f} ms")
