"""Read and write PLY meshes (ASCII and binary, little or big endian) with numpy, vectorised.

``read_ply(path) -> PlyMesh``: the vertex element as a numpy structured array (every property the
header declares, e.g. x, y, z, red, green, blue, alpha, nx, ny, nz, label) and the faces as an
``(F, 3)`` int64 array of triangles. Triangle-only face lists (all of ScanNet) are read in one
``np.frombuffer`` call; polygons are read by a general path and fan-triangulated. Extra elements
(edges, ...) are parsed and skipped. A truncated or malformed file raises ``InputError`` naming it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from common.errors import InputError

__all__ = ["PlyMesh", "read_ply", "write_ply", "PLY_TYPES"]

# PLY scalar type names -> numpy type codes (both the classic and the sized spellings).
PLY_TYPES: dict[str, str] = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_NUMPY_TO_PLY = {
    "i1": "char",
    "u1": "uchar",
    "i2": "short",
    "u2": "ushort",
    "i4": "int",
    "u4": "uint",
    "f4": "float",
    "f8": "double",
}


@dataclasses.dataclass
class _Property:
    name: str
    dtype: str  # numpy code without byte order
    count_dtype: str | None = None  # set for list properties


@dataclasses.dataclass
class _Element:
    name: str
    count: int
    props: list[_Property]

    @property
    def has_list(self) -> bool:
        return any(p.count_dtype is not None for p in self.props)


@dataclasses.dataclass
class PlyMesh:
    """A PLY file's content: ``vertex`` structured array, ``faces`` (F, 3) int64 triangles."""

    vertex: np.ndarray
    faces: np.ndarray
    comments: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.vertex)

    def has(self, *names: str) -> bool:
        """True when the vertex element has every property named."""
        return all(n in (self.vertex.dtype.names or ()) for n in names)

    def stack(self, *names: str, dtype: type | str = np.float32) -> np.ndarray:
        """Columns of the vertex element side by side, e.g. ``stack("x", "y", "z")`` -> (N, 3)."""
        missing = [n for n in names if not self.has(n)]
        if missing:
            raise KeyError(f"vertex has no property {missing}")
        out = np.empty((len(self.vertex), len(names)), dtype=dtype)
        for i, n in enumerate(names):
            out[:, i] = self.vertex[n]
        return out

    @property
    def coord(self) -> np.ndarray:
        """(N, 3) float32 positions."""
        return self.stack("x", "y", "z", dtype=np.float32)

    @property
    def color(self) -> np.ndarray | None:
        """(N, 3) uint8 colours, or None when the file has none."""
        return (
            self.stack("red", "green", "blue", dtype=np.uint8) if self.has("red", "green", "blue") else None
        )

    @property
    def normal(self) -> np.ndarray | None:
        """(N, 3) float32 normals stored in the file, or None."""
        return self.stack("nx", "ny", "nz", dtype=np.float32) if self.has("nx", "ny", "nz") else None


def _parse_header(f, path: str | os.PathLike) -> tuple[str, list[_Element], list[str], int]:
    """Read the header; return (format, elements, comments, byte offset of the body)."""
    first = f.readline()
    if first.strip() != b"ply":
        raise InputError(path, "not a PLY file (first line is not 'ply')")
    fmt, elements, comments = None, [], []
    while True:
        line = f.readline()
        if not line:
            raise InputError(path, "truncated: header has no 'end_header'")
        try:
            words = line.decode("ascii").split()
        except UnicodeDecodeError:
            raise InputError(path, "corrupt header (non-ASCII bytes before 'end_header')") from None
        if not words:
            continue
        key = words[0]
        if key == "end_header":
            break
        if key in ("comment", "obj_info"):
            comments.append(line.decode("ascii").rstrip("\r\n")[len(key) + 1 :])
        elif key == "format":
            if len(words) < 2 or words[1] not in ("ascii", "binary_little_endian", "binary_big_endian"):
                raise InputError(path, f"unsupported PLY format line {line.strip()!r}")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise InputError(path, f"bad element line {line.strip()!r}")
            elements.append(_Element(words[1], int(words[2]), []))
        elif key == "property":
            if not elements:
                raise InputError(path, "property before any element in the header")
            if len(words) == 5 and words[1] == "list":
                if words[2] not in PLY_TYPES or words[3] not in PLY_TYPES:
                    raise InputError(path, f"unknown type in {line.strip()!r}")
                elements[-1].props.append(_Property(words[4], PLY_TYPES[words[3]], PLY_TYPES[words[2]]))
            elif len(words) == 3 and words[1] in PLY_TYPES:
                elements[-1].props.append(_Property(words[2], PLY_TYPES[words[1]]))
            else:
                raise InputError(path, f"bad property line {line.strip()!r}")
        else:
            raise InputError(path, f"unknown header keyword {key!r}")
    if fmt is None:
        raise InputError(path, "header has no 'format' line")
    return fmt, elements, comments, f.tell()


