"""`longseq compare`: the experiment that pits the attention mechanisms against each other.

On one task, with one model size, one data set, one budget and one seed, every mechanism
(full, Longformer, BigBird, Linformer, Reformer's LSH) is trained by `longseq.train`; then
the same models' forward+backward time and memory are swept over sequence lengths, and a
report puts accuracy (or bits per byte), throughput, memory and parameters in one table.

    from longseq.compare import Plan, run
    summary = run(Plan(out="results/compare", task="listops", preset="default"))
    print(summary.table)

Modules: `presets` (model, data and budget of recall / default / cpu / lra: the reach each
mechanism derives its settings from), `tasks` (each task's data sets, declared by the
`longseq.tasks` entries), `runner` (the experiment, resumable), `isolate` (fresh processes,
so each run's peak memory is its own), `sweep` (time and memory against length), `report`
(report.md and the plots), `commands` (the CLI).
"""

from longseq.compare.presets import PRESETS, Preset, default_mechanisms
from longseq.compare.runner import Plan, Summary, run

__all__ = ["PRESETS", "Plan", "Preset", "Summary", "default_mechanisms", "run"]
