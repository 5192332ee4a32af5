"""write_train's edits are one change to the file as it is: each `old` found there once, none overlapping."""

from __future__ import annotations

import pytest

from server.errors import InvalidInputError
from server.lab.edits import Edit, apply_edits


def test_an_edit_cannot_match_text_that_an_earlier_edit_wrote() -> None:
    with pytest.raises(InvalidInputError, match="edit 2: `old` matches nothing"):
        apply_edits("a = 1\nb = 2\n", [Edit("a = 1", "x = 1"), Edit("x = 1", "y = 1")])


def test_an_edit_is_found_in_the_file_before_the_others_change_it() -> None:
    edits = [Edit("alpha", "beta"), Edit("beta", "gamma")]  # applied in turn, the second would match twice
    assert apply_edits("alpha\nbeta\n", edits) == "beta\ngamma\n"
    assert apply_edits("alpha\nbeta\n", edits[::-1]) == "beta\ngamma\n"


def test_overlapping_edits_are_refused_naming_both() -> None:
    with pytest.raises(InvalidInputError, match="edits 1 and 3 overlap"):
        apply_edits("abcdef", [Edit("abcd", "X"), Edit("ef", "Z"), Edit("cdef", "Y")])


def test_adjacent_edits_both_apply() -> None:
    assert apply_edits("abcdef", [Edit("cd", "2"), Edit("ab", "1")]) == "12ef"
