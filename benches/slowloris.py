"""Slow clients against a running server: COUNT connections that send half a request head and
then nothing, COUNT that trickle a header byte every 2 s, and meanwhile an ordinary client
loop. Prints when each kind was cut (and with what), and how the other clients fared.

    python3 benches/slowloris.py HOST:PORT PATH [SECONDS=40] [COUNT=50]

Bounded: every slow connection gives up after SECONDS; the ordinary loop stops when they end.
"""
import socket
import sys
import threading
import time

host, port = sys.argv[1].rsplit(":", 1)
path = sys.argv[2]
limit = float(sys.argv[3]) if len(sys.argv) > 3 else 40
count = int(sys.argv[4]) if len(sys.argv) > 4 else 50
results = {"stalled": [], "trickle": []}
lock = threading.Lock()


def record(kind, took, first):
    with lock:
        results[kind].append((took, first))


def read_answer(s, t, kind):
    """Waits (up to what is left of the limit) for the server's answer or its close."""
    s.settimeout(max(0.1, limit - (time.monotonic() - t)))
    try:
        data = s.recv(1024)
        record(kind, time.monotonic() - t, data.split(b"\r\n", 1)[0] or b"closed")
    except socket.timeout:
        record(kind, None, b"still open")
    except OSError as e:
        record(kind, time.monotonic() - t, f"reset ({e.errno})".encode())


def stalled():
    s = socket.create_connection((host, int(port)))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
    read_answer(s, time.monotonic(), "stalled")
    s.close()


def trickle():
    s = socket.create_connection((host, int(port)))
    t = time.monotonic()
    s.sendall(f"GET {path} HTTP/1.1\r\n".encode())
    s.settimeout(2)
    while time.monotonic() - t < limit:
        try:
            s.sendall(b"X")
        except OSError:
            break
        try:
            data = s.recv(1024)
            record("trickle", time.monotonic() - t, data.split(b"\r\n", 1)[0] or b"closed")
            s.close()
            return
        except socket.timeout:
            pass
        except OSError as e:
            record("trickle", time.monotonic() - t, f"reset ({e.errno})".encode())
            return
    read_answer(s, t, "trickle")
    s.close()


threads = [threading.Thread(target=stalled) for _ in range(count)]
threads += [threading.Thread(target=trickle) for _ in range(count)]
for th in threads:
    th.start()
ok = failed = 0
lat = []
while any(th.is_alive() for th in threads):
    t = time.monotonic()
    try:
        c = socket.create_connection((host, int(port)), timeout=5)
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        if c.recv(64).startswith(b"HTTP/1.1 200"):
            ok += 1
        else:
            failed += 1
        c.close()
    except OSError:
        failed += 1
    lat.append(time.monotonic() - t)
    time.sleep(0.05)
for th in threads:
    th.join()


def summary(kind):
    r = results[kind]
    cut = sorted(t for t, _ in r if t is not None)
    firsts = sorted({f.decode(errors="replace") for _, f in r})
    open_ = sum(1 for t, _ in r if t is None)
    span = f"cut after {cut[0]:.1f}-{cut[-1]:.1f} s" if cut else "none cut"
    return f"{kind}: {len(r)} connections, {span}, {open_} still open at {limit:.0f} s, answers {firsts}"


lat.sort()
p99 = lat[int(len(lat) * 0.99)] if lat else 0
print(f"{summary('stalled')}; {summary('trickle')}; meanwhile {ok} other requests answered 200 "
      f"({failed} failed), p99 {p99 * 1000:.1f} ms, slowest {lat[-1] * 1000 if lat else 0:.1f} ms")
