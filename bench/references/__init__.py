"""Reference servers measured in the same run as callstream (see bench/README.md)."""
