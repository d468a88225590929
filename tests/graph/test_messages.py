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
])
def test_a_key_is_named_after_a_dot_when_plain_else_quoted_in_brackets(where: str, key: str, path: str) -> None:
    assert key_path(where, key) == path
