"""Phrase splitting of streamed reply text, and what of the text is spoken."""

from __future__ import annotations

import random

import pytest

from engine.speech.phrases import PhraseSplitter, is_abbreviation, speakable

REPLIES = [
    "Hello there, how are you today? I hope you're doing well.",
    "Sure thing, I can help with that. The capital of France is Paris, which is also its largest city.",
    "Pi is about 3.14 and e is about 2.72, roughly. About 1,000 people came, and 12,500.50 dollars were raised.",
    "Dr. Smith and Mr. Jones met at the U.S. Army base, e.g. at Fort Bragg, around 5 p.m. yesterday. It went well.",
    "Well... I guess so. Hmm… maybe not. Wait...really?",
    "Read https://docs.python.org/3/library/re.html for details, or see www.example.com/about. Thanks!",
    "**Sure!** Here's a list:\n\n- apples\n- *ripe* pears\n- plums\n\nEnjoy 😀!",
    "# Steps\n\n1. Open the app\n2. Click **Settings**\n3. Choose `Audio`\n\n> Tip: restart it after.",
    "Here is the code:\n\n```python\nprint('hello. world')\n```\n\nRun it with `python main.py`. Done.",
    "Use [the docs](https://example.com/docs) or ![a chart](chart.png) — both help. ~~Old~~ New.",
    "I think that we should probably go to the park later today if the weather stays nice and warm",
    "The years 1990–2000 were fine -- mostly. 2*3 is 6. Call __init__ first.",
    "Great job 🎉🎉! 👍🏽 Keep going ❤️ and smile.",
    " ".join(f"word{i}" for i in range(1, 61)),
    "This is a very long sentence, with a clause here, and another clause there, and yet another one "
    "following it, which keeps going on and on, until it finally, after many more words than anyone "
    "would like to hear in one breath, comes to an end.",
    "| Name | Age |\n|------|-----|\n| Ann  | 30  |\n\n---\n\nThat's the table.",
    "Yes. No. Maybe. I don't know. Ask again later.",
    "Okay",
]


def split(text: str, fragments: list[str] | None = None) -> list[str]:
    splitter = PhraseSplitter()
    phrases: list[str] = []
    for fragment in fragments if fragments is not None else [text]:
        phrases += splitter.push(fragment)
    return phrases + splitter.flush()


