"""The Responses API's stored responses (``store``, on by default as in OpenAI's API), kept in the
gateway's memory, the least recently used dropped past a bound: ``GET`` and ``DELETE
/v1/responses/{id}``, and ``previous_response_id``, which continues a stored response's
conversation (its input and earlier turns, and its answer; not its instructions, as OpenAI's API
does not carry them over). The conversation goes through the pipeline again as a prompt whose
earlier turns the prefix caches (the workers' and the kvstore's) already hold. Each gateway keeps
its own: behind several gateways, a client continues on the one that answered."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from engine.errors import InvalidRequestError

DEFAULT_SIZE = 1024  # responses kept


class ResponseNotFound(InvalidRequestError):
    """A response id this gateway does not hold (a 404)."""


@dataclass(frozen=True, slots=True)
class Stored:
    response: dict[str, Any]  # the Response object as it was returned
    conversation: tuple[dict[str, Any], ...]  # every turn up to and with its answer, as chat messages
    input_items: tuple[dict[str, Any], ...] = ()  # its request's input, as GET .../input_items lists it


class ResponseStore:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._kept: OrderedDict[str, Stored] = OrderedDict()

    def get(self, response_id: str, field: str = "response_id") -> Stored:
        stored = self._kept.get(response_id)
        if stored is None:
            raise ResponseNotFound(field, f"no response {response_id!r} is stored here (not stored, deleted, "
                                          "dropped for newer ones, or answered by another gateway)")
        self._kept.move_to_end(response_id)
        return stored

    def history(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The conversation a request continues: its ``previous_response_id``'s, or none."""
        previous = body.get("previous_response_id")
        if previous is None:
            return []
        if not isinstance(previous, str):
            raise InvalidRequestError("previous_response_id", "must be a string")
        return list(self.get(previous, "previous_response_id").conversation)

    def keep(self, response: dict[str, Any], conversation: list[dict[str, Any]], answer: dict[str, Any],
             input_items: Sequence[dict[str, Any]] = ()) -> None:
        """``answer``: the response's as a chat turn (its text, and its function calls)."""
        if self.size <= 0:
            return
        self._kept[response["id"]] = Stored(response, (*conversation, answer), tuple(input_items))
        self._kept.move_to_end(response["id"])
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    def delete(self, response_id: str) -> None:
        self.get(response_id)
        del self._kept[response_id]


def wants_store(body: dict[str, Any]) -> bool:
    """``store``: true unless the request says false (OpenAI's default)."""
    store = body.get("store", True)
    if not isinstance(store, bool):
        raise InvalidRequestError("store", "must be a boolean")
    return store
