"""JSON extraction from HumanEval problems: the answer is a JSON object that quotes the function's
name, parameters and docstring from the prompt. Meant to run under ``SCHEMA`` (structured output):
a workload where the grammar fixes the keys and lookahead copies the values."""
from __future__ import annotations

import json
from pathlib import Path

from bench.datasets.humaneval import load_problems
from bench.records import Prompt

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "parameters": {"type": "array", "items": {"type": "string"}},
        "docstring": {"type": "string"},
    },
    "required": ["name", "parameters", "docstring"],
    "additionalProperties": False,
}


def extract_prompts(path: Path | None = None) -> list[Prompt]:
    ask = ("Describe the Python function below as a JSON object with its name, its parameter names and "
           f"its docstring copied word for word. The JSON schema: {json.dumps(SCHEMA)}")
    return [Prompt(id=f"json-extract/{p['task_id']}",
                   messages=(("user", f"{ask}\n\n```python\n{p['prompt'].rstrip()}\n```"),))
            for p in load_problems(path)]
