"""What can be checked here of the Windows and macOS installers, which cannot be built here: the NSIS script
compiles with the real makensis (against a stand-in folder, since a Windows bundle needs Windows), and the
macOS Info.plist parses and says what macOS needs. Run on their systems, they are still untested."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_nsis_script_compiles(tmp_path):
    assert shutil.which("makensis"), "makensis is missing: apt-get install nsis (./dev test installs it)"
    bundle = tmp_path / "confide"
    bundle.mkdir()
    (bundle / "confide.exe").write_bytes(b"MZ stand-in")
    (bundle / "_internal").mkdir()
    (bundle / "_internal" / "python311.dll").write_bytes(b"stand-in")
    setup = tmp_path / "Confide-0.1.0-setup.exe"
    result = subprocess.run(["makensis", "-V2", "-DVERSION=0.1.0", f"-DBUNDLE={bundle}", f"-DOUTFILE={setup}",
                             "confide.nsi"], cwd=REPO / "installers" / "windows", capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert setup.stat().st_size > 10_000


def test_the_nsis_script_refuses_to_build_without_its_inputs(tmp_path):
    result = subprocess.run(["makensis", "-V2", "confide.nsi"], cwd=REPO / "installers" / "windows",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "/DVERSION" in result.stdout + result.stderr


def test_the_macos_info_plist_keeps_confide_in_the_menu_bar_and_explains_each_permission():
    info = plistlib.loads((REPO / "installers" / "macos" / "Info.plist").read_bytes())
    assert info["LSUIElement"] is True  # a menu-bar app: no Dock icon
    for key in ("NSMicrophoneUsageDescription", "NSScreenCaptureUsageDescription",
                "NSInputMonitoringUsageDescription"):
        assert len(info[key]) > 40, key
    assert info["CFBundleExecutable"] == "confide" and info["CFBundleIdentifier"] == "org.confide.Confide"
