"""``python -m bench.run --merge``: only the sections run are replaced in an existing BENCHMARKS.md."""

from __future__ import annotations

from bench.run import RUNNERS, merge


def test_merge_replaces_only_the_sections_run() -> None:
    old = ("# Benchmarks\n\n- **Date:** then\n\n## 1. Engine: Grad-CAM vs plain forward vs pytorch-grad-cam\n\nold engine\n\n"
           f"## {RUNNERS['embeddings'][0]}\n\nold embeddings\n")
    new = merge(old, "- **Updated:** now", {"embeddings": f"## {RUNNERS['embeddings'][0]}\n\nnew embeddings",
                                             "e2e": f"## {RUNNERS['e2e'][0]}\n\nnew e2e"})
    assert new.index("old engine") < new.index("new e2e") < new.index("new embeddings")
    assert "old embeddings" not in new and new.count("## ") == 3 and "- **Date:** then\n- **Updated:** now" in new
