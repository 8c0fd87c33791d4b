"""Panel detection and sub-caption alignment measured on the hand-made panel ground truth.

    PYTHONPATH=$PWD .venv/bin/python -m bench.panels_eval --data ../shared/data [--split dev]

Reads ``bench/eval/panels.jsonl`` (see ``bench/eval/README.md``), runs
:func:`figsearch.panels.detect_panels`, :func:`~figsearch.panels.split_caption` and
:func:`~figsearch.panels.align` on every figure of each split and writes
``bench/results/panels_eval_<split>.json`` with:

- detection precision / recall / F1 at IoU >= 0.5 (one-to-one matching, highest IoU first),
  over all figures and over the compound ones only;
- sub-caption splitting: the share of figures whose panel letters come out exactly, and the share
  of ground-truth sub-captions found with the same letters and a character span overlapping the
  true one at IoU >= 0.8;
- alignment: the share of lettered ground-truth panels whose detected box (IoU >= 0.5) gets the
  right sub-caption (end to end), and the same with the true boxes given (alignment alone);
- time per figure (ms) of detection and of caption splitting.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, REPO_ROOT, markdown_table, write_result  # noqa: E402
from bench.panels_data import load_caption, open_image  # noqa: E402
from figsearch.panels import Panel, SubCaption, align, detect_panels, iou, split_caption  # noqa: E402

GT_PATH = BENCH_DIR / "eval" / "panels.jsonl"
IOU_MIN = 0.5
SPAN_IOU_MIN = 0.8


def load_truth(path: Path = GT_PATH) -> list[dict[str, Any]]:
    """The ground-truth records, one per figure."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def match(pred: list[tuple[int, int, int, int]], truth: list[list[int]]) -> dict[int, int]:
    """One-to-one matches {truth index: pred index} at IoU >= 0.5, highest IoU first."""
    pairs = sorted(((iou(p, t), ti, pi) for pi, p in enumerate(pred) for ti, t in enumerate(truth)),
                   reverse=True)
    out: dict[int, int] = {}
    used: set[int] = set()
    for score, ti, pi in pairs:
        if score < IOU_MIN:
            break
        if ti not in out and pi not in used:
            out[ti] = pi
            used.add(pi)
    return out


def _box(values: list[int]) -> tuple[int, int, int, int]:
    """A ground-truth box as the detector's tuple."""
    x0, y0, x1, y1 = (int(v) for v in values)
    return x0, y0, x1, y1


def span_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Overlap of two character spans over their union."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _aligned_right(panel: Panel, truth_sub: dict[str, Any] | None, letter: str) -> bool:
    """Whether a panel got the sub-caption the truth gives its letter (letters and span)."""
    sub = panel.subcaption
    if sub is None or truth_sub is None or letter not in sub.letters:
        return False
    return span_iou(sub.span, (truth_sub["start"], truth_sub["end"])) >= 0.5


def expected_panels(subs: list[SubCaption]) -> int:
    """How many panels a caption names: its distinct panel letters (1 when none)."""
    return max(1, len({c for s in subs for c in s.letters}))


