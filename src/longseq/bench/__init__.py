"""Benchmarks: speed and memory of the attention layers against peers and baselines.

    longseq bench attention --out DIR     # results.jsonl, table.md, plot.png

`attention` runs the measurements, `peers` adapts other libraries' layers to one call,
`report` turns the records into the markdown table and the plot.
"""
