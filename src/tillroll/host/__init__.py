"""The acquirer host: asyncio TCP server, request pipeline, sessions."""

from tillroll.host.boundary import InjectedCrashAfterCommit, InjectedStoreFailure, Reply
from tillroll.host.config import HostConfig
from tillroll.host.pipeline import HostPipeline
from tillroll.host.server import HostServer, HostService
from tillroll.host.store import HostStore, open_store

__all__ = [
    "HostConfig",
    "HostPipeline",
    "HostServer",
    "HostService",
    "HostStore",
    "InjectedCrashAfterCommit",
    "InjectedStoreFailure",
    "Reply",
    "open_store",
]
