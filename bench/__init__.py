"""callstream's benchmark suite: `python -m bench.run [scenario…] [--quick]` (see bench/README.md)."""