def random_fragments(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    fragments, index = [], 0
    while index < len(text):
        size = rng.randint(1, 7)
        fragments.append(text[index : index + size])
        index += size
    return fragments


@pytest.mark.parametrize("reply", REPLIES)
def test_phrases_join_to_the_speakable_reply_however_it_is_streamed(reply: str) -> None:
    whole = split(reply)
    by_char = split(reply, list(reply))
    assert by_char == whole
    for seed in range(5):
        assert split(reply, random_fragments(reply, seed)) == whole
    assert " ".join(whole) == speakable(reply)
    assert speakable(reply), "every reply above has something to say"


@pytest.mark.parametrize("reply", REPLIES)
def test_no_phrase_is_empty_or_loosely_spaced(reply: str) -> None:
    for phrase in split(reply, list(reply)):
        assert phrase.strip() == phrase and phrase
        assert "  " not in phrase and "\n" not in phrase


@pytest.mark.parametrize("reply", REPLIES)
def test_the_first_phrase_is_short_and_later_ones_bounded(reply: str) -> None:
    phrases = split(reply, list(reply))
    assert len(phrases[0].split()) <= 8  # 3, or a name or spoken URL that must not be cut
    assert all(len(phrase.split()) <= 20 for phrase in phrases)


def test_first_phrase_breaks_at_the_first_clause_with_two_words() -> None:
    assert split("Sure thing, I can help with that. It is easy.")[0] == "Sure thing,"
    assert split("Hello there! How are you?")[0] == "Hello there!"
    assert split("Well — I think so, yes.")[0] == "Well, I think"  # three words, no clause yet
    # One word is not enough: "Yes," goes on, to the next boundary or three words.
    assert split("Yes, that is right. Good.")[0] == "Yes, that is"
    assert split("Yes, right. Good.")[0] == "Yes, right."


def test_first_phrase_without_punctuation_is_cut_after_three_words() -> None:
    phrases = split("I think that we should probably go to the park later today if it stays warm")
    assert phrases[0] == "I think that"
    assert phrases[1].startswith("we should probably go")


def test_later_phrases_are_sentences_and_long_sentences_split_at_clauses() -> None:
    phrases = split(REPLIES[14])
    assert len(phrases) >= 3
    assert all(phrase.endswith((",", ".")) for phrase in phrases[1:])
    assert all(len(phrase.split()) <= 20 for phrase in phrases)
    # Short sentences after the first phrase stay whole.
    assert split("Hello there. Yes. No. Maybe later, then.") == [
        "Hello there.", "Yes.", "No.", "Maybe later, then."
    ]


def test_no_punctuation_at_all_is_cut_at_twenty_words() -> None:
    words = [f"word{i}" for i in range(1, 61)]
    phrases = split(" ".join(words), list(" ".join(words)))
    assert [len(p.split()) for p in phrases] == [3, 12, 20, 20, 5]
    assert " ".join(phrases).split() == words


def test_a_period_waits_for_the_next_character() -> None:
    splitter = PhraseSplitter()
    assert splitter.push("Pi is 3.") == []
    assert splitter.push("14") == []
    assert splitter.push(". ") == []
    assert splitter.push("N") == ["Pi is 3.14."]
    assert splitter.push("ext one") == []
    assert splitter.flush() == ["Next one"]


def test_clause_punctuation_is_released_without_waiting() -> None:
    splitter = PhraseSplitter()
    assert splitter.push("Hello there,") == []  # "there," may still grow ("there,x")
    assert splitter.push(" ") == ["Hello there,"]


@pytest.mark.parametrize(
    "reply, whole",
    [
        ("It costs 3.14 dollars. Done.", "3.14"),
        ("About 1,000 people came. Done.", "1,000"),
        ("Version 2.0.1 is out now. Done.", "2.0.1"),
        ("Dr. Smith is here now. Done.", "Dr. Smith"),
        ("The U.S. Army is big. Done.", "U.S. Army"),
        ("Fruit, e.g. Apples are fine. Done.", "e.g. Apples"),
        ("It was Mr. Jones again. Done.", "Mr. Jones"),
        ("J. R. R. Tolkien wrote it. Done.", "J. R. R. Tolkien"),
        ("Apple Inc. is big. Done.", "Inc. is"),
        ("See example.com/docs now. Done.", "example.com/docs"),
        ("Visit https://www.example.com/docs/intro today. Done.", "example dot com slash docs slash intro"),
    ],
)
def test_numbers_abbreviations_and_urls_stay_inside_one_phrase(reply: str, whole: str) -> None:
    for fragments in ([reply], list(reply), random_fragments(reply, 1)):
        phrases = split(reply, fragments)
        assert any(whole in phrase for phrase in phrases), phrases
        assert phrases[-1] == "Done."


def test_ellipses_are_spoken_as_pauses_and_never_split() -> None:
    assert speakable("Well... I guess so. Hmm… maybe. Wait...really?") == (
        "Well, I guess so. Hmm, maybe. Wait, really?"
    )
    assert split("So... what now?") == ["So, what now?"]


@pytest.mark.parametrize(
    "markdown, spoken",
    [
        ("**Bold** and *italic* and __strong__ and _em_.", "Bold and italic and strong and em."),
        ("# Title\nBody text.", "Title, Body text."),
        ("## Steps:\n- one\n- two\n* three\n+ four", "Steps: one, two, three, four"),
        ("1. Open it\n2. Close it", "1. Open it, 2. Close it"),
        ("> Quoted wisdom.\n> More.", "Quoted wisdom. More."),
        ("Run `ls -la` now.", "Run ls -la now."),
        ("Code:\n```bash\nrm -rf /tmp/x\necho done.\n```\nThat's it.", "Code: That's it."),
        ("See [the docs](https://example.com/docs).", "See the docs."),
        ("An image ![chart](a.png) here.", "An image chart here."),
        ("~~old~~ new", "old new"),
        ("Line one<br>line two", "Line one line two"),
        ("Go to <https://example.com>.", "Go to example dot com."),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "a b, 1 2"),
        ("Text\n\n---\n\nMore text", "Text, More text"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("2*3 = 6 & 50% more", "2 times 3 = 6 & 50% more"),
    ],
)
def test_markdown_is_not_spoken(markdown: str, spoken: str) -> None:
    assert speakable(markdown) == spoken
    assert " ".join(split(markdown, list(markdown))) == spoken


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("Great job 🎉🎉! Keep going ❤️ now", "Great job! Keep going now"),
        ("Thumbs 👍🏽 up", "Thumbs up"),
        ("Family 👨‍👩‍👧 time", "Family time"),
        ("Flag 🇫🇷 day", "Flag day"),
        ("A → B", "A B"),
        ("It is 25°C ©", "It is 25°C ©"),
        ("😀", ""),
    ],
)
def test_emoji_are_dropped(text: str, spoken: str) -> None:
    assert speakable(text) == spoken


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("Visit https://www.example.com.", "Visit example dot com."),
        ("Visit https://example.com/docs/getting-started now", "Visit example dot com slash docs slash getting started now"),
        ("Read https://docs.python.org/3/library/re.html#x", "Read docs dot python dot org"),
        ("Try http://localhost:8080/api?q=1, then stop.", "Try localhost slash api, then stop."),
        ("Go to www.github.com/openai!", "Go to github dot com slash openai!"),
        ("(see https://example.org)", "(see example dot org)"),
    ],
)
def test_urls_are_read_sensibly(text: str, spoken: str) -> None:
    assert speakable(text) == spoken


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("Well — I think so.", "Well, I think so."),
        ("Well - I think so.", "Well, I think so."),
        ("Well—I think so.", "Well, I think so."),
        ("From 1990–2000.", "From 1990 to 2000."),
        ("It is -5 degrees.", "It is -5 degrees."),
        ("A well-known fact.", "A well-known fact."),
        ("Really ? Yes !", "Really? Yes!"),
    ],
)
def test_dashes_and_loose_punctuation(text: str, spoken: str) -> None:
    assert speakable(text) == spoken


