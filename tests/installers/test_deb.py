"""The Linux installer for real: PyInstaller builds the bundle, dpkg-deb the .deb, apt installs it, the
installed `confide` starts on the harness's desktop (a first run: fresh user folders, so the language model
is assembled from the bundled parts), its tray icon docks, a spoken question gets a spoken answer, and
`dpkg --purge` leaves nothing behind.

Needs root (dpkg installs system-wide): CI runs as root. ~1.5 min on 2 cores: PyInstaller ~45 s, dpkg-deb
~8 s, then the install, a first run and one spoken turn.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.harness.pulse import pulse_audio, sound_ms  # noqa: F401 (a fixture)
from tests.installers.installed_app import app_environment, launch, spoken_question_answer, write_settings
from tests.speakers import say

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREFIX = Path("/opt/confide")
HEAVY = ("torch", "transformers", "accelerate", "bitsandbytes", "torchvision", "torchaudio")
# Never imported by the app or the embedded engine: faster-whisper's package import would pull PyAV (FFmpeg,
# ~100 MB) and huggingface_hub's web stack.
UNUSED = ("faster_whisper", "av", "huggingface_hub", "hf_xet", "httpx2", "pydantic")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """installers/build-linux into a fresh folder: the bundle and the .deb."""
    out = tmp_path_factory.mktemp("installers")
    started = time.monotonic()
    result = subprocess.run([str(REPO / "installers" / "build-linux"), str(out)], cwd=REPO, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"build-linux failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    print(f"\nbuild-linux: {time.monotonic() - started:.0f} s\n{result.stdout}")
    return out


def bundle_modules(executable: Path) -> list[str]:
    """Every module name frozen into the bundle (the PYZ inside the executable's archive)."""
    from PyInstaller.archive.readers import pkg_archive_contents

    return pkg_archive_contents(str(executable))


def has_debug_info(library: Path) -> bool:
    sections = subprocess.run(["readelf", "--section-headers", "--wide", str(library)], capture_output=True,
                              text=True, check=True).stdout
    return " .debug_" in sections


def deb_of(out: Path) -> Path:
    (deb,) = out.glob("confide_*.deb")
    return deb


@pytest.mark.timeout(2400)
def test_the_bundle_holds_the_models_it_needs_and_nothing_it_never_loads(built):
    bundle = built / "dist" / "confide"
    files = [path.relative_to(bundle) for path in bundle.rglob("*")]
    heavy_files = [str(path) for path in files if any(part.split(".")[0] in HEAVY or part.startswith("libtorch")
                                                       for part in path.parts)]
    assert heavy_files == [], heavy_files[:20]
    modules = bundle_modules(bundle / "confide")
    assert "engine.cli" in modules and "app.main" in modules and "app.doctor.command" in modules
    assert [m for m in modules if m.split(".")[0] in HEAVY + UNUSED] == []
    top_level = [path.name for path in files if path.parent == Path("_internal")]
    assert [name for name in top_level if name.split(".")[0] in UNUSED] == []  # the package, NAME.libs
    # Libraries without debug information (build-linux strips it: ~170 MB that only a debugger reads).
    libraries = [bundle / path for path in files if path.suffix == ".so" or ".so." in path.name]
    assert len(libraries) > 100 and [str(path) for path in libraries if has_debug_info(path)] == []
    # espeak-ng's pronunciation dictionaries: only English's (the catalog's voices all speak English).
    assert sorted(path.name for path in files if path.name.endswith("_dict")) == ["en_dict"]
    assert [str(path) for path in files if path.suffix == ".qm"] == []  # Qt's translations: the app installs none
    # The default models travel inside it as their packages' files (the store finds them by package).
    names = {path.name for path in files}
    assert {"part01.bin", "part06.bin", "model.bin", "en_US-joe-medium.onnx", "silero_vad.onnx"} <= names
    size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6
    print(f"\nbundle: {size_mb:.0f} MB, .deb: {deb_of(built).stat().st_size / 1e6:.0f} MB")


@pytest.fixture(scope="module")
def asr():
    from engine.models.store import ModelStore
    from engine.speech.asr import WhisperAsr

    return WhisperAsr(ModelStore().resolve("whisper-tiny.en").directory)


@pytest.mark.timeout(2400)
def test_the_deb_installs_answers_a_spoken_question_and_uninstalls_cleanly(built, x_display, pulse_audio, asr,
                                                                          tmp_path):
    assert os.geteuid() == 0, "installing a .deb needs root (CI runs as root)"
    deb = deb_of(built)
    contents = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./opt/confide/confide", "./usr/bin/confide", "./usr/share/applications/confide.desktop",
                 "./usr/share/icons/hicolor/256x256/apps/confide.png", "./usr/share/confide/autostart/confide.desktop"):
        assert path in contents, path
    subprocess.run(["dpkg", "--purge", "confide"], capture_output=True)  # a leftover from an aborted run
    # As a person would: apt resolves the few system libraries it depends on (already there on this machine).
    install = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", str(deb)], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                             timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    try:
        installed = subprocess.run(["dpkg", "-L", "confide"], capture_output=True, text=True, check=True).stdout.split()
        assert Path("/usr/bin/confide").resolve() == PREFIX / "confide"

        env = app_environment(x_display, pulse_audio, tmp_path / "home")
        write_settings(env, "[conversation]\nhands_free = true\n")
        # The engine on its own and the doctor work from the installed bundle too (no Python of the system's).
        listing = subprocess.run(["/usr/bin/confide-engine", "models", "list"], env=env, capture_output=True,
                                 text=True, timeout=120)
        assert listing.returncode == 0 and "qwen2.5-coder-0.5b-instruct" in listing.stdout, listing.stderr
        doctor = subprocess.run(["/usr/bin/confide", "doctor", "--check", "models", "--check", "screen", "--json"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr[-3000:]
        app = launch("/usr/bin/confide", env, tmp_path / "confide.log")  # not a venv's confide on PATH
        try:
            tray_s = app.wait_for_tray_icon(x_display, timeout=300)  # after the first run's model assembly
            ready_s = app.wait_for_log("engine ready at", timeout=300, what="the engine to be ready")
            assert "preparing models" in app.log()
            assert list((Path(env["XDG_CACHE_HOME"]) / "confide" / "models").glob("*/*.gguf")), "no assembled model"
            time.sleep(2.0)  # the app connects and starts listening (hands-free) within moments of "ready"
            heard = spoken_question_answer(pulse_audio, say("What is two plus two?", "flite:slt"), 24_000)
            print(f"\ninstalled app, first run: tray icon {tray_s:.1f} s, engine ready {ready_s:.1f} s")
            assert sound_ms(heard, 48_000) > 500, f"nothing came out of the speaker:\n{app.log()[-3000:]}"
            import soxr

            reply = asr.transcribe(soxr.resample(heard, 48_000, 16_000).astype(np.float32), check_speech=False)
            assert "four" in re.findall(r"[a-z]+", reply.lower()) or " 4" in f" {reply}", reply
        finally:
            code = app.quit()
        assert code == 0, app.log()[-3000:]
    finally:
        purge = subprocess.run(["dpkg", "--purge", "confide"], capture_output=True, text=True)
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert not PREFIX.exists(), sorted(str(p) for p in PREFIX.rglob("*"))[:20]
    left = [path for path in installed if os.path.lexists(path) and not os.path.isdir(path)]
    assert left == [], left
    assert "install ok installed" not in subprocess.run(["dpkg-query", "-W", "-f=${Status}", "confide"],
                                                        capture_output=True, text=True).stdout
