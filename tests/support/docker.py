"""Is a Docker daemon reachable? Asked once, quickly, so the fallbacks cost nothing without one."""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def docker_available(timeout_s: float = 2.0) -> bool:
    """True only if a daemon answers a ping; a docker CLI alone (this machine) is not enough."""
    if os.environ.get("CLINSTREAM_TEST_NO_DOCKER"):
        return False
    try:
        import docker  # from the testcontainers extra; absent means no Docker path at all
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(max(timeout_s, 1)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # DockerException, connection refused, missing socket: all mean "no daemon"
        return False
