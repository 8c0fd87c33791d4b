"""Zero-shot figure types: a fixed label set, prompt ensembles and a softmax over prototypes.

Each label's prototype is the normalised mean of its prompts' text embeddings (CLIP's prompt
ensembling). ``classify`` scores image embeddings against the prototypes and returns the best
label with its softmax probability. The indexer calls it at index time; prototypes are cached
per model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: label -> prompts. Labels are what users filter on, so they are short and human.
FIGURE_TYPES: dict[str, tuple[str, ...]] = {
    "X-ray": ("a radiograph", "an x-ray image", "a chest x-ray", "a plain film radiograph"),
    "CT": ("a CT scan", "a computed tomography image", "an axial CT slice"),
    "MRI": ("an MRI scan", "a magnetic resonance image", "a T2-weighted MR image"),
    "ultrasound": ("an ultrasound image", "a sonogram", "an echocardiography image"),
    "microscopy/fluorescence": ("a fluorescence micrograph", "immunofluorescence microscopy",
                                "a confocal microscopy image", "cells stained with DAPI"),
    "histology": ("a histology slide", "an H&E stained tissue section",
                  "a histopathology image", "immunohistochemistry staining of tissue"),
    "photograph": ("a photograph", "a clinical photograph", "a photo of a patient lesion"),
    "chart/plot": ("a bar chart", "a line plot", "a scatter plot", "a box plot",
                   "a graph of experimental results"),
    "Kaplan-Meier curve": ("a Kaplan-Meier survival curve", "a survival plot",
                           "cumulative survival probability over time"),
    "heatmap": ("a heatmap", "a gene expression heatmap with a color scale",
                "a clustered heat map"),
    "diagram/pathway": ("a signaling pathway diagram", "a schematic diagram",
                        "a molecular pathway illustration"),
    "flowchart": ("a flowchart", "a study flow diagram", "a CONSORT flow diagram"),
    "blot/gel": ("a western blot", "a gel electrophoresis image", "protein bands on a blot",
                 "a DNA gel"),
    "chemical structure": ("a chemical structure", "a molecular structure drawing",
                           "a skeletal formula of a compound"),
    "multi-panel figure": ("a multi-panel figure", "a figure with panels A, B, C and D",
                           "a composite figure of several panels"),
    "table/text": ("a table", "an image of text", "a table of numbers"),
}
LABELS: tuple[str, ...] = tuple(FIGURE_TYPES)

#: synthetic ground truth (indexer/synth.py figure types) -> label, for accuracy measurement
TRUTH_TO_LABEL: dict[str, str] = {
    "bar_chart": "chart/plot", "line_plot": "chart/plot", "scatter_plot": "chart/plot",
    "box_plot": "chart/plot", "kaplan_meier": "Kaplan-Meier curve", "heatmap": "heatmap",
    "western_blot": "blot/gel", "gel_electrophoresis": "blot/gel",
    "fluorescence_micrograph": "microscopy/fluorescence", "histology": "histology",
    "radiology": "X-ray", "flowchart": "flowchart", "pathway_diagram": "diagram/pathway",
    "multi_panel": "multi-panel figure",
}
#: CLIP-style temperature for the softmax (logit scale of 100)
TEMPERATURE = 100.0

_PROTOTYPES: dict[str, np.ndarray] = {}


def prototypes(encoder: Any) -> np.ndarray:
    """(len(LABELS), dim) label prototypes for ``encoder`` (cached by its model key)."""
    key = getattr(encoder, "model_key", None) or str(id(encoder))
    if key not in _PROTOTYPES:
        rows = []
        for label in LABELS:
            vectors = encoder.encode_texts([f"{p}." for p in FIGURE_TYPES[label]])
            mean = vectors.mean(axis=0)
            rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        _PROTOTYPES[key] = np.asarray(rows, dtype=np.float32)
    return _PROTOTYPES[key]


def scores(encoder: Any, image_embeddings: np.ndarray) -> np.ndarray:
    """(n, len(LABELS)) softmax probabilities of each label for each image embedding."""
    emb = np.asarray(image_embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        return np.zeros((0, len(LABELS)), np.float32)
    logits = TEMPERATURE * emb @ prototypes(encoder).T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def classify(encoder: Any, image_embeddings: np.ndarray) -> list[tuple[str, float]]:
    """Best label and its probability for each image embedding (zero-shot)."""
    probs = scores(encoder, image_embeddings)
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    return [(LABELS[int(i)], float(probs[row, int(i)])) for row, i in enumerate(best)]
