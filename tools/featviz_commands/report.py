"""``featviz report``: one offline HTML page (``index.html``) for a results folder.

It finds the pictures (PNG / JPG / GIF / SVG), videos (MP4 / WebM), result tables (JSON written by
``common.report.write_table`` become HTML tables; other markdown is converted simply), ``config.yaml``
files and JSON records of every sub-folder and lays them out one section per folder. Links are relative
and the style is inline, so the page works from the file system without a network.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

HELP = "an offline HTML page (index.html) showing the pictures, tables and configs of a results folder"

IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
VIDEOS = (".mp4", ".webm")
CONFIGS = (".yaml", ".yml")
LISTED = (".ply", ".csv", ".txt", ".log", ".npz", ".pth", ".pt")
SKIP_DIRS = {"shards", "__pycache__", ".git"}
MAX_LISTED = 40
MAX_TABLE_ROWS = 500
MAX_TEXT = 60_000

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;
max-width:1400px;padding:0 1em;color:#222;background:#fff}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f1f1f1}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.4em;vertical-align:top;max-width:100%}
figure img,figure video{max-width:100%;max-height:720px;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:420px;font-size:.85em}
nav ul{columns:3;font-size:.9em}.meta{color:#555;font-size:.9em}
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP + ". Relative links only, no external CSS/JS.")
    p.add_argument("folder", help="results folder (searched recursively)")
    p.add_argument("--out", default=None, help="HTML file to write (default: FOLDER/index.html)")
    p.add_argument("--title", default=None, help="page title (default: the folder name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = build_report(args.folder, args.out, args.title)
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------------------- helpers
def _esc(v: object) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _href(target: Path, page_dir: Path) -> str:
    rel = os.path.relpath(target.resolve(), page_dir.resolve())
    return quote(Path(rel).as_posix())


def _anchor(rel: str) -> str:
    return "sec-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", rel).strip("-") or "root")


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.4g}</td>'
    if isinstance(v, bool) or v is None:
        return f"<td>{'' if v is None else _esc(v)}</td>"
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    if isinstance(v, (list, dict)):
        return f"<td><code>{_esc(json.dumps(v))[:300]}</code></td>"
    return f"<td>{_esc(v)}</td>"


def is_table_json(obj: object) -> bool:
    """True for ``{"rows": [dict, ...], ...}`` (what ``common.report.write_table`` writes)."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("rows"), list)
        and all(isinstance(r, dict) for r in obj["rows"])
    )


def json_table_html(obj: dict) -> str:
    """An HTML table (title, meta list, rows) of a table JSON."""
    cols = obj.get("columns") or []
    if not cols:
        for r in obj["rows"]:
            cols += [k for k in r if k not in cols]
    parts = []
    if obj.get("title"):
        parts.append(f"<h3>{_esc(obj['title'])}</h3>")
    meta = obj.get("meta") or {}
    if isinstance(meta, dict) and meta:
        items = []
        for k, v in meta.items():
            text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
            if len(text) <= 160:
                items.append(f"<li><b>{_esc(k)}</b>: {_esc(text)}</li>")
        if items:
            parts.append(f'<ul class="meta">{"".join(items)}</ul>')
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    rows = obj["rows"][:MAX_TABLE_ROWS]
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in cols) + "</tr>" for r in rows)
    more = len(obj["rows"]) - len(rows)
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    if more > 0:
        parts.append(f'<p class="meta">... {more} more rows in the JSON file</p>')
    return "\n".join(parts)


def _inline(text: str) -> str:
    s = _esc(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)
    return s


