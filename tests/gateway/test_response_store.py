"""The Responses API's store: bounded (least recently used dropped), conversations chained turn
by turn, and what it does not hold is a not-found naming the field."""
from __future__ import annotations

import pytest

from engine.errors import InvalidRequestError
from gateway.response_store import ResponseNotFound, ResponseStore, wants_store

USER = {"role": "user", "content": "Hi"}


def _said(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_the_least_recently_used_goes_first_past_the_bound() -> None:
    store = ResponseStore(size=2)
    for i in range(2):
        store.keep({"id": f"r{i}"}, [USER], _said(f"answer {i}"))
    store.get("r0")  # used: r1 is now the oldest
    store.keep({"id": "r2"}, [USER], _said("answer 2"))
    assert store.get("r0").response == {"id": "r0"} and store.get("r2")
    with pytest.raises(ResponseNotFound):
        store.get("r1")
    ResponseStore(size=0).keep({"id": "x"}, [USER], _said("a"))  # keeps nothing, fails nothing


def test_a_conversation_chains_and_a_missing_one_names_the_field() -> None:
    store = ResponseStore()
    store.keep({"id": "a"}, [USER], _said("Hello!"))
    turns = [*store.history({"previous_response_id": "a"}), {"role": "user", "content": "More"}]
    store.keep({"id": "b"}, turns, _said("Sure."))
    assert [m["content"] for m in store.history({"previous_response_id": "b"})] == ["Hi", "Hello!", "More", "Sure."]
    assert store.history({}) == []
    with pytest.raises(ResponseNotFound) as e:
        store.history({"previous_response_id": "zzz"})
    assert e.value.field == "previous_response_id"
    store.delete("a")
    with pytest.raises(ResponseNotFound):
        store.delete("a")
    assert store.get("b")  # a response continuing a deleted one keeps its own conversation


def test_store_is_a_boolean_true_by_default() -> None:
    assert wants_store({}) and not wants_store({"store": False})
    with pytest.raises(InvalidRequestError, match="boolean"):
        wants_store({"store": "no"})
