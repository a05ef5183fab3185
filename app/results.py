"""What the app shows of its predictions, as data: the results table, its CSV, and a montage of TTA views."""

from __future__ import annotations

import csv
import io

import numpy as np

COLUMNS = ["file", "label", "probability", "top_k", "latency_ms", "tta", "member_agreement", "error"]


def results_table(results) -> list[dict]:
    """One row per image (`app.uploads.ImageResult`): file, top label and probability, the top-k, latency, TTA, agreement, error."""
    rows = []
    for result in results:
        top = result.predictions[0] if result.predictions else {}
        rows.append(
            {
                "file": result.name,
                "label": top.get("label", ""),
                "probability": round(top["probability"], 4) if top else None,
                "top_k": "; ".join(f"{p['label']} {p['probability']:.3f}" for p in result.predictions),
                "latency_ms": round(result.latency_ms, 1) if result.latency_ms is not None else None,
                "tta": result.tta,
                "member_agreement": round(result.agreement, 3) if result.agreement is not None else None,
                "error": result.error or "",
            }
        )
    return rows


def results_csv(results) -> str:
    """The results table as CSV text, with a header row."""
    rows = results_table(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return buffer.getvalue()


def views_montage(views, *, per_row: int = 5, gap: int = 2) -> np.ndarray:
    """The TTA views side by side, `per_row` to a row, on white: one picture instead of many small ones."""
    views = [np.asarray(view, dtype=np.uint8) for view in views]
    size = views[0].shape[0]
    rows = -(-len(views) // per_row)
    columns = min(per_row, len(views))
    montage = np.full((rows * (size + gap) - gap, columns * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for index, view in enumerate(views):
        top, left = (index // per_row) * (size + gap), (index % per_row) * (size + gap)
        montage[top : top + size, left : left + size] = view
    return montage
