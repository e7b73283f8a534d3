"""``featviz report``: one offline HTML page (``index.html``) for a results folder.

It finds the result tables (JSON written by ``common.report.write_table`` become HTML tables with their
footnotes; other markdown is converted simply), pictures (PNG / JPG / GIF / SVG), videos (MP4 / WebM),
``config.yaml`` files and JSON records of every sub-folder, and lays them out in three parts: results
first, then pictures, then configs and records (each part one block per folder). Links are relative and
the style is inline, so the page works from the file system without a network.

Input data is not shown: a folder is skipped with everything under it when it holds a scene
(``coord.npy`` of a preprocessed scene, ``*_vh_clean_2.ply`` of a raw ScanNet scan), is a dataset root
(a ``scans/`` folder or ``scannetv2_*.txt`` split files; a ``classes.json`` beside a ``videos/`` folder;
UCF101 / HMDB51 split lists such as ``classInd.txt``), or holds video files and nothing else this page
shows (footage, not a result: ``featviz video`` writes its MP4 beside a PNG). The page lists the
skipped folders in one line at the end. JSON files are parsed whole (up to 256 MB); only what is
displayed is shortened.
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

from common.report import atomic_write_text

HELP = "an offline HTML page (index.html) showing the pictures, tables and configs of a results folder"

IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
VIDEOS = (".mp4", ".webm")
CONFIGS = (".yaml", ".yml")
LISTED = (".ply", ".csv", ".txt", ".log", ".npz", ".pth", ".pt")
SKIP_DIRS = {"shards", "__pycache__", ".git"}
MAX_LISTED = 40
MAX_TABLE_ROWS = 500
OPEN_TABLE_ROWS = 40  # longer tables start folded (<details>) so the headline tables stay on screen
MAIN_TABLES = ("results", "table", "probe", "summary")  # shown first in their folder, then by name
MAX_TEXT = 60_000  # characters of a file's text shown on the page (the file itself is read whole)
MAX_JSON_BYTES = 256 * 2**20  # larger JSON files are linked, not parsed
INPUT_VIDEOS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
DATASET_FILES = ("classInd.txt", "trainlist01.txt", "testlist01.txt")

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
ul.notes{font-size:.85em;color:#444}
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
        parts.append(f"<h4>{_esc(obj['title'])}</h4>")
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
    notes = obj.get("footnotes") or []
    if isinstance(notes, list) and notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
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


def _shorten(text: str) -> str:
    """What the page shows of a long text (the file link gives the whole)."""
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "\n... (truncated on this page)"


def _read_text(path: Path) -> str | None:
    try:
        return _shorten(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def _read_json(path: Path) -> tuple[object, str | None]:
    """(parsed object or None, problem or None): the whole file is parsed, never a truncated prefix."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return None, f"larger than {MAX_JSON_BYTES // 2**20} MB, not shown"
        return json.loads(path.read_text(encoding="utf-8", errors="replace")), None
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"
    except json.JSONDecodeError as e:
        return None, f"not valid JSON (line {e.lineno}, column {e.colno})"


def input_data_reason(d: Path, dirnames: list[str], filenames: list[str]) -> str | None:
    """Why folder ``d`` holds input data rather than results (None: it does not); see the module doc."""
    names = set(filenames)
    if "coord.npy" in names:
        return "a preprocessed scene (coord.npy)"
    if any(f.endswith("_vh_clean_2.ply") for f in filenames):
        return "a raw ScanNet scan"
    if "scans" in dirnames or any(re.fullmatch(r"scannetv2_\w+\.txt", f) for f in filenames):
        return "a ScanNet dataset root"
    if "classes.json" in names and "videos" in dirnames:
        return "a generated video dataset"
    if any(f in names for f in DATASET_FILES):
        return "a video dataset's split lists"
    videos = [f for f in filenames if f.lower().endswith(INPUT_VIDEOS)]
    shown = [f for f in filenames if f.lower().endswith(IMAGES + CONFIGS + (".json", ".md"))]
    if videos and not shown:
        return "video files only (footage)"
    return None


def _walk(
    root: Path, skip: Path | None, skipped: list[tuple[Path, str]]
) -> Iterable[tuple[Path, list[Path]]]:
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        reason = input_data_reason(d, dirnames, filenames) if d != root else None
        if reason:
            skipped.append((d, reason))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(x for x in dirnames if not x.startswith(".") and x not in SKIP_DIRS)
        files = sorted(d / f for f in filenames if not f.startswith(".") and ".tmp" not in f)
        files = [f for f in files if skip is None or f.resolve() != skip]
        yield d, files


def _section(d: Path, files: list[Path], page_dir: Path) -> dict[str, list[str]]:
    """The HTML blocks of one folder for each part of the page: results, pictures, configs."""
    by_suffix: dict[str, list[Path]] = {}
    for f in files:
        by_suffix.setdefault(f.suffix.lower(), []).append(f)
    results: list[str] = []
    pictures: list[str] = []
    configs: list[str] = []
    table_stems: set[str] = set()
    records: list[str] = []
    jsons = sorted(by_suffix.get(".json", []), key=lambda f: (f.stem not in MAIN_TABLES, f.name))
    for f in jsons:
        if f.name.startswith("manifest") or f.name.endswith(".rank.json"):
            continue
        obj, problem = _read_json(f)
        if problem:
            records.append(
                f'<p class="meta"><a href="{_href(f, page_dir)}">{_esc(f.name)}</a>: {_esc(problem)}</p>'
            )
            continue
        if is_table_json(obj):
            table_stems.add(f.stem)
            block = json_table_html(obj) + (
                f'<p class="meta">source: <a href="{_href(f, page_dir)}">{_esc(f.name)}</a></p>'
            )
            n_rows = len(obj["rows"])  # type: ignore[index]
            if n_rows > OPEN_TABLE_ROWS:
                label = obj.get("title") or f.stem  # type: ignore[union-attr]
                block = f"<details><summary>{_esc(label)} ({n_rows} rows)</summary>{block}</details>"
            results.append(block)
        else:
            body = _shorten(json.dumps(obj, indent=2))
            records.append(
                f'<details><summary><a href="{_href(f, page_dir)}">{_esc(f.name)}</a></summary>'
                f"<pre>{_esc(body)}</pre></details>"
            )
    for f in by_suffix.get(".md", []):
        if f.stem in table_stems:
            continue
        text = _read_text(f)
        if text is not None:
            results.append(
                f'<div class="md">{markdown_html(text)}<p class="meta">source: '
                f'<a href="{_href(f, page_dir)}">{_esc(f.name)}</a></p></div>'
            )
    figures = [f for s in IMAGES for f in by_suffix.get(s, [])]
    if figures:
        pictures.append(
            "".join(
                f'<figure><a href="{_href(f, page_dir)}"><img src="{_href(f, page_dir)}" '
                f'alt="{_esc(f.name)}" loading="lazy"></a><figcaption>{_esc(f.name)}</figcaption></figure>'
                for f in sorted(figures)
            )
        )
    videos = [f for s in VIDEOS for f in by_suffix.get(s, [])]
    if videos:
        pictures.append(
            "".join(
                f'<figure><video controls loop muted src="{_href(f, page_dir)}"></video>'
                f'<figcaption><a href="{_href(f, page_dir)}">{_esc(f.name)}</a></figcaption></figure>'
                for f in sorted(videos)
            )
        )
    for f in sorted(f for s in CONFIGS for f in by_suffix.get(s, [])):
        text = _read_text(f)
        if text is not None:
            configs.append(
                f"<details{' open' if f.name == 'config.yaml' else ''}><summary>"
                f'<a href="{_href(f, page_dir)}">{_esc(f.name)}</a></summary>'
                f"<pre>{_esc(text)}</pre></details>"
            )
    configs.extend(records)
    listed = sorted(f for s in LISTED for f in by_suffix.get(s, []))
    if listed:
        items = "".join(
            f'<li><a href="{_href(f, page_dir)}">{_esc(f.name)}</a> '
            f'<span class="meta">({f.stat().st_size / 1e6:.2f} MB)</span></li>'
            for f in listed[:MAX_LISTED]
        )
        more = f"<li>... {len(listed) - MAX_LISTED} more</li>" if len(listed) > MAX_LISTED else ""
        configs.append(f"<details><summary>files ({len(listed)})</summary><ul>{items}{more}</ul></details>")
    return {"results": results, "pictures": pictures, "configs": configs}


def _skipped_line(root: Path, skipped: list[tuple[Path, str]]) -> str:
    """One line naming the skipped input folders; many siblings (scenes, class folders) are one entry."""
    by_parent: dict[tuple[Path, str], list[tuple[Path, str]]] = {}
    for p, why in skipped:
        by_parent.setdefault((p.parent, why), []).append((p, why))
    entries = []
    for (parent, _), items in by_parent.items():
        if len(items) > 2:
            rel = parent.relative_to(root).as_posix()
            entries.append(f"{'' if rel == '.' else rel + '/'}* ({len(items)} folders: {items[0][1]})")
        else:
            entries += [f"{p.relative_to(root).as_posix()} ({why})" for p, why in items]
    shown = "; ".join(entries[:20]) + (" ..." if len(entries) > 20 else "")
    return _esc(f"Skipped {len(skipped)} input data folder(s): {shown}")


PARTS = (("results", "Results"), ("pictures", "Pictures"), ("configs", "Configs and records"))


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
    blocks: dict[str, list[tuple[str, str]]] = {key: [] for key, _ in PARTS}
    skipped: list[tuple[Path, str]] = []
    for d, files in _walk(root, out_path.resolve(), skipped):
        rel = d.relative_to(root).as_posix()
        rel = "." if rel in ("", ".") else rel
        for key, html_parts in _section(d, files, page_dir).items():
            if html_parts:
                blocks[key].append((rel, "\n".join(html_parts)))
    title = title or root.resolve().name
    nav_items, body_parts = [], []
    for key, heading in PARTS:
        if not blocks[key]:
            continue
        links = ", ".join(f'<a href="#{_anchor(key + "-" + r)}">{_esc(r)}</a>' for r, _ in blocks[key])
        nav_items.append(f'<li><a href="#{key}">{heading}</a>: {links}</li>')
        body_parts.append(f'<h2 id="{key}">{heading}</h2>')
        body_parts += [f'<section id="{_anchor(key + "-" + r)}"><h3>{_esc(r)}</h3>\n{b}</section>'
                       for r, b in blocks[key]]
    nav = f"<nav><ul>{''.join(nav_items)}</ul></nav>" if len(nav_items) > 1 else ""
    if skipped:
        body_parts.append(f'<p class="meta" id="skipped">{_skipped_line(root, skipped)}</p>')
    body = "\n".join(body_parts) or "<p>No pictures, tables or configs found.</p>"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>\n'
        f"<body><h1>{_esc(title)}</h1>\n{nav}\n{body}\n</body></html>\n"
    )
    atomic_write_text(out_path, page)
    return out_path
