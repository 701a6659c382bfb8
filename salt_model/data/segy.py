"""SEG-Y in and out: geometry from the trace headers, sections read as (traces, samples), and the
probability copy written trace for trace.

Follows the SEG-Y rev1/rev2 layout (SEG Technical Standards Committee, https://seg.org/Portals/0/SEG/
News%20and%20Resources/Technical%20Standards/seg_y_rev2_0-mar2017.pdf): a 3200-byte textual header,
a 400-byte binary header (samples per trace at bytes 3221-3222, sample format at 3225-3226, extended
textual headers at 3505-3506), then fixed-size traces of a 240-byte header and the samples. Samples
are decoded by segyio (IBM floats included); headers are read and copied as raw bytes, so the output
keeps every trace header byte for byte.

Geometry: inline/crossline numbers at --iline-byte/--xline-byte (4-byte ints, default 189/193) place
each trace on a grid, missing positions allowed (a file segyio refuses with "Invalid dimensions").
When every trace carries the same pair (e.g. zeros), the file is a 2D line read in trace order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TEXT_BYTES, BINARY_BYTES, TRACE_HEADER_BYTES = 3200, 400, 240
IEEE_FLOAT = 5
# sample format code -> (name, bytes per sample), the formats segyio decodes
FORMATS = {
    1: ("4-byte IBM float", 4),
    2: ("4-byte signed int", 4),
    3: ("2-byte signed int", 2),
    5: ("4-byte IEEE float", 4),
    6: ("8-byte IEEE float", 8),
    8: ("1-byte signed int", 1),
    10: ("4-byte unsigned int", 4),
    11: ("2-byte unsigned int", 2),
    16: ("1-byte unsigned int", 1),
}
ENDIANS = ("auto", "big", "little")
_NUMPY_ORDER = {"big": ">", "little": "<"}


class SegyError(ValueError):
    """A file that is not usable SEG-Y; the message names the file and what was expected."""


@dataclass(frozen=True)
class Geometry:
    """Where every trace of a SEG-Y file sits. grid (n_il, n_xl): trace index or -1 (missing); a 2D
    line is one row (1, n_traces) in trace order."""

    path: Path
    endian: str  # big | little
    format: int  # sample format code of the input
    n_samples: int
    n_traces: int
    sample_interval_us: int
    ext_headers: int  # extended 3200-byte textual headers after the binary header
    kind: str  # 3d | 2d
    sorting: str  # inline | crossline | unsorted | trace-order
    iline_byte: int
    xline_byte: int
    ilines: np.ndarray = field(repr=False)  # (n_il,) inline numbers (2D: [0])
    xlines: np.ndarray = field(repr=False)  # (n_xl,) crossline numbers (2D: trace numbers 1..n)
    grid: np.ndarray = field(repr=False)  # (n_il, n_xl) int64

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.ilines), len(self.xlines), self.n_samples)

    @property
    def data_offset(self) -> int:
        return TEXT_BYTES + BINARY_BYTES + TEXT_BYTES * self.ext_headers

    @property
    def trace_bytes(self) -> int:
        return TRACE_HEADER_BYTES + self.n_samples * FORMATS[self.format][1]

    @property
    def missing(self) -> int:
        return int((self.grid < 0).sum())

    def to_dict(self) -> dict:
        return {
            "file": str(self.path),
            "kind": self.kind,
            "endian": self.endian,
            "sample_format": {"code": self.format, "name": FORMATS[self.format][0]},
            "traces": self.n_traces,
            "samples": self.n_samples,
            "sample_interval_us": self.sample_interval_us,
            "sorting": self.sorting,
            "iline_byte": self.iline_byte,
            "xline_byte": self.xline_byte,
            "inlines": _range_dict(self.ilines),
            "crosslines": _range_dict(self.xlines),
            "grid": list(self.grid.shape),
            "missing_traces": self.missing,
        }


def read_geometry(
    path: str | Path, iline_byte: int = 189, xline_byte: int = 193, endian: str = "auto", min_samples: int = 1
) -> Geometry:
    """Validates `path` as SEG-Y and places its traces; any problem is a SegyError naming the file."""
    path = Path(path)
    for name, byte in (("--iline-byte", iline_byte), ("--xline-byte", xline_byte)):
        if not 1 <= byte <= TRACE_HEADER_BYTES - 3:
            raise SegyError(
                f"{name} {byte}: expected a trace header byte position 1..{TRACE_HEADER_BYTES - 3}"
            )
    if endian not in ENDIANS:
        raise SegyError(f"endian {endian!r}: expected one of {', '.join(ENDIANS)}")
    if not path.is_file():
        raise SegyError(f"{path}: no such file; expected a SEG-Y file")
    size = path.stat().st_size
    head = TEXT_BYTES + BINARY_BYTES
    if size < head + TRACE_HEADER_BYTES:
        raise SegyError(
            f"{path}: {size} bytes, not SEG-Y (expected a {head}-byte file header and at least one trace)"
        )
    with open(path, "rb") as f:
        binary = f.read(head)[TEXT_BYTES:]
    endian, fmt, ns, ext, dt = _binary_fields(path, binary, size, endian)
    if ns < min_samples:
        raise SegyError(
            f"{path}: {ns} samples per trace; expected at least {min_samples} (half the model's window)"
        )
    trace_bytes = TRACE_HEADER_BYTES + ns * FORMATS[fmt][1]
    n_traces = (size - head - TEXT_BYTES * ext) // trace_bytes
    headers = trace_headers(path, n_traces, head + TEXT_BYTES * ext, trace_bytes)
    il = _header_int(headers, iline_byte, endian)
    xl = _header_int(headers, xline_byte, endian)
    kind, sorting, ilines, xlines, grid = _place(path, il, xl, iline_byte, xline_byte)
    return Geometry(
        path, endian, fmt, ns, n_traces, dt, ext, kind, sorting, iline_byte, xline_byte, ilines, xlines, grid
    )


def _binary_fields(path: Path, binary: bytes, size: int, endian: str):
    """(endian, format, samples, extended headers, interval) of the binary header that fits the file size."""
    readings = {}
    for order in ("big", "little"):

        def u16(offset, order=order):
            return int.from_bytes(binary[offset : offset + 2], order, signed=True)

        fmt, ns, ext, dt = u16(24), u16(20), max(u16(304), 0), u16(16)
        readings[order] = (fmt, ns, ext, dt)
    candidates = ("big", "little") if endian == "auto" else (endian,)
    problems = []
    for order in candidates:
        fmt, ns, ext, dt = readings[order]
        if fmt not in FORMATS:
            problems.append(f"{order}-endian format code {fmt}")
            continue
        if ns <= 0:
            problems.append(f"{order}-endian samples per trace {ns}")
            continue
        rest = size - TEXT_BYTES - BINARY_BYTES - TEXT_BYTES * ext
        trace_bytes = TRACE_HEADER_BYTES + ns * FORMATS[fmt][1]
        if rest < trace_bytes or rest % trace_bytes:
            problems.append(
                f"{order}-endian: {ns} samples of format {fmt} make {trace_bytes}-byte traces, but the "
                f"{rest} bytes after the headers are not a whole number of them (truncated?)"
            )
            continue
        return order, fmt, ns, ext, dt
    supported = ", ".join(f"{c} ({n})" for c, (n, _) in FORMATS.items())
    hint = ""
    if endian != "auto":
        other = "little" if endian == "big" else "big"
        if readings[other][0] in FORMATS:
            hint = f"; it reads as {other}-endian: try --endian {other} or auto"
    raise SegyError(
        f"{path}: not a readable SEG-Y file: the binary header gives {'; '.join(problems)}; expected a "
        f"supported sample format code ({supported}) and a file size that fits it{hint}"
    )


def trace_headers(path: Path, n_traces: int, offset: int, trace_bytes: int) -> np.ndarray:
    """(n_traces, 240) uint8: every trace header's raw bytes (a read-only memory map)."""
    traces = np.memmap(path, np.uint8, "r", offset=offset, shape=(n_traces, trace_bytes))
    return traces[:, :TRACE_HEADER_BYTES]