def evaluate_figure(root: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """Everything measured on one figure."""
    image = open_image(root, rec["image"])
    caption = load_caption(root, rec)
    t0 = time.perf_counter()
    subs = split_caption(caption)
    t1 = time.perf_counter()
    panels = detect_panels(image, expected=expected_panels(subs))
    t2 = time.perf_counter()
    layout_only = detect_panels(image)
    t3 = time.perf_counter()
    truth = [p["box"] for p in rec["panels"]]
    m = match([p.box for p in panels], truth)
    lm = match([p.box for p in layout_only], truth)
    out: dict[str, Any] = {"id": rec["id"], "compound": rec["compound"], "tp": len(m),
                           "fp": len(panels) - len(m), "fn": len(truth) - len(m),
                           "n_pred": len(panels), "n_true": len(truth),
                           "layout_tp": len(lm), "layout_fp": len(layout_only) - len(lm),
                           "layout_fn": len(truth) - len(lm), "layout_n_pred": len(layout_only),
                           "split_ms": 1000 * (t1 - t0), "detect_ms": 1000 * (t2 - t1),
                           "layout_detect_ms": 1000 * (t3 - t2)}
    if not rec["compound"]:
        return out
    true_subs = rec["subcaptions"]
    got = [s for s in subs if s.letters]
    out["letters_exact"] = sorted(c for s in got for c in s.letters) == sorted(
        c for s in true_subs for c in s["letters"])
    out["subs_true"] = len(true_subs)
    out["subs_found"] = sum(
        any("".join(s.letters) == t["letters"] and span_iou(s.span, (t["start"], t["end"]))
            >= SPAN_IOU_MIN for s in got) for t in true_subs)
    by_letter = {c: t for t in true_subs for c in t["letters"]}
    lettered = [(i, p) for i, p in enumerate(rec["panels"]) if p["letter"]]
    aligned = align(panels, subs)
    by_box = {p.box: p for p in aligned}
    e2e = 0
    for ti, p in lettered:
        if ti in m and _aligned_right(by_box[panels[m[ti]].box], by_letter.get(p["letter"]),
                                      p["letter"]):
            e2e += 1
    given = align([Panel(_box(p["box"])) for p in rec["panels"]], subs)
    given_by_box = {p.box: p for p in given}
    alone = sum(_aligned_right(given_by_box[_box(p["box"])], by_letter.get(p["letter"]),
                               p["letter"]) for _ti, p in lettered)
    out.update(lettered=len(lettered), aligned_e2e=e2e, aligned_given_boxes=alone)
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Split-level figures from per-figure rows."""
    figures: dict[str, Any] = {"figures": len(rows),
                               "compound_figures": sum(r["compound"] for r in rows)}
    for mode in ("", "layout_"):
        for name, sel in (("all", rows), ("compound", [r for r in rows if r["compound"]]),
                          ("single", [r for r in rows if not r["compound"]])):
            tp, fp, fn = (sum(r[f"{mode}{k}"] for r in sel) for k in ("tp", "fp", "fn"))
            p, r, f = _prf(tp, fp, fn)
            figures.update({f"{mode}{name}_precision": round(p, 3),
                            f"{mode}{name}_recall": round(r, 3), f"{mode}{name}_f1": round(f, 3),
                            f"{mode}{name}_tp": tp, f"{mode}{name}_fp": fp,
                            f"{mode}{name}_fn": fn})
        figures[f"{mode}single_kept_whole"] = sum(
            r[f"{mode}n_pred"] == 1 and r[f"{mode}tp"] == 1 for r in rows if not r["compound"])
    comp = [r for r in rows if r["compound"]]
    if comp:
        figures["subcaption_letters_exact"] = round(sum(r["letters_exact"] for r in comp) / len(comp), 3)
        figures["subcaption_spans_found"] = round(
            sum(r["subs_found"] for r in comp) / max(1, sum(r["subs_true"] for r in comp)), 3)
        lettered = sum(r["lettered"] for r in comp)
        figures["alignment_acc_end_to_end"] = round(sum(r["aligned_e2e"] for r in comp) / lettered, 3)
        figures["alignment_acc_true_boxes"] = round(
            sum(r["aligned_given_boxes"] for r in comp) / lettered, 3)
    det = [r["detect_ms"] for r in rows]
    figures["detect_ms_mean"] = round(statistics.fmean(det), 2)
    figures["detect_ms_p50"] = round(statistics.median(det), 2)
    figures["detect_ms_max"] = round(max(det), 2)
    figures["layout_detect_ms_mean"] = round(statistics.fmean(r["layout_detect_ms"] for r in rows), 2)
    figures["split_caption_ms_mean"] = round(statistics.fmean(r["split_ms"] for r in rows), 3)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Evaluate each requested split and write its result file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                    help="the shared data root the ground truth's image paths are relative to")
    ap.add_argument("--truth", type=Path, default=GT_PATH)
    ap.add_argument("--split", choices=("dev", "test"), action="append",
                    help="split(s) to run (default both)")
    ap.add_argument("--verbose", action="store_true", help="print one line per figure")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        ap.error(f"shared data not found at {args.data}")
    records = load_truth(args.truth)
    table = []
    for split in args.split or ["dev", "test"]:
        rows = [evaluate_figure(args.data, r) for r in records if r["split"] == split]
        if args.verbose:
            for row in rows:
                print(split, json.dumps({k: (round(v, 1) if isinstance(v, float) else v)
                                         for k, v in row.items()}))
        figures = summarise(rows)
        command = "python -m bench.panels_eval " + shlex.join(argv if argv is not None
                                                               else sys.argv[1:])
        write_result(f"panels_eval_{split}", {"split": split, "truth": str(args.truth.name),
                                              "iou_min": IOU_MIN, "command": command}, figures)
        table.append([split, figures["figures"], figures["all_precision"], figures["all_recall"],
                      figures["all_f1"], figures["compound_f1"], figures["layout_all_f1"],
                      f"{figures['single_kept_whole']}/{figures['figures'] - figures['compound_figures']}",
                      figures.get("subcaption_letters_exact"), figures.get("subcaption_spans_found"),
                      figures.get("alignment_acc_end_to_end"), figures.get("alignment_acc_true_boxes"),
                      figures["detect_ms_mean"]])
    print(markdown_table(["split", "figures", "P", "R", "F1", "F1 compound", "F1 layout only",
                          "single kept whole",
                          "letters exact", "spans found", "align e2e", "align true boxes",
                          "detect ms"], table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
