"""In-process baselines: transformers ``generate`` on the same model and prompts, one at a time.

``hf`` is plain greedy decoding; ``hf-prompt-lookup`` adds prompt-lookup speculative decoding
(transformers' n-gram drafts from the prompt), the natural baseline for Grove's lookahead. Both
produce the same records as a server run, so the same metrics and plots apply.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm
from transformers.generation.streamers import BaseStreamer

from bench.records import Job, RequestRecord, Usage
from bench.runner import RunOutput
from engine.reference import ReferenceOutput, exact_gaps, hf_greedy

logger = logging.getLogger(__name__)


class HFModel:
    """A transformers model and its tokenizer, loaded once and shared by every baseline."""

    def __init__(self, model: Any, tokenizer: Any, model_dir: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.warm = False
        self._references: dict[tuple[tuple[int, ...], int], ReferenceOutput] = {}
        self._exact: Any = None  # the same weights in fp32, loaded at the first 16-bit reference

    @classmethod
    def load(cls, model_dir: str | Path, threads: int = 2, dtype: str = "float32", device: str = "cpu") -> HFModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).to(device).eval()
        logger.info("loaded %s (%s) in %.1f s (%d torch threads)", model_dir, dtype, time.perf_counter() - t0, threads)
        return cls(model, tokenizer, str(model_dir))

    @property
    def pad_token_id(self) -> int:
        cfg = self.model.config
        return cfg.eos_token_id if cfg.pad_token_id is None else cfg.pad_token_id

    def reference(self, prompt_ids: Sequence[int], max_tokens: int) -> ReferenceOutput:
        """Greedy tokens with top-2 logit gaps (engine.reference.hf_greedy), computed once per prompt."""
        key = (tuple(prompt_ids), max_tokens)
        if key not in self._references:
            ref = hf_greedy(self.model, prompt_ids, max_tokens)
            if self.model.dtype in (torch.bfloat16, torch.float16):  # an fp32 arbiter for its near ties
                ref = dataclasses.replace(ref, exact_gap=exact_gaps(self._exact_model(), prompt_ids, ref.tokens))
            self._references[key] = ref
        return self._references[key]

    def _exact_model(self) -> Any:
        """The same checkpoint in fp32 (engine.reference.exact_gaps), loaded once, when first needed."""
        if self._exact is None:
            from transformers import AutoModelForCausalLM

            self._exact = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
            self._exact = self._exact.to(self.model.device).eval()
        return self._exact


class _TimingStreamer(BaseStreamer):
    """Records when ``generate`` hands out new tokens. Its first ``put`` is the prompt: skipped."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class HFBaseline:
    def __init__(self, name: str, hf: HFModel, prompt_lookup_num_tokens: int | None = None) -> None:
        self.name = name
        self.hf = hf
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens

    def describe(self) -> dict[str, Any]:
        return {"kind": "transformers-generate", "model_dir": self.hf.model_dir,
                "prompt_lookup_num_tokens": self.prompt_lookup_num_tokens, "torch_threads": torch.get_num_threads()}

    def _generate(self, prompt_ids: Sequence[int], max_tokens: int, streamer: BaseStreamer | None) -> list[int]:
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.hf.model.device)
        extra = {"prompt_lookup_num_tokens": self.prompt_lookup_num_tokens} if self.prompt_lookup_num_tokens else {}
        with torch.inference_mode():
            out = self.hf.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=max_tokens, pad_token_id=self.hf.pad_token_id,
                                         streamer=streamer, **extra)
        return out[0, ids.shape[1]:].tolist()

    def send(self, job: Job) -> RequestRecord:
        streamer = _TimingStreamer()
        record = RequestRecord(job_index=job.index, prompt_id=job.prompt.id, prompt_tokens=len(job.prompt_ids),
                               send_time=time.perf_counter())
        tokens = self._generate(job.prompt_ids, job.max_tokens, streamer)
        record.end_time = time.perf_counter()
        record.chunk_times = streamer.times
        record.output_ids = tokens
        record.text = self.hf.tokenizer.decode(tokens, skip_special_tokens=True)
        eos = self.hf.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        record.finish_reason = "stop" if tokens and tokens[-1] in eos_ids else "length"
        record.usage = Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=len(tokens))
        return record

    def warm_up(self) -> None:
        # The first generate call in a process is several times slower (lazy init): keep it out.
        if not self.hf.warm:
            self._generate([1, 2, 3, 4], 4, None)
            self.hf.warm = True

    def run(self, jobs: Sequence[Job], *, progress: bool = False) -> RunOutput:
        """Every job in order, one at a time (concurrency 1: ``generate`` has batch size 1 here)."""
        self.warm_up()
        start = time.perf_counter()
        records = [self.send(job) for job in tqdm(jobs, desc=self.name, unit="req", disable=not progress, leave=False)]
        return RunOutput(records=records, start=start, end=time.perf_counter(), max_in_flight=1)

    def reference(self, job: Job) -> ReferenceOutput:
        return self.hf.reference(job.prompt_ids, job.max_tokens)


def make_baseline(name: str, hf: HFModel, prompt_lookup_num_tokens: int = 10) -> HFBaseline:
    if name == "hf":
        return HFBaseline(name, hf)
    if name == "hf-prompt-lookup":
        return HFBaseline(name, hf, prompt_lookup_num_tokens)
    raise ValueError(f"unknown baseline {name!r}")
