"""The conversation history on disk: round trips, crashes mid-save, a really full disk, damaged files, and
re-seeding a real engine session so the conversation goes on after a restart."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from app import atomic_file as atomic_module
from app.engine_link.client import RealtimeLink
from app.history import ConversationHistory, Turn, default_history_path
from engine.assembly import detector_factory
from engine.realtime.server import RealtimeServer
from tests.app.test_engine_link import Recorder
from tests.app.test_settings import TRICKLE
from tests.engine.scripted_backend import ScriptedBackend

REPO = Path(__file__).resolve().parents[2]


def sample_history(path: Path) -> ConversationHistory:
    history = ConversationHistory(path)
    history.append("user", "What's the capital of Australia?", item_id="item_u1")
    history.append("assistant", "Canberra, not Sydney.", item_id="item_a1")
    history.append("user", "Read my screen — what does the error say?", item_id="item_u2", had_screenshot=True)
    history.append("assistant", "It says the disk is", item_id="item_a2", interrupted=True)
    return history


def test_a_turn_recorded_after_the_app_shut_down_is_saved_too(tmp_path):
    # An engine event still queued in the event loop at shutdown reaches the controller after the saver
    # closed (CI: "cannot schedule new futures after shutdown", and the reply's turn lost).
    from app.confide_app import _SavedHistory

    path = tmp_path / "history.json"
    errors: list[str] = []
    saved = _SavedHistory(ConversationHistory(path), lambda text, _error: errors.append(text))
    saved.record("user", "Wait, stop, that is enough.", "item_u1")
    saved.close()
    saved.record("assistant", "All right.", "item_a1")
    assert [t["text"] for t in json.loads(path.read_text(encoding="utf-8"))["turns"]] == [
        "Wait, stop, that is enough.", "All right."]
    assert not errors


def test_round_trip(tmp_path):
    path = tmp_path / "data" / "history.json"
    history = sample_history(path)
    history.save()
    loaded = ConversationHistory(path)
    assert loaded.load() == []
    assert loaded.turns == history.turns
    assert loaded.turns[2].had_screenshot and loaded.turns[3].interrupted
    assert all(datetime.fromisoformat(t.at).tzinfo is not None for t in loaded.turns)  # ISO 8601, with offset
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 1
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # what was said is the user's alone


def test_default_path_is_in_the_platform_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_history_path() == tmp_path / "confide" / "history.json"
    assert ConversationHistory().path == tmp_path / "confide" / "history.json"


def test_update_of_an_interrupted_reply(tmp_path):
    history = ConversationHistory(tmp_path / "history.json")
    history.append("user", "Tell me a long story.", item_id="item_u")
    history.append("assistant", "", item_id="item_a")
    assert history.update("item_a", text="Once upon a time there was a lighthouse")  # streaming on
    assert history.update("item_a", text="Once upon a time", interrupted=True)  # cut to what was heard
    assert not history.update("item_missing", text="x")
    history.save()
    loaded = ConversationHistory(tmp_path / "history.json")
    loaded.load()
    assert loaded.turns[-1] == Turn("assistant", "Once upon a time", history.turns[-1].at, "item_a", True, False)
    assert loaded.turns[0].text == "Tell me a long story." and not loaded.turns[0].interrupted


def test_record_adds_a_turn_or_brings_it_up_to_date(tmp_path):
    history = ConversationHistory(tmp_path / "history.json")
    history.record("user", "What's on my screen?", "item_u", had_screenshot=True)
    first = history.record("assistant", "A terminal", "item_a")
    history.record("assistant", "A terminal with a failing", "item_a")
    history.record("assistant", "A terminal", "item_a", interrupted=True)  # cut to what was heard
    assert [(t.role, t.text, t.item_id, t.interrupted, t.had_screenshot) for t in history.turns] == [
        ("user", "What's on my screen?", "item_u", False, True), ("assistant", "A terminal", "item_a", True, False)]
    assert history.turns[1].at == first.at  # a turn keeps the time it began


def test_a_transcript_that_comes_after_its_reply_goes_before_it(tmp_path):
    history = ConversationHistory(tmp_path / "history.json")
    history.record("user", "Hello", "item_1")
    history.record("assistant", "Hi, how can I help?", "item_2")
    history.record("assistant", "It will rain.", "item_4")  # its question's transcript is still on its way
    history.record("user", "Will it rain?", "item_3", after="item_2")
    history.record("user", "Thanks", "item_5", after="item_4")
    history.record("user", "Bye", "item_9", after="item_gone")  # not here (forgotten): at the end
    assert [t.item_id for t in history.turns] == ["item_1", "item_2", "item_3", "item_4", "item_5", "item_9"]


def test_oldest_turns_go_past_max_turns(tmp_path):
    history = ConversationHistory(tmp_path / "history.json", max_turns=3)
    for index in range(5):
        history.append("user", f"turn {index}")
    assert [t.text for t in history.turns] == ["turn 2", "turn 3", "turn 4"]
    with pytest.raises(ValueError):
        history.append("narrator", "no such role")


def test_save_is_durable_in_the_right_order(tmp_path, monkeypatch):
    """The data reaches the disk before the rename, and the rename reaches the disk before save returns."""
    path = tmp_path / "history.json"
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        kind = "folder" if os.path.isdir(f"/proc/self/fd/{descriptor}") else "file"
        calls.append(f"fsync {kind}")
        real_fsync(descriptor)

    def replace(source, target):
        calls.append("replace")
        real_replace(source, target)

    monkeypatch.setattr(atomic_module.os, "fsync", fsync)
    monkeypatch.setattr(atomic_module.os, "replace", replace)
    sample_history(path).save()
    assert calls == ["fsync file", "replace", "fsync folder"]


# --- crashes ----------------------------------------------------------------------------------------------

WRITER = TRICKLE + """
import sys
from pathlib import Path
from app.history import ConversationHistory

