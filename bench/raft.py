"""Raft on three node processes (fsync on), against PySyncObj and etcd measured in the same run.

    python bench/raft.py --quick

Workload: 256-byte puts over 1,024 keys. Our members are ``phoenix-trio raft`` processes on
loopback with their WAL on disk (one write + one fsync per batch); the client is this
process's node, talking to the leader's ``kv`` agent with ``node.request`` (KVClient).
Ends with ``RESULT {json}``:

- ``raft_ops_per_s_1``: one synchronous client; ``raft_p50_ms`` / ``raft_p99_ms`` its latencies;
- ``raft_ops_per_s_64``: 64 concurrent clients (``raft_64_p50_ms`` / ``raft_64_p99_ms``);
- ``raft_ops_per_s_local``: proposals made inside the leader, 2,000 in flight (how
  PySyncObj's benchmark drives its members);
- ``pysyncobj_ops_per_s``: PySyncObj (3 processes, 2,000 async calls in flight in the
  leader, its batching on; it does not fsync) and ``raft_vs_pysyncobj`` =
  ``raft_ops_per_s_local / pysyncobj_ops_per_s`` (same mode, same workload);
  ``raft_64_vs_pysyncobj`` compares our 64 external clients to it instead;
- ``etcd_ops_per_s``: a 3-member etcd cluster (Debian's ``etcd-server``, fsync on) with 64
  concurrent clients on the leader, through its v3 JSON gateway over keep-alive HTTP/1.1
  (Debian ships neither etcd's ``benchmark`` tool nor a gRPC client, and the project takes
  no new Python dependencies); ``raft_vs_etcd`` = ``raft_ops_per_s_64 / etcd_ops_per_s``.

Missing anchors (pysyncobj not installed, etcd not installable) are reported as null.
"""

from __future__ import annotations

import base64
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import parse_args, report  # noqa: E402

VALUE = b"v" * 256
KEYS = 1024
CONCURRENCY = 64
INFLIGHT = 2000


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1e3 if values else 0.0


# -- phoenix_trio ---------------------------------------------------------------------------


def run_ours(data_dir: str, seconds: float, extra: tuple[str, ...] = ()) -> dict[str, float]:
    import trio

    import phoenix_trio as px
    from phoenix_trio.raft._agents import KVClient
    from phoenix_trio.raft._process import RaftProcess

    names = ["n1", "n2", "n3"]
    out: dict[str, float] = {}

    async def main() -> None:
        async with px.open_node("bench", listen="127.0.0.1:0") as node, trio.open_nursery() as nursery:
            seed = f"{node.address[0]}:{node.address[1]}"
            procs = [RaftProcess(n, members=names, data_dir=f"{data_dir}/{n}", seeds=[seed], extra=extra) for n in names]
            async with trio.open_nursery() as starting:
                for p in procs:
                    starting.start_soon(p.start, nursery)
            for n in names:
                await node.wait_for_agent(f"kv.{n}", timeout=30)
            client = KVClient(node, names, timeout=30)
            for i in range(300):  # warm up, find the leader
                await client.put(f"k{i % KEYS}", VALUE)
            leader = client.leader
            assert leader is not None

            # one synchronous client
            latencies: list[float] = []
            deadline = time.perf_counter() + seconds
            start = time.perf_counter()
            i = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await client.put(f"k{i % KEYS}", VALUE)
                latencies.append(time.perf_counter() - t0)
                i += 1
            out["raft_ops_per_s_1"] = i / (time.perf_counter() - start)
            out["raft_p50_ms"] = _percentile(latencies, 0.5)
            out["raft_p99_ms"] = _percentile(latencies, 0.99)

            # 64 concurrent clients
            latencies = []
            counts = [0]

            async def worker(c: int) -> None:
                kv = KVClient(node, names, timeout=30)
                kv.leader = leader
                j = c
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    await kv.put(f"k{j % KEYS}", VALUE)
                    latencies.append(time.perf_counter() - t0)
                    j += CONCURRENCY
                    counts[0] += 1

            deadline = time.perf_counter() + seconds
            start = time.perf_counter()
            async with trio.open_nursery() as workers:
                for c in range(CONCURRENCY):
                    workers.start_soon(worker, c)
            out["raft_ops_per_s_64"] = counts[0] / (time.perf_counter() - start)
            out["raft_64_p50_ms"] = _percentile(latencies, 0.5)
            out["raft_64_p99_ms"] = _percentile(latencies, 0.99)

            # proposals made inside the leader, PySyncObj-style
            count = max(5000, int(out["raft_ops_per_s_64"] * seconds * 1.5))
            reply = await node.request(
                f"kv.{leader}", {"op": "load", "count": count, "inflight": INFLIGHT, "size": len(VALUE)}, timeout=120
            )
            out["raft_ops_per_s_local"] = reply.data["ops_per_s"]
            out["raft_local_p50_ms"] = reply.data["p50_ms"]
            for p in procs:
                await p.stop()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return out