@pytest.mark.parametrize("reply", REPLIES)
def test_speakable_is_idempotent(reply: str) -> None:
    once = speakable(reply)
    assert speakable(once) == once


def test_flush_returns_the_rest_and_resets() -> None:
    splitter = PhraseSplitter()
    assert splitter.push("Hello there, how are") == ["Hello there,"]
    assert splitter.flush() == ["how are"]
    assert splitter.flush() == []
    # A fresh reply starts with a short first phrase again.
    assert splitter.push("Good morning, sunshine. ") == ["Good morning,"]
    assert splitter.flush() == ["sunshine."]


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "**", "- ", "😀 🎉", "```\ncode only\n```", "---"])
def test_nothing_speakable_gives_no_phrase(text: str) -> None:
    assert split(text, list(text)) == []
    assert speakable(text) == ""


def test_whole_reply_in_one_push_keeps_only_the_tail_for_flush() -> None:
    splitter = PhraseSplitter()
    pushed = splitter.push("First part here, then the rest. And the end.")
    assert pushed == ["First part here,", "then the rest."]
    assert splitter.flush() == ["And the end."]


def test_abbreviations() -> None:
    for word in ["Dr.", "mr.", "U.S.", "e.g.", "i.e.", "a.m.", "Ph.D.", "J.", "vs.", "(e.g.", "U.S.A."]:
        assert is_abbreviation(word), word
    for word in ["end.", "3.", "U.S.,", "Dr", "it.", "in.", "done!"]:
        assert not is_abbreviation(word), word
