"""Protocol fuzzing: thousands of malformed and hostile events through a real WebSocket to the real server.

Every hostile event must get an `error` (the right code, the client's event_id echoed when it had one) or,
for frames the transport refuses, a close with the stated code; the server process stays up and its memory
bounded; and a well-behaved session beside the fuzzing keeps getting correct replies throughout.
The bulk runs against the scripted backend (fast and exact); a smaller share against the real embedded models.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.engine.engine_process import EngineProcess
from tests.engine.fuzz_driver import Companion, FuzzTally, run_closing, run_flood, run_lockstep
from tests.engine.fuzz_events import FuzzEvents, closing_cases, oversized_cases
from tests.engine.realtime_client import RealtimeTestClient
from tests.engine.scripted_backend import ScriptedBackend

TOKEN = "fuzz-token"
SCRIPTED_REPLY = " ".join(ScriptedBackend().phrases)
MIB = 1024 * 1024
# Server RSS growth allowed from after a warm-up pass (and a first reply) to the end; the fuzzed events total
# ~300 MB. With the real models RSS also grows with replies alone, within fixed bounds (llama.cpp's KV cache
# pages become resident as conversations lengthen, in each slot a session replies in): the companion alone grew
# 15.5 MiB in 15 replies; with the fuzzing beside it, 14-40 MiB was measured.
SCRIPTED_RSS_LIMIT_MIB = 16
REAL_RSS_LIMIT_MIB = 96


def flood_events(prefix: str, count: int) -> list[str]:
    return [json.dumps({"type": "response.cancel", "event_id": f"{prefix}_{i}"}) for i in range(count)]


async def fuzz(server: EngineProcess, *, seed: int, cases: int, flood: int, unread_flood: int,
               expected_reply: str | None, warm_up: int) -> dict:
    companion = Companion(server.url, TOKEN, expected_reply)
    beside = asyncio.create_task(companion.run())
    await run_lockstep(server.url, TOKEN, FuzzEvents(seed + 1000).cases(warm_up), FuzzTally())  # allocator warm-up
    await asyncio.wait_for(companion.first_reply.wait(), 120)  # and the models' first reply
    rss_before = server.rss_bytes()
    replies_before = companion.replies_ok
    tally = FuzzTally()
    await run_lockstep(server.url, TOKEN, FuzzEvents(seed).cases(cases), tally)
    await run_lockstep(server.url, TOKEN, oversized_cases(), tally)
    for _, payload, as_text, code in closing_cases():
        await run_closing(server.url, TOKEN, payload, as_text, code, tally)
    generated = tally.hostile_sent
    await run_flood(server.url, TOKEN, flood_events("flood", flood), tally)

    peak = [server.rss_bytes()]

    async def watch_memory() -> None:
        while True:
            peak.append(server.rss_bytes())
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_memory())
    await run_flood(server.url, TOKEN, flood_events("unread", unread_flood), tally, read_delay_s=3.0)
    watcher.cancel()
    rss_after = server.rss_bytes()
    replies_during = companion.replies_ok - replies_before
    companion.stop()
    await asyncio.wait_for(beside, 120)
    after_all = await RealtimeTestClient.connect(server.url, TOKEN)  # still accepting sessions
    await after_all.close()
    return {
        "events_sent": tally.hostile_sent, "generated_events_sent": generated,
        "flood_events_sent": tally.hostile_sent - generated, "setup_events_sent": tally.setup_sent,
        "errors_returned": tally.errors,
        "closes": {str(code): n for code, n in tally.closes.items()}, "unanswered": tally.unanswered,
        "failures": tally.failures[:20], "error_codes": dict(tally.codes.most_common()),
        "categories": dict(tally.categories.most_common()),
        "rss_before_mib": round(rss_before / MIB, 1), "rss_after_mib": round(rss_after / MIB, 1),
        "rss_peak_unread_flood_mib": round(max(peak) / MIB, 1),
        "companion_replies_ok": companion.replies_ok, "companion_replies_during_fuzzing": replies_during,
        "companion_failures": companion.failures[:5],
        "companion_reply_p50_s": round(sorted(companion.latencies)[len(companion.latencies) // 2], 3),
        "server_alive": server.alive,
    }


def check(figures: dict, *, min_generated: int, min_flood: int, min_replies: int, rss_limit_mib: float) -> None:
    print("fuzz figures:", json.dumps(figures))
    assert figures["failures"] == [], figures["failures"]
    assert figures["generated_events_sent"] >= min_generated and figures["flood_events_sent"] >= min_flood
    assert figures["unanswered"] == 0
    assert figures["errors_returned"] + sum(figures["closes"].values()) == figures["events_sent"]
    assert figures["closes"] == {"1007": 1, "1009": 1}  # invalid UTF-8; past the transport's size limit
    assert "server_error" not in figures["error_codes"]
    assert figures["server_alive"]
    assert figures["companion_failures"] == [] and figures["companion_replies_during_fuzzing"] >= min_replies
    assert figures["rss_after_mib"] - figures["rss_before_mib"] < rss_limit_mib, figures
    # A client that floods and does not read is not read either: the server does not buffer its answers.
    assert figures["rss_peak_unread_flood_mib"] - figures["rss_before_mib"] < rss_limit_mib, figures


async def test_fuzzing_the_server_on_the_scripted_backend():
    with EngineProcess(["-m", "tests.engine.scripted_server", "--token", TOKEN]) as server:
        figures = await fuzz(server, seed=7, cases=1500, flood=5000, unread_flood=50_000,
                             expected_reply=SCRIPTED_REPLY, warm_up=300)
        check(figures, min_generated=1500, min_flood=55_000, min_replies=10, rss_limit_mib=SCRIPTED_RSS_LIMIT_MIB)
        assert server.stop() == 0  # and it still shuts down cleanly


@pytest.mark.slow
async def test_fuzzing_the_server_on_the_real_embedded_models():
    """A smaller share against the real models (smallest LLM): every event still parsed by the same code,
    but the session beside it gets real spoken replies, and the real backend's memory is watched."""
    with EngineProcess(["-m", "engine", "serve", "--port", "0", "--token", TOKEN,
                        "--llm", "smollm2-135m-instruct", "--seed", "1"]) as server:
        figures = await fuzz(server, seed=11, cases=150, flood=1000, unread_flood=10_000, expected_reply=None,
                             warm_up=50)
        check(figures, min_generated=150, min_flood=11_000, min_replies=1, rss_limit_mib=REAL_RSS_LIMIT_MIB)
        assert server.stop() == 0