history = ConversationHistory(Path(sys.argv[1]))
history.load()
print("ready", flush=True)
while True:
    index = len(history)
    history.append("user" if index % 2 == 0 else "assistant", f"turn {index} " + "words " * 400)
    history.save()
"""


def test_a_writer_killed_mid_save_never_leaves_a_corrupt_history(tmp_path):
    path = tmp_path / "history.json"
    ConversationHistory(path).save()
    seen = 0
    mid_write_kills = 0
    for attempt in range(15):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=REPO)
        assert writer.stdout.readline() == b"ready\n"
        time.sleep(0.05 + 0.011 * attempt)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "history.json"]
        assert all(name.startswith(".history.json.") and name.endswith(".tmp") for name in leftovers)
        mid_write_kills += bool(leftovers)  # a temp file left behind: this kill landed mid-write
        history = ConversationHistory(path)
        assert history.load() == []  # whole and readable, every time
        turns = history.turns
        assert len(turns) >= seen  # a kill never loses what an earlier save had made durable
        assert all(t.text.startswith(f"turn {i} ") for i, t in enumerate(turns))
        seen = len(turns)
    assert seen > 15  # the writers did save, many times
    assert mid_write_kills >= 5, mid_write_kills
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]  # loading cleared the crash leftovers


# --- a full disk -------------------------------------------------------------------------------------------

DISK_FULL = """
import errno, json, os, shutil, sys
from pathlib import Path
from app.history import ConversationHistory, HistoryWriteError

folder = Path(sys.argv[1])
path = folder / "history.json"
history = ConversationHistory(path)
history.append("user", "Remember that my locker code is 4711.", item_id="item_1")
history.append("assistant", "Got it: 4711.", item_id="item_2")
history.save()
good = path.read_bytes()
report = {"free_before": shutil.disk_usage(folder).free}
history.append("user", "x" * 2_000_000, item_id="item_3")  # far more than the filesystem holds
try:
    history.save()
    report["raised"] = None
except HistoryWriteError as error:
    report.update(raised=type(error).__name__, errno=error.errno, message=str(error),
                  cause_errno=getattr(error.__cause__, "errno", None))
report["old_file_intact"] = path.read_bytes() == good
report["files"] = sorted(p.name for p in folder.iterdir())
report["free_after"] = shutil.disk_usage(folder).free
reloaded = ConversationHistory(path)
report["reload_warnings"] = reloaded.load()
report["reloaded"] = [t.text for t in reloaded.turns]
history.update("item_3", text="short again")
history.save()  # the space the failed temp file took was given back
reloaded = ConversationHistory(path)
reloaded.load()
report["after_recovery"] = [t.text for t in reloaded.turns]
print(json.dumps(report))
"""


def test_disk_full_raises_and_keeps_the_last_good_file(tmp_path):
    """A real ENOSPC: a 256 KiB tmpfs mounted in a private mount namespace (`unshare`, as root or through a
    user namespace), so nothing is mounted on the host and it vanishes with the process."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    command = ["unshare", "--mount", "--map-root-user", "sh", "-c",
               'mount -t tmpfs -o size=256k confide-full "$0" && exec "$1" -c "$2" "$0"',
               str(folder), sys.executable, DISK_FULL]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"could not run on a small filesystem: {run.stderr}"
    report = json.loads(run.stdout)
    print(f"\ndisk full: {report['message']}")
    assert report["raised"] == "HistoryWriteError"
    assert report["errno"] == report["cause_errno"] == errno.ENOSPC
    assert "the last saved history is unchanged" in report["message"]
    assert report["old_file_intact"]  # byte for byte
    assert report["files"] == ["history.json"]  # the temp file is gone
    assert report["free_after"] == report["free_before"]
    assert report["reload_warnings"] == []
    assert report["reloaded"] == ["Remember that my locker code is 4711.", "Got it: 4711."]
    assert report["after_recovery"] == ["Remember that my locker code is 4711.", "Got it: 4711.", "short again"]
    assert not any(folder.iterdir())  # the tmpfs lived only in the child's namespace


