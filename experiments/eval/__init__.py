"""The offline evaluation suite behind `minference-jax eval`: needle in a
haystack, RULER- and InfiniteBench-style tasks and long-text perplexity, for
a model under any set of attention configs (see `command.py`)."""
