"""Memory per idle connection: opens N TCP connections to a server that send nothing, then
one request each, then closes them, printing the server's RSS (VmRSS, KiB) at each step.

    python3 benches/idle_conns.py PID HOST:PORT N [PATH]

Used by benches/idle.sh against Portier and a plain Pingora passthrough in the same run.
"""
import resource
import socket
import sys
import time


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    pid, addr, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else "/"
    host, port = addr.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    print(f"start {rss(pid)}", flush=True)
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        socks.append(s)
    time.sleep(2)
    print(f"idle {rss(pid)}", flush=True)
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    ok = 0
    # In batches: every connection gets its request, but the upstream sees at most a batch at
    # once (the machine's 20,000-descriptor limit holds the downstream side and the pool).
    batch = 200
    for i in range(0, len(socks), batch):
        for s in socks[i:i + batch]:
            s.sendall(req)
        for s in socks[i:i + batch]:
            data = s.recv(4096)
            ok += data.startswith(b"HTTP/1.1 200")
    time.sleep(1)
    print(f"after_request {rss(pid)} ok={ok}", flush=True)
    for s in socks:
        s.close()
    time.sleep(3)
    print(f"closed {rss(pid)}", flush=True)
    # A little traffic afterwards: allocators give memory back when they next run.
    for _ in range(20):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        s.recv(4096)
        s.close()
        time.sleep(0.1)
    time.sleep(2)
    print(f"after_quiet_traffic {rss(pid)}", flush=True)


if __name__ == "__main__":
    main()