def _header_int(headers: np.ndarray, byte: int, endian: str) -> np.ndarray:
    raw = np.ascontiguousarray(headers[:, byte - 1 : byte + 3])
    return raw.view(f"{_NUMPY_ORDER[endian]}i4")[:, 0].astype(np.int64)


def _place(path: Path, il: np.ndarray, xl: np.ndarray, iline_byte: int, xline_byte: int):
    n = len(il)
    if np.unique(il).size == 1 and np.unique(xl).size == 1 and n > 1:  # no usable geometry: trace order
        return "2d", "trace-order", np.zeros(1, np.int64), np.arange(1, n + 1), np.arange(n)[None]
    ilines, il_idx = np.unique(il, return_inverse=True)
    xlines, xl_idx = np.unique(xl, return_inverse=True)
    grid = np.full((len(ilines), len(xlines)), -1, np.int64)
    flat = il_idx * len(xlines) + xl_idx
    first = np.full(grid.size, -1, np.int64)
    order = np.arange(n)
    np.maximum.at(first, flat, order)  # the last trace seen at each position
    repeated = np.flatnonzero(first[flat] != order)
    if len(repeated):
        k = int(repeated[0])
        other = int(np.flatnonzero(flat == flat[k])[-1])
        raise SegyError(
            f"{path}: inconsistent headers: traces {k} and {other} both sit at inline {il[k]} crossline "
            f"{xl[k]} (bytes {iline_byte}/{xline_byte}); expected one trace per position (set "
            "--iline-byte/--xline-byte where this file keeps its inline and crossline numbers)"
        )
    grid.reshape(-1)[flat] = order
    if np.all(np.diff(il) >= 0):
        sorting = "inline"
    elif np.all(np.diff(xl) >= 0):
        sorting = "crossline"
    else:
        sorting = "unsorted"
    kind = "2d" if min(grid.shape) == 1 else "3d"
    if kind == "2d" and grid.shape[0] != 1:  # a line along one inline number: one row, its traces
        grid = grid.T
        ilines, xlines = xlines, ilines
    return kind, sorting, ilines, xlines, grid


