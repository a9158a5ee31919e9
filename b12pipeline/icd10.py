"""Billable ICD-10-CM codes, from simple-icd-10-cm, cached as a plain code list.

simple-icd-10-cm builds its whole classification tree from a 10 MB XML file when imported: 3 to 15 s
on a busy 2-core machine, paid by every run that reads a diagnosis. The only question a night asks
is "is this a billable (leaf) code?", so the leaf codes are listed once per package version into
the user cache (public CMS data, no patient data) and every later run reads that list (~0.05 s).
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from b12pipeline.paths import cache_dir


def _cache_file() -> Path:
    return cache_dir() / f"icd10cm-billable-{metadata.version('simple-icd-10-cm')}.txt"


def _from_package() -> frozenset[str]:
    import simple_icd_10_cm as cm

    return frozenset(c for c in cm.get_all_codes(True) if cm.is_leaf(c))


_loading = threading.Lock()


def billable_codes() -> frozenset[str]:
    """Every billable ICD-10-CM code, dotted (D51.0), exactly as simple-icd-10-cm's is_leaf says.
    Loaded once per process; a caller waits while another thread loads it."""
    with _loading:
        return _billable_codes()


@lru_cache(maxsize=1)
def _billable_codes() -> frozenset[str]:
    path = _cache_file()
    try:
        return frozenset(path.read_text(encoding="ascii").split())
    except (OSError, UnicodeDecodeError):
        pass
    codes = _from_package()
    try:  # best effort: an unwritable cache only costs the next run the slow load again
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join(sorted(codes)) + "\n", encoding="ascii")
        tmp.replace(path)
    except OSError:
        pass
    return codes


def is_billable(code: str) -> bool:
    """As simple-icd-10-cm's is_valid_item(code) and is_leaf(code): the code as given, or with the
    dot added after its third character."""
    codes = billable_codes()
    return code in codes or (len(code) >= 4 and f"{code[:3]}.{code[3:]}" in codes)
