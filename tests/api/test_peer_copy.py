"""GET /v1/peer/copy in-process on a real SQLite store: the frames of a bulk copy, chunk by chunk
from a key, and bad parameters refused with 400 and nothing changed (replication/copy.py)."""

from __future__ import annotations

import pytest

from shareddb.replication.copy_frames import CopyChunk, CopyEnd, CopyHeader, read_frames
from tests.api.conftest import Api


async def test_a_copy_serves_every_record_in_key_order_in_chunks_then_its_end(api: Api) -> None:
    await api.load({f"k{i:02d}": f"v{i}" for i in range(25)})
    assert (await api.delete("/v1/kv/k03")).status == 204
    reply = await api.get("/v1/peer/copy?limit=10")
    assert reply.status == 200
    header, *chunks, end = list(read_frames(reply.body))
    assert isinstance(header, CopyHeader)
    assert header.node == "n1"
    assert header.instance == api.node.store.instance_id
    assert header.seq == api.node.store.last_seq
    assert not header.left
    assert all(isinstance(c, CopyChunk) for c in chunks)
    assert isinstance(end, CopyEnd)
    records = [r for c in chunks if isinstance(c, CopyChunk) for r in c.records]
    assert [r.key for r in records] == [f"k{i:02d}" for i in range(25)]
    assert records[3].value is None  # tombstones are copied too
    assert [len(c.records) for c in chunks if isinstance(c, CopyChunk)] == [10, 10, 5]


async def test_a_copy_resumes_after_a_key(api: Api) -> None:
    await api.load({f"k{i:02d}": "v" for i in range(25)})
    reply = await api.get("/v1/peer/copy?after=k19&limit=100")
    chunks = [f for f in read_frames(reply.body) if isinstance(f, CopyChunk)]
    assert [r.key for c in chunks for r in c.records] == [f"k{i:02d}" for i in range(20, 25)]


async def test_a_node_whose_digest_is_the_sources_gets_no_chunk(api: Api) -> None:
    await api.load({"a": "1", "b": "2"})
    digest = api.node.store.digest().digest
    reply = await api.get(f"/v1/peer/copy?digest={digest}")
    frames = list(read_frames(reply.body))
    assert [type(f) for f in frames] == [CopyHeader, CopyEnd]


@pytest.mark.parametrize(
    "query",
    ["limit=abc", "limit=-1", "from=bad%20id", "inc=zz", "after=%FF", "v=x"],
)
async def test_bad_copy_parameters_are_400_and_change_nothing(api: Api, query: str) -> None:
    await api.load({"a": "1"})
    before = await api.state()
    reply = await api.get(f"/v1/peer/copy?{query}")
    assert reply.status == 400
    assert reply.json()["error"] == "bad_request"
    assert await api.state() == before
