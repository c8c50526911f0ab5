"""`confide`: the tray app, or a command for the one already running.

    confide                 start Confide (a second start just shows the running one)
    confide --toggle        show or hide the window      (bind these in the desktop's shortcut
    confide --ask-screen    ask about the screen          settings where global hotkeys are not
    confide --stop          stop speaking                 available: Wayland, macOS)
    confide doctor          check devices, hotkeys, screen capture, models and the engine; say how to fix
    confide setup           get the models ready in the terminal (what the first start does, with a bar)
    confide bench [--json]  measure the real app on a virtual desktop (developer tool, source checkout)

On its first start Confide assembles (or downloads) the models it is missing before the engine starts,
in a progress window that can be cancelled; the next start continues where it stopped.
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
    if argv[:1] == ["doctor"]:
        from app.doctor.command import main as doctor

        return doctor(argv[1:])
    if argv[:1] == ["setup"]:
        return _setup_in_terminal(argv[1:])
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
    if settings.engine.url:  # a remote engine has its own models
        confide.start(warnings)
    else:
        _prepare_models_then(lambda: confide.start(warnings), settings.engine.llm, qt_app)
    return qt_app.exec()


def _prepare_models_then(start, llm: str, qt_app, quit=None) -> None:
    """First-run work (assembling or downloading models) in a progress window, then `start`. Cancelled, the
    app quits (exit code 3) and the next start resumes; failed, the window says why and it starts anyway
    (the engine's own message then says which model is missing)."""
    from app.first_run import EXIT_CANCELLED, ModelPreparation
    from app.ui.model_progress import ModelProgressDialog

    quit = quit or qt_app.exit
    preparation = ModelPreparation(llm, parent=qt_app)
    dialog = ModelProgressDialog()
    qt_app.setProperty("model_preparation", preparation)  # reachable by tests and the bench
    qt_app.setProperty("model_progress_dialog", dialog)

    def found(total_bytes: int) -> None:
        if total_bytes:
            dialog.show()

    def ready() -> None:
        dialog.close_quietly()
        start()

    def cancelled(message: str) -> None:
        dialog.close_quietly()
        print(f"Confide: model setup cancelled ({message}). Start Confide again to continue.", file=sys.stderr)
        quit(EXIT_CANCELLED)

    def failed(message: str) -> None:
        dialog.show_failure(message)
        logging.getLogger(__name__).warning("model setup failed: %s", message)
        start()

    preparation.work_found.connect(found)
    preparation.progress.connect(dialog.set_progress)
    preparation.ready.connect(ready)
    preparation.cancelled.connect(cancelled)
    preparation.failed.connect(failed)
    dialog.cancel_requested.connect(preparation.cancel)
    preparation.start()


def _setup_in_terminal(argv: list[str]) -> int:
    """`confide setup [--llm ID]`: the first run's model work with a terminal progress bar (Ctrl+C cancels,
    and the next run resumes)."""
    import subprocess

    from app.first_run import preparation_command

    parser = argparse.ArgumentParser(prog="confide setup", description=_setup_in_terminal.__doc__)
    parser.add_argument("--llm", default="", help="the language model to get ready (default: the default one)")
    args = parser.parse_args(argv)
    process = subprocess.Popen([part for part in preparation_command(args.llm) if part != "--json"])
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue  # the child got the same Ctrl+C: let it keep its place and say so


if __name__ == "__main__":
    sys.exit(main())
