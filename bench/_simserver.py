"""
The simulator process of the submission benchmark: FakeCobalt under uvicorn, on loopback.

``python -m bench._simserver PORT LATENCY [cli-socket]``. uvicorn binds the port itself
(``loop.create_server``), so accepted sockets get ``TCP_NODELAY``. With ``cli-socket`` it
serves through ``cobalt_async._servers.serve`` instead, exactly as ``python -m cobalt_async
simulate`` does: that socket is made without ``IPPROTO_TCP``, asyncio then leaves Nagle on,
and each keep-alive request stalls on a delayed ACK (see the benchmark report).
"""

from __future__ import annotations

import sys

import anyio
import uvicorn

from cobalt_async._servers import serve
from cobalt_async.testing import FakeCobalt

from ._common import CREDENTIALS, WEBHOOK_SECRET


def _fake(latency: float) -> FakeCobalt:
    return FakeCobalt(
        **CREDENTIALS, webhook_secret=WEBHOOK_SECRET, latency=latency, job_id_type="mixed", seed=1
    )


async def _serve_like_cli(port: int, latency: float) -> None:
    async with serve(_fake(latency), "127.0.0.1", port):
        await anyio.sleep_forever()


def main() -> None:
    port, latency = int(sys.argv[1]), float(sys.argv[2])
    if sys.argv[3:] == ["cli-socket"]:
        anyio.run(_serve_like_cli, port, latency, backend="asyncio")
        return
    config = uvicorn.Config(
        _fake(latency),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
