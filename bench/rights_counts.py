"""Count figure-level rights in the shared data: figures with their own ``<permissions>`` and
caption (or ``<attrib>``) statements of third-party material, by kind (figsearch.rights).

    python -m bench.rights_counts [--data ../shared/data] [--out bench/results/rights_counts.json]

Reads every JATS article (jats/pmc-nxml, jats/plos, the packages, the PMC Cloud sample) and the
captions of pmc-figures/figures.jsonl, jats/packages/figures.jsonl and the ROCO CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from figsearch.rights import third_party_kinds, third_party_statement
from indexer.jats import JatsError, parse_article

REPO = Path(__file__).resolve().parents[1]


def _xml_documents(data: Path) -> Iterator[tuple[str, bytes]]:
    for pattern in ("jats/pmc-nxml/*.nxml", "jats/plos/*.xml", "pmc-cloud/**/*.xml",
                    "jats/packages/**/*.xml"):
        for path in sorted(data.glob(pattern)):
            yield str(path.relative_to(data)), path.read_bytes()
    for path in sorted(data.glob("jats/packages/*.zip")):
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith((".xml", ".nxml")) and "manifest" not in name.lower():
                    yield f"{path.relative_to(data)}:{name}", zf.read(name)


def _captions(data: Path) -> Iterator[tuple[str, str]]:
    for path in (data / "pmc-figures/figures.jsonl", data / "jats/packages/figures.jsonl"):
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    yield str(path.relative_to(data)), str(row.get("caption") or "")
    roco = data / "roco/roco_pmc_figures.csv"
    if roco.is_file():
        with roco.open(newline="") as fh:
            for row in csv.DictReader(fh):
                yield str(roco.relative_to(data)), row.get("caption") or ""


def count(data: Path) -> dict[str, Any]:
    jats: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    examples: list[dict[str, str]] = []
    for name, xml in _xml_documents(data):
        try:
            art = parse_article(xml)
        except JatsError:
            jats["unparsable"] += 1
            continue
        jats["articles"] += 1
        jats["articles_with_authors"] += bool(art.authors)
        for f in art.figures:
            jats["figures"] += 1
            own = f.has_license or bool(f.copyright_statement or f.copyright_holder)
            jats["figures_with_own_permissions"] += own
            jats["figures_with_own_license"] += f.has_license
            statement = third_party_statement(f.caption, f.attrib)
            if statement:
                jats["figures_with_third_party_statement"] += 1
                kinds.update(third_party_kinds(statement))
            if (own or statement) and len(examples) < 40:
                examples.append({"where": f"{name}#{f.fig_id}", "statement": statement,
                                 "copyright": f.copyright_statement, "license": f.license_url})
    captions: Counter[str] = Counter()
    caption_kinds: Counter[str] = Counter()
    for where, caption in _captions(data):
        captions[f"{where}: captions"] += 1
        statement = third_party_statement(caption)
        if statement:
            captions[f"{where}: third_party"] += 1
            caption_kinds.update(third_party_kinds(statement))
            if len(examples) < 80:
                examples.append({"where": where, "statement": statement})
    from indexer.pmc_cloud import citation_authors

    cloud: Counter[str] = Counter()
    for path in sorted(data.glob("pmc-cloud/**/metadata/*.json")):
        doc = json.loads(path.read_bytes())
        cloud["metadata_files"] += 1
        cloud["citation_gives_an_author"] += bool(citation_authors(str(doc.get("citation") or "")))
    return {"jats": dict(jats), "pmc_cloud_metadata": dict(cloud), "jats_statement_kinds": dict(kinds),
            "captions": dict(captions), "caption_statement_kinds": dict(caption_kinds),
            "examples": examples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = count(args.data)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
