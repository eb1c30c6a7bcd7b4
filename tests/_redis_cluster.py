"""
A pytest plugin that runs a real 3-master Redis Cluster for the cluster tests.

Three ``redis-server --cluster-enabled yes`` on free loopback ports, joined by
``redis-cli --cluster create``; ready once every node says ``cluster_state:ok``. Skipped
without the binaries, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster as SyncRedisCluster

from tests._redis_server import RedisServer, redis_server_binary

READY_TIMEOUT = 30.0


class RedisCluster:
    """Three masters, no replicas: each owns a third of the slots."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{node.port}" for node in self.nodes]

    def info(self, node: RedisServer) -> str:
        done = subprocess.run(
            [redis_cli(), "-p", str(node.port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return done.stdout

    def wait_ok(self) -> None:
        """Return once every running node reports the cluster healthy (bounded)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not all("cluster_state:ok" in self.info(node) for node in self.nodes):
            if time.monotonic() > deadline:
                msg = f"the cluster did not become healthy in {READY_TIMEOUT} s"
                raise RuntimeError(msg)
            time.sleep(0.05)

    def owner_of(self, key: str) -> RedisServer:
        """The node that owns *key*'s slot, as the cluster itself says."""
        running = next(node for node in self.nodes if node.running)
        client = SyncRedisCluster(host="127.0.0.1", port=running.port)
        try:
            owner = client.get_node_from_key(key)
        finally:
            client.close()
        assert owner is not None
        return next(node for node in self.nodes if node.port == int(owner.port))


def redis_cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        msg = "redis-cli is not on PATH (apt-get install redis-tools)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg}; under CI=true this is a failure, not a skip", pytrace=False)
        pytest.skip(msg)
    return binary


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master cluster shared by a test module; a test may kill and restart one master."""
    binary, cli = redis_server_binary(), redis_cli()
    nodes = []
    for index in range(3):
        directory: Path = tmp_path_factory.mktemp(f"cluster-{index}")
        nodes.append(RedisServer(binary, directory, cluster=True))
    cluster = RedisCluster(nodes)
    try:
        for node in nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        cluster.wait_ok()
        yield cluster
    finally:
        for node in nodes:
            node.stop()
