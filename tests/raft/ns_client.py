"""A KV client as its own process, for tests whose client must sit in a network namespace.

``python tests/raft/ns_client.py --listen IP:PORT --seed IP:PORT --members n1,n2,n3``
opens a node, prints ``{"event": "ready"}`` once every member's ``kv`` agent is known,
then answers one JSON request per stdin line (``{"id": 1, "op": "put", "key": k,
"value": v}``, ``get`` with ``consistency`` and optional ``member``, ``status`` with
``member``) with one JSON line ``{"id": 1, "ok": true, "result": ...}`` or ``{"id": 1,
"ok": false, "error": kind}``. Requests run concurrently; EOF on stdin stops it.
"""

from __future__ import annotations

import argparse
import json
import sys

import trio

import phoenix_trio as px
from phoenix_trio.raft._agents import KVClient, KVError


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def serve(client: KVClient, request: dict) -> None:
    rid = request.get("id")
    op = request.get("op")
    try:
        if request.get("member"):
            await client.node.wait_for_agent(f"{client.group}.{request['member']}", timeout=30)
        if op == "put":
            result = await client.put(request["key"], request["value"])
        elif op == "get":
            result = await client.get(request["key"], consistency=request.get("consistency", "strong"), member=request.get("member"))
        elif op == "status":
            result = await client.status(request["member"])
        else:
            emit(id=rid, ok=False, error="bad_request")
            return
    except KVError as exc:
        emit(id=rid, ok=False, error=exc.kind, detail=exc.detail)
        return
    emit(id=rid, ok=True, result=result, index=client.last_index)


async def main(args: argparse.Namespace) -> None:
    members = args.members.split(",")
    async with px.open_node("client", listen=args.listen, seeds=[args.seed], failure_timeout=1.0, heartbeat_interval=0.2) as node:
        for member in members:
            await node.wait_for_agent(f"kv.{member}", timeout=30)
        client = KVClient(node, members, timeout=10.0, request_timeout=3.0)
        emit(event="ready")
        stdin = trio.lowlevel.FdStream(0)
        buffer = b""
        async with trio.open_nursery() as nursery:
            while True:
                chunk = await stdin.receive_some(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        nursery.start_soon(serve, client, json.loads(line))
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--seed", required=True)
    parser.add_argument("--members", required=True)
    trio.run(main, parser.parse_args())
