"""How error messages name where in a JSON body a value is."""

from __future__ import annotations

import pytest

from shopgraph.graph.messages import key_path


@pytest.mark.parametrize(("where", "key", "path"), [
    ("", "user_ids", "user_ids"),
    ("items[3]", "title", "items[3].title"),
    ("exclude", "u001", "exclude.u001"),
    ("exclude", "u 001", "exclude['u 001']"),  # not a plain name: quoted, so the path reads one way
    ("exclude", "a.b", "exclude['a.b']"),
    ("exclude", "1abc", "exclude['1abc']"),
    ("exclude", "", "exclude['']"),
    ("", "x" * 50, "x" * 40 + "…"),
    ("", "\ud800", "'\\ud800'"),  # not valid Unicode: escaped, as a response body is UTF-8
])
def test_a_key_is_named_after_a_dot_when_plain_else_quoted_in_brackets(where: str, key: str, path: str) -> None:
    assert key_path(where, key) == path


def test_the_look_alike_character_is_named_before_a_letter_in_another_case() -> None:
    from shopgraph.graph.messages import did_you_mean, how_it_differs

    assert how_it_differs("U00021３", "u000213") == "ids must match exactly, and '３' is U+FF13 FULLWIDTH DIGIT THREE"
    assert how_it_differs("U000213", "u000213") == "ids are case-sensitive"
    assert "'３' is U+FF13" in did_you_mean({"u000213": 0}, "U00021３")
