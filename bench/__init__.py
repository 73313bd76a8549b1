"""``grove bench``: a serving benchmark over real datasets, with load patterns, baselines and plots.

Module map: datasets/ (prompts from package files) -> jobs (pick, tokenize) -> runner (load:
arrivals, concurrency) -> client (backends: OpenAI HTTP) -> metrics (pure) -> result (JSON),
plots, report / compare / table (output); baselines (transformers in-process) and greedy_check
(outputs match); orchestrate ties one run together; smoke is the e2e check; cli parses flags.
"""
