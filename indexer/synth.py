"""Synthetic corpus: PMC-style article packages with rendered figures and ground truth.

``figsearch synth --n N OUT_DIR`` writes N legacy PMC OA packages (one ``.tar.gz`` per article
holding ``<name>/<name>.nxml`` JATS and the figure images its ``<graphic xlink:href>`` point at)
plus ``ground_truth.jsonl``. Every figure is drawn from the same attributes its caption is
written from (the genes in a pathway diagram are the words in its boxes and in its caption),
and carries them as ``<object-id pub-id-type="figsearch-truth">{"type": .., "attributes": ..}``.

Output is a pure function of (seed, article number): each article has its own random
generator, images are encoded by Pillow (no timestamps), tar members and gzip headers carry
fixed times, so the same seed and n give the same bytes with any number of workers.
Existing packages are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import calendar
import gzip
import io
import json
import math
import os
import sys
import tarfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from lxml import etree
from PIL import Image, ImageDraw, ImageFilter, ImageFont

XLINK = "http://www.w3.org/1999/xlink"
GROUND_TRUTH = "ground_truth.jsonl"
SOURCE_META = ("figsearch-source", "synthetic")

# ----------------------------------------------------------------------------- vocabulary

#: disease -> (tissue, model cell lines, cell types seen in that tissue)
DISEASES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "breast cancer": ("breast", ("MCF-7", "MDA-MB-231", "T47D"), ("luminal epithelial cells", "cancer-associated fibroblasts")),
    "non-small cell lung cancer": ("lung", ("A549", "H1299", "PC-9"), ("alveolar epithelial cells", "tumour-associated macrophages")),
    "colorectal cancer": ("colon", ("HCT116", "SW480", "HT-29"), ("colonic epithelial cells", "intestinal organoids")),
    "hepatocellular carcinoma": ("liver", ("HepG2", "Huh7"), ("hepatocytes", "hepatic stellate cells")),
    "glioblastoma": ("brain", ("U87", "U251"), ("glioma stem cells", "astrocytes")),
    "pancreatic ductal adenocarcinoma": ("pancreas", ("PANC-1", "MIA PaCa-2"), ("ductal cells", "pancreatic stellate cells")),
    "melanoma": ("skin", ("A375", "SK-MEL-28"), ("melanocytes", "keratinocytes")),
    "prostate cancer": ("prostate", ("PC-3", "LNCaP", "DU145"), ("prostate epithelial cells",)),
    "ovarian cancer": ("ovary", ("SKOV3", "OVCAR-3"), ("ovarian surface epithelial cells",)),
    "acute myeloid leukemia": ("bone marrow", ("THP-1", "MOLM-13"), ("leukemic blasts", "haematopoietic stem cells")),
    "Alzheimer's disease": ("brain", ("SH-SY5Y",), ("neurons", "microglia", "astrocytes")),
    "Parkinson's disease": ("brain", ("SH-SY5Y",), ("dopaminergic neurons", "microglia")),
    "type 2 diabetes": ("pancreas", ("INS-1", "MIN6"), ("pancreatic beta cells", "adipocytes")),
    "rheumatoid arthritis": ("synovium", ("MH7A",), ("synovial fibroblasts", "macrophages")),
    "Crohn's disease": ("colon", ("Caco-2", "HT-29"), ("intestinal epithelial cells", "T cells")),
    "COVID-19": ("lung", ("Calu-3", "Vero E6"), ("alveolar epithelial cells", "macrophages")),
    "heart failure": ("heart", ("AC16", "H9c2"), ("cardiomyocytes", "cardiac fibroblasts")),
    "chronic kidney disease": ("kidney", ("HK-2", "HEK293"), ("podocytes", "proximal tubular cells")),
    "asthma": ("lung", ("BEAS-2B",), ("airway epithelial cells", "eosinophils")),
    "atherosclerosis": ("artery", ("HUVEC", "THP-1"), ("endothelial cells", "foam cells")),
    "sepsis": ("blood", ("RAW 264.7", "THP-1"), ("monocytes", "neutrophils")),
    "multiple sclerosis": ("brain", ("Jurkat",), ("oligodendrocytes", "T cells")),
    "tuberculosis": ("lung", ("THP-1",), ("alveolar macrophages",)),
    "osteoarthritis": ("knee", ("SW1353",), ("chondrocytes",)),
}

#: signalling pathways as ordered chains of gene symbols (upstream first)
PATHWAYS: dict[str, tuple[str, ...]] = {
    "PI3K/AKT/mTOR": ("EGFR", "PIK3CA", "PTEN", "AKT1", "MTOR", "RPS6KB1", "EIF4EBP1"),
    "MAPK/ERK": ("EGFR", "GRB2", "SOS1", "KRAS", "BRAF", "MAP2K1", "MAPK1", "ELK1"),
    "JAK/STAT": ("IL6", "IL6R", "JAK2", "STAT3", "SOCS3", "BCL2"),
    "Wnt/β-catenin": ("WNT3A", "FZD7", "LRP6", "GSK3B", "CTNNB1", "TCF7L2", "MYC"),
    "NF-κB": ("TNF", "TNFRSF1A", "TRAF2", "IKBKB", "NFKBIA", "RELA", "IL1B"),
    "p53": ("ATM", "CHEK2", "MDM2", "TP53", "CDKN1A", "BAX", "BBC3"),
    "TGF-β/SMAD": ("TGFB1", "TGFBR2", "TGFBR1", "SMAD2", "SMAD3", "SMAD4", "SNAI1"),
    "Notch": ("DLL4", "NOTCH1", "ADAM17", "RBPJ", "HES1", "HEY1"),
    "Hippo": ("NF2", "STK4", "LATS1", "YAP1", "WWTR1", "TEAD1", "CCN2"),
    "HIF-1α/VEGF": ("VHL", "HIF1A", "ARNT", "VEGFA", "KDR", "EPO"),
    "AMPK": ("STK11", "PRKAA1", "TSC2", "MTOR", "ULK1", "PPARGC1A"),
    "NLRP3 inflammasome": ("TLR4", "MYD88", "NLRP3", "PYCARD", "CASP1", "IL1B", "GSDMD"),
    "cGAS-STING": ("CGAS", "STING1", "TBK1", "IRF3", "IFNB1"),
    "Hedgehog": ("SHH", "PTCH1", "SMO", "SUFU", "GLI1"),
}

DRUGS = (
    "cisplatin", "doxorubicin", "paclitaxel", "gefitinib", "erlotinib", "imatinib", "metformin",
    "rapamycin", "tamoxifen", "sorafenib", "dexamethasone", "bortezomib", "temozolomide",
    "5-fluorouracil", "ruxolitinib", "resveratrol", "curcumin", "atorvastatin", "olaparib",
    "trametinib", "everolimus", "celecoxib",
)
MARKERS = (
    "Ki-67", "GFAP", "NeuN", "Iba1", "CD68", "α-SMA", "E-cadherin", "vimentin", "LC3B",
    "γH2AX", "cleaved caspase-3", "ZO-1", "CD31", "nestin", "β-III tubulin", "phalloidin",
)
LOADING_CONTROLS = ("GAPDH", "β-actin", "α-tubulin", "vinculin")
JOURNALS = (
    "Synthetic Journal of Oncology", "Synthetic Reports in Cell Biology",
    "Synthetic Annals of Neuroscience", "Synthetic Journal of Clinical Medicine",
    "Synthetic Immunology Letters", "Synthetic Radiology Reports",
    "Synthetic Molecular Medicine", "Synthetic Frontiers in Physiology",
)
LICENSES = (  # (weight, url, text)
    (0.70, "https://creativecommons.org/licenses/by/4.0/",
     "This is an open access article distributed under the terms of the Creative Commons "
     "Attribution License (CC BY 4.0), which permits unrestricted use, distribution, and "
     "reproduction in any medium, provided the original author and source are credited."),
    (0.18, "https://creativecommons.org/licenses/by-nc/4.0/",
     "This is an open access article distributed under the terms of the Creative Commons "
     "Attribution-NonCommercial License (CC BY-NC 4.0), which permits non-commercial use, "
     "distribution, and reproduction in any medium, provided the original work is cited."),
    (0.12, "", ""),
)
SURNAMES = ("Garcia", "Chen", "Okafor", "Müller", "Rossi", "Kowalski", "Tanaka", "Singh",
            "Haddad", "Novak", "Silva", "Andersen", "Kim", "Dubois", "Ivanova", "Mensah")
GIVEN = ("A.", "B.", "C.", "D.", "E.", "F.", "H.", "J.", "K.", "L.", "M.", "N.", "P.", "R.", "S.", "Y.")

FIGURE_TYPES = (
    "bar_chart", "line_plot", "scatter_plot", "box_plot", "kaplan_meier", "heatmap",
    "western_blot", "gel_electrophoresis", "fluorescence_micrograph", "histology", "radiology",
    "flowchart", "pathway_diagram", "multi_panel",
)
#: image-like types are saved as JPEG, charts and diagrams as PNG
PHOTO_TYPES = frozenset({"western_blot", "gel_electrophoresis", "fluorescence_micrograph",
                         "histology", "radiology"})


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _sample(rng: np.random.Generator, seq: Sequence[Any], k: int) -> list[Any]:
    return [seq[int(i)] for i in rng.choice(len(seq), size=min(k, len(seq)), replace=False)]


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Topic:
    """What one article is about; its figures draw their vocabulary from it."""

    disease: str
    tissue: str
    cell_line: str
    cell_type: str
    pathway: str
    gene: str
    drug: str


@dataclass
class FigurePlan:
    """One figure before drawing: type, ground-truth attributes and caption."""

    fig_type: str
    attributes: dict[str, Any]
    title: str
    text: str

    @property
    def caption(self) -> str:
        return f"{self.title} {self.text}"

    def truth(self) -> dict[str, Any]:
        return {"type": self.fig_type, "attributes": self.attributes}


def plan_topic(rng: np.random.Generator) -> Topic:
    disease = _pick(rng, sorted(DISEASES))
    tissue, lines, cell_types = DISEASES[disease]
    pathway = _pick(rng, sorted(PATHWAYS))
    return Topic(disease, tissue, _pick(rng, lines), _pick(rng, cell_types), pathway,
                 _pick(rng, PATHWAYS[pathway]), _pick(rng, DRUGS))


def _other_drug(rng: np.random.Generator, t: Topic) -> str:
    return _pick(rng, [d for d in DRUGS if d != t.drug])


def plan_bar_chart(rng: np.random.Generator, t: Topic) -> FigurePlan:
    groups = ["control", t.drug]
    if rng.random() < 0.5:
        other = _other_drug(rng, t)
        groups += [other, f"{t.drug} + {other}"]
    measure = _pick(rng, ("mRNA expression", "protein level", "promoter activity"))
    verb = _pick(rng, ("reduces", "increases"))
    attrs = {"gene": t.gene, "cell_line": t.cell_line, "groups": groups, "measure": measure}
    return FigurePlan("bar_chart", attrs, f"{t.drug.capitalize()} {verb} {t.gene} {measure} in {t.cell_line} cells.",
                      f"Bar chart of relative {t.gene} {measure} in {t.cell_line} cells under "
                      f"{_join(groups)} conditions (mean ± SD of {int(rng.integers(3, 7))} "
                      "independent experiments). *p < 0.05, **p < 0.01 versus control.")


LINE_VARIABLES = (("tumour volume", "days", "mm³"), ("cell viability", "hours", "%"),
                  ("body weight", "weeks", "g"), ("blood glucose", "minutes", "mg/dL"),
                  ("relative luciferase activity", "hours", "RLU"))


def plan_line_plot(rng: np.random.Generator, t: Topic) -> FigurePlan:
    variable, x_unit, unit = _pick(rng, LINE_VARIABLES)
    series = ["vehicle", t.drug] + ([_other_drug(rng, t)] if rng.random() < 0.5 else [])
    attrs = {"variable": variable, "x_unit": x_unit, "series": series, "cell_line": t.cell_line}
    return FigurePlan("line_plot", attrs, f"Time course of {variable} in {t.cell_line} models.",
                      f"Line plot of {variable} ({unit}) over time ({x_unit}) for the "
                      f"{_join(series)} groups in {t.cell_line} models of {t.disease}; "
                      "points show mean ± SEM.")


def plan_scatter_plot(rng: np.random.Generator, t: Topic) -> FigurePlan:
    y_gene = _pick(rng, [g for g in PATHWAYS[t.pathway] if g != t.gene])
    r, n = round(float(rng.uniform(0.3, 0.9)) * _pick(rng, (1, -1)), 2), int(rng.integers(30, 400))
    attrs = {"x_gene": t.gene, "y_gene": y_gene, "disease": t.disease, "r": r, "n": n}
    return FigurePlan("scatter_plot", attrs, f"{t.gene} expression correlates with {y_gene} in {t.disease}.",
                      f"Scatter plot of {t.gene} versus {y_gene} expression (log2 TPM) in {n} "
                      f"{t.disease} samples; Pearson r = {r:.2f}. The line shows the linear fit.")


BOX_GROUPS = (("normal", "tumour"), ("stage I", "stage II", "stage III", "stage IV"),
              ("healthy controls", "patients"), ("wild-type", "knockout"))


def plan_box_plot(rng: np.random.Generator, t: Topic) -> FigurePlan:
    groups = list(_pick(rng, BOX_GROUPS))
    n = int(rng.integers(40, 600))
    attrs = {"gene": t.gene, "disease": t.disease, "groups": groups}
    return FigurePlan("box_plot", attrs, f"{t.gene} expression in {t.disease}.",
                      f"Box plots of {t.gene} expression in {_join(groups)} groups of the "
                      f"{t.disease} cohort (n = {n}); boxes show the median and interquartile "
                      "range, whiskers 1.5 × IQR.")


def plan_kaplan_meier(rng: np.random.Generator, t: Topic) -> FigurePlan:
    endpoint = _pick(rng, ("overall survival", "progression-free survival",
                           "disease-free survival", "relapse-free survival"))
    groups = [f"{t.gene} high", f"{t.gene} low"] if rng.random() < 0.6 else [t.drug, "placebo"]
    p = float(_pick(rng, (0.001, 0.003, 0.01, 0.02, 0.04, 0.12)))
    hr = round(float(rng.uniform(0.4, 2.5)), 2)
    attrs = {"disease": t.disease, "endpoint": endpoint, "groups": groups, "p_value": p,
             "hazard_ratio": hr}
    return FigurePlan("kaplan_meier", attrs, f"Kaplan-Meier analysis of {endpoint} in {t.disease}.",
                      f"Kaplan-Meier curves of {endpoint} for patients with {t.disease} "
                      f"stratified into {_join(groups)} groups (n = {int(rng.integers(60, 900))}); "
                      f"log-rank p = {p}, hazard ratio {hr:.2f}. Tick marks indicate censored patients.")


def plan_heatmap(rng: np.random.Generator, t: Topic) -> FigurePlan:
    pool = sorted({g for genes in PATHWAYS.values() for g in genes} - {t.gene})
    genes = [t.gene] + _sample(rng, pool, int(rng.integers(5, 12)))
    groups = ["control", t.drug]
    attrs = {"genes": genes, "groups": groups, "cell_line": t.cell_line}
    return FigurePlan("heatmap", attrs, f"Differentially expressed genes in {t.cell_line} cells treated with {t.drug}.",
                      f"Heatmap of z-scored expression of {_join(genes)} in {t.cell_line} cells, "
                      f"{_join(groups)} (three replicates each); red, up-regulated; blue, down-regulated.")


def plan_western_blot(rng: np.random.Generator, t: Topic) -> FigurePlan:
    genes = [g for g in PATHWAYS[t.pathway] if g != t.gene]
    proteins = [f"p-{t.gene}", t.gene] + _sample(rng, genes, int(rng.integers(0, 3)))
    loading = _pick(rng, LOADING_CONTROLS)
    top = int(_pick(rng, (10, 20, 50)))
    attrs = {"proteins": proteins + [loading], "loading_control": loading, "drug": t.drug,
             "cell_line": t.cell_line}
    return FigurePlan("western_blot", attrs, f"{t.drug.capitalize()} inhibits {t.gene} signalling in {t.cell_line} cells.",
                      f"Western blot analysis of {_join(proteins)} in {t.cell_line} cells "
                      f"treated with increasing doses of {t.drug} (0–{top} µM) for 24 h. "
                      f"{loading} served as the loading control.")


def plan_gel_electrophoresis(rng: np.random.Generator, t: Topic) -> FigurePlan:
    ladder = _pick(rng, ("100 bp DNA ladder", "1 kb DNA ladder"))
    size = int(rng.integers(12, 90)) * 10 if ladder.startswith("100") else int(rng.integers(6, 40)) * 100
    lanes = int(rng.integers(3, 9))
    attrs = {"gene": t.gene, "ladder": ladder, "product_size_bp": size, "lanes": lanes,
             "cell_line": t.cell_line}
    return FigurePlan("gel_electrophoresis", attrs, f"RT-PCR detection of {t.gene} transcripts.",
                      f"Agarose gel electrophoresis of RT-PCR products amplified with {t.gene}-specific "
                      f"primers from {t.cell_line} cells (expected product {size} bp). Lane M, "
                      f"{ladder}; lanes 1–{lanes}, samples; NTC, no-template control.")


MARKER_COLOURS = ("green", "red")


def plan_fluorescence(rng: np.random.Generator, t: Topic) -> FigurePlan:
    markers = [t.gene] if rng.random() < 0.5 else [_pick(rng, MARKERS)]
    if rng.random() < 0.5:
        markers.append(_pick(rng, [m for m in MARKERS if m not in markers]))
    colours = "; ".join(f"{m}, {c}" for m, c in zip(markers, MARKER_COLOURS, strict=False))
    scale = int(_pick(rng, (10, 20, 50, 100)))
    attrs = {"markers": markers, "cell_type": t.cell_type, "counterstain": "DAPI", "drug": t.drug,
             "scale_bar_um": scale}
    return FigurePlan("fluorescence_micrograph", attrs, f"Immunofluorescence staining of {_join(markers)} in {t.cell_type}.",
                      f"Representative confocal fluorescence micrographs of {t.cell_type} stained "
                      f"for {_join(markers)} ({colours}) with DAPI nuclear counterstain (blue) "
                      f"after {t.drug} treatment. Scale bar, {scale} µm.")


HISTO_FEATURES = ("inflammatory infiltrate", "necrosis", "fibrosis", "atypical nuclei",
                  "glandular architecture", "haemorrhage")


def plan_histology(rng: np.random.Generator, t: Topic) -> FigurePlan:
    feature = _pick(rng, HISTO_FEATURES)
    mag = int(_pick(rng, (100, 200, 400)))
    attrs = {"stain": "H&E", "tissue": t.tissue, "disease": t.disease, "feature": feature,
             "magnification": mag}
    return FigurePlan("histology", attrs, f"Histopathology of {t.tissue} tissue in {t.disease}.",
                      f"Haematoxylin and eosin (H&E) staining of {t.tissue} sections from a patient "
                      f"with {t.disease} showing {feature}. Original magnification ×{mag}.")


#: tissue -> imaged body region; regions -> modalities and findings
REGION_OF = {"brain": "brain", "lung": "chest", "heart": "chest", "breast": "chest",
             "liver": "abdomen", "pancreas": "abdomen", "kidney": "abdomen", "colon": "abdomen",
             "knee": "knee", "synovium": "knee", "prostate": "pelvis", "ovary": "pelvis"}
REGIONS = {
    "brain": (("CT", "MRI"), ("mass", "lesion", "oedema", "haemorrhage")),
    "chest": (("X-ray", "CT"), ("nodule", "consolidation", "pleural effusion", "mass")),
    "abdomen": (("CT", "MRI"), ("lesion", "mass", "cyst")),
    "knee": (("X-ray", "MRI"), ("fracture", "joint space narrowing", "effusion")),
    "pelvis": (("CT", "MRI"), ("mass", "lesion")),
}
MODALITY_NAMES = {"X-ray": "X-ray radiograph", "CT": "computed tomography (CT)",
                  "MRI": "magnetic resonance imaging (MRI)"}


def plan_radiology(rng: np.random.Generator, t: Topic) -> FigurePlan:
    region = REGION_OF.get(t.tissue) or _pick(rng, sorted(REGIONS))
    modalities, findings = REGIONS[region]
    modality, finding = _pick(rng, modalities), _pick(rng, findings)
    attrs = {"modality": modality, "region": region, "finding": finding, "disease": t.disease}
    plane = "" if modality == "X-ray" else _pick(rng, ("Axial ", "Coronal ", "Sagittal "))
    text = (f"{plane}{MODALITY_NAMES[modality]} of the {region} showing a {finding} (arrow) "
            f"in a patient with {t.disease}.")
    return FigurePlan("radiology", attrs, f"{modality} findings in a patient with {t.disease}.",
                      text[0].upper() + text[1:])


def plan_flowchart(rng: np.random.Generator, t: Topic) -> FigurePlan:
    if rng.random() < 0.5:
        n = int(rng.integers(200, 1500))
        attrs = {"kind": "CONSORT", "disease": t.disease, "arms": [t.drug, "placebo"], "n_screened": n}
        return FigurePlan("flowchart", attrs, f"CONSORT flow diagram of the {t.drug} trial.",
                          f"CONSORT flow diagram of patients with {t.disease} randomised to "
                          f"{t.drug} or placebo ({n} assessed for eligibility).")
    method = _pick(rng, ("RNA-seq", "single-cell RNA-seq", "proteomics", "CRISPR screening"))
    attrs = {"kind": "workflow", "disease": t.disease, "method": method, "cell_line": t.cell_line}
    return FigurePlan("flowchart", attrs, "Schematic workflow of the study.",
                      f"Flowchart of the study workflow: {t.disease} samples were profiled by "
                      f"{method}, and candidate genes were validated in {t.cell_line} cells.")


def plan_pathway(rng: np.random.Generator, t: Topic) -> FigurePlan:
    chain = PATHWAYS[t.pathway]
    k = int(rng.integers(4, len(chain) + 1))
    start = int(rng.integers(0, len(chain) - k + 1))
    genes = list(chain[start:start + k])
    attrs: dict[str, Any] = {"pathway": t.pathway, "genes": genes, "disease": t.disease}
    text = (f"Schematic diagram of the {t.pathway} pathway in {t.disease}: {_join(genes)}. "
            f"{genes[0]} activates {genes[1]}, leading to activation of {genes[-1]}.")
    if rng.random() < 0.6:
        attrs["drug"], attrs["drug_target"] = t.drug, _pick(rng, genes[1:])
        text += f" {t.drug.capitalize()} inhibits {attrs['drug_target']}."
    return FigurePlan("pathway_diagram", attrs, f"Proposed model of {t.pathway} signalling in {t.disease}.", text)


PLANNERS: dict[str, Callable[[np.random.Generator, Topic], FigurePlan]] = {
    "bar_chart": plan_bar_chart, "line_plot": plan_line_plot, "scatter_plot": plan_scatter_plot,
    "box_plot": plan_box_plot, "kaplan_meier": plan_kaplan_meier, "heatmap": plan_heatmap,
    "western_blot": plan_western_blot, "gel_electrophoresis": plan_gel_electrophoresis,
    "fluorescence_micrograph": plan_fluorescence, "histology": plan_histology,
    "radiology": plan_radiology, "flowchart": plan_flowchart, "pathway_diagram": plan_pathway,
}
PANEL_LABELS = "ABCD"
MULTI_TITLES = ("{gene} regulates {pathway} signalling in {disease}.",
                "{drug} treatment alters {gene} in {cell_line} cells.",
                "Characterisation of {gene} in {disease}.",
                "{gene} expression and function in {cell_type}.")


def plan_multi_panel(rng: np.random.Generator, t: Topic) -> FigurePlan:
    kinds = _sample(rng, sorted(PLANNERS), int(rng.integers(2, 5)))
    panels = [PLANNERS[k](rng, t) for k in kinds]
    attrs = {"panels": [{"label": PANEL_LABELS[i], "type": p.fig_type, "attributes": p.attributes}
                        for i, p in enumerate(panels)]}
    text = " ".join(f"({PANEL_LABELS[i]}) {p.text}" for i, p in enumerate(panels))
    title = _pick(rng, MULTI_TITLES).format(**t.__dict__)
    return FigurePlan("multi_panel", attrs, title[0].upper() + title[1:], text)


def plan_figure(rng: np.random.Generator, topic: Topic) -> FigurePlan:
    """One figure: a multi-panel figure one time in eight, else one of the single types."""
    if rng.random() < 0.125:
        return plan_multi_panel(rng, topic)
    return PLANNERS[_pick(rng, sorted(PLANNERS))](rng, topic)


TITLE_TEMPLATES = (
    "{gene} promotes {disease} progression through the {pathway} pathway",
    "{Drug} suppresses {disease} by targeting {gene} in {cell_line} cells",
    "Role of {gene} in {cell_type} during {disease}",
    "{pathway} signalling and {gene} as therapeutic targets in {disease}",
    "Loss of {gene} sensitises {disease} models to {drug}",
    "Clinical and molecular characterisation of {gene} in {disease}",
)


@dataclass
class ArticlePlan:
    """One synthetic article: ids, metadata and its figures."""

    article_id: str
    title: str
    journal: str
    year: int
    month: int
    day: int
    license_url: str
    license_text: str
    authors: list[tuple[str, str]]
    topic: Topic
    figures: list[FigurePlan] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.article_id


def _license(rng: np.random.Generator) -> tuple[str, str]:
    u, acc = rng.random(), 0.0
    for weight, url, text in LICENSES:
        acc += weight
        if u < acc:
            return url, text
    return "", ""


def plan_article(seed: int, n: int) -> ArticlePlan:
    """The complete plan of article ``n`` for ``seed`` (cheap: no drawing)."""
    rng = np.random.default_rng([seed, n])
    t = plan_topic(rng)
    words = {**t.__dict__, "Drug": t.drug.capitalize()}
    url, text = _license(rng)
    authors = [(_pick(rng, SURNAMES), _pick(rng, GIVEN)) for _ in range(int(rng.integers(2, 8)))]
    plan = ArticlePlan(f"SYNTH-{seed}-{n:06d}", _pick(rng, TITLE_TEMPLATES).format(**words),
                       _pick(rng, JOURNALS), int(rng.integers(2005, 2026)), int(rng.integers(1, 13)),
                       int(rng.integers(1, 29)), url, text, authors, t)
    plan.figures = [plan_figure(rng, t) for _ in range(int(rng.integers(1, 7)))]
    return plan


# ----------------------------------------------------------------------------- drawing helpers

Size = tuple[int, int]
RGB = tuple[int, int, int]


@lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans shipped with matplotlib (same glyphs on every machine)."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def _centered_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
                   f: ImageFont.FreeTypeFont, fill: Any = "black") -> None:
    draw.text(xy, text, font=f, fill=fill, anchor="mm")


def _arrow(draw: ImageDraw.ImageDraw, p0: tuple[float, float], p1: tuple[float, float],
           fill: Any = "black", width: int = 2, head: int = 8, inhibit: bool = False) -> None:
    """A line from p0 to p1 ending in an arrow head, or a T-bar when ``inhibit``."""
    draw.line([p0, p1], fill=fill, width=width)
    ang = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    if inhibit:
        dx, dy = head * math.sin(ang), -head * math.cos(ang)
        draw.line([(p1[0] - dx, p1[1] - dy), (p1[0] + dx, p1[1] + dy)], fill=fill, width=width + 1)
        return
    left = (p1[0] - head * math.cos(ang - 0.45), p1[1] - head * math.sin(ang - 0.45))
    right = (p1[0] - head * math.cos(ang + 0.45), p1[1] - head * math.sin(ang + 0.45))
    draw.polygon([p1, left, right], fill=fill)


def _box_edge(c0: tuple[float, float], c1: tuple[float, float], half: Size) -> tuple[float, float]:
    """Where the segment from box centre c0 towards c1 leaves a box of half-size ``half``."""
    dx, dy = c1[0] - c0[0], c1[1] - c0[1]
    t = min(half[0] / abs(dx) if dx else math.inf, half[1] / abs(dy) if dy else math.inf)
    return c0[0] + dx * t, c0[1] + dy * t


def _noise_field(rng: np.random.Generator, size: Size, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upscaled bicubically."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    img = Image.fromarray(coarse, "L").resize(size, Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _scale_bar(draw: ImageDraw.ImageDraw, size: Size, label: str, fill: Any) -> None:
    w, h = size
    x1, y = w - 12, h - 14
    draw.rectangle([x1 - w // 6, y, x1, y + 3], fill=fill)
    draw.text((x1 - w // 12, y - 3), label, font=font(max(9, w // 50)), fill=fill, anchor="md")


def _mpl_axes(size: Size) -> tuple[Any, Any]:
    """A matplotlib Figure (no pyplot: nothing global to close) and one Axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    fontsize = max(6.0, min(9.0, size[0] / 60))
    ax.tick_params(labelsize=fontsize)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _mpl_image(fig: Any) -> Image.Image:
    """Rasterise with Agg and hand the pixels to Pillow (no savefig metadata at all)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    # fixed margins: tight_layout would double the drawing time
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.2, top=0.9)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def _title(fig: Any, text: str, size: Size) -> None:
    """A figure-level title at a fixed place (Axes titles cost a layout pass)."""
    fig.text(0.56, 0.985, text, ha="center", va="top", fontsize=_fontsize(size) + 1)


def _fontsize(size: Size) -> float:
    return max(6.0, min(9.0, size[0] / 60))


PALETTE = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377")


# ----------------------------------------------------------------------------- chart renderers


def render_bar_chart(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    fig, ax = _mpl_axes(size)
    k = len(a["groups"])
    means = np.concatenate([[1.0], rng.uniform(0.2, 2.5, k - 1)])
    errs = means * rng.uniform(0.05, 0.2, k)
    xs = np.arange(k)
    ax.bar(xs, means, yerr=errs, capsize=3, color=[PALETTE[i % 6] for i in range(k)], width=0.6)
    ax.set_xticks(xs, [textwrap.fill(g, 12) for g in a["groups"]], fontsize=_fontsize(size))
    ax.set_ylabel(f"Relative {a['gene']} {a['measure']}", fontsize=_fontsize(size))
    for x, m, e in zip(xs[1:], means[1:], errs[1:], strict=False):
        ax.text(x, m + e + 0.05, _pick(rng, ("*", "**", "ns")), ha="center", fontsize=_fontsize(size))
    _title(fig, a["cell_line"], size)
    return _mpl_image(fig)


def render_line_plot(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    fig, ax = _mpl_axes(size)
    xs = np.linspace(0, float(rng.integers(5, 30)), int(rng.integers(5, 9)))
    for i, name in enumerate(a["series"]):
        slope = rng.uniform(0.2, 1.5) * (1.0 if i == 0 else rng.uniform(0.1, 0.8))
        ys = 10 + slope * xs ** rng.uniform(1.0, 1.6) + rng.normal(0, 0.5, len(xs))
        ax.errorbar(xs, ys, yerr=np.abs(ys) * 0.06, marker="o", ms=3, capsize=2, label=name,
                    color=PALETTE[i])
    ax.set_xlabel(f"Time ({a['x_unit']})", fontsize=_fontsize(size))
    ax.set_ylabel(a["variable"].capitalize(), fontsize=_fontsize(size))
    ax.legend(fontsize=_fontsize(size), frameon=False)
    return _mpl_image(fig)


def render_scatter_plot(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    fig, ax = _mpl_axes(size)
    n, r = min(int(a["n"]), 300), float(a["r"])
    x = rng.normal(5, 1.5, n)
    y = 4 + r * (x - 5) + math.sqrt(max(1e-3, 1 - r * r)) * 1.5 * rng.normal(0, 1, n)
    ax.scatter(x, y, s=6, alpha=0.6, color=PALETTE[0])
    slope, icpt = np.polyfit(x, y, 1)
    ax.plot(np.sort(x), slope * np.sort(x) + icpt, color=PALETTE[1], lw=1.5)
    ax.set_xlabel(f"{a['x_gene']} expression (log2 TPM)", fontsize=_fontsize(size))
    ax.set_ylabel(f"{a['y_gene']} expression (log2 TPM)", fontsize=_fontsize(size))
    ax.text(0.03, 0.95, f"r = {r:.2f}", transform=ax.transAxes, va="top", fontsize=_fontsize(size))
    _title(fig, a["disease"], size)
    return _mpl_image(fig)


def render_box_plot(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    fig, ax = _mpl_axes(size)
    data = [rng.normal(5 + i * rng.uniform(0.2, 1.0), rng.uniform(0.6, 1.4), 60)
            for i in range(len(a["groups"]))]
    xs = list(range(1, len(data) + 1))
    ax.boxplot(data, positions=xs, widths=0.5, patch_artist=True,
               boxprops={"facecolor": PALETTE[2], "alpha": 0.6}, flierprops={"markersize": 2})
    ax.set_xticks(xs, [textwrap.fill(g, 10) for g in a["groups"]], fontsize=_fontsize(size))
    ax.set_ylabel(f"{a['gene']} expression", fontsize=_fontsize(size))
    _title(fig, a["disease"], size)
    return _mpl_image(fig)


def _km_curve(rng: np.random.Generator, hazard: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate for simulated exponential survival with uniform censoring."""
    event_t, censor_t = rng.exponential(1 / hazard, n), rng.uniform(0, 90, n)
    t = np.minimum(event_t, censor_t)
    order = np.argsort(t)
    t, event = t[order], (event_t <= censor_t)[order]
    at_risk = n - np.arange(n)
    surv = np.cumprod(1 - event / at_risk)
    return t, surv, event