# --- damaged files -----------------------------------------------------------------------------------------

def damaged_versions(good: bytes) -> dict[str, bytes]:
    document = json.loads(good)
    missing_field = json.loads(good)
    del missing_field["turns"][1]["text"]
    bad_role = json.loads(good)
    bad_role["turns"][0]["role"] = "narrator"
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "binary": b"\x00\xff\xfe garbage",
        "not a history": json.dumps([1, 2, 3]).encode(),
        "future version": json.dumps({**document, "version": 99}).encode(),
        "missing field": json.dumps(missing_field).encode(),
        "bad role": json.dumps(bad_role).encode(),
        "wrong type": good.replace(b'"interrupted": true', b'"interrupted": "yes"'),
    }


@pytest.mark.parametrize("damage", ["truncated", "empty", "binary", "not a history", "future version",
                                    "missing field", "bad role", "wrong type"])
def test_a_damaged_file_gives_an_empty_history_a_warning_and_is_kept_aside(tmp_path, damage):
    path = tmp_path / "history.json"
    sample_history(path).save()
    content = damaged_versions(path.read_bytes())[damage]
    path.write_bytes(content)
    history = ConversationHistory(path)
    history.append("user", "left over from before load")
    warnings = history.load()
    assert len(warnings) == 1 and "damaged" in warnings[0] and "history.json.broken" in warnings[0], warnings
    assert history.turns == []
    assert (tmp_path / "history.json.broken").read_bytes() == content
    history.append("user", "starting afresh")  # and it works from there on
    history.save()
    again = ConversationHistory(path)
    assert again.load() == [] and [t.text for t in again.turns] == ["starting afresh"]


def test_a_missing_file_is_an_empty_history_without_warnings(tmp_path):
    history = ConversationHistory(tmp_path / "nothing-yet" / "history.json")
    assert history.load() == [] and history.turns == []


# --- re-seeding an engine session ------------------------------------------------------------------------

def test_conversation_items_have_the_realtime_shape(tmp_path):
    items = sample_history(tmp_path / "history.json").as_conversation_items()
    assert items[0] == {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "id": "item_u1",
        "content": [{"type": "input_text", "text": "What's the capital of Australia?"}]}}
    assert items[3]["item"]["content"] == [{"type": "output_text", "text": "It says the disk is"}]
    spoken = sample_history(tmp_path / "history.json").as_conversation_items(last=1, assistant_audio=True)
    assert [i["item"]["content"] for i in spoken] == [[{"type": "output_audio", "transcript": "It says the disk is"}]]


@pytest.fixture(scope="module")
def vad_detectors(model_store):
    return detector_factory(model_store)


async def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("assistant_audio", [False, True])
async def test_history_reseeds_a_fresh_engine_session(tmp_path, vad_detectors, assistant_audio):
    history = sample_history(tmp_path / "history.json")
    history.save()
    restored = ConversationHistory(tmp_path / "history.json")  # as after an app restart
    assert restored.load() == []

    backend = ScriptedBackend(phrases=("Sure.",))
    server = RealtimeServer(backend, vad_detectors, "seed-token")
    port = await server.start("127.0.0.1", 0)
    recorder = Recorder()
    link = RealtimeLink(recorder.on_event, recorder.on_status, recorder.on_audio)
    try:
        link.connect(f"ws://127.0.0.1:{port}/v1/realtime", "seed-token")
        await recorder.event("session.created")
        for event in restored.as_conversation_items(assistant_audio=assistant_audio):
            assert link.send(event)
        for turn in restored.turns:
            assert link.send({"type": "conversation.item.retrieve", "item_id": turn.item_id})
        await recorder.event("conversation.item.retrieved", nth=4)
        retrieved = [e["item"] for e in recorder.of_type("conversation.item.retrieved")]
        assert [i["id"] for i in retrieved] == ["item_u1", "item_a1", "item_u2", "item_a2"]
        assert [i["role"] for i in retrieved] == ["user", "assistant", "user", "assistant"]
        texts = [part.get("text") or part.get("transcript") for i in retrieved for part in i["content"]]
        assert texts == [t.text for t in restored.turns]
        assert not recorder.of_type("error")

        link.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "And what next?"}]}})
        link.send({"type": "response.create"})
        await recorder.event("response.done")
        context = [(t.role, t.text) for t in backend.requests[-1].turns]  # what the model was given
        assert context == [(t.role, t.text) for t in restored.turns] + [("user", "And what next?")]
    finally:
        await asyncio.to_thread(link.close)
        await server.stop()
