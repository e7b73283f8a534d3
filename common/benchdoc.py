"""Keep ``docs/benchmarks.md`` as one section per benchmark script, each rewritten by its own run."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Each section is written by the script it names (`python tools/bench_*.py`); every speed figure is\n"
    "a ratio against a baseline measured in the same run on the same machine.\n"
)


def machine_line() -> str:
    """One line describing where a benchmark ran."""
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {dev}, "
        f"torch {torch.__version__}, {_dt.date.today().isoformat()}"
    )


def update_section(name: str, markdown: str, doc: str | Path | None = None) -> Path:
    """Replace (or append) the section ``## name`` of the benchmarks document with ``markdown``."""
    path = Path(doc) if doc is not None else DOC
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n## {name}\n\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