# -- PySyncObj ------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _pso_member(me: str, partners: list[str], seconds: float, results: Any, stop: Any) -> None:
    import threading

    from pysyncobj import SyncObj, SyncObjConf, replicated

    class KV(SyncObj):
        def __init__(self) -> None:
            super().__init__(me, partners, SyncObjConf(dynamicMembershipChange=False))
            self.data: dict[str, bytes] = {}

        @replicated
        def put(self, key: str, value: bytes) -> None:
            self.data[key] = value

    obj = KV()
    while obj._getLeader() is None:
        time.sleep(0.05)
    leader = obj._getLeader()
    if str(leader) != me:
        stop.wait(120)
        obj.destroy()
        return
    slots = threading.Semaphore(INFLIGHT)
    done = [0, 0]

    def finished(result: Any, error: Any) -> None:
        done[0] += 1
        if error != 0:  # FAIL_REASON.SUCCESS == 0
            done[1] += 1
        slots.release()

    for i in range(2000):  # warm up
        slots.acquire()
        obj.put(f"k{i % KEYS}", VALUE, callback=finished)
    for _ in range(INFLIGHT):
        slots.acquire()
    for _ in range(INFLIGHT):
        slots.release()
    done[0] = done[1] = 0
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    while time.perf_counter() < deadline:
        slots.acquire()
        obj.put(f"k{i % KEYS}", VALUE, callback=finished)
        i += 1
    elapsed = time.perf_counter() - start
    results.put({"ops_per_s": (done[0] - done[1]) / elapsed, "failed": done[1]})
    stop.set()
    obj.destroy()


def run_pysyncobj(seconds: float) -> dict[str, Any]:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return {"pysyncobj_ops_per_s": None}
    ctx = mp.get_context("spawn")
    ports = _free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    results = ctx.Queue()
    stop = ctx.Event()
    procs = [
        ctx.Process(target=_pso_member, args=(addrs[i], [a for a in addrs if a != addrs[i]], seconds, results, stop))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    try:
        result = results.get(timeout=120)
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return {"pysyncobj_ops_per_s": result["ops_per_s"]}


# -- etcd ------------------------------------------------------------------------------------


def _ensure_etcd() -> str | None:
    etcd = shutil.which("etcd")
    if etcd is None and os.geteuid() == 0 and shutil.which("apt-get"):
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "etcd-server", "etcd-client"]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            subprocess.run(cmd, capture_output=True)
        etcd = shutil.which("etcd")
    return etcd


