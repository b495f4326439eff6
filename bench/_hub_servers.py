"""The baseline servers of the hub benchmarks, run as real processes by the rig (bench/_hub_rig.py):

    python bench/_hub_servers.py serve-poll|serve-bare|serve-hub-traced --port N --redis-url URL

* `serve-poll`: the tutorial's polling design, a Starlette WebSocket handler per client that reads the job's
  hash (one HGETALL) every second and sends it, served by uvicorn;
* `serve-bare`: a minimal `websockets.serve` broadcast loop: one Redis pub/sub connection (PSUBSCRIBE on the
  jobs' live channels) and `broadcast()` of every message to the sockets connected for that job;
* `serve-hub-traced`: the real hub under tracemalloc, to attribute its memory (`traced_allocations`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from _hub_rig import KEY_PREFIX, raise_nofile, use_uvloop

from longrun_common.keys import Keys


def serve_poll(args: argparse.Namespace) -> None:
    """The tutorial's polling design: per client, every second HGETALL the job's hash and send it as JSON."""
    import redis.asyncio as aioredis
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    log = logging.getLogger("serve-poll")

    # A blocking pool (like the hub's): redis-py's default pool raises MaxConnectionsError past its limit, which
    # would drop pollers under 1,000 concurrent reads instead of making them wait.
    pool = aioredis.BlockingConnectionPool.from_url(args.redis_url, max_connections=64, timeout=30,
                                                    decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    keys = Keys(args.prefix)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def job_socket(websocket: WebSocket) -> None:
        job_id = websocket.path_params["job_id"]
        await websocket.accept()
        try:
            while True:
                state = await client.hgetall(keys.job(job_id))
                await websocket.send_json(state)
                await asyncio.sleep(args.interval)
        except (WebSocketDisconnect, OSError):  # the client left (uvicorn's ClientDisconnected is an OSError)
            return
        except Exception:
            log.exception("poll handler of job %s failed", job_id)
            raise

    app = Starlette(routes=[Route("/healthz", healthz), WebSocketRoute("/ws/jobs/{job_id}", job_socket)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, backlog=4096)


def serve_bare(args: argparse.Namespace) -> None:
    """A bare `websockets` broadcast loop: one pub/sub connection, `broadcast()` each message to the job's sockets."""
    import redis.asyncio as aioredis
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.http11 import Request, Response

    keys = Keys(args.prefix)
    prefix_len = len(keys.channel(""))
    watchers: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        job_id = ws.request.path.rsplit("/", 1)[-1] if ws.request is not None else ""
        peers = watchers.setdefault(job_id, set())
        peers.add(ws)
        try:
            await ws.wait_closed()
        finally:
            peers.discard(ws)
            if not peers:
                watchers.pop(job_id, None)

    def health(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(200, "OK\n")
        return None

    async def listen() -> None:
        client = aioredis.Redis.from_url(args.redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(keys.channel("*"))
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None or message.get("type") != "pmessage":
                continue
            peers = watchers.get(message["channel"][prefix_len:].decode())
            if peers:
                broadcast(peers, message["data"].decode())

    async def main() -> None:
        async with serve(handler, "127.0.0.1", args.port, process_request=health, compression=None,
                         backlog=4096, ping_interval=20, ping_timeout=20):
            await listen()

    use_uvloop()
    asyncio.run(main())


def serve_hub_traced(args: argparse.Namespace) -> None:
    """`python -m longrun_hub`'s own main(), with tracemalloc on; SIGUSR1 dumps a snapshot to --snapshot-dir."""
    import gc
    import tracemalloc

    tracemalloc.start(args.frames)
    count = 0

    def dump(*_: Any) -> None:
        nonlocal count
        gc.collect()
        count += 1
        tracemalloc.take_snapshot().dump(str(Path(args.snapshot_dir) / f"snap-{count}.tracemalloc"))

    signal.signal(signal.SIGUSR1, dump)
    from longrun_hub.__main__ import main

    main()


def traced_allocations(before: Path, after: Path, per: int, top: int = 15, group: str = "lineno") -> list[str]:
    """The allocation sites that grew most between two tracemalloc snapshots, in bytes per `per` connections."""
    import tracemalloc

    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    stats = new.compare_to(old, group)
    total = sum(s.size_diff for s in stats)
    lines = [f"  traced Python heap growth: {total / 1024 / 1024:.1f} MiB = "
             f"{total / max(1, per):,.0f} B per connection"]
    for stat in stats[:top]:
        frame = stat.traceback[0]
        name = frame.filename
        for marker in ("site-packages/", "/src/", "/lib/python3"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        lines.append(f"    {stat.size_diff / max(1, per):8,.0f} B/conn  "
                     f"{stat.count_diff / max(1, per):6.2f} blocks/conn  {name}:{frame.lineno}")
    by_package: Counter[str] = Counter()
    for stat in stats:
        name = stat.traceback[0].filename
        for marker in ("site-packages/", "/src/"):
            if marker in name:
                name = name.split(marker, 1)[1].split("/", 1)[0]
                break
        else:
            name = "stdlib " + Path(name).name if "/lib/python3" in name else name
        by_package[name] += stat.size_diff
    lines.append("  by package / stdlib module:")
    lines += [f"    {size / max(1, per):8,.0f} B/conn  {name}" for name, size in by_package.most_common(12)]
    return lines


def _serve_main() -> None:
    ap = argparse.ArgumentParser(description="baseline servers of the hub benchmarks")
    ap.add_argument("kind", choices=["serve-poll", "serve-bare", "serve-hub-traced"])
    ap.add_argument("--snapshot-dir", default=".", help="serve-hub-traced: where SIGUSR1 writes snapshots")
    ap.add_argument("--frames", type=int, default=1, help="serve-hub-traced: traceback depth")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--prefix", default=KEY_PREFIX)
    ap.add_argument("--interval", type=float, default=1.0, help="serve-poll: seconds between two reads")
    args = ap.parse_args()
    raise_nofile()
    if args.kind == "serve-hub-traced":
        serve_hub_traced(args)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.kind == "serve-poll":
        serve_poll(args)
    else:
        serve_bare(args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("serve-"):
        _serve_main()
    else:
        print("bench/_hub_servers.py serve-poll|serve-bare|serve-hub-traced: started by the hub benchmarks.")
