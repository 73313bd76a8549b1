"""``grove serve MODEL [flags]``: a ``vllm serve`` command line, run as the launcher's stack.

A user coming from vLLM keeps their command: the model first (a local folder; the bundled model by
its Hugging Face id, as nothing downloads from a hub here), served under that name as vLLM does,
and vLLM's flags:

- the launcher's own (``--port``, ``--served-model-name``, ``--max-model-len``, ``--max-num-seqs``,
  ``--dtype``, tools, reasoning, LoRA, sleep mode, ...): taken as they are;
- those one service takes (``--allowed-origins``, ``--ssl-*``, ``--enable-log-requests``,
  ``--max-num-batched-tokens``, ``--block-size``, ...): passed to it;
- ``--speculative-config`` with vLLM's n-gram method (or suffix decoding): Grove's lookahead,
  drafting up to its ``num_speculative_tokens`` deep; another method is refused;
- those that ask for what Grove always does, or that have no meaning for it: accepted, each with a
  warning saying why;
- those that ask for what Grove cannot do (tensor parallelism, quantization, another tokenizer,
  prefix caching off): refused, naming the flag and why. An unknown flag: the launcher's usage error.
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.paths import default_model_dir

logger = logging.getLogger(__name__)

# vLLM's flags that ask for what Grove always does or that mean nothing to it: (values, why)
IGNORED: dict[str, tuple[int, str]] = {
    "--trust-remote-code": (0, "Grove runs its own model code: nothing in the model's folder runs"),
    "--disable-log-requests": (0, "requests are logged only with --enable-log-requests"),
    "--enable-prefix-caching": (0, "prefix caching is always on (each worker's and the kvstore's)"),
    "--enable-chunked-prefill": (0, "prompts are always prefilled in chunks (--max-num-batched-tokens a step)"),
    "--disable-uvicorn-access-log": (0, "the gateway writes no access log"),
    "--disable-frontend-multiprocessing": (0, "the gateway is its own process"),
    "--uvicorn-log-level": (1, "the gateway logs at its --log-level"),
    "--gpu-memory-utilization": (1, "each worker's KV pool is sized by --kv-cache-gb"),
    "--swap-space": (1, "a preempted sequence is computed again, not swapped out"),
    "--seed": (1, "a request without a seed samples from fresh randomness: give requests their seed"),
    "--tokenizer-mode": (1, "the model folder's tokenizer is used as it is"),
    "--enable-prompt-tokens-details": (0, "the usage always gives prompt_tokens_details (cached tokens)"),
    "--disable-fastapi-docs": (0, "the gateway serves no docs pages"),
}
# vLLM's flags Grove cannot honour: (values, the value that asks for nothing, why)
_WHOLE_MODEL = "a worker holds the whole model: scale out with --prefill N --decode N"
REFUSED: dict[str, tuple[int, str | None, str]] = {
    "--tensor-parallel-size": (1, "1", _WHOLE_MODEL),
    "--pipeline-parallel-size": (1, "1", _WHOLE_MODEL),
    "--data-parallel-size": (1, "1", "replicas are workers: --prefill N --decode N"),
    "--quantization": (1, None, "Grove serves the checkpoint's weights in --dtype (float32 or bfloat16)"),
    "--kv-cache-dtype": (1, "auto", "the KV cache is kept in the model's --dtype"),
    "--tokenizer": (1, None, "the tokenizer is the model folder's"),
    "--no-enable-prefix-caching": (0, None, "the prefix cache is how prefill and decode share KV; give requests a "
                                            "cache_salt to keep them apart"),
    "--no-enable-chunked-prefill": (0, None, "prompts are always prefilled in chunks"),
}
# vLLM's flags a service of the stack takes as they are: (values, services)
SERVICES: dict[str, tuple[int, tuple[str, ...]]] = {
    "--allowed-origins": (1, ("gateway",)), "--allowed-methods": (1, ("gateway",)),
    "--allowed-headers": (1, ("gateway",)), "--allow-credentials": (0, ("gateway",)),
    "--ssl-keyfile": (1, ("gateway",)), "--ssl-certfile": (1, ("gateway",)), "--ssl-ca-certs": (1, ("gateway",)),
    "--ssl-cert-reqs": (1, ("gateway",)), "--enable-log-requests": (0, ("gateway",)),
    "--max-log-len": (1, ("gateway",)), "--override-generation-config": (1, ("gateway",)),
    "--enable-force-include-usage": (0, ("gateway",)), "--default-chat-template-kwargs": (1, ("gateway",)),
    "--trust-request-chat-template": (0, ("gateway",)), "--return-tokens-as-token-ids": (0, ("gateway",)),
    "--root-path": (1, ("gateway",)),
    "--max-num-batched-tokens": (1, ("worker",)), "--disable-log-stats": (0, ("worker",)),
    "--block-size": (1, ("worker", "gateway")),
}
SHORT = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size", "-dp": "--data-parallel-size",
         "-q": "--quantization"}  # vLLM's short forms
SPECULATIVE_METHODS = ("ngram", "suffix")  # drafts from text already seen: what lookahead does


class ServeError(ValueError):
    """A command line ``grove serve`` cannot run: the message names the flag and why."""


@dataclass
class Translation:
    argv: list[str]  # the launcher's
    notes: list[str] = field(default_factory=list)  # a warning each: flags taken without effect


def translate(args: list[str]) -> Translation:
    """``vllm serve``'s arguments (without ``serve``) as the launcher's."""
    rest = list(args)
    out = Translation([])
    extra: dict[str, list[str]] = {"gateway": [], "worker": [], "decode": []}
    model = rest.pop(0) if rest and not rest[0].startswith("-") else None
    named = False
    i = 0
    while i < len(rest):
        given, eq, inline = rest[i].partition("=")
        flag = SHORT.get(given, given)
        i += 1

        def values(n: int, flags_inside: bool = False) -> list[str]:
            nonlocal i
            if eq:
                if n == 0:
                    raise ServeError(f"{flag} takes no value")
                return [inline]
            got = rest[i:i + n]
            if len(got) < n or (not flags_inside and any(v.startswith("--") for v in got)):
                raise ServeError(f"{flag} needs a value")
            i += n
            return got

        if flag == "--model":
            model = values(1)[0]
        elif flag in IGNORED:
            n, why = IGNORED[flag]
            values(n)
            out.notes.append(f"{flag}: ignored, {why}")
        elif flag in REFUSED:
            n, harmless, why = REFUSED[flag]
            got = values(n)
            if harmless is None or got != [harmless]:
                raise ServeError(f"{' '.join([given, *got])}: Grove cannot, {why}")
        elif flag in SERVICES:
            n, services = SERVICES[flag]
            got = values(n)
            for s in services:
                extra[s] += [flag, *got]
        elif flag == "--speculative-config":
            extra["decode"] += _speculative(values(1)[0])
        elif flag in ("--gateway-args", "--worker-args", "--decode-args"):
            extra[flag[2:].split("-")[0]] += shlex.split(values(1, flags_inside=True)[0])
        else:
            named |= flag == "--served-model-name"
            out.argv.append(rest[i - 1])  # the launcher's flag, or a value of one: its parser reads them
    if model is not None:
        out.argv += _model(model, served_as=not named)
    for service, tokens in extra.items():
        if tokens:
            out.argv += [f"--{service}-args", shlex.join(tokens)]
    return out


def _model(model: str, served_as: bool) -> list[str]:
    """The launcher's --model for vLLM's model argument, served under that name as vLLM does."""
    path = Path(model).expanduser()
    bundled = default_model_dir()
    if path.is_dir():
        found = [str(path.resolve())]
    elif path.name == bundled.name:  # the bundled model by its hub id (HuggingFaceTB/SmolLM2-135M-Instruct)
        found = [str(bundled)]
    else:
        raise ServeError(f"model {model!r}: no such folder; Grove serves local Hugging Face folders "
                         f"(nothing downloads from a hub), or the bundled {bundled.name} by its name")
    return ["--model", *found, *(["--served-model-name", model] if served_as else [])]


def _speculative(text: str) -> list[str]:
    """vLLM's speculative config as the decode workers' lookahead flags."""
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ServeError(f"--speculative-config: not JSON ({e})") from None
    if not isinstance(config, dict) or config.get("method") not in SPECULATIVE_METHODS:
        method = config.get("method") if isinstance(config, dict) else None
        raise ServeError(f"--speculative-config: method {method!r}: Grove cannot, it drafts by lookahead from text "
                         f"already seen ({' or '.join(SPECULATIVE_METHODS)}), not with a draft model")
    depth = config.get("num_speculative_tokens")
    if depth is None:
        return ["--lookahead", "on"]
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ServeError(f"--speculative-config: num_speculative_tokens must be a positive integer, got {depth!r}")
    return ["--lookahead", "on", "--lookahead-max-depth", str(depth)]


def main(argv: list[str] | None = None) -> int:
    from launcher.__main__ import main as launch

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)  # noqa: T201
        return 0
    try:
        translated = translate(args)
    except ServeError as e:
        print(f"grove serve: {e}", file=sys.stderr)  # noqa: T201
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for note in translated.notes:
        logger.warning("%s", note)
    return launch(translated.argv)
