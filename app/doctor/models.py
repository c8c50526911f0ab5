"""Models: every file the engine will load is there and matches its pinned SHA-256 (re-hashed, ~1 s per GB).

Run through the engine's own first-run module in a child process (`--verify --json`): the app never
imports the engine, and in the bundle the same command line reaches the bundled engine.
"""

from __future__ import annotations

import json
import subprocess
import sys

from app.doctor.result import Check, fail, frozen, ok, reinstall_advice, warn

VERIFY_TIMEOUT_S = 300


def verify_command(llm: str = "") -> list[str]:
    return [sys.executable, "-m", "engine.models.first_run", "--verify", "--json", *(["--llm", llm] if llm else [])]


def check_models(llm: str = "") -> list[Check]:
    try:
        result = subprocess.run(verify_command(llm), capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return [fail("models", f"checking the models took over {VERIFY_TIMEOUT_S} s", "Check the disk (is it "
                     "very slow or failing?) and run `confide doctor --check models` again.")]
    report = next((json.loads(line) for line in result.stdout.splitlines() if '"verify"' in line), None)
    if report is None:
        reason = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        return [fail("models", f"the models could not be checked: {reason}", reinstall_advice().capitalize() + ".")]
    checks = []
    problems = [row for row in report["checks"] if row["status"] in ("missing", "mismatch")]
    for row in problems:
        checks.append(fail("models", _problem_summary(row), _fix(row, report["remedies"].get(row["model_id"], ""))))
    unpinned = [row for row in report["checks"] if row["status"] == "unpinned"]
    if unpinned:
        names = ", ".join(sorted({row["model_id"] for row in unpinned}))
        checks.append(warn("models", f"{names}: no checksum is recorded, so the files cannot be verified",
                           "Nothing to do unless answers look wrong; then fetch the model again."))
    if not problems:
        good = [row for row in report["checks"] if row["status"] == "ok"]
        models = sorted({row["model_id"] for row in good})
        checks.insert(0, ok("models", f"{len(good)} files of {len(models)} models match their SHA-256 "
                                      f"({', '.join(models)})"))
    return checks


def _problem_summary(row: dict) -> str:
    where = row.get("assembled_copy") or row["name"]
    if row["status"] == "missing":
        return f"{row['model_id']}: {row['name']} is missing"
    return f"{row['model_id']}: {where} is damaged ({row['detail']})"


def _fix(row: dict, remedy: str) -> str:
    if row.get("assembled_copy"):
        return (f"Delete the damaged copy: rm '{row['assembled_copy']}' — Confide rebuilds it from the installed "
                "parts at its next start (or now: `confide setup`).")
    if row.get("source") == "package" or (row["status"] == "missing" and frozen()):
        return reinstall_advice().capitalize() + "." if frozen() else remedy[0].upper() + remedy[1:] + "."
    return remedy[0].upper() + remedy[1:] + "." if remedy else "Fetch the model again."
