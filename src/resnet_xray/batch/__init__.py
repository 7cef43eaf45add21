"""Classify a large image collection into a results file: streamed inputs, resumable output, throughput engines.

``classify --out results.jsonl`` (or ``.parquet``) runs here: :mod:`.inputs` streams the paths,
:mod:`.decode` reads them (in worker processes when asked), :mod:`.engines` runs the model in its
engine's throughput mode, :mod:`.records` appends whole records and resumes, :mod:`.job` ties
them together on one machine and :mod:`.on_ray` runs the same job as a Ray Data pipeline.
"""
