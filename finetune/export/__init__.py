"""Exporting runs as one artefact, and reading exports back.

    finetune.export.writer   export_ensemble: the average of runs or snapshots as .keras,
                             SavedModel, TFLite or ONNX, written only after a parity check
    finetune.export.reader   the artefact formats and loading them (`finetune.run.load_run`
                             reads an export directory through it)

This package module imports neither, so that `finetune.run` can use the reader without
loading the writer (which itself loads runs): no import cycle.
"""