def _http(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        payload = _dechunk(payload)
    return json.loads(payload) if payload else {}


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        data = rest[size + 2 :]
    return b"".join(out)


def run_etcd(data_dir: str, seconds: float) -> dict[str, Any]:
    etcd = _ensure_etcd()
    if etcd is None:
        return {"etcd_ops_per_s": None}
    ports = _free_ports(6)
    client_ports, peer_ports = ports[:3], ports[3:]
    cluster = ",".join(f"e{i}=http://127.0.0.1:{peer_ports[i]}" for i in range(3))
    procs = []
    for i in range(3):
        cmd = [
            etcd, "--name", f"e{i}", "--data-dir", f"{data_dir}/etcd{i}",
            "--listen-client-urls", f"http://127.0.0.1:{client_ports[i]}",
            "--advertise-client-urls", f"http://127.0.0.1:{client_ports[i]}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "px-bench", "--log-level", "error",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        leader_port = None
        deadline = time.time() + 60
        while leader_port is None and time.time() < deadline:
            for port in client_ports:
                try:
                    status = _http(port, "/v3/maintenance/status", {})
                except (OSError, ValueError):
                    continue
                header = status.get("header", {})
                if status.get("leader") and status.get("leader") == header.get("member_id"):
                    leader_port = port
                    break
            else:
                time.sleep(0.1)
        if leader_port is None:
            return {"etcd_ops_per_s": None}
        return _etcd_load(leader_port, seconds)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _etcd_load(port: int, seconds: float) -> dict[str, Any]:
    import trio

    value = base64.b64encode(VALUE).decode()
    requests = []
    for k in range(KEYS):
        body = json.dumps({"key": base64.b64encode(f"k{k}".encode()).decode(), "value": value}).encode()
        head = f"POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        requests.append(head.encode() + body)
    latencies: list[float] = []
    counts = [0]

    async def read_response(stream: Any, buffer: bytearray) -> None:
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(buffer[:end]).lower()
                if b"transfer-encoding: chunked" in head:
                    terminator = buffer.find(b"\r\n0\r\n\r\n", end)
                    if terminator >= 0:
                        del buffer[: terminator + 7]
                        return
                else:
                    start = head.find(b"content-length:")
                    length = int(head[start + 15 :].split(b"\r\n", 1)[0]) if start >= 0 else 0
                    if len(buffer) >= end + 4 + length:
                        if not head.startswith(b"http/1.1 200"):
                            raise RuntimeError(bytes(buffer[: end + 4 + length])[:200])
                        del buffer[: end + 4 + length]
                        return
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise RuntimeError("etcd closed the connection")
            buffer += chunk

    async def client(c: int, deadline: float) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = bytearray()
        j = c
        async with stream:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await stream.send_all(requests[j % KEYS])
                await read_response(stream, buffer)
                latencies.append(time.perf_counter() - t0)
                counts[0] += 1
                j += CONCURRENCY

    async def main() -> float:
        async with trio.open_nursery() as nursery:  # warm up
            for c in range(CONCURRENCY):
                nursery.start_soon(client, c, time.perf_counter() + 0.5)
        latencies.clear()
        counts[0] = 0
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for c in range(CONCURRENCY):
                nursery.start_soon(client, c, start + seconds)
        return counts[0] / (time.perf_counter() - start)

    rate = trio.run(main)
    return {"etcd_ops_per_s": rate, "etcd_p50_ms": _percentile(latencies, 0.5), "etcd_p99_ms": _percentile(latencies, 0.99)}


def main() -> None:
    args = parse_args("Raft on three node processes vs PySyncObj and etcd")
    seconds = 3.0 if args.quick else 10.0
    disk = Path(__file__).resolve().parent.parent / ".bench-data"
    disk.mkdir(exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="raft-", dir=disk)  # on the project's disk, not a tmpfs
    try:
        ours = run_ours(data_dir, seconds)
        pso = run_pysyncobj(seconds)
        etcd = run_etcd(data_dir, seconds)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        try:
            disk.rmdir()
        except OSError:
            pass  # another run is using it
    result: dict[str, Any] = {k: round(v, 3) if isinstance(v, float) else v for k, v in {**ours, **pso, **etcd}.items()}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    result["raft_vs_pysyncobj"] = ratio(ours["raft_ops_per_s_local"], pso["pysyncobj_ops_per_s"])
    result["raft_64_vs_pysyncobj"] = ratio(ours["raft_ops_per_s_64"], pso["pysyncobj_ops_per_s"])
    result["raft_vs_etcd"] = ratio(ours["raft_ops_per_s_64"], etcd["etcd_ops_per_s"])

    def fmt(key: str, unit: str = "ops/s") -> str:
        value = result.get(key)
        return "n/a" if value is None else f"{value:,.2f} {unit}" if unit == "ms" else f"{value:,.0f} {unit}"

    rows = [
        ("raft, 1 sync client", f"{fmt('raft_ops_per_s_1')} (p50 {fmt('raft_p50_ms', 'ms')}, p99 {fmt('raft_p99_ms', 'ms')})"),
        ("raft, 64 clients", f"{fmt('raft_ops_per_s_64')} (p50 {fmt('raft_64_p50_ms', 'ms')}, p99 {fmt('raft_64_p99_ms', 'ms')})"),
        ("raft, 2,000 in flight in the leader", fmt("raft_ops_per_s_local")),
        ("PySyncObj, 2,000 in flight (no fsync)", fmt("pysyncobj_ops_per_s")),
        ("etcd, 64 clients (JSON gateway)", f"{fmt('etcd_ops_per_s')} (p50 {fmt('etcd_p50_ms', 'ms')})"),
        ("raft_vs_pysyncobj / raft_vs_etcd", f"{result['raft_vs_pysyncobj']} / {result['raft_vs_etcd']}"),
    ]
    report("raft (3 processes, loopback, fsync on)", rows, result)


if __name__ == "__main__":
    main()
