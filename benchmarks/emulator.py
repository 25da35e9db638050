"""How fast the emulator serves, so client benchmarks can show it is not their bottleneck.

Figures: requests/s for a completed job's GET (the poll every client sends most), beside a
bare Starlette app on the same server stack answering a constant JSON body (the stack's ceiling),
both loaded by the same async load generator; and the time for 500 concurrently submitted jobs
(300 ms each, 32 at once) to complete, beside the ideal ``500 * 0.3 / 32`` seconds.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx

from benchmarks.common import Figure, Report, emulator_process


async def _load(url: str, headers: dict[str, str], n: int, conns: int) -> float:
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=30) as c:
        gate = asyncio.Semaphore(conns)

        async def one() -> None:
            async with gate:
                r = await c.get(url, headers=headers)
                r.raise_for_status()

        await asyncio.gather(*(one() for _ in range(50)))  # warm the connections
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


_BARE = """
import socket, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def hello(request):
    return JSONResponse({"status": "Completed", "jobId": 1})

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/x", hello)]),
                              log_level="warning")).run(sockets=[sock])
"""


def _bare_server() -> tuple[str, subprocess.Popen[str]]:
    """A bare Starlette app on uvicorn in its own process, like the emulator."""
    proc = subprocess.Popen([sys.executable, "-c", _BARE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return f"http://127.0.0.1:{port}/x", proc


async def _jobs(root: str, headers: dict[str, str], n: int) -> float:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=60) as c:
        gate = asyncio.Semaphore(64)
        body = {"items": [{"fileExternalId": "synthetic_00000.png"}],
                "points": [{"x": 0.5, "y": 0.5, "label": 1}]}

        async def create() -> int:
            async with gate:
                r = await c.post(root + "/context/vision/segment", json=body, headers=headers)
                return int(r.json()["jobId"])

        t0 = time.perf_counter()
        ids = await asyncio.gather(*(create() for _ in range(n)))
        pending = set(ids)
        while pending:
            await asyncio.sleep(0.5)

            async def status(j: int) -> tuple[int, str]:
                async with gate:
                    r = await c.get(f"{root}/context/vision/segment/{j}", headers=headers)
                    return j, str(r.json()["status"])

            for j, s in await asyncio.gather(*(status(j) for j in pending)):
                if s == "Completed":
                    pending.discard(j)
                elif s == "Failed":
                    raise RuntimeError(f"job {j} failed")
        return time.perf_counter() - t0


def run(n_requests: int = 3000, conns: int = 32, jobs: int = 500) -> Report:
    rep = Report("emulator", params={"requests": n_requests, "connections": conns,
                                     "jobs": jobs, "processing_s": 0.3, "concurrency": 32})
    url, proc = _bare_server()
    try:
        bare_rps = asyncio.run(_load(url, {}, n_requests, conns))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    with emulator_process(processing_time=0.3, concurrency=32) as (cfg, _):
        token = httpx.post(cfg.credentials.token_url, data={  # type: ignore[union-attr]
            "grant_type": "client_credentials",
            "client_id": cfg.credentials.client_id,  # type: ignore[union-attr]
            "client_secret": cfg.credentials.client_secret.reveal(),  # type: ignore[union-attr]
        }).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "cdf-version": "beta"}
        root = cfg.api_root
        job_wall = asyncio.run(_jobs(root, headers, jobs))
        jid = httpx.post(root + "/context/vision/segment", headers=headers, json={
            "items": [{"fileExternalId": "synthetic_00001.png"}],
            "points": [{"x": 0.5, "y": 0.5, "label": 1}]}).json()["jobId"]
        time.sleep(0.5)
        emu_rps = asyncio.run(_load(f"{root}/context/vision/segment/{jid}", headers,
                                    n_requests, conns))
    ideal = jobs * 0.3 / 32
    rep.add(Figure("GET job requests/s", emu_rps, "req/s", "bare Starlette+uvicorn", bare_rps),
            Figure(f"{jobs} concurrent jobs complete", job_wall, "s", "ideal", ideal,
                   higher_is_better=False, goal="all complete"))
    return rep


def main(argv: list[str] | None = None) -> Report:
    return run()


if __name__ == "__main__":
    from benchmarks.common import run_as_script

    run_as_script(main)
