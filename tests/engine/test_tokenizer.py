"""load_tokenizer: the class the model names, loaded without AutoTokenizer's model-config import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.tokenizer import apply_chat_template, load_tokenizer

TEXTS = ["hello world", "def f(x):\n    return x  # é 漢字 <|im_end|>", "  spaces\tand\nnewlines  "]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.parametrize("which", ["model_dir", "qwen_dir"])
def test_the_tokenizer_is_the_one_autotokenizer_gives(which: str, request: pytest.FixtureRequest) -> None:
    from transformers import AutoTokenizer

    model_dir = request.getfixturevalue(which)
    ours, auto = load_tokenizer(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    assert type(ours) is type(auto)
    for text in TEXTS:
        ids = ours(text)["input_ids"]
        assert ids == auto(text)["input_ids"]
        assert ours.decode(ids) == auto.decode(ids)
    assert apply_chat_template(ours, MESSAGES) == apply_chat_template(auto, MESSAGES)
    assert (ours.eos_token_id, ours.pad_token_id, len(ours)) == (auto.eos_token_id, auto.pad_token_id, len(auto))


def test_loading_the_tokenizer_does_not_import_the_model_stack(model_dir: Path) -> None:
    """What makes the gateway and workers start ~5 s sooner: no torch._dynamo behind the tokenizer."""
    code = (f"import sys; from engine.tokenizer import load_tokenizer; load_tokenizer({str(model_dir)!r}); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]


def test_a_model_without_a_named_class_falls_back_to_autotokenizer(model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    for f in model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "config")):
            shutil.copy(f, tmp_path / f.name)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("tokenizer_class", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(tmp_path)
    assert tok("hello world")["input_ids"] == load_tokenizer(model_dir)("hello world")["input_ids"]
