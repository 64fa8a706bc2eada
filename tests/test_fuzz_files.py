"""Files that protect themselves (issue 16): seeded random single-bit flips and truncations of every file kind we
write and read, split between the header and the data. Every damaged file must either be refused with a
FileFormatError naming the file, or load content identical to the original — never a silently changed object and
never an untyped error.

Kinds: the shipped vector, vector set, capping config and run summary (the files users load first, as
re-published), and small files written here: activations, an extraction checkpoint chunk (activations with the run
fingerprint), a GGUF control vector we exported (its own checksum key), an .npz export (zip CRCs) and a rollout
store (a check on every line; a truncation may drop the torn last record, the one documented exception, which is
generated again). repeng's file is repeng's own format, with no checksum to check: it is left out on purpose.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

import persona_axes as pa
from persona_axes.activations.container import Activations
from persona_axes.activations.extraction import FINGERPRINT_KEY, RUN_KEY
from persona_axes.errors import FileFormatError
from persona_axes.export import export_vector, import_vector
from persona_axes.steering.capping import CapConfig

SHIPPED = Path(__file__).resolve().parents[1] / "vectors" / "smollm2-135m-instruct"
INFO = pa.ModelInfo("fuzz-model", 4, 16)


def canon(x: Any) -> Any:
    """A comparable form of a loaded object: tensors as (dtype, shape, bytes), containers recursively."""
    if isinstance(x, torch.Tensor):
        return ("tensor", str(x.dtype), tuple(x.shape), x.detach().cpu().contiguous().numpy().tobytes())
    if isinstance(x, np.ndarray):
        return ("array", str(x.dtype), x.shape, x.tobytes())
    if isinstance(x, dict):
        return tuple(sorted((str(k), canon(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(canon(v) for v in x)
    if dataclasses.is_dataclass(x):
        return (type(x).__name__, canon({f.name: getattr(x, f.name) for f in dataclasses.fields(x)}))
    return x


def safetensors_split(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def npz_data_ranges(path: Path) -> list[tuple[int, int]]:
    with zipfile.ZipFile(path) as z:
        out = []
        for info in z.infolist():
            start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
            out.append((start, start + info.compress_size))
    return out


def damage(data: bytes, rng: random.Random, ranges: list[tuple[int, int]], truncate: bool) -> bytes:
    """One single-bit flip (or a truncation) at a random byte of the half-open byte ``ranges``."""
    sizes = [b - a for a, b in ranges]
    k = rng.randrange(sum(sizes))
    for (a, b), size in zip(ranges, sizes):
        if k < size:
            pos = a + k
            break
        k -= size
    if truncate:
        return data[:pos]
    return data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1:]


def fuzz(path: Path, load: Callable[[Path], Any], regions: dict[str, list[tuple[int, int]]], n: int, seed: int,
         tmp: Path, truncations: int | None = None, prefix_ok: bool = False) -> Counter:
    """Outcomes of ``n`` flips and ``truncations`` (default ``n // 5``) truncations in the header and as many in
    the data:
    ``(where, "refused" | "unchanged" | "changed" | "untyped" | "unnamed")``."""
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = canon(load(path))
    rng = random.Random(seed)
    out: Counter = Counter()
    target = tmp / ("damaged-" + path.name)
    for where in ("header", "data"):
        for i in range(n + (n // 5 if truncations is None else truncations)):
            target.write_bytes(damage(data, rng, regions[where], truncate=i >= n))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got = canon(load(target))
            except FileFormatError as e:
                out[where, "refused" if str(target) in str(e) else "unnamed"] += 1
            except Exception as e:  # noqa: BLE001 — an untyped error is exactly what this test looks for
                out[where, "untyped"] += 1
                out.setdefault("examples", []).append(f"{where}: {type(e).__name__}: {e}")  # type: ignore[attr-defined]
            else:
                if got == want:
                    out[where, "unchanged"] += 1
                elif prefix_ok and i >= n and got == want[:len(got)]:
                    out[where, "torn tail dropped"] += 1
                else:
                    out[where, "changed"] += 1
    return out


def _assert_safe(kind: str, out: Counter) -> None:
    bad = {k: v for k, v in out.items() if k != "examples" and k[1] in ("changed", "untyped", "unnamed")}
    assert not bad, f"{kind}: {bad}; {out.get('examples', [])[:3]}"
    assert out["header", "refused"] > 0 and out["data", "refused"] > 0


def _activations(extra: dict[str, str] | None = None) -> Activations:
    g = torch.Generator().manual_seed(3)
    items = [{"conversation": i, "message": 1, "role": "pirate" if i % 2 else "default", "score": i / 3}
             for i in range(6)]
    return Activations(values=torch.randn(6, 4, 16, generator=g), layers=(0, 1, 2, 3), items=items, model=INFO,
                       extra=extra or {})


def _vector() -> pa.PersonaVector:
    g = torch.Generator().manual_seed(4)
    return pa.PersonaVector(torch.randn(4, 16, generator=g), INFO, "fuzz", "mean_diff", 12, {"note": "é"})


# (kind, make the file in tmp -> path, loader, how the header/data split is found)
KINDS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], Any], str]] = {
    "assistant_axis.safetensors (PersonaVector.load)":
        (lambda d: SHIPPED / "assistant_axis.safetensors", pa.PersonaVector.load, "safetensors"),
    "roles.safetensors (VectorSet.load)":
        (lambda d: SHIPPED / "roles.safetensors", pa.VectorSet.load, "safetensors"),
    "capping.safetensors (CapConfig.load)":
        (lambda d: SHIPPED / "capping.safetensors", CapConfig.load, "safetensors"),
    "activations (Activations.load)":
        (lambda d: _activations().save(d / "acts.safetensors"), Activations.load, "safetensors"),
    "extraction checkpoint chunk (Activations.load)":
        (lambda d: _activations({FINGERPRINT_KEY: "ab" * 32, RUN_KEY: '{"layers":[0,1,2,3]}'}).save(
            d / "chunk-00000000-00000006.safetensors"), Activations.load, "safetensors"),
    "GGUF control vector (import_vector)":
        (lambda d: export_vector(_vector(), d / "v.gguf", "gguf", layers=[1, 3], scale=0.5), import_vector, "gguf"),
    "numpy export (import_vector)":
        (lambda d: export_vector(_vector(), d / "v.npz", "numpy"), import_vector, "npz"),
}

def _store(d: Path) -> Path:
    """A small rollout store (six records: role and default replies) written by RolloutStore itself."""
    from persona_axes.runs.datasets import load_default_prompts, load_questions, load_roles
    from persona_axes.runs.requests import default_requests, derive_seed, role_requests
    from persona_axes.runs.store import Rollout, RolloutStore
    from persona_axes.steering.generation import SamplingConfig

    qs = load_questions()[:1]
    reqs = role_requests(dict(list(load_roles().items())[:2]), qs, prompts_per_role=2) \
        + default_requests(load_default_prompts()[:2], qs)
    sampling = SamplingConfig(max_new_tokens=6)
    store = RolloutStore(d / "rollouts.jsonl")
    with store.writing():
        store.append([Rollout.of(r, response=f"Reply {i}, é.", model="tiny", sampling=sampling.to_dict(),
                                 item_seed=derive_seed(sampling.seed, r.id), created="2026-01-01T00:00:00+00:00")
                      for i, r in enumerate(reqs)])
    return store.path


def _store_records(path: Path) -> list:
    from persona_axes.runs.store import RolloutStore

    return [r.to_dict() for r in RolloutStore(path)]


def _summary(path: Path) -> Any:
    from persona_axes.runs.summary import RunSummary

    return RunSummary.load(path).to_dict()


KINDS.update({
    "rollout store (RolloutStore)": (_store, _store_records, "lines"),
    "summary.json (RunSummary.load)": (lambda d: SHIPPED / "summary.json", _summary, "lines"),
})

#: Kinds where a truncation may load a prefix of the records: the torn last line of an interrupted append, the one
#: documented exception (its rollout is generated again).
PREFIX_OK = {"rollout store (RolloutStore)"}

N_FLIPS = 100  # per region, plus N_FLIPS // 5 truncations per region


def _regions(path: Path, how: str) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges of the header (length prefix, JSON / key-values, zip headers) and of the data."""
    size = path.stat().st_size
    if how == "lines":  # JSON text: the first line (and for a store, its first record) vs the rest
        cut = path.read_bytes().index(b"\n") + 1
        return {"header": [(0, cut)], "data": [(cut, size)]}
    if how in ("safetensors", "gguf"):
        cut = safetensors_split(path.read_bytes()) if how == "safetensors" else gguf.GGUFReader(path).data_offset
        return {"header": [(0, cut)], "data": [(cut, size)]}
    data = npz_data_ranges(path)
    edges = [0] + [x for r in data for x in r] + [size]
    header = [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b > a]
    return {"header": header, "data": data}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_damaged_file_is_refused_or_loads_identical(kind, tmp_path):
    make, load, how = KINDS[kind]
    path = make(tmp_path)
    out = fuzz(path, load, _regions(path, how), N_FLIPS, seed=sum(map(ord, kind)), tmp=tmp_path,
               prefix_ok=kind in PREFIX_OK)
    _assert_safe(kind, out)


def test_legacy_files_still_load_with_a_warning_naming_the_restamp(tmp_path):
    """A version-1 file (no checksum over metadata) loads the same values, warns with the file and the command,
    and ``restamp`` turns it into a checked file with the same values."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from persona_axes import files

    v = _vector()
    p = v.save(tmp_path / "v.safetensors")
    md = files.read_safetensors_metadata(p)
    old = {**md, "format_version": "1"}
    old.pop("sha256")
    legacy = tmp_path / "legacy.safetensors"
    legacy.write_bytes(st_save(st_load(p.read_bytes()), metadata=old))
    with pytest.warns(files.LegacyFileWarning, match=r"persona-axes verify --restamp .*legacy\.safetensors"):
        back = pa.PersonaVector.load(legacy)
    assert canon(back) == canon(v)
    assert files.check_file(legacy).status == "legacy"
    assert files.restamp(legacy, validate=pa.PersonaVector.load).status == "ok"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert canon(pa.PersonaVector.load(legacy)) == canon(v)
    # a legacy file's metadata is not protected (that is why it warns), but its data checksum, if any, still is
    flipped = bytearray(legacy.read_bytes())
    flipped[-1] ^= 1
    legacy.write_bytes(bytes(flipped))
    with pytest.raises(FileFormatError, match="checksum"):
        pa.PersonaVector.load(legacy)


def test_checksum_covers_metadata_values_not_only_data(tmp_path):
    """The defect of issue 16: an edited metadata value (a name, a threshold) loaded as if true. Edit one value
    in place, keeping the header length, and the file is refused."""
    p = _vector().save(tmp_path / "v.safetensors")
    data = p.read_bytes()
    edited = data.replace(b'"name":"fuzz"', b'"name":"fuzx"')
    assert edited != data and len(edited) == len(data)
    p.write_bytes(edited)
    with pytest.raises(FileFormatError, match="checksum"):
        pa.PersonaVector.load(p)


def issue_table(folder: Path = SHIPPED, n: int = 100, seed: int = 16) -> str:
    """The table of issue 16 (``n`` single-bit flips in the header and ``n`` in the data of each shipped file,
    no truncations): refused / unchanged / loaded changed, plus untyped errors. Run this file as a script."""
    import tempfile

    rows = ["| file | header flips: refused / unchanged / loaded changed / untyped | data flips: same |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, load in [("assistant_axis.safetensors", pa.PersonaVector.load),
                           ("roles.safetensors", pa.VectorSet.load), ("capping.safetensors", CapConfig.load)]:
            path = folder / name
            out = fuzz(path, load, _regions(path, "safetensors"), n, seed, Path(tmp), truncations=0)
            cells = [" / ".join(str(out[w, k]) for k in ("refused", "unchanged", "changed", "untyped"))
                     for w in ("header", "data")]
            rows.append(f"| {name} (`{load.__qualname__}`) | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python tests/test_fuzz_files.py [FOLDER]
    import sys

    print(issue_table(Path(sys.argv[1]) if len(sys.argv) > 1 else SHIPPED))
