"""zfda-bench: zero-forget domain adaptation for semantic communication (arXiv 2411.19385)."""
