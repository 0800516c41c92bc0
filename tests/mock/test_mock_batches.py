"""The mock's Batch API: files, batches, their phases on a clock, and batch-level faults."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from batcher.mock import MockConfig, MockServer

KEY = "sk-mock-batch-0123"


def line(custom_id: str, text: str, model: str = "mock-1", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        **extra,
        "body": body,
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


class Api:
    """A client of one mock server whose clock the test moves (`at`)."""

    def __init__(self, server: MockServer, session: aiohttp.ClientSession) -> None:
        self.server, self.session, self.now = server, session, 1_800_000_000.0
        server._state.clock = lambda: self.now

    def at(self, seconds: float) -> None:
        self.now += seconds

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.server.url + path, **kw) as r:
            data = await r.read()
            kind = r.headers.get("Content-Type", "")
            return r.status, orjson.loads(data) if kind.startswith("application/json") else data

    async def upload(self, data: bytes, purpose: str = "batch") -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("purpose", purpose)
        form.add_field("file", data, filename="requests.jsonl")
        status, doc = await self.call("POST", "/files", data=form)
        assert status == 200, doc
        return doc

    async def submit(self, lines: list[Any]) -> dict[str, Any]:
        f = await self.upload(jsonl(lines))
        body = {
            "input_file_id": f["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"job": "t"},
        }
        status, doc = await self.call("POST", "/batches", json=body)
        assert status == 200, doc
        return doc

    async def batch(self, batch_id: str) -> dict[str, Any]:
        status, doc = await self.call("GET", f"/batches/{batch_id}")
        assert status == 200, doc
        return doc

    async def lines(self, file_id: str | None) -> dict[str, Any]:
        """The lines of an output or error file, by custom_id."""
        if file_id is None:
            return {}
        status, data = await self.call("GET", f"/files/{file_id}/content")
        assert status == 200, data
        rows = [orjson.loads(x) for x in data.splitlines()]
        return {r["custom_id"]: r for r in rows}


def with_api(config: MockConfig, test: Callable[[Api], Awaitable[None]]) -> None:
    async def main() -> None:
        async with (
            MockServer(config) as server,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session,
        ):
            await test(Api(server, session))

    asyncio.run(main())


STEP = MockConfig(batch_step=10.0, api_key=KEY)


def test_a_batch_moves_through_its_phases_and_answers_each_line_as_online():
    async def test(api: Api) -> None:
        rows = [line(f"r{i}", f"question {i}") for i in range(3)]
        rows.append(line("bad", "[[mock:500x1]] question 3"))
        doc = await api.submit(rows)
        assert (doc["status"], doc["request_counts"]) == (
            "validating",
            {"total": 4, "completed": 0, "failed": 0},
        )
        assert doc["completion_window"] == "24h" and doc["metadata"] == {"job": "t"}
        assert doc["expires_at"] == doc["created_at"] + 86400
        api.at(10)
        assert (await api.batch(doc["id"]))["status"] == "in_progress"
        api.at(5)  # half the phase: half the lines
        half = await api.batch(doc["id"])
        assert half["request_counts"] == {"total": 4, "completed": 2, "failed": 0}
        api.at(5)
        assert (await api.batch(doc["id"]))["status"] == "finalizing"
        assert len(api.server.log) == 4
        api.at(10)
        done = await api.batch(doc["id"])
        assert done["status"] == "completed"
        assert done["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
        at = {
            k: done[k] - done["created_at"]
            for k in ("in_progress_at", "finalizing_at", "completed_at")
        }
        assert at == {"in_progress_at": 10, "finalizing_at": 20, "completed_at": 30}
        out, err = await api.lines(done["output_file_id"]), await api.lines(done["error_file_id"])
        assert sorted(out) == ["r0", "r1", "r2"] and list(err) == ["bad"]
        assert err["bad"]["response"]["status_code"] == 500
        assert err["bad"]["response"]["body"]["error"]["type"] == "server_error"
        for i in range(3):  # the same reply as the same request sent online
            status, online = await api.call("POST", "/chat/completions", json=rows[i]["body"])
            reply = out[f"r{i}"]["response"]
            assert reply["body"].pop("created") < online.pop("created")  # answered earlier
            assert (status, reply["status_code"], reply["body"]) == (200, 200, online)
            assert out[f"r{i}"]["error"] is None and out[f"r{i}"]["id"].startswith("batch_req_")
        status, meta = await api.call("GET", f"/files/{done['output_file_id']}")
        assert (status, meta["purpose"], meta["object"]) == (200, "batch_output", "file")

    with_api(STEP, test)


def test_output_is_not_in_input_order():
    async def test(api: Api) -> None:
        doc = await api.submit([line(f"r{i}", f"q {i}") for i in range(20)])
        api.at(30)
        done = await api.batch(doc["id"])
        status, data = await api.call("GET", f"/files/{done['output_file_id']}/content")
        assert status == 200
        ids = [orjson.loads(x)["custom_id"] for x in data.splitlines()]
        assert sorted(ids) == sorted(f"r{i}" for i in range(20)) and ids != sorted(ids)

    with_api(STEP, test)


def test_expire_after_k_lines_keeps_them_and_lists_the_rest_as_batch_expired():
    async def test(api: Api) -> None:
        doc = await api.submit([line(f"r{i}", f"q {i}") for i in range(4)])
        api.at(30)
        done = await api.batch(doc["id"])
        assert done["status"] == "expired" and done["expired_at"] is not None
        assert done["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
        out, err = await api.lines(done["output_file_id"]), await api.lines(done["error_file_id"])
        assert sorted(out) == ["r0", "r1"] and sorted(err) == ["r2", "r3"]
        assert err["r2"]["response"] is None
        assert err["r2"]["error"]["code"] == "batch_expired"
        assert len(api.server.log) == 2  # only answered lines were run (and billed)
        again = await api.submit([line("r2", "q 2"), line("r3", "q 3")])  # the next batch
        api.at(30)
        assert (await api.batch(again["id"]))["status"] == "completed"

    with_api(MockConfig(batch_step=10.0, batch_faults=("expire:2",)), test)


def test_a_file_that_breaks_the_rules_fails_validation_naming_each_line():
    async def test(api: Api) -> None:
        rows = [
            line("a", "q"),
            line("a", "q again"),
            line("b", "q", model="mock-2"),
            {**line("c", "q"), "url": "/v1/embeddings"},
        ]
        f = await api.upload(jsonl(rows) + b"not json\n")
        body = {
            "input_file_id": f["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        status, doc = await api.call("POST", "/batches", json=body)
        assert (status, doc["status"]) == (200, "validating")
        api.at(10)
        failed = await api.batch(doc["id"])
        assert failed["status"] == "failed" and failed["failed_at"] is not None
        problems = [(e["code"], e["line"]) for e in failed["errors"]["data"]]
        assert problems == [
            ("duplicate_custom_id", 2),
            ("mismatched_model", 3),
            ("invalid_url", 4),
            ("invalid_json_line", 5),
        ]
        assert failed["output_file_id"] is None and len(api.server.log) == 0

    with_api(STEP, test)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"input_file_id": "file-nope"}, 404, "No such File object: file-nope"),
        ({"completion_window": "1h"}, 400, "completion_window must be '24h'."),
        ({"endpoint": "/v1/embeddings"}, 400, "endpoint must be one of"),
    ],
)
def test_create_refuses_what_cannot_run(body, status, message):
    async def test(api: Api) -> None:
        f = await api.upload(jsonl([line("a", "q")]))
        full = {
            "input_file_id": f["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **body,
        }
        got, doc = await api.call("POST", "/batches", json=full)
        assert got == status and doc["error"]["message"].startswith(message)

    with_api(STEP, test)


def test_batch_level_faults_no_output_stuck_finalizing_and_content_gone():
    async def test(api: Api) -> None:
        rows = [line("a", "q")]
        invalid, no_output, stuck, gone, slow = [(await api.submit(rows))["id"] for _ in range(5)]
        api.at(30)
        assert (await api.batch(invalid))["status"] == "failed"
        done = await api.batch(no_output)
        assert (done["status"], done["output_file_id"], done["error_file_id"]) == (
            "completed",
            None,
            None,
        )
        assert done["request_counts"]["completed"] == 1
        api.at(3600)
        assert (await api.batch(stuck))["status"] == "finalizing"
        gone_doc = await api.batch(gone)
        status, doc = await api.call("GET", f"/files/{gone_doc['output_file_id']}/content")
        assert status == 404 and "expired" in doc["error"]["message"]
        assert (await api.batch(slow))["status"] == "completed"

    faults = ("invalid", "no_output", "finalizing", "gone", "finalizing:5")
    with_api(MockConfig(batch_step=10.0, batch_faults=faults), test)


def test_cancel_keeps_what_was_answered():
    async def test(api: Api) -> None:
        doc = await api.submit([line(f"r{i}", f"q {i}") for i in range(4)])
        api.at(15)  # validating over, half the lines answered
        status, cancelling = await api.call("POST", f"/batches/{doc['id']}/cancel")
        assert (status, cancelling["status"]) == (200, "cancelling")
        api.at(10)
        cancelled = await api.batch(doc["id"])
        assert cancelled["status"] == "cancelled"
        assert sorted(await api.lines(cancelled["output_file_id"])) == ["r0", "r1"]
        status, doc2 = await api.call("POST", f"/batches/{doc['id']}/cancel")
        assert status == 400 and "status cancelled" in doc2["error"]["message"]

    with_api(STEP, test)


def test_list_pages_newest_first_and_keys_are_required():
    async def test(api: Api) -> None:
        ids = [(await api.submit([line("a", "q")]))["id"] for _ in range(3)]
        status, page = await api.call("GET", "/batches", params={"limit": "2"})
        assert status == 200
        assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
        _, rest = await api.call("GET", "/batches", params={"after": page["last_id"]})
        assert [b["id"] for b in rest["data"]] == ids[:1] and rest["has_more"] is False
        async with aiohttp.ClientSession() as anon, anon.get(api.server.url + "/batches") as r:
            assert r.status == 401

    with_api(STEP, test)


def test_batch_lines_skip_the_online_rate_limit():
    async def test(api: Api) -> None:
        doc = await api.submit([line(f"r{i}", f"q {i}") for i in range(5)])
        api.at(30)
        done = await api.batch(doc["id"])
        assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}

    with_api(MockConfig(batch_step=10.0, rpm=1), test)


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        (("expire",), "needs a line count"),
        (("later",), "unknown batch fault 'later'"),
        (("gone:3",), "takes no argument"),
        (("expire:1.5",), "needs a count"),
    ],
)
def test_bad_batch_faults_are_refused(faults, message):
    with pytest.raises(ValueError, match=message):
        MockConfig(batch_faults=faults)