def _range_dict(values: np.ndarray) -> dict:
    steps = np.unique(np.diff(values)) if len(values) > 1 else np.array([1])
    return {
        "count": len(values),
        "first": int(values[0]),
        "last": int(values[-1]),
        "step": int(steps[0]) if len(steps) == 1 else None,
    }


class SegyReader:
    """Samples of a validated file as float32; sections are (traces, samples) with a live mask."""

    def __init__(self, geometry: Geometry):
        import segyio

        self.geometry = geometry
        try:
            self._file = segyio.open(geometry.path, "r", ignore_geometry=True, endian=geometry.endian)
        except Exception as err:  # segyio raises RuntimeError/ValueError for unreadable files
            raise SegyError(f"{geometry.path}: segyio cannot read it ({err})") from None

    def traces(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(len(index), n_samples) float32 samples and (len,) live mask; index -1 (missing) reads as
        zeros, not live; an all-zero trace (dead) is not live either."""
        out = np.zeros((len(index), self.geometry.n_samples), np.float32)
        for row, k in enumerate(index):
            if k >= 0:
                out[row] = self._file.trace[int(k)]
        live = (index >= 0) & np.any(out != 0, axis=1)
        return out, live

    def section(self, direction: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        grid = self.geometry.grid
        return self.traces(grid[i] if direction == "inline" else grid[:, i])

    def sample_traces(self, count: int = 2000) -> np.ndarray:
        """Up to `count` live traces spread evenly through the file (for the amplitude scaling)."""
        n = self.geometry.n_traces
        data, live = self.traces(np.unique(np.linspace(0, n - 1, min(count, n)).astype(np.int64)))
        return data[live]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SegyReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_probability_segy(
    geometry: Geometry, out: Path, probs: np.memmap | np.ndarray, reader: SegyReader, chunk: int = 4096
) -> int:
    """Writes `out`: the input's text and binary headers (format code -> 5, IEEE float), then every
    trace in input order with its header bytes unchanged and probs[il, xl] (NaN rows: dead traces)
    as samples, in the input's byte order. Returns the number of traces written."""
    g = geometry
    order = _NUMPY_ORDER[g.endian]
    with open(g.path, "rb") as f:
        head = bytearray(f.read(g.data_offset))
    head[TEXT_BYTES + 24 : TEXT_BYTES + 26] = IEEE_FLOAT.to_bytes(2, g.endian)
    headers = trace_headers(g.path, g.n_traces, g.data_offset, g.trace_bytes)
    positions = np.full((g.n_traces, 2), -1, np.int64)
    i_idx, x_idx = np.nonzero(g.grid >= 0)
    positions[g.grid[i_idx, x_idx]] = np.stack([i_idx, x_idx], axis=1)
    record = np.dtype([("header", np.uint8, TRACE_HEADER_BYTES), ("samples", f"{order}f4", g.n_samples)])
    with open(out, "wb") as f:
        f.write(bytes(head))
        for start in range(0, g.n_traces, chunk):
            stop = min(start + chunk, g.n_traces)
            block = np.empty(stop - start, record)
            block["header"] = headers[start:stop]
            samples = np.stack([probs[i, x] for i, x in positions[start:stop]]).astype(np.float32)
            dead = np.isnan(samples).any(axis=1)
            if dead.any():  # dead traces keep their input samples
                samples[dead] = reader.traces(np.arange(start, stop)[dead])[0]
            block["samples"] = samples
            f.write(block.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return g.n_traces
