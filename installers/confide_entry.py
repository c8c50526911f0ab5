"""The bundle's one executable: the tray app, and the engine processes the app starts.

From source the app starts its children as `python -m engine ...` and `python -m engine.models.first_run ...`
with sys.executable. In the bundle sys.executable is this program, so it answers those same command lines;
everything else is the `confide` command.
"""

import os
import sys


def main() -> int:
    # A windowed build (Windows, the macOS .app) started from the desktop has no console: Python then sets
    # sys.stdout and sys.stderr to None, and the first log line or print would raise. Children started by
    # the app get pipes instead, so this only catches the desktop case.
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
    argv = sys.argv[1:]
    if argv[:1] == ["-m"] and len(argv) >= 2:
        module, rest = argv[1], argv[2:]
        if module == "engine":
            from engine.cli import main as run
        elif module == "engine.models.first_run":
            from engine.models.first_run import main as run
        else:
            print(f"confide: no module {module!r} in this bundle", file=sys.stderr)
            return 2
        sys.argv = [f"{sys.argv[0]} -m {module}", *rest]
        return run(rest)
    from app.main import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())
