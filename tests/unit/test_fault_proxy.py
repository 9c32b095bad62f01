"""The fault proxy of the process-level tests (tests/harness/proxy.py): closing one must not wait
on its clients, and must leave no socket open behind it."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import FaultProxy, Links, eventually


async def test_a_proxy_closes_while_a_client_never_sends_a_request() -> None:
    links = Links(lambda node_id: None)
    proxy = FaultProxy(0, links, lambda: 0)
    await proxy.start()
    _, silent = await asyncio.open_connection("127.0.0.1", proxy.port)
    reader, _ = await asyncio.open_connection("127.0.0.1", proxy.port)
    await eventually(lambda: len(proxy._handlers) == 2, "both handlers waiting for a request")
    await asyncio.wait_for(proxy.close(), 20)  # it used to wait for them forever
    with pytest.raises(ConnectionResetError):  # the proxy resets what it leaves
        await reader.read()
    silent.close()
