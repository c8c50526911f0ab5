"""Telling the reply's own words, transcribed from the speakers' echo, from the person's. The echo cases
are what the engine transcribed on the harness's echo path (test_app_end_to_end.py has the real thing)."""

from __future__ import annotations

import pytest

from app.own_voice import is_own_words


@pytest.mark.parametrize("turn, heard", [
    ("They are combining", "Bread is baked by combining"),
    ("they I combining", "Bread is baked by combining"),
    ("to the market in the market in the market in the market", "A busy city market in the"),
    ("And it Mars is a good.", "The planet Mars is a"),
    ("It's a keeper.", "Once upon a time there lived a keeper"),
    ("House keeper a skill", "A lighthouse keeper, a skilled"),
    ("skipper and skilled", "A lighthouse keeper, a skilled"),
    ("the lighthouse keeper", "A lighthouse keeper, a skilled"),  # a person quoting it reads the same
])
def test_the_last_words_heard_are_its_own_voice(turn, heard):
    assert is_own_words(turn, heard)


@pytest.mark.parametrize("turn, heard", [
    ("Wait, stop, that is enough.", "A lighthouse keeper, a skilled"),
    ("what about the lighthouse", "A lighthouse keeper, a skilled"),  # one of its words, in four
    ("tell me more about the keeper", "A lighthouse keeper, a skilled"),
    ("a lot", "Mars has a lot"),  # too short to tell: the person's
    ("Bread is baked by combining", "Bread is baked by combining flour, water and yeast, then kneading it"),
    ("that is what I meant", "and that is"),  # two of its words, in five
    ("", "Bread is baked"),
    ("combining flour", ""),
])
def test_other_words_are_the_persons(turn, heard):
    assert not is_own_words(turn, heard)
