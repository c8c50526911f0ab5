"""`confide`: the tray app, or a command for the one already running.

    confide                 start Confide (a second start just shows the running one)
    confide --toggle        show or hide the window      (bind these in the desktop's shortcut
    confide --ask-screen    ask about the screen          settings where global hotkeys are not
    confide --stop          stop speaking                 available: Wayland, macOS)
    confide bench [--json]  measure the real app on a virtual desktop (developer tool, source checkout)
"""

from __future__ import annotations

import argparse
import logging
import sys

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="confide", description="Confide: a local voice assistant in your tray.")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--toggle", dest="command", action="store_const", const="toggle",
                         help="show or hide the running Confide's window")
    actions.add_argument("--ask-screen", dest="command", action="store_const", const="ask-screen",
                         help="ask the running Confide about the screen")
    actions.add_argument("--stop", dest="command", action="store_const", const="stop",
                         help="make the running Confide stop speaking")
    actions.add_argument("--quit", dest="command", action="store_const", const="quit",
                         help="quit the running Confide")
    parser.add_argument("--engine-url", help="use this Realtime server instead of starting the local engine")
    parser.add_argument("--token", help="the token for --engine-url")
    parser.add_argument("--llm", help="language model id for the local engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # a developer tool with options of its own
        from app.bench.command import main as bench

        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from PySide6.QtWidgets import QApplication

    from app.instance import SingleInstance, default_server_name, send_command

    if args.command:
        if send_command(default_server_name(), args.command):
            return 0
        print("Confide is not running. Start it with `confide`.", file=sys.stderr)
        return 1

    qt_app = QApplication(sys.argv[:1])
    qt_app.setApplicationName("Confide")
    qt_app.setQuitOnLastWindowClosed(False)  # closing the window leaves Confide in the tray
    instance = SingleInstance(default_server_name())
    if not instance.claim():
        send_command(default_server_name(), "show")
        print("Confide is already running; its window was brought up.", file=sys.stderr)
        return 0

    from app.confide_app import ConfideApp
    from app.history import ConversationHistory
    from app.settings import load_settings

    settings, warnings = load_settings()
    if args.engine_url:
        settings.engine.url, settings.engine.token = args.engine_url, args.token or settings.engine.token
    if args.llm:
        settings.engine.llm = args.llm
    history = ConversationHistory()
    warnings += history.load()
    confide = ConfideApp(settings, history)
    instance.command_received.connect(confide.handle_command)
    qt_app.aboutToQuit.connect(confide.shutdown)
    confide.start(warnings)
    return qt_app.exec()


if __name__ == "__main__":
    sys.exit(main())
