"""Soak: an hour of conversation, simulated at accelerated time, through the real engine and the app's
own controller, engine link, microphone router and saved history (app/bench/soak.py says what is
accelerated). Memory must not grow and replies must not slow down as the conversation gets long.

Run as a user runs it (`confide bench --soak --json`, a child process), so the app-side figures are a
fresh process's, not pytest's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIMULATED_MINUTES = 60  # the whole hour: ~8 minutes of wall time on two cores
RSS_GROWTH_LIMIT_PERCENT = 5.0  # the bound, for the engine and the app alike
# The bound holds on the second half-hour: the engine's memory rises in steps of ~30 MB as the
# conversation first reaches a longer prompt (minutes 11 and 33 in one run, the prompt's longest then), so
# from minute 10 it grew by 3.1, 5.2, 2.9 and 5.9% in four runs, and by 1.1, 1.9 and 3.0% over the second
# half (the app: under 1% either way). A leak grows with the turns and shows in both; over the whole hour
# from minute 10 it still must stay under WARM_GROWTH_LIMIT_PERCENT.
WARM_GROWTH_LIMIT_PERCENT = 10.0
# The last ten minutes' median against the first ten's: the model's attention over a full context
# (reached within the hour) costs a little more per token. Not the p95: over ~20 turns it is the one or
# two slowest, and one CI run on a shared two-core machine had it at 2.14 with the median at 1.00 (both
# are reported, and in the README).
DRIFT_LIMIT = 1.5


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_an_hour_of_conversation_leaks_no_memory_and_does_not_slow_down(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "app", "bench", "--soak", "--soak-minutes", str(SIMULATED_MINUTES), "--seed", "7",
         "--json", "--work-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=1400, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    summary = {key: value for key, value in figures.items() if key not in ("rss_samples", "turn_log")}
    print(json.dumps(summary, indent=1))

    assert figures["simulated_minutes"] >= SIMULATED_MINUTES
    # Before the last turn at most an idle stretch (<= 4 min), a pause and a reply: one CI run's last turn
    # started at 57.8 min and its idle stretch after the reply ran past the hour.
    assert figures["last_turn_at_simulated_min"] >= SIMULATED_MINUTES - 5
    assert figures["errors"] == 0, (figures["engine_errors"], figures["app_error_messages"])
    assert figures["unanswered"] == 0
    assert figures["state_at_end"] == "listening"
    assert figures["interruptions"] >= 10 and figures["screen_questions"] >= 1 and figures["turns"] >= 60

    assert figures["rss_second_half_from_simulated_min"] <= SIMULATED_MINUTES / 2 + 2
    assert figures["engine_rss_growth_percent_second_half"] < RSS_GROWTH_LIMIT_PERCENT
    assert figures["app_rss_growth_percent_second_half"] < RSS_GROWTH_LIMIT_PERCENT
    assert figures["engine_rss_growth_percent"] < WARM_GROWTH_LIMIT_PERCENT
    assert figures["app_rss_growth_percent"] < WARM_GROWTH_LIMIT_PERCENT
    assert figures["app_threads_at_end"] == figures["app_threads_after_warm_up"]
    assert figures["app_replies_tracked_at_end"] == 0  # every reply settled, cut ones included

    assert figures["spoken_turns_first_10min"] >= 8 and figures["spoken_turns_last_10min"] >= 8
    assert figures["p50_ratio_last_to_first"] <= DRIFT_LIMIT, summary

    # The model's context is bounded (a prompt never outgrows the slot), while the stored conversation
    # and the saved history hold every turn.
    assert figures["llm_prompt_tokens_max"] < 4096
    assert figures["engine_conversation_items"] > figures["turns"]
    assert figures["history_turns_saved"] >= figures["turns"]
