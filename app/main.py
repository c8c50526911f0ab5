"""`confide`: the tray app's entry point."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "The Confide tray app is not built yet (it is the next issue).\n"
        "The engine is ready: run `confide-engine serve` and point any OpenAI Realtime client at\n"
        "ws://127.0.0.1:8765/v1/realtime, or try `confide-engine converse question.wav -o reply.wav`.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
