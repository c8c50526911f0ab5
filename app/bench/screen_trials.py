"""A question about the screen: known text is shown, the app is asked about the screen (as its hotkey
does), then the question is spoken. Timed from the end of the spoken question to the reply's first
sound; the answer's text is checked for the fact shown on screen."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtWidgets import QLabel

from app.bench.event_loop import run_for, run_until
from app.bench.spoken_lines import SpokenLine
from app.bench.spoken_turns import TurnTiming, speak_and_time_reply
from app.state import AppState


@dataclass(frozen=True)
class ScreenFact:
    shown: str  # the text on screen
    question: str  # asked aloud
    answer_words: tuple[str, ...]  # a correct answer holds one of these (lower case)


FACTS = (
    ScreenFact("Flight BA117 to Lisbon departs at 9:45 from gate 22.", "What gate does my flight leave from?",
               ("22", "twenty-two", "twenty two")),
    ScreenFact("Your dentist appointment is on Friday at 4 PM with Doctor Moreau.",
               "What day is my dentist appointment?", ("friday",)),
    ScreenFact("Wi-Fi network: Harbor Cafe. Password: seagull42", "What is the Wi-Fi password?", ("seagull",)),
)


@dataclass(frozen=True)
class ScreenTiming:
    turn: TurnTiming
    shown: str
    answer: str
    mentions_fact: bool


def _show(text: str) -> QLabel:
    label = QLabel(text)
    label.setStyleSheet("font-size: 28px; background: white; color: black; padding: 40px;")
    label.move(100, 100)
    label.show()
    run_until(lambda: label.windowHandle() is not None and label.windowHandle().isExposed(), 5, "the text on screen")
    run_for(0.2)  # painted, not only mapped
    return label


def screen_question(pulse, confide, probe, fact: ScreenFact, spoken: SpokenLine) -> ScreenTiming:
    controller, history = confide.controller, confide.history
    label = _show(fact.shown)
    try:
        turns_before = len(history.turns)
        confide.ask_about_screen()
        run_until(lambda: controller.state is AppState.LISTENING, 10, "listening for the screen question")
        run_for(0.3)  # the one-turn session update reaches the engine before the question does
        turn = speak_and_time_reply(pulse, confide, probe, spoken, AppState.IDLE)
        run_until(lambda: len(history.turns) > turns_before and history.turns[-1].role == "assistant", 30)
    finally:
        label.close()
    answer = history.turns[-1].text if len(history.turns) > turns_before else ""
    return ScreenTiming(turn, fact.shown, answer, any(word in answer.lower() for word in fact.answer_words))


def screen_questions(pulse, confide, probe, spoken: list[SpokenLine]) -> list[ScreenTiming]:
    confide.controller.set_hands_free(False)
    confide.window.hide()  # the screenshot shows the fact, not the conversation so far
    run_until(lambda: confide.controller.state is AppState.IDLE, 30, "push-to-talk")
    return [screen_question(pulse, confide, probe, FACTS[i % len(FACTS)], line) for i, line in enumerate(spoken)]
