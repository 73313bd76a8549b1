"""``grove generate``: one-shot or interactive generation with the engine alone (no services)."""
from __future__ import annotations

import argparse
import logging
import sys

from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.tokenizer import apply_chat_template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grove generate", description=__doc__)
    parser.add_argument("prompt", nargs="?", help="chat message (omit for an interactive session)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    EngineConfig.add_cli_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    engine = LLMEngine(EngineConfig.from_cli(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)

    def answer(text: str) -> None:
        ids = apply_chat_template(engine.tokenizer, [{"role": "user", "content": text}])
        engine.add_request(f"cli-{id(text)}-{len(ids)}", ids, params)
        while engine.has_work:
            for out in engine.step():
                sys.stdout.write(out.delta_text)
                sys.stdout.flush()
        sys.stdout.write("\n")

    if args.prompt:
        answer(args.prompt)
        return 0
    for line in sys.stdin:
        if line.strip():
            answer(line.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