def _scalar_dtype(el: _Element, endian: str) -> np.dtype:
    return np.dtype([(p.name, endian + p.dtype) for p in el.props])


def _truncated(path, el: _Element, have: int) -> InputError:
    plural = "vertices" if el.name == "vertex" else f"{el.name}s"
    return InputError(path, f"truncated: header promises {el.count} {plural}, file holds {have}")


def _read_binary_element(buf: memoryview, pos: int, el: _Element, endian: str, path) -> tuple[object, int]:
    """Parse one element of a binary body starting at ``pos``; return (data, new pos)."""
    if not el.has_list:
        dt = _scalar_dtype(el, endian)
        need = el.count * dt.itemsize
        if len(buf) - pos < need:
            raise _truncated(path, el, (len(buf) - pos) // dt.itemsize)
        arr = np.frombuffer(buf, dtype=dt, count=el.count, offset=pos)
        return arr, pos + need
    if len(el.props) == 1:
        # Fast path: one list property where every list has the same length as the first one
        # (ScanNet faces: uchar 3, int i0 i1 i2).
        p = el.props[0]
        cdt = np.dtype(endian + p.count_dtype)
        if el.count == 0:
            return [np.zeros((0, 3), np.int64)], pos
        if len(buf) - pos < cdt.itemsize:
            raise _truncated(path, el, 0)
        k = int(np.frombuffer(buf, dtype=cdt, count=1, offset=pos)[0])
        rec = np.dtype([("n", cdt), ("v", endian + p.dtype, (k,))])
        need = el.count * rec.itemsize
        if k > 0 and len(buf) - pos >= need:
            arr = np.frombuffer(buf, dtype=rec, count=el.count, offset=pos)
            if np.all(arr["n"] == k):
                return [arr["v"]], pos + need
    return _read_binary_lists(buf, pos, el, endian, path)


def _read_binary_lists(buf: memoryview, pos: int, el: _Element, endian: str, path) -> tuple[object, int]:
    """General path for elements with list properties: one record at a time (polygons, mixed)."""
    lists: list[list[np.ndarray]] = [[] for _ in el.props]
    n = len(buf)
    for i in range(el.count):
        for j, p in enumerate(el.props):
            if p.count_dtype is None:
                dt = np.dtype(endian + p.dtype)
                if n - pos < dt.itemsize:
                    raise _truncated(path, el, i)
                lists[j].append(np.frombuffer(buf, dtype=dt, count=1, offset=pos))
                pos += dt.itemsize
            else:
                cdt = np.dtype(endian + p.count_dtype)
                vdt = np.dtype(endian + p.dtype)
                if n - pos < cdt.itemsize:
                    raise _truncated(path, el, i)
                k = int(np.frombuffer(buf, dtype=cdt, count=1, offset=pos)[0])
                pos += cdt.itemsize
                if n - pos < k * vdt.itemsize:
                    raise _truncated(path, el, i)
                lists[j].append(np.frombuffer(buf, dtype=vdt, count=k, offset=pos))
                pos += k * vdt.itemsize
    return lists, pos


def _ascii_rows(lines: list[bytes], start: int, el: _Element, path) -> tuple[object, int]:
    """Parse ``el.count`` ASCII lines starting at ``start``."""
    rows = lines[start : start + el.count]
    if len(rows) < el.count:
        raise _truncated(path, el, len(rows))
    if not el.has_list:
        dt = _scalar_dtype(el, "<")
        if el.count == 0:
            return np.zeros(0, dtype=dt), start
        try:
            flat = np.array(b" ".join(rows).split(), dtype=np.float64)
        except ValueError:
            raise InputError(path, f"corrupt ASCII {el.name} data (non-numeric token)") from None
        if flat.size != el.count * len(el.props):
            raise InputError(path, f"corrupt ASCII {el.name} data: expected {len(el.props)} values per line")
        flat = flat.reshape(el.count, len(el.props))
        arr = np.empty(el.count, dtype=dt)
        for i, p in enumerate(el.props):
            arr[p.name] = flat[:, i]
        return arr, start + el.count
    tokens = [r.split() for r in rows]
    if len(el.props) == 1 and el.count > 0:
        k = len(tokens[0]) - 1
        if k > 0 and all(len(t) == k + 1 for t in tokens):
            try:
                mat = np.array(tokens, dtype=np.int64)
            except ValueError:
                raise InputError(path, f"corrupt ASCII {el.name} data (non-integer list)") from None
            if np.all(mat[:, 0] == k):
                return [mat[:, 1:]], start + el.count
    lists: list[list[np.ndarray]] = [[] for _ in el.props]
    for i, t in enumerate(tokens):
        pos = 0
        try:
            for j, p in enumerate(el.props):
                if p.count_dtype is None:
                    lists[j].append(np.array([float(t[pos])]))
                    pos += 1
                else:
                    k = int(t[pos])
                    vals = t[pos + 1 : pos + 1 + k]
                    if len(vals) < k:
                        raise IndexError
                    lists[j].append(np.array(vals, dtype=np.float64))
                    pos += 1 + k
        except (IndexError, ValueError):
            raise InputError(path, f"corrupt ASCII {el.name} line {i} ({b' '.join(t).decode()!r})") from None
    return lists, start + el.count


def _faces_from(data, el: _Element, path, n_vertices: int) -> np.ndarray:
    """(F, 3) int64 triangles from a parsed face element (fan-triangulating polygons)."""
    names = [p.name for p in el.props]
    key = (
        "vertex_indices"
        if "vertex_indices" in names
        else ("vertex_index" if "vertex_index" in names else None)
    )
    if key is None:
        raise InputError(path, "face element has no vertex_indices list")
    j = names.index(key)
    col = data[j]
    if isinstance(col, np.ndarray):  # uniform fast path
        polys = col.astype(np.int64, copy=False)
        if polys.shape[1] == 3:
            tris = polys
        else:
            k = polys.shape[1]
            if k < 3:
                raise InputError(path, f"faces with {k} vertices")
            tris = np.concatenate([polys[:, [0, i, i + 1]] for i in range(1, k - 1)], axis=0)
    else:
        out = []
        for poly in col:
            poly = np.asarray(poly, dtype=np.int64)
            if len(poly) < 3:
                raise InputError(path, f"a face with {len(poly)} vertices")
            out.append(np.stack([np.full(len(poly) - 2, poly[0]), poly[1:-1], poly[2:]], axis=1))
        tris = np.concatenate(out, axis=0) if out else np.zeros((0, 3), np.int64)
    if tris.size and (tris.min() < 0 or tris.max() >= n_vertices):
        raise InputError(path, f"face index out of range (max {int(tris.max())}, {n_vertices} vertices)")
    return np.ascontiguousarray(tris)


def read_ply(path: str | os.PathLike) -> PlyMesh:
    """Read a PLY file (ASCII or binary) into a ``PlyMesh``; faces are (F, 3) int64 triangles."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    with open(path, "rb") as f:
        fmt, elements, comments, offset = _parse_header(f, path)
        body = f.read()
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise InputError(path, "no vertex element in the header")
    parsed: dict[str, object] = {}
    if fmt == "ascii":
        lines = [ln for ln in body.splitlines() if ln.strip()]
        pos = 0
        for el in elements:
            parsed[el.name], pos = _ascii_rows(lines, pos, el, path)
    else:
        endian = "<" if fmt == "binary_little_endian" else ">"
        buf = memoryview(body)
        pos = 0
        for el in elements:
            parsed[el.name], pos = _read_binary_element(buf, pos, el, endian, path)
    vertex_el = elements[names.index("vertex")]
    vertex = parsed["vertex"]
    if vertex_el.has_list:
        raise InputError(path, "vertex element with list properties is not supported")
    vertex = np.array(vertex).astype(vertex.dtype.newbyteorder("="), copy=True)  # native, writeable
    if "face" in names:
        faces = _faces_from(parsed["face"], elements[names.index("face")], path, len(vertex))
    else:
        faces = np.zeros((0, 3), np.int64)
    return PlyMesh(vertex=vertex, faces=faces, comments=comments)


def _ply_column(name: str, values) -> np.ndarray:
    """A 1-D little-endian column with a PLY type: bool -> uchar, 64-bit ints -> 32-bit when they fit."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"vertex property {name} must be 1-D, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    elif a.dtype.kind in "iu" and a.dtype.itemsize == 8:
        target = np.int32 if a.dtype.kind == "i" else np.uint32
        info = np.iinfo(target)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise ValueError(f"vertex property {name}: 64-bit values do not fit the 32-bit PLY type")
        a = a.astype(target)
    if a.dtype.str[1:] not in _NUMPY_TO_PLY:
        raise ValueError(f"vertex property {name}: dtype {a.dtype} has no PLY type")
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def _as_struct(vertex: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(vertex, np.ndarray) and vertex.dtype.names:
        vertex = {k: vertex[k] for k in vertex.dtype.names}
    cols = {k: _ply_column(k, v) for k, v in dict(vertex).items()}
    if not cols:
        raise ValueError("vertex needs at least one property")
    n = len(next(iter(cols.values())))
    arr = np.empty(n, dtype=[(k, v.dtype.str) for k, v in cols.items()])
    for k, v in cols.items():
        if len(v) != n:
            raise ValueError(f"vertex property {k} has {len(v)} rows, expected {n}")
        arr[k] = v
    return arr


def write_ply(
    path: str | os.PathLike,
    vertex: np.ndarray | dict[str, np.ndarray],
    faces: np.ndarray | None = None,
    binary: bool = True,
    comments: list[str] | None = None,
) -> Path:
    """Write a PLY file. ``vertex``: structured array or ``{name: 1-D array}`` (order kept; bool is
    written as uchar, int64 as int when the values fit).

    Faces (F, k) are written as ``property list uchar int vertex_indices`` like ScanNet's meshes.
    """
    path = Path(path)
    v = _as_struct(vertex)
    faces = None if faces is None else np.asarray(faces)
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0"]
    header += [f"comment {c}" for c in comments or []]
    header.append(f"element vertex {len(v)}")
    header += [f"property {_NUMPY_TO_PLY[v.dtype[n].str[1:]]} {n}" for n in v.dtype.names]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            f.write(v.astype(v.dtype.newbyteorder("<")).tobytes())
            if faces is not None and len(faces):
                k = faces.shape[1]
                rec = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (k,))])
                rec["n"] = k
                rec["v"] = faces
                f.write(rec.tobytes())
        else:
            cols = []
            for n in v.dtype.names:
                c = v[n]
                cols.append(c.astype(str) if c.dtype.kind in "iu" else np.char.mod("%.7g", c))
            lines = [" ".join(row) for row in zip(*cols)] if len(v) else []
            if lines:
                f.write(("\n".join(lines) + "\n").encode("ascii"))
            if faces is not None and len(faces):
                k = faces.shape[1]
                body = np.concatenate([np.full((len(faces), 1), k), faces], axis=1)
                f.write(("\n".join(" ".join(map(str, r)) for r in body.tolist()) + "\n").encode("ascii"))
    return path
