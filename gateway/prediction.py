"""OpenAI's Predicted Outputs: a request's ``prediction``, the text its output is expected to
repeat (an edited file's unchanged parts, say). Grove's lookahead drafts from it as from the
request's own text (engine.lookahead.drafter); the output is the model's either way, and usage's
``accepted_prediction_tokens`` / ``rejected_prediction_tokens`` count the draft tokens that did
and did not reach it."""
from __future__ import annotations

from typing import Any

from engine.errors import InvalidRequestError


def prediction_from_body(body: dict[str, Any]) -> str | None:
    """OpenAI's Predicted Outputs, ``{"type": "content", "content": text or text parts}``: the
    text the output is expected to repeat (lookahead drafts from it), or None."""
    pred = body.get("prediction")
    if pred is None:
        return None
    content = pred.get("content") if isinstance(pred, dict) and pred.get("type") == "content" else None
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise InvalidRequestError("prediction", 'must be {"type": "content", "content": a string or text parts}')
    return content
