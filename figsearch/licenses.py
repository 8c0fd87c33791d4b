"""License normalisation: free text / URL from JATS or file lists -> a license class."""

from __future__ import annotations

import re

#: Classes that allow commercial reuse (the API's ``license=commercial`` filter).
COMMERCIAL_CLASSES = frozenset({"cc0", "public-domain", "cc-by", "cc-by-sa", "cc-by-nd"})
LICENSE_CLASSES = (
    "cc0",
    "public-domain",
    "cc-by",
    "cc-by-sa",
    "cc-by-nd",
    "cc-by-nc",
    "cc-by-nc-sa",
    "cc-by-nc-nd",
    "other",
    "none",
)

_CC_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z\-]+)", re.I)
_CC_TEXT = re.compile(r"\bCC[\s\-]?(BY(?:[\s\-](?:NC|SA|ND))*|0)\b", re.I)


def _from_code(code: str) -> str:
    code = code.lower().replace(" ", "-")
    if code in {"zero", "0"}:
        return "cc0"
    if code in {"mark", "pdm"}:
        return "public-domain"
    parts = [p for p in code.split("-") if p]
    if not parts or parts[0] != "by":
        return "other"
    # Canonical order: by, nc, then sa/nd (e.g. "by-sa-nc" -> cc-by-nc-sa).
    rest = [p for p in ("nc", "sa", "nd") if p in parts[1:]]
    return "-".join(["cc", "by", *rest])


def normalise_license(text: str | None, url: str | None = None) -> str:
    """Map license text and/or URL to one of :data:`LICENSE_CLASSES`."""
    url = (url or "").strip()
    text = (text or "").strip()
    if not url and not text:
        return "none"
    m = _CC_URL.search(url) or _CC_URL.search(text)
    if m:
        return _from_code(m.group(2))
    lowered = text.lower()
    if "public domain" in lowered:
        return "public-domain"
    m2 = _CC_TEXT.search(text)
    if m2:
        return _from_code(m2.group(1).replace(" ", "-"))
    if "creative commons attribution" in lowered:
        code = "by"
        if "noncommercial" in lowered or "non-commercial" in lowered:
            code += "-nc"
        if "sharealike" in lowered or "share alike" in lowered:
            code += "-sa"
        if "noderivatives" in lowered or "no derivatives" in lowered or "noderivs" in lowered:
            code += "-nd"
        return _from_code(code)
    return "other"


def allows_commercial_use(license_class: str) -> bool:
    """True when the class permits commercial reuse."""
    return license_class in COMMERCIAL_CLASSES
