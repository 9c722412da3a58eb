"""The truncation comparison's report: per bucket, loss ± standard error per form and the
paired difference from first-2048 on the same documents; ROUGE tables of predict outputs."""

from __future__ import annotations

import json
from pathlib import Path

from longseq.compare import summaries


def test_report_pairs_forms_on_the_same_documents(tmp_path: Path):
    rows = []
    for doc, n, base, other in (("a", 9000, 3.0, 2.5), ("b", 12000, 2.0, 1.9), ("c", 100, 4, 4)):
        rows.append(
            {"form": "first-2048", "id": doc, "doc_tokens": n, "kind": "loss", "loss": base}
        )
        rows.append({"form": "bigbird", "id": doc, "doc_tokens": n, "kind": "loss", "loss": other})
    rows.append({"form": "bigbird", "id": "a", "doc_tokens": 9000, "kind": "rouge",
                 "rouge1": 10.0, "rouge2": 0.0, "rougeL": 8.0})  # fmt: skip
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{cut")
    text = summaries.report(tmp_path, "T")
    long = text.split("## >8K tokens")[1].split("##")[0]
    # differences -0.5 and -0.1: mean -0.3, standard error 0.2
    assert "| bigbird | 2 | 2.200 ± 0.300 | -0.300 ± 0.200 | 1 | 10.0 ± 0.0 |" in long
    assert "| first-2048 | 2 | 2.500 ± 0.500 | - | 0 |" in long
    assert "## <2K tokens" in text and "## 2K-8K tokens" not in text
    assert (tmp_path / "report.md").read_text() == text


def test_rouge_table(tmp_path: Path):
    f = tmp_path / "zero-shot.jsonl"
    recs = [{"doc_tokens": 10, "rouge1": 20.0, "rouge2": 10.0, "rougeL": 20.0},
            {"doc_tokens": 3000, "rouge1": 40.0, "rouge2": 0.0, "rougeL": 30.0}]  # fmt: skip
    f.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    table = summaries.rouge_table([str(f)])
    assert "| zero-shot | <2K | 1 | 20.0 ± 0.0 | 10.0 ± 0.0 | 20.0 ± 0.0 |" in table
    assert "| zero-shot | all | 2 | 30.0 ± 10.0 | 5.0 ± 5.0 | 25.0 ± 5.0 |" in table
