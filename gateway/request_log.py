"""vLLM's ``--enable-log-requests``: each request's arrival (its first ``--max-log-len`` prompt
token ids, its parameters) and its end (how it ended, with its timings) in the gateway's log."""
from __future__ import annotations

import logging

from engine.request import WorkRequest

logger = logging.getLogger(__name__)


def received(work: WorkRequest, max_log_len: int, params: object) -> None:
    """``params``: the request's sampling (or pooling) parameters."""
    ids = work.prompt_ids[:max_log_len]
    logger.info("Received request %s: prompt_token_ids: %s%s (%d), params: %s, priority: %d", work.request_id,
                list(ids), "..." if len(ids) < len(work.prompt_ids) else "", len(work.prompt_ids), params,
                work.priority)


def finished(request_id: str, outcome: str) -> None:
    logger.info("Finished request %s: %s", request_id, outcome)
