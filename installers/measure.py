"""The figures README "Install" quotes, measured on the test harness's virtual desktop (Xvfb + tray host +
PulseAudio), with a fresh user each time:

- bundle_mb, deb_mb, installed_mb: the PyInstaller folder, the .deb file, what dpkg reports installed;
- first_run_*: the first start of a new user: the language model is assembled from the bundled parts
  (the progress window shows), then the tray icon docks and the engine gets ready;
- cold_start_*: a later start (models in the cache; a new process, the OS's file cache warm).

Times are from launching the executable, in seconds. Run from a source checkout after ./dev test's setup.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6, 1)


def start_once(executable: Path, env: dict, display, log_path: Path) -> dict:
    from tests.installers.installed_app import launch

    app = launch(str(executable), env, log_path)
    try:
        tray = app.wait_for_tray_icon(display, timeout=600)
        ready = app.wait_for_log("engine ready at", timeout=600, what="the engine to be ready")
    finally:
        app.quit()
    return {"tray_s": round(tray, 2), "engine_ready_s": round(ready, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="installers/measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "installers" / "dist" / "confide")
    parser.add_argument("--deb", type=Path, help="default: the newest build/installers/confide_*.deb")
    parser.add_argument("--json", action="store_true", help="JSON only")
    args = parser.parse_args()
    executable = args.bundle / "confide"
    if not executable.is_file():
        print(f"no bundle at {args.bundle}: run installers/build-linux first", file=sys.stderr)
        return 1
    debs = sorted((ROOT / "build" / "installers").glob("confide_*.deb"), key=os.path.getmtime)
    deb = args.deb or (debs[-1] if debs else None)

    from tests.harness.display import running_display
    from tests.harness.pulse import PulseHarness
    from tests.installers.installed_app import app_environment

    figures: dict = {"bundle_mb": folder_mb(args.bundle), "deb_mb": round(deb.stat().st_size / 1e6, 1) if deb else None}
    if deb:
        import subprocess

        control = subprocess.run(["dpkg-deb", "--field", str(deb), "Installed-Size"], capture_output=True, text=True)
        figures["installed_mb"] = round(int(control.stdout.strip() or 0) * 1024 / 1e6, 1)
    work = Path(tempfile.mkdtemp(prefix="confide-measure-"))
    with running_display(work / "display", tray=True) as display:
        pulse = PulseHarness().start()
        try:
            env = app_environment(display, pulse, work / "home")
            first = start_once(executable, env, display, work / "first.log")
            cold = start_once(executable, env, display, work / "cold.log")
        finally:
            pulse.stop()
    assembled = sum(p.stat().st_size for p in (Path(env["XDG_CACHE_HOME"]) / "confide" / "models").rglob("*.gguf"))
    figures.update({
        "first_run_to_tray_s": first["tray_s"], "first_run_to_engine_ready_s": first["engine_ready_s"],
        "cold_start_to_tray_s": cold["tray_s"], "cold_start_to_engine_ready_s": cold["engine_ready_s"],
        "first_run_assembled_mb": round(assembled / 1e6, 1), "cpu_cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    })
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
