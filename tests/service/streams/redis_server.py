"""A real `redis-server` (Debian's package) on 127.0.0.1 and a free port, stopped by its PID: the local
cluster's, shared with the tests."""

from deploy.local_cluster import redis_server

__all__ = ["redis_server"]