def render_kaplan_meier(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    fig, ax = _mpl_axes(size)
    base = rng.uniform(0.01, 0.04)
    for i, name in enumerate(a["groups"]):
        t, s, event = _km_curve(rng, base * (float(a["hazard_ratio"]) if i == 0 else 1.0), 80)
        ax.step(np.concatenate([[0], t]), np.concatenate([[1], s]), where="post", label=name,
                color=PALETTE[i])
        ax.plot(t[~event], s[~event], "|", color=PALETTE[i], ms=5)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("Time (months)", fontsize=_fontsize(size))
    ax.set_ylabel(f"{a['endpoint'].capitalize()} probability", fontsize=_fontsize(size))
    ax.text(0.03, 0.05, f"log-rank p = {a['p_value']}", transform=ax.transAxes, fontsize=_fontsize(size))
    ax.legend(fontsize=_fontsize(size), frameon=False, loc="upper right")
    _title(fig, a["disease"], size)
    return _mpl_image(fig)


def _diverging(z: np.ndarray) -> np.ndarray:
    """Blue-white-red colours for z-scores in [-2.5, 2.5]."""
    blue, white, red = (np.array(c, np.float32) for c in ((33, 102, 172), (247, 247, 247), (178, 24, 43)))
    u = np.clip(z / 2.5, -1, 1)[..., None]
    rgb = np.where(u < 0, white + (blue - white) * -u, white + (red - white) * u)
    return rgb.astype(np.uint8)


def render_heatmap(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    genes, groups, reps = a["genes"], a["groups"], 3
    effect = rng.normal(0, 1.5, (len(genes), 1))
    values = rng.normal(0, 0.5, (len(genes), len(groups) * reps))
    values[:, reps:] += effect
    z = (values - values.mean(1, keepdims=True)) / (values.std(1, keepdims=True) + 1e-6)
    w, h = size
    f = font(max(8, min(13, h // (len(genes) + 4))))
    left, top, right = w // 5, h // 8, w // 8
    grid = Image.fromarray(_diverging(z), "RGB").resize((w - left - right, h - top - 8), Image.Resampling.NEAREST)
    img = Image.new("RGB", size, "white")
    img.paste(grid, (left, top))
    draw = ImageDraw.Draw(img)
    row_h = (h - top - 8) / len(genes)
    for i, g in enumerate(genes):
        draw.text((left - 4, top + (i + 0.5) * row_h), g, font=f, fill="black", anchor="rm")
    col_w = (w - left - right) / len(groups)
    for j, g in enumerate(groups):
        draw.rectangle([left + j * col_w, top - 10, left + (j + 1) * col_w, top - 3], fill=PALETTE[j])
        _centered_text(draw, (left + (j + 0.5) * col_w, top - 20), g, f)
    key = _diverging(np.linspace(2.5, -2.5, 100)[:, None]).repeat(10, 1)
    img.paste(Image.fromarray(key, "RGB").resize((12, h // 2)), (w - right + 10, top))
    draw.text((w - right + 26, top), "2", font=f, fill="black")
    draw.text((w - right + 26, top + h // 2 - 10), "-2", font=f, fill="black")
    return img


# ----------------------------------------------------------------------------- image renderers


def _bands_to_image(layer: Image.Image, background: float, sign: float, rng: np.random.Generator,
                    blur: float) -> np.ndarray:
    """Blur a drawn band layer and put it on a noisy background (sign -1 darkens)."""
    bands = np.asarray(layer.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    noise = rng.normal(0, 4, bands.shape).astype(np.float32)
    return np.clip(background + sign * bands * 0.85 + noise, 0, 255).astype(np.uint8)


def render_western_blot(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    w, h = size
    proteins, lanes = a["proteins"], 4
    f = font(max(9, min(13, h // (len(proteins) * 3 + 4))))
    left, right, top = w // 8, w // 4, h // 6
    row_h = (h - top - 8) / len(proteins)
    lane_w = (w - left - right) / lanes
    layer = Image.new("L", size, 0)
    ld = ImageDraw.Draw(layer)
    for i, p in enumerate(proteins):
        cy = top + (i + 0.5) * row_h
        trend = np.linspace(1, rng.uniform(0.1, 1.2), lanes) if p != a["loading_control"] else np.ones(lanes)
        for j in range(lanes):
            level = int(np.clip(trend[j] * rng.uniform(0.7, 1.0), 0.05, 1) * 230)
            cx = left + (j + 0.5) * lane_w
            ld.ellipse([cx - lane_w * 0.38, cy - row_h * 0.16, cx + lane_w * 0.38, cy + row_h * 0.16], fill=level)
    arr = _bands_to_image(layer, 225, -1, rng, blur=max(1.5, row_h / 10))
    img = Image.fromarray(arr, "L").convert("RGB")
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, w, top - 2], fill="white")
    draw.rectangle([w - right + 4, 0, w, h], fill="white")
    draw.rectangle([0, 0, left - 4, h], fill="white")
    for i, p in enumerate(proteins):
        cy = top + (i + 0.5) * row_h
        draw.text((w - right + 10, cy), p, font=f, fill="black", anchor="lm")
        draw.text((left - 8, cy), f"{int(rng.integers(15, 150))}", font=font(max(8, f.size - 2)), fill="black", anchor="rm")
    for j, dose in enumerate(("0", "1", "5", "10")):
        _centered_text(draw, (left + (j + 0.5) * lane_w, top - 12), dose, f)
    _centered_text(draw, (left + (w - left - right) / 2, top - 30), f"{a['drug']} (µM)", f)
    draw.text((2, top - 12), "kDa", font=f, fill="black", anchor="lm")
    return img


def render_gel(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    w, h = size
    lanes = int(a["lanes"]) + 2  # ladder and no-template control besides the samples
    top, bottom = h // 9, h - 10
    lane_w = (w - w // 7) / lanes
    layer = Image.new("L", size, 0)
    ld = ImageDraw.Draw(layer)
    ladder = np.geomspace(100, 1500 if a["ladder"].startswith("100") else 10000, 10)

    def y_of(bp: float) -> float:
        return top + 10 + (bottom - top - 20) * (1 - math.log(bp / ladder[0]) / math.log(ladder[-1] / ladder[0]))

    x0 = w // 7
    for bp in ladder:
        ld.rectangle([x0 + lane_w * 0.15, y_of(bp) - 2, x0 + lane_w * 0.85, y_of(bp) + 2], fill=170)
    for j in range(1, lanes - 1):
        if rng.random() < 0.85:
            y = y_of(float(np.clip(a["product_size_bp"], ladder[0], ladder[-1])))
            ld.rectangle([x0 + (j + 0.15) * lane_w, y - 3, x0 + (j + 0.85) * lane_w, y + 3], fill=int(rng.integers(120, 255)))
    arr = _bands_to_image(layer, 18, 1, rng, blur=1.6)
    img = Image.fromarray(np.stack([arr, arr, (arr * 0.85).astype(np.uint8)], -1), "RGB")
    draw = ImageDraw.Draw(img)
    f = font(max(9, w // 45))
    labels = ["M"] + [str(i) for i in range(1, lanes - 1)] + ["NTC"]
    for j, lab in enumerate(labels):
        _centered_text(draw, (x0 + (j + 0.5) * lane_w, top // 2), lab, f, fill="white")
    for bp in ladder[::3]:
        draw.text((x0 - 4, y_of(bp)), f"{int(round(bp, -1))}", font=font(max(8, w // 55)), fill="white", anchor="rm")
    draw.text((4, top // 2), a["gene"], font=f, fill="white", anchor="lm")
    return img


def _cells_layer(size: Size, centres: np.ndarray, radii: np.ndarray, rng: np.random.Generator) -> Image.Image:
    layer = Image.new("L", size, 0)
    d = ImageDraw.Draw(layer)
    for (x, y), r in zip(centres, radii, strict=False):
        rx, ry = r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)
        d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=int(rng.integers(120, 255)))
    return layer


def render_fluorescence(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    w, h = size
    n = int(rng.integers(12, 40))
    centres = rng.uniform([0, 0], [w, h], (n, 2))
    r = rng.uniform(w / 70, w / 40, n)
    blur = ImageFilter.GaussianBlur(max(1.0, w / 300))
    blue = np.asarray(_cells_layer(size, centres, r, rng).filter(blur), np.float32)
    chans = [np.asarray(_cells_layer(size, centres + rng.normal(0, w / 120, (n, 2)), r * rng.uniform(1.6, 2.6), rng)
                        .filter(ImageFilter.GaussianBlur(w / 120)), np.float32) * rng.uniform(0.5, 1.0)
             for _ in a["markers"]]
    green = chans[0]
    red = chans[1] if len(chans) > 1 else np.zeros_like(blue)
    rgb = np.stack([red, green, blue], -1) + rng.normal(0, 3, (h, w, 3))
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    f = font(max(9, w // 40), bold=True)
    labels = [(m, c) for m, c in zip(a["markers"], ("#40ff40", "#ff4040"), strict=False)] + [("DAPI", "#6080ff")]
    for i, (label, colour) in enumerate(labels):
        draw.text((w - 6, 4 + i * (f.size + 3)), label, font=f, fill=colour, anchor="ra")
    _scale_bar(draw, size, f"{a['scale_bar_um']} µm", "white")
    return img


def render_histology(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    w, h = size
    tex = _noise_field(rng, size, 10)[..., None]
    base = np.array([236, 170, 200], np.float32) * (0.85 + 0.15 * tex)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # lumens/glands lined with nuclei
        cx, cy, rx, ry = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(w / 16, w / 7), rng.uniform(h / 16, h / 7)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=(248, 238, 245))
        for ang in np.linspace(0, 2 * math.pi, 24, endpoint=False):
            x, y = cx + rx * math.cos(ang), cy + ry * math.sin(ang)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(90, 50, 140))
    pts = rng.uniform([0, 0], [w, h], (int(w * h / 500), 2))
    for x, y in pts:
        s = rng.uniform(1.5, 3.5)
        draw.ellipse([x - s, y - s * 0.8, x + s, y + s * 0.8], fill=(int(rng.integers(60, 110)), 40, 130))
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    _scale_bar(ImageDraw.Draw(img), size, "50 µm", "black")
    return img


#: region -> shapes (kind, cx, cy, rx, ry, grey) in fractions of the image
ANATOMY: dict[str, list[tuple[str, float, float, float, float, int]]] = {
    "chest": [("e", .5, .5, .46, .44, 150), ("e", .32, .48, .14, .3, 35), ("e", .68, .48, .14, .3, 35),
              ("e", .55, .62, .12, .14, 170), ("r", .5, .5, .03, .45, 220)],
    "brain": [("e", .5, .5, .38, .46, 230), ("e", .5, .5, .35, .43, 115), ("e", .45, .5, .04, .1, 40),
              ("e", .55, .5, .04, .1, 40)],
    "abdomen": [("e", .5, .5, .47, .38, 95), ("e", .5, .5, .43, .34, 125), ("e", .33, .42, .15, .13, 150),
                ("e", .5, .72, .06, .06, 235), ("e", .36, .68, .06, .08, 160), ("e", .64, .68, .06, .08, 160)],
    "knee": [("r", .5, .25, .14, .25, 200), ("r", .5, .77, .13, .23, 200), ("e", .5, .5, .25, .07, 60)],
    "pelvis": [("e", .5, .5, .46, .36, 105), ("e", .3, .55, .1, .16, 215), ("e", .7, .55, .1, .16, 215),
               ("e", .5, .4, .1, .09, 140)],
}


def render_radiology(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    w = h = min(size)
    layer = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(layer)
    for kind, cx, cy, rx, ry, grey in ANATOMY[a["region"]]:
        box = [(cx - rx) * w, (cy - ry) * h, (cx + rx) * w, (cy + ry) * h]
        (d.ellipse if kind == "e" else d.rectangle)(box, fill=int(grey + rng.integers(-12, 12)))
    lx, ly = rng.uniform(0.35, 0.65) * w, rng.uniform(0.3, 0.6) * h
    lr = rng.uniform(0.03, 0.07) * w
    d.ellipse([lx - lr, ly - lr, lx + lr, ly + lr], fill=int(_pick(rng, (30, 245))))
    blurred = np.asarray(layer.filter(ImageFilter.GaussianBlur(w / 200)), np.float32)
    arr = blurred * (0.9 + 0.2 * _noise_field(rng, (w, h), 24)) + rng.normal(0, 6, blurred.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    draw = ImageDraw.Draw(img)
    _arrow(draw, (lx + 3.2 * lr, ly - 3.2 * lr), (lx + 1.2 * lr, ly - 1.2 * lr), fill="white", width=3, head=10)
    f = font(max(10, w // 30))
    draw.text((6, 6), "R", font=f, fill="white")
    draw.text((w - 6, h - 6), {"MRI": "T2", "CT": "C+", "X-ray": "PA"}[a["modality"]], font=f, fill="white", anchor="rd")
    canvas = Image.new("RGB", size, "black")  # square scan centred on a black film
    canvas.paste(img, ((size[0] - w) // 2, (size[1] - h) // 2))
    return canvas


# ----------------------------------------------------------------------------- diagram renderers


def _boxed_text(draw: ImageDraw.ImageDraw, centre: tuple[float, float], half: Size, text: str,
                f: ImageFont.FreeTypeFont, fill: Any, outline: Any = "black", round_: bool = True) -> None:
    x, y = centre
    box = [x - half[0], y - half[1], x + half[0], y + half[1]]
    if round_:
        draw.rounded_rectangle(box, radius=6, fill=fill, outline=outline, width=2)
    else:
        draw.ellipse(box, fill=fill, outline=outline, width=2)
    chars = max(8, int(2 * half[0] / (f.size * 0.6)))
    draw.multiline_text((x, y), textwrap.fill(text, chars), font=f, fill="black", anchor="mm", align="center")


def _consort_steps(a: dict[str, Any], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    n = int(a["n_screened"])
    randomised = int(n * rng.uniform(0.4, 0.8))
    half = randomised // 2
    trunk = [f"Assessed for eligibility (n = {n})", f"Randomised (n = {randomised})"]
    arms = [f"Allocated to {arm} (n = {half})" for arm in a["arms"]]
    return trunk, arms


def render_flowchart(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    f = font(max(8, min(12, w // 45)))
    if a["kind"] == "CONSORT":
        trunk, leaves = _consort_steps(a, rng)
        leaves += [f"Analysed, {arm}" for arm in a["arms"]]
    else:
        trunk = [f"{a['disease']} samples", a["method"], "Differential analysis"]
        leaves = ["Candidate genes", "Pathway enrichment", f"Validation in {a['cell_line']}", "Survival analysis"]
    rows = len(trunk) + 2
    row_h, half = h / rows, (w * 0.22, h / rows * 0.32)
    centres = [(w / 2, (i + 0.5) * row_h) for i in range(len(trunk))]
    for i, c in enumerate(centres):
        _boxed_text(draw, c, (int(half[0]), int(half[1])), trunk[i], f, "#DDEEFF")
        if i:
            _arrow(draw, (c[0], centres[i - 1][1] + half[1]), (c[0], c[1] - half[1]))
    for k, text in enumerate(leaves):
        c = (w * (0.27 if k % 2 == 0 else 0.73), (len(trunk) + 0.5 + k // 2) * row_h)
        _boxed_text(draw, c, (int(w * 0.2), int(half[1])), text, f, "#FFF2CC")
        src = centres[-1] if k < 2 else (c[0], c[1] - row_h)
        _arrow(draw, (src[0], src[1] + half[1]), (c[0], c[1] - half[1]))
    return img


def _pathway_layout(k: int, size: Size) -> list[tuple[float, float]]:
    """A snake of k positions, three per row, top to bottom."""
    w, h = size
    cols, rows = 3, math.ceil(k / 3)
    out = []
    for i in range(k):
        r, c = divmod(i, cols)
        c = c if r % 2 == 0 else cols - 1 - c
        out.append((w * (0.2 + 0.3 * c), h * (0.22 + 0.7 * (r + 0.5) / rows)))
    return out


def render_pathway(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    genes = a["genes"]
    pos = _pathway_layout(len(genes), size)
    half = (int(w * 0.11), int(h * 0.055))
    f = font(max(9, min(14, w // 40)), bold=True)
    draw.line([(0, h * 0.1), (w, h * 0.1)], fill="#C9A227", width=4)  # cell membrane
    draw.text((6, h * 0.1 + 4), "membrane", font=font(max(8, w // 60)), fill="#8A6D00")
    nx, ny = pos[-1]
    draw.rounded_rectangle([nx - half[0] * 1.6, ny - half[1] * 2.4, nx + half[0] * 1.6, ny + half[1] * 2.4],
                           radius=12, outline="#777777", width=2)
    draw.text((nx, ny + half[1] * 1.8), "nucleus", font=font(max(8, w // 60)), fill="#555555", anchor="mm")
    for i in range(1, len(genes)):
        _arrow(draw, _box_edge(pos[i - 1], pos[i], half), _box_edge(pos[i], pos[i - 1], half),
               fill="#333333", width=2, head=9)
    for i, g in enumerate(genes):
        _boxed_text(draw, pos[i], half, g, f, _pick(rng, ("#CFE8FF", "#D5F5D5", "#FFE0CC")), round_=i != 0)
    if "drug" in a:
        t = pos[genes.index(a["drug_target"])]
        d = (t[0] + (w * 0.16 if t[0] < w * 0.6 else -w * 0.16), t[1] - h * 0.12)
        _boxed_text(draw, d, (int(w * 0.1), int(h * 0.04)), a["drug"], font(max(8, w // 50)), "#FFD6E0", outline="#AA0033")
        _arrow(draw, _box_edge(d, t, (int(w * 0.1), int(h * 0.04))), _box_edge(t, d, half), fill="#AA0033", inhibit=True)
    _centered_text(draw, (w / 2, h * 0.045), f"{a['pathway']} signalling", font(max(10, w // 35), bold=True))
    return img


RENDERERS: dict[str, Callable[[dict[str, Any], np.random.Generator, Size], Image.Image]] = {
    "bar_chart": render_bar_chart, "line_plot": render_line_plot,
    "scatter_plot": render_scatter_plot, "box_plot": render_box_plot,
    "kaplan_meier": render_kaplan_meier, "heatmap": render_heatmap,
    "western_blot": render_western_blot, "gel_electrophoresis": render_gel,
    "fluorescence_micrograph": render_fluorescence, "histology": render_histology,
    "radiology": render_radiology, "flowchart": render_flowchart,
    "pathway_diagram": render_pathway,
}
GRIDS = {2: (2, 1), 3: (3, 1), 4: (2, 2)}


def render_multi_panel(a: dict[str, Any], rng: np.random.Generator, size: Size) -> Image.Image:
    panels = a["panels"]
    cols, rows = GRIDS[len(panels)]
    pw, ph = 300, 240
    img = Image.new("RGB", (cols * pw, rows * ph), "white")
    draw = ImageDraw.Draw(img)
    for i, panel in enumerate(panels):
        x, y = (i % cols) * pw, (i // cols) * ph
        img.paste(RENDERERS[panel["type"]](panel["attributes"], rng, (pw - 8, ph - 8)), (x + 4, y + 4))
        draw.rectangle([x + 4, y + 4, x + 26, y + 28], fill="white")
        draw.text((x + 8, y + 5), panel["label"], font=font(18, bold=True), fill="black")
    return img


RENDERERS["multi_panel"] = render_multi_panel


def render_figure(plan: FigurePlan, rng: np.random.Generator) -> Image.Image:
    """Draw one planned figure (width 420–640 px; multi-panel grids of 300×240 panels)."""
    w = int(rng.integers(42, 65)) * 10
    return RENDERERS[plan.fig_type](plan.attributes, rng, (w, int(w * rng.uniform(0.68, 0.8))))


def is_photo(plan: FigurePlan) -> bool:
    if plan.fig_type == "multi_panel":
        return any(p["type"] in PHOTO_TYPES for p in plan.attributes["panels"])
    return plan.fig_type in PHOTO_TYPES


def encode_image(img: Image.Image, photo: bool) -> tuple[bytes, str]:
    """JPEG for image-like figures, PNG for charts and diagrams; deterministic bytes."""
    buf = io.BytesIO()
    if photo:
        img.save(buf, "JPEG", quality=88)
        return buf.getvalue(), "jpg"
    img.save(buf, "PNG", compress_level=6)
    return buf.getvalue(), "png"


# ----------------------------------------------------------------------------- JATS and packages


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    el = etree.SubElement(parent, tag, {k.replace("__", ":").replace("_", "-"): v for k, v in attrib.items()})
    if text is not None:
        el.text = text
    return el


def _front(plan: ArticlePlan, root: etree._Element) -> None:
    front = _sub(root, "front")
    jm = _sub(front, "journal-meta")
    _sub(jm, "journal-id", "".join(w[:5] for w in plan.journal.split()[:4]), journal_id_type="nlm-ta")
    _sub(_sub(jm, "journal-title-group"), "journal-title", plan.journal)
    _sub(_sub(jm, "publisher"), "publisher-name", "figsearch synthetic corpus (not a real journal)")
    meta = _sub(front, "article-meta")
    _sub(meta, "article-id", plan.article_id, pub_id_type="other")
    _sub(_sub(meta, "title-group"), "article-title", plan.title)
    contribs = _sub(meta, "contrib-group")
    for surname, given in plan.authors:
        name = _sub(_sub(contribs, "contrib", contrib_type="author"), "name")
        _sub(name, "surname", surname)
        _sub(name, "given-names", given)
    date = _sub(meta, "pub-date", pub_type="epub")
    for tag, value in (("day", plan.day), ("month", plan.month), ("year", plan.year)):
        _sub(date, tag, str(value))
    perms = _sub(meta, "permissions")
    _sub(perms, "copyright-statement", f"© {plan.year} The Authors (synthetic)")
    _sub(perms, "copyright-year", str(plan.year))
    if plan.license_url:
        lic = etree.SubElement(perms, "license", {"license-type": "open-access", f"{{{XLINK}}}href": plan.license_url})
        _sub(lic, "license-p", plan.license_text)
    t = plan.topic
    _sub(_sub(meta, "abstract"), "p", f"We studied {t.gene} and the {t.pathway} pathway in {t.disease} "
         f"using {t.cell_line} cells, {t.cell_type} and {t.drug}. This article is synthetic.")
    cm = _sub(_sub(meta, "custom-meta-group"), "custom-meta")
    _sub(cm, "meta-name", SOURCE_META[0])
    _sub(cm, "meta-value", SOURCE_META[1])


def _fig(sec: etree._Element, k: int, fig: FigurePlan, href: str) -> None:
    p = _sub(sec, "p", "Results are shown in ")
    _sub(p, "xref", f"Figure {k}", ref_type="fig", rid=f"F{k}").tail = "."
    el = _sub(sec, "fig", id=f"F{k}", position="float")
    _sub(el, "object-id", json.dumps(fig.truth(), sort_keys=True, ensure_ascii=False), pub_id_type="figsearch-truth")
    _sub(el, "label", f"Figure {k}")
    cap = _sub(el, "caption")
    _sub(cap, "title", fig.title)
    _sub(cap, "p", fig.text)
    etree.SubElement(el, "graphic", {f"{{{XLINK}}}href": href})


DOCTYPE = ('<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange '
           'DTD v1.2 20190208//EN" "JATS-archivearticle1.dtd">')


def article_xml(plan: ArticlePlan, hrefs: Sequence[str]) -> bytes:
    """The article's JATS (PMC .nxml flavour) with one ``<fig>`` per planned figure."""
    root = etree.Element("article", {"article-type": "research-article"}, nsmap={"xlink": XLINK})
    _front(plan, root)
    sec = _sub(_sub(root, "body"), "sec", id="s1")
    _sub(sec, "title", "Results")
    for k, (fig, href) in enumerate(zip(plan.figures, hrefs, strict=False), start=1):
        _fig(sec, k, fig, href)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", doctype=DOCTYPE)


def deterministic_targz(members: Sequence[tuple[str, bytes]], mtime: int) -> bytes:
    """A .tar.gz whose bytes depend only on ``members`` and ``mtime``."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=mtime, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), mtime, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class ArticleResult:
    """What building one article produced (sent back from workers)."""

    article_id: str
    package: str
    figures: list[dict[str, Any]]
    written: bool
    bytes: int


def build_package(plan: ArticlePlan, seed: int, n: int) -> tuple[bytes, list[dict[str, Any]]]:
    """Render the article's figures and pack them with the JATS into .tar.gz bytes."""
    name = plan.name
    members, hrefs, rows = [], [], []
    for k, fig in enumerate(plan.figures, start=1):
        img = render_figure(fig, np.random.default_rng([seed, n, k]))
        data, ext = encode_image(img, is_photo(fig))
        href = f"{name}-g{k:03d}"
        members.append((f"{name}/{href}.{ext}", data))
        hrefs.append(href)
        rows.append({"article_id": plan.article_id, "figure_id": f"F{k}", "label": f"Figure {k}",
                     "image": f"{href}.{ext}", **fig.truth()})
    members.insert(0, (f"{name}/{name}.nxml", article_xml(plan, hrefs)))
    mtime = calendar.timegm((plan.year, plan.month, plan.day, 12, 0, 0))
    return deterministic_targz(members, mtime), rows


def truth_rows(plan: ArticlePlan) -> list[dict[str, Any]]:
    """Ground-truth rows of an already written package (image extension from the plan)."""
    return [{"article_id": plan.article_id, "figure_id": f"F{k}", "label": f"Figure {k}",
             "image": f"{plan.name}-g{k:03d}.{'jpg' if is_photo(fig) else 'png'}", **fig.truth()}
            for k, fig in enumerate(plan.figures, start=1)]


def make_article(task: tuple[str, int, int]) -> ArticleResult:
    """Worker: write package ``n`` into ``out_dir`` unless it is already there (resume)."""
    out_dir, seed, n = task
    plan = plan_article(seed, n)
    path = Path(out_dir) / f"{plan.name}.tar.gz"
    if path.exists():
        return ArticleResult(plan.article_id, path.name, truth_rows(plan), False, path.stat().st_size)
    data, rows = build_package(plan, seed, n)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic: a crash never leaves a half-written package
    return ArticleResult(plan.article_id, path.name, rows, True, len(data))


# ----------------------------------------------------------------------------- corpus driver


@dataclass
class SynthSummary:
    """Counts and rates of one ``generate_corpus`` run."""

    out_dir: Path
    articles: int = 0
    written: int = 0
    figures: int = 0
    bytes: int = 0
    seconds: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def figures_per_s(self) -> float:
        return self.figures / self.seconds if self.seconds else 0.0

    @property
    def articles_per_s(self) -> float:
        return self.articles / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (f"synth: {self.articles} articles ({self.written} written, "
                f"{self.articles - self.written} kept), {self.figures} figures, "
                f"{self.bytes / 2**20:.1f} MiB in {self.seconds:.1f} s: "
                f"{self.articles_per_s:.1f} articles/s, {self.figures_per_s:.1f} figures/s")


def _results(tasks: list[tuple[str, int, int]], workers: int) -> Any:
    if workers <= 1:
        return map(make_article, tasks), None
    pool = ProcessPoolExecutor(max_workers=workers)
    return pool.map(make_article, tasks, chunksize=4), pool


def generate_corpus(out_dir: str | Path, n: int, seed: int = 0, workers: int | None = None,
                    progress: bool = True) -> SynthSummary:
    """Write articles 1..n for ``seed`` into ``out_dir`` plus ``ground_truth.jsonl``.

    ``workers`` processes render (default 2; 1 renders in this process). Packages already
    present are kept, so a rerun resumes; output bytes do not depend on ``workers``.
    """
    from tqdm import tqdm

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, rows = SynthSummary(out), list[dict[str, Any]]()
    started = time.perf_counter()
    results, pool = _results([(str(out), seed, i) for i in range(1, n + 1)], workers or 2)
    try:
        for res in tqdm(results, total=n, unit="article", disable=not progress, mininterval=1.0):
            summary.articles += 1
            summary.written += res.written
            summary.figures += len(res.figures)
            summary.bytes += res.bytes
            rows.extend({"package": res.package, **r} for r in res.figures)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    summary.seconds = time.perf_counter() - started
    summary.by_type = dict(sorted(Counter(r["type"] for r in rows).items()))
    _write_ground_truth(out / GROUND_TRUTH, rows)
    return summary


def _write_ground_truth(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``figsearch synth --n N OUT_DIR [--seed S] [--workers W]``."""
    parser.add_argument("out_dir", type=Path, help="directory to write the .tar.gz packages into")
    parser.add_argument("--n", type=int, required=True, help="number of articles (1-6 figures each)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def command(args: argparse.Namespace) -> int:
    """Generate the corpus and print the summary line."""
    if args.n < 1:
        print(f"error: --n must be at least 1, got {args.n}", file=sys.stderr)
        return 2
    summary = generate_corpus(args.out_dir, args.n, seed=args.seed, workers=args.workers,
                              progress=not args.quiet)
    print(summary.line())
    print("figure types: " + ", ".join(f"{k} {v}" for k, v in summary.by_type.items()))
    return 0
