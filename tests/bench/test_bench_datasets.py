"""Each dataset loader returns real records from its package file, with checked counts."""
from __future__ import annotations

import ast
import json
import re

import pytest

from bench.datasets import DATASETS, load_prompts
from bench.datasets.code_edit import EDITS
from bench.datasets.json_extract import SCHEMA
from bench.datasets.files import sharegpt_path, shakespeare_path
from bench.datasets.jsonl import write_prompts
from bench.datasets.multiturn import SYSTEM_PROMPT, multiturn_prompts
from bench.datasets.shakespeare import LINES_PER_PASSAGE, quote_prompts
from bench.datasets.sharegpt import first_turn_prompts, iter_records

SHAREGPT_COMPLETE = 17_671  # complete conversations before the file's truncated tail
SHAREGPT_FIRST_TURNS = 11_139  # those starting with a non-empty user turn
MULTITURN_SESSIONS = 7_521  # those with at least two user turns (alternating roles)


@pytest.fixture(scope="module")
def sharegpt_records() -> list[dict]:
    return list(iter_records())


def test_sharegpt_reads_every_complete_record_of_the_truncated_file(sharegpt_records: list[dict]) -> None:
    assert len(sharegpt_records) == SHAREGPT_COMPLETE
    # the file really is cut off: plain json cannot read it
    with pytest.raises(json.JSONDecodeError):
        json.loads(sharegpt_path().read_text(encoding="utf-8"))
    assert sharegpt_records[0]["id"] == "QWJhYvA_0"
    assert all("conversations" in r for r in sharegpt_records)


def test_sharegpt_reader_is_independent_of_chunk_boundaries(tmp_path) -> None:
    # Real records, written whole and then one cut in half; tiny chunks split every record.
    records = list(zip(range(6), iter_records()))
    whole = [r for _, r in records[:5]]
    cut = json.dumps(records[5][1])
    path = tmp_path / "part.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r, indent=2) for r in whole) + ",\n" + cut[: len(cut) // 2])
    assert list(iter_records(path, chunk_chars=97)) == whole
    path.write_text(json.dumps(whole))  # a complete file ends at "]"
    assert list(iter_records(path, chunk_chars=50)) == whole


def test_sharegpt_first_turns(sharegpt_records: list[dict]) -> None:
    prompts = first_turn_prompts()
    assert len(prompts) == SHAREGPT_FIRST_TURNS
    expected = sum(1 for r in sharegpt_records if r["conversations"]
                   and r["conversations"][0]["from"] in ("human", "user") and r["conversations"][0]["value"].strip())
    assert len(prompts) == expected
    assert prompts[0].messages == (("user", sharegpt_records[0]["conversations"][0]["value"]),)
    assert prompts[0].messages[0][1].startswith("Summarize the main ideas of Jeff Walker's Product Launch Formula")
    assert all(p.kind == "chat" and len(p.messages) == 1 for p in prompts)
    assert len({p.id for p in prompts}) == len(prompts)


def test_multiturn_sessions_share_prefixes() -> None:
    prompts = multiturn_prompts()
    sessions: dict[str, list] = {}
    for p in prompts:
        sessions.setdefault(p.session, []).append(p)
    assert len(sessions) == MULTITURN_SESSIONS
    assert len(prompts) == 24_967
    for turns in sessions.values():
        assert [p.turn for p in turns] == list(range(len(turns))) and 2 <= len(turns) <= 4
        for prev, cur in zip(turns, turns[1:]):
            # turn t resends turn t-1's prompt, the assistant's reply and a new user message
            assert cur.messages[: len(prev.messages)] == prev.messages
            assert [r for r, _ in cur.messages[len(prev.messages):]] == ["assistant", "user"]
        assert turns[0].messages[0] == ("system", SYSTEM_PROMPT)


def test_humaneval_completion_prompts() -> None:
    prompts = load_prompts("humaneval")
    assert len(prompts) == 164
    assert prompts[0].id == "HumanEval/0" and prompts[0].kind == "completion"
    assert "def has_close_elements(numbers: List[float], threshold: float) -> bool:" in prompts[0].text


def _code(prompt) -> str:
    return re.search(r"```python\n(.*)\n```", prompt.messages[0][1], re.S).group(1)


def test_code_edit_prompts_quote_whole_solutions() -> None:
    prompts = load_prompts("code-edit")
    assert len(prompts) == 164 * len(EDITS)
    for p in prompts:
        edit = p.id.rsplit("/", 1)[1]
        tree = ast.parse(_code(p))  # the quoted code is valid Python
        funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        assert funcs and any(isinstance(n, ast.Return) for n in ast.walk(tree)), p.id  # the solution is there
        if edit == "type-hints":
            assert all(a.annotation is None for f in funcs for a in f.args.args) and all(f.returns is None for f in funcs)
        elif edit == "docstring":
            assert all(ast.get_docstring(f) is None for f in funcs), p.id
        else:
            assert edit == "rename"
            name = re.search(r"`(\w+)` renamed to `(\w+)`", p.messages[0][1]).group(1)
            assert name in {f.name for f in funcs}


def test_shakespeare_quote_prompts() -> None:
    lines = shakespeare_path().read_text(encoding="utf-8").splitlines()
    prompts = quote_prompts()
    assert len(prompts) == len(lines) // LINES_PER_PASSAGE == 2230
    for k in (0, 1, 1000, 2229):
        content = prompts[k].messages[0][1]
        passage = lines[k * LINES_PER_PASSAGE:(k + 1) * LINES_PER_PASSAGE]
        assert f"1| {passage[0]}\n" in content and f"{LINES_PER_PASSAGE}| {passage[-1]}\n" in content
        asked = re.search(r"Quote lines (\d+) to (\d+)", content)
        if asked:
            assert 1 <= int(asked.group(1)) <= int(asked.group(2)) <= LINES_PER_PASSAGE
        else:
            word = re.search(r'contains the word "(\w+)"', content).group(1)
            assert any(word in line.split() for line in passage)


def test_jsonl_prompts(tmp_path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "def add(a, b):", "max_tokens": 8}\n\n'
                    '{"id": "c", "messages": [{"role": "user", "content": "hi"}], "session": "s", "turn": 1}\n')
    first, second = load_prompts(f"jsonl:{path}")
    assert first.text == "def add(a, b):" and first.max_tokens == 8 and first.id == "mine.jsonl:1"
    assert second.messages == (("user", "hi"),) and second.session == "s" and second.turn == 1
    path.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(ValueError, match="mine.jsonl:1"):
        load_prompts(f"jsonl:{path}")


@pytest.mark.parametrize("name", ["code-edit", "shakespeare-quote", "sharegpt", "multiturn", "json-extract"])
def test_datasets_written_as_jsonl_read_back_equal(tmp_path, name: str) -> None:
    """What a machine without the dataset packages runs on (a lent GPU): the same prompts."""
    prompts = load_prompts(name)[:12]
    write_prompts(tmp_path / "p.jsonl", prompts)
    assert load_prompts(f"jsonl:{tmp_path / 'p.jsonl'}") == prompts


def test_unknown_dataset_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_prompts("imagenet")
    assert set(DATASETS) == {"sharegpt", "humaneval", "code-edit", "shakespeare-quote", "multiturn", "json-extract"}


def test_json_extract_asks_for_what_its_schema_holds() -> None:
    """Each prompt quotes a HumanEval function and the schema its answer runs under."""
    prompts = load_prompts("json-extract")
    assert len(prompts) == 164 and len({p.id for p in prompts}) == 164
    text = prompts[0].messages[0][1]
    assert json.dumps(SCHEMA) in text and "def has_close_elements(" in text
