"""Per-target request body fields (``--extra-body``): one server benchmarked as two targets."""
from __future__ import annotations

import pytest

from bench.cli import config_from_args, main, run_parser
from bench.config import BenchConfig, LoadSpec, Target
from bench.orchestrate import run_bench


def test_flags_give_each_target_its_fields() -> None:
    args = run_parser().parse_args(["--base-url", "http://a:1", "--extra-body", '{"lookahead": true}',
                                    "--vs", "http://a:1", "--vs-name", "off", "--vs-extra-body", '{"lookahead": false}',
                                    "--vs", "http://b:2"])
    assert config_from_args(args).targets == (Target("grove", "http://a:1", {"lookahead": True}),
                                              Target("off", "http://a:1", {"lookahead": False}), Target("vs2", "http://b:2"))
    with pytest.raises(SystemExit):
        run_parser().parse_args(["--extra-body", "[1]"])  # an object, not any JSON
    assert main(["--base-url", "http://a:1", "--vs-extra-body", "{}"]) == 2  # more bodies than --vs servers
    with pytest.raises(ValueError, match="HTTP"):
        from bench.client import make_backend

        make_backend("grpc://localhost:1", extra_body={"lookahead": False})


def test_fields_reach_the_server_for_that_target_only(echo) -> None:
    """The test server refuses anything but temperature 0: a target overriding it must fail, the other not."""
    url, _ = echo
    config = BenchConfig(dataset="humaneval", targets=(Target("plain", url), Target("hot", url, {"temperature": 0.7})),
                         loads=(LoadSpec(concurrency=1),), num_prompts=2, max_tokens=3, warmup=0, progress=False)
    doc = run_bench(config)
    plain, hot = doc["runs"]
    assert plain["metrics"]["completed"] == 2 and plain["backend"]["extra_body"] == {}
    assert hot["metrics"]["failed"] == 2 and hot["backend"]["extra_body"] == {"temperature": 0.7}
    assert all("HTTP 400" in r["error"] for r in hot["requests"])
