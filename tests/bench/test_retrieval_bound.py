"""The retrieval bound of scripts/lookahead_ceiling.py on hand-built token streams."""
from __future__ import annotations

from bench.retrieval_bound import retrieval_runs, retrieval_steps


def test_a_copy_of_the_prompt_is_found_after_its_first_token() -> None:
    prompt = [1, 2, 3, 4, 5, 6]
    output = [9, 2, 3, 4, 5, 6, 7]  # 9 is the model's own; 2 .. 6 copy the prompt; 7 is new
    runs = retrieval_runs(prompt, output)
    # after [9] nothing follows a 9; after [9, 2] the prompt's "2" is followed by 3 4 5 6 (then 7 differs)
    assert runs == [0, 0, 4, 3, 2, 1, 0]
    # step 1 appends 2 (no run); step 2 takes the run 3 4 5 6 and the model's 7: 6 tokens in 2 steps
    assert retrieval_steps(output, runs) == 2


def test_the_longest_of_several_occurrences_wins_and_depth_caps_it() -> None:
    prompt = [5, 1, 8, 5, 1, 2, 3, 4]
    output = [0, 5, 1, 2, 3, 4]
    runs = retrieval_runs(prompt, output)
    assert runs[2] == 4  # after "5" the second occurrence continues 1 2 3 4, the first only 1
    assert retrieval_steps(output, runs) == 2  # 5 alone (0 occurs nowhere), then 1 2 3 4 in one
    assert retrieval_steps(output, runs, max_depth=1) == 3  # 5; 1 + 2; 3 + 4


def test_other_outputs_count_and_the_own_last_token_has_no_continuation_yet() -> None:
    output = [7, 7, 7]
    assert retrieval_runs([], output) == [0, 0, 1]  # after [7] the only 7 is the last; after [7, 7] one 7 is followed by 7
    other = [3, 4, 9]
    # the own 3 of the prompt ends before the output's 4; the other output continues 3 with 4 9
    runs = retrieval_runs([3], [3, 4, 9], [other])
    assert runs == [0, 2, 1]
    assert retrieval_steps([3, 4, 9], runs) == 1
    assert retrieval_runs([3], [3, 4, 9]) == [0, 0, 0]  # without it, nothing continues