def _md_table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        t = line.strip().strip("|")
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", t)]

    head = cells(lines[0])
    body = [cells(ln) for ln in lines[1:] if not re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", ln)]
    h = "".join(f"<th>{_inline(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def markdown_html(text: str) -> str:
    """A simple markdown subset as HTML: headings, pipe tables, lists, fenced code, paragraphs."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.strip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append(f"<pre>{_esc(chr(10).join(lines[i + 1 : j]))}</pre>")
            i = j + 1
        elif ln.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_md_table(lines[i:j]))
            i = j
        elif m := re.match(r"(#{1,6})\s+(.*)", ln):
            level = min(len(m.group(1)) + 2, 6)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif re.match(r"\s*[-*]\s+", ln):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                item = re.sub(r"^[-*]\s+", "", lines[i].strip())
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
        elif not ln.strip():
            i += 1
        else:
            para = []
            while (
                i < len(lines)
                and lines[i].strip()
                and not re.match(r"(#{1,6}\s|\s*[-*]\s|\s*\||```)", lines[i])
            ):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def _read_text(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "\n... (truncated)"


def _walk(root: Path, skip: Path | None) -> Iterable[tuple[Path, list[Path]]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
        d = Path(dirpath)
        files = sorted(d / f for f in filenames if not f.startswith(".") and ".tmp" not in f)
        files = [f for f in files if skip is None or f.resolve() != skip]
        yield d, files


def _section(root: Path, d: Path, files: list[Path], page_dir: Path) -> str | None:
    by_suffix: dict[str, list[Path]] = {}
    for f in files:
        by_suffix.setdefault(f.suffix.lower(), []).append(f)
    parts: list[str] = []
    table_stems: set[str] = set()
    records: list[str] = []
    for f in by_suffix.get(".json", []):
        if f.name.startswith("manifest") or f.name.endswith(".rank.json"):
            continue
        text = _read_text(f)
        try:
            obj = json.loads(text) if text is not None else None
        except json.JSONDecodeError:
            records.append(
                f'<p class="meta"><a href="{_href(f, page_dir)}">{_esc(f.name)}</a>: not valid JSON</p>'
            )
            continue
        if is_table_json(obj):
            table_stems.add(f.stem)
            parts.append(
                json_table_html(obj) + f'<p class="meta">source: <a href="{_href(f, page_dir)}">'
                f"{_esc(f.name)}</a></p>"
            )
        elif obj is not None:
            body = json.dumps(obj, indent=2)[:MAX_TEXT]
            records.append(
                f'<details><summary><a href="{_href(f, page_dir)}">{_esc(f.name)}</a></summary>'
                f"<pre>{_esc(body)}</pre></details>"
            )
    for f in by_suffix.get(".md", []):
        if f.stem in table_stems:
            continue
        text = _read_text(f)
        if text is not None:
            parts.append(
                f'<div class="md">{markdown_html(text)}<p class="meta">source: '
                f'<a href="{_href(f, page_dir)}">{_esc(f.name)}</a></p></div>'
            )
    figures = [f for s in IMAGES for f in by_suffix.get(s, [])]
    if figures:
        parts.append(
            "".join(
                f'<figure><a href="{_href(f, page_dir)}"><img src="{_href(f, page_dir)}" '
                f'alt="{_esc(f.name)}" loading="lazy"></a><figcaption>{_esc(f.name)}</figcaption></figure>'
                for f in sorted(figures)
            )
        )
    videos = [f for s in VIDEOS for f in by_suffix.get(s, [])]
    if videos:
        parts.append(
            "".join(
                f'<figure><video controls loop muted src="{_href(f, page_dir)}"></video>'
                f'<figcaption><a href="{_href(f, page_dir)}">{_esc(f.name)}</a></figcaption></figure>'
                for f in sorted(videos)
            )
        )
    for f in sorted(f for s in CONFIGS for f in by_suffix.get(s, [])):
        text = _read_text(f)
        if text is not None:
            parts.append(
                f"<details{' open' if f.name == 'config.yaml' else ''}><summary>"
                f'<a href="{_href(f, page_dir)}">{_esc(f.name)}</a></summary>'
                f"<pre>{_esc(text)}</pre></details>"
            )
    parts.extend(records)
    listed = sorted(f for s in LISTED for f in by_suffix.get(s, []))
    if listed:
        items = "".join(
            f'<li><a href="{_href(f, page_dir)}">{_esc(f.name)}</a> '
            f'<span class="meta">({f.stat().st_size / 1e6:.2f} MB)</span></li>'
            for f in listed[:MAX_LISTED]
        )
        more = f"<li>... {len(listed) - MAX_LISTED} more</li>" if len(listed) > MAX_LISTED else ""
        parts.append(f"<details><summary>files ({len(listed)})</summary><ul>{items}{more}</ul></details>")
    if not parts:
        return None
    rel = d.relative_to(root).as_posix()
    rel = "." if rel in ("", ".") else rel
    return f'<section id="{_anchor(rel)}"><h2>{_esc(rel)}</h2>\n' + "\n".join(parts) + "</section>"


def build_report(
    folder: str | os.PathLike, out: str | os.PathLike | None = None, title: str | None = None
) -> Path:
    """Write the HTML page for ``folder`` (default ``folder/index.html``) and return its path."""
    from common.errors import InputError

    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "results folder not found")
    out_path = Path(out) if out else root / "index.html"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    page_dir = out_path.parent
    sections: list[tuple[str, str]] = []
    for d, files in _walk(root, out_path.resolve()):
        sec = _section(root, d, files, page_dir)
        if sec:
            rel = d.relative_to(root).as_posix()
            sections.append(("." if rel in ("", ".") else rel, sec))
    title = title or root.resolve().name
    nav = ""
    if len(sections) > 1:
        nav = (
            "<nav><ul>"
            + "".join(f'<li><a href="#{_anchor(r)}">{_esc(r)}</a></li>' for r, _ in sections)
            + "</ul></nav>"
        )
    body = "\n".join(s for _, s in sections) or "<p>No pictures, tables or configs found.</p>"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>\n'
        f"<body><h1>{_esc(title)}</h1>\n{nav}\n{body}\n</body></html>\n"
    )
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out_path)
    return out_path
