"""The finetune web app: pick a trained model, upload images, see the labels it predicts.

    finetune app                                  # or: streamlit run app/streamlit_app.py
    finetune app --models-dir path/to/models      # or: FINETUNE_MODELS_DIR=path/to/models finetune app

A thin UI: models are listed by `app/listing.py`, uploads decoded and predicted by `app/uploads.py`
through `finetune.inference`, results tabulated by `app/results.py`, a run's own figures read by
`app/report.py`; this file only draws.
Uploads stay in memory; nothing is written to disk.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/streamlit_app.py` puts app/, not the repository, on the path
    sys.path.insert(0, str(ROOT))

import finetune  # noqa: E402
import finetune.inference  # noqa: E402
from app import listing, report, uploads  # noqa: E402
from app.results import results_csv, results_table, views_montage  # noqa: E402

TITLE = "finetune: what is in your images?"


@st.cache_resource(max_entries=4, show_spinner="Loading the model...")
def load_model(path: str, modified: float):
    """The run (or exported ensemble) with its Keras model loaded, once per model file version."""
    run = finetune.load_run(path)
    uploads.warm_up(run)  # load and run it now, under the spinner, not during the first prediction
    return run


@st.cache_data(max_entries=256, show_spinner=False)
def predict_cached(path: str, modified: float, name: str, data: bytes, tta: str, top_k: int, max_bytes: int):
    try:
        return uploads.predict_upload(load_model(path, modified), name, data, tta=tta, top_k=top_k, max_bytes=max_bytes)
    except Exception as error:  # one image must not take the page down: report it, go on with the others
        return uploads.ImageResult(name=name, error=f"prediction failed ({type(error).__name__}: {error})", tta=tta)


@st.cache_data(max_entries=64, show_spinner="Computing the heat map...")
def explain_cached(path: str, modified: float, data: bytes, label: str, max_bytes: int):
    """On demand, once per image and label: the Grad-CAM overlay, or why there is none."""
    return uploads.explain_upload(load_model(path, modified), data, label, max_bytes=max_bytes)


def model_picker_ui(models_dir: Path) -> listing.ModelEntry | None:
    """The sidebar: the models found, and the facts of the chosen one."""
    st.sidebar.header("Model")
    entries, problems = listing.find_models(models_dir)
    if not entries:
        where = f"in `{models_dir}`" if models_dir.is_dir() else f"(`{models_dir}` does not exist)"
        st.warning(
            f"No trained model found {where}. {listing.MAKE_A_MODEL} "
            f"Then reload this page. (Another folder: `finetune app --models-dir DIR` or "
            f"`{listing.MODELS_DIR_VARIABLE}=DIR`.)",
            icon="🗂️",
        )
        problems_ui(problems)
        return None
    by_path = {entry.path: entry for entry in entries}
    chosen = st.sidebar.selectbox(
        f"{len(entries)} found in `{models_dir}`",
        list(by_path),  # paths, not entries: the choice survives a new model appearing in the list
        format_func=lambda path: f"{by_path[path].name} ({by_path[path].kind})",
        key="model",
    )
    entry = by_path[chosen]
    facts = [
        f"**Labels** ({len(entry.labels)}): {', '.join(entry.labels)}",
        f"**Backbone**: {entry.backbone or 'unknown'}",
        f"**Strategy**: {entry.strategy or 'not recorded'}",
    ]
    if entry.members:
        facts.append(f"**Members** ({len(entry.members)}): {', '.join(entry.members)}")
    if entry.kind != "run":
        facts.append(f"**Format**: {entry.format}" + (f", TTA {entry.tta} inside" if entry.tta else ""))
    accuracy = f"{entry.accuracy:.1%}" if entry.accuracy is not None else "not recorded"
    facts += [
        f"**{entry.accuracy_kind}**: {accuracy}",
        f"**{'Trained' if entry.kind == 'run' else 'Exported'}**: {entry.date or 'unknown'}",
        f"**Input**: {entry.image_size} px",
    ]
    st.sidebar.markdown("\n".join(f"- {fact}" for fact in facts))
    problems_ui(problems)
    return entry


def problems_ui(problems: list[dict]) -> None:
    if problems:
        with st.sidebar.expander(f"{len(problems)} could not be read"):
            for problem in problems:
                st.caption(f"`{problem['path']}`: {problem['reason']}")


def options_ui(entry: listing.ModelEntry) -> tuple[str, int]:
    """TTA mode and top-k, in the sidebar."""
    st.sidebar.header("Prediction")
    available, reason = listing.tta_support(entry)
    modes = list(finetune.inference.TTA_MODES)
    tta = st.sidebar.selectbox(
        "Test-time augmentation",
        modes,
        index=modes.index(entry.recorded_tta) if entry.recorded_tta in modes else 0,
        disabled=not available,
        help="Average the predictions of several views of each image (flips, crops, scales). "
        f"The default is the mode training chose on validation data ({entry.recorded_tta}), as `finetune predict` uses.",
        key=f"tta:{entry.path}",  # each model starts from its own recorded mode
    )
    if not available:
        st.sidebar.caption(f"{reason} Images are predicted whole.")
        tta = "none"
    top_k = st.sidebar.slider("Labels to show (top-k)", 1, len(entry.labels), min(3, len(entry.labels)), key="top_k")
    return tta, top_k


def inputs_ui(max_bytes: int) -> list[tuple[str, bytes]]:
    """Uploads and samples, as (name, bytes), in memory."""
    uploaded = st.file_uploader(
        "Upload images (JPEG, PNG, WEBP, BMP, GIF, TIFF)",
        accept_multiple_files=True,
        max_upload_size=max(1, math.ceil(max_bytes / 1e6)),  # what the browser refuses before sending
        help="The format is read from the content, not the file name. Files stay in memory.",
        key="uploads",
    )
    samples = uploads.sample_files()
    chosen = st.multiselect("...or pick bundled samples (textures)", list(samples), key="samples") if samples else []
    files = [(upload.name, upload.getvalue()) for upload in uploaded or []]
    return files + [(name, samples[name].read_bytes()) for name in chosen]


def probability_chart(predictions: list[dict]):
    """Horizontal bars of the top-k probabilities, most probable on top, with their percentages."""
    import altair as alt

    data = alt.Data(values=[{"label": p["label"], "probability": p["probability"]} for p in predictions])
    base = alt.Chart(data).encode(
        # Up to 1.3, not 1: room for the percentage after a full bar.
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1.3]), axis=alt.Axis(format="%", title=None, values=[0, 0.5, 1])),
        y=alt.Y("label:N", sort="-x", title=None),
    )
    bars = base.mark_bar(color="#1f6feb", cornerRadiusEnd=3)
    text = base.mark_text(align="left", dx=4, fontSize=12).encode(text=alt.Text("probability:Q", format=".1%"))
    return bars + text


def result_ui(result: uploads.ImageResult, explain=None) -> None:
    """One image's card: the picture, its answer and top-k as bars, latency, member agreement, the TTA views.

    `explain`, when given, is a function (result -> (overlay, reason)) whose heat map is shown beside the picture.
    """
    with st.container(border=True):
        best = result.predictions[0]
        if explain is None:
            st.image(result.image, caption=result.name, width="stretch")
        else:
            overlay, reason = explain(result)
            left, right = st.columns(2)
            left.image(result.image, caption=result.name, width="stretch")
            if overlay is not None:
                right.image(overlay, caption=f"why {best['label']}: Grad-CAM", width="stretch")
            else:
                right.caption(f"No heat map: {reason}")
        if result.unknown:
            st.markdown(f"### unknown &nbsp; <small>closest: {best['label']}, {best['probability']:.1%}</small>",
                        unsafe_allow_html=True)
            st.caption("Its top probability is under the threshold training chose on held-out images of the known "
                       "classes: it probably shows none of them.")
        else:
            st.markdown(f"### {best['label']} &nbsp; <small>{best['probability']:.1%}</small>", unsafe_allow_html=True)
        st.altair_chart(probability_chart(result.predictions), width="stretch", height=28 * len(result.predictions) + 36)
        details = [f"latency {result.latency_ms:.0f} ms", f"TTA: {result.tta}"]
        if result.agreement is not None:
            details.append(f"members agree: {result.agreement:.0%} ({', '.join(result.member_labels)})")
        st.caption(" · ".join(details))
        if result.views:
            with st.expander(f"The {len(result.views)} views TTA averaged"):
                st.image(views_montage(result.views), width="stretch")


def results_ui(results: list[uploads.ImageResult], per_row: int = 3, explain=None) -> None:
    """Messages for the files that could not be used, then a grid of cards for the others."""
    for result in results:
        if not result.ok:
            st.error(f"**{result.name}** was not used: {result.error}. The other files are still processed.", icon="⚠️")
    predicted = [result for result in results if result.ok]
    for start in range(0, len(predicted), per_row):
        for column, result in zip(st.columns(per_row), predicted[start : start + per_row]):
            with column:
                result_ui(result, explain)


def run_report_ui(entry: listing.ModelEntry) -> None:
    """How the chosen run did, folded away: its confusion.png (or the counts as a table) and per-class figures."""
    shown = report.run_report(entry)
    if shown is None:
        return
    with st.expander(report.EXPANDER_LABEL):
        if shown.picture is not None:
            st.image(str(shown.picture), width="stretch")
        for split in shown.splits:
            st.markdown(f"**{split.title}**")
            if shown.picture is None and split.confusion:
                st.caption("Confusion matrix (rows: true class, columns: predicted)")
                st.dataframe(split.confusion, hide_index=True)
            st.dataframe(split.per_class, hide_index=True)
        for note in shown.notes:
            st.caption(note)


def results_table_ui(results: list[uploads.ImageResult]) -> None:
    st.subheader("All results")
    st.dataframe(results_table(results), hide_index=True, width="stretch")
    st.download_button("Download all results (CSV)", results_csv(results), file_name="predictions.csv", mime="text/csv")


def main() -> None:
    st.set_page_config(page_title="finetune", page_icon="🔎", layout="wide")
    st.title(TITLE)
    st.caption("Pick a trained model in the sidebar, add images, and see the labels it predicts. Images stay in memory.")
    models_dir = listing.models_dir_from(sys.argv[1:], os.environ)
    entry = model_picker_ui(models_dir)
    if entry is None:
        return
    try:
        load_model(entry.path, entry.modified)
    except Exception as error:  # a damaged model file is the user's to fix: say which, no traceback
        st.error(f"Could not load the model `{entry.path}` ({type(error).__name__}: {error}). Pick another one. {listing.MAKE_A_MODEL}")
        return
    tta, top_k = options_ui(entry)
    run_report_ui(entry)
    max_bytes = uploads.max_upload_bytes_from(os.environ)
    files = inputs_ui(max_bytes)
    if not files:
        st.info("Upload images or pick samples to see what the model predicts.")
        return
    files, left_out = uploads.first_files(files, uploads.max_files_from(os.environ))
    if left_out:
        st.warning(left_out)
    results = []
    with st.spinner(f"Predicting {len(files)} image{'s' if len(files) > 1 else ''}..."):
        for name, data in files:
            results.append(predict_cached(entry.path, entry.modified, name, data, tta, top_k, max_bytes))
    show_why = st.sidebar.toggle("Show why (Grad-CAM heat maps)", value=False, key="explain",
                                 help="Where in each image the evidence for its label lies; computed on demand.")
    explain = None
    if show_why:
        by_name = dict(files)

        def explain(result):
            return explain_cached(entry.path, entry.modified, by_name[result.name], result.predictions[0]["label"],
                                  max_bytes)
    results_ui(results, explain=explain)
    results_table_ui(results)


if __name__ == "__main__":
    main()
