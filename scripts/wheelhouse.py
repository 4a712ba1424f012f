#!/usr/bin/env python3
"""Per-target engine wheelhouses on the control node (stdlib + pip only; run by build-wheelhouse.sh).

A target is what decides which compiled wheels a host can install: CPython X.Y, the glibc floor and
the CPU, named like a wheel platform tag: cp313-manylinux_2_36_x86_64. OUT (a folder of targets)
holds OUT/TARGET/*.whl and OUT/TARGET.tar (reproducible: sorted names, fixed times), the one file
Ansible ships to a host of that target.

  wheelhouse.py build [--python X.Y] [--platform ARCH] [--glibc 2.N] [--for PYTHON] OUT
  wheelhouse.py build --target TARGET [--target TARGET...] OUT
      Build the engine wheel (pure Python, with the running Python, once) and download the
      dependency wheels of each target with pip download --python-version/--platform/--abi.
      Default target: the running Python's own; --for PYTHON: that local interpreter's;
      --platform without --glibc: glibc 2.17 (manylinux2014, any glibc host of that CPU). Prints
      "changed TARGET" or "unchanged TARGET" per target (nothing built or downloaded when the
      sources and dependencies did not change).
  wheelhouse.py engine-wheel OUT_DIR
      Only the engine wheel, into OUT_DIR (scripts/build-collection.sh puts it into the tarball).
  wheelhouse.py probe
      JSON facts of the running Python: what the install role asks of each host's jiva_python
      (the install role's own probe, roles/install/files/python_probe.py of the collection; the
      role picks a host's archive with roles/install/files/select_wheelhouse.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RE = re.compile(r"^cp(\d)(\d+)-manylinux_2_(\d+)_([a-z0-9_]+)$")
# the oldest glibc a manylinux tag of each CPU exists for (PEP 599/600)
GLIBC_MIN = {"x86_64": 5, "i686": 5, "aarch64": 17, "ppc64le": 17, "s390x": 17, "armv7l": 17}
LEGACY = {5: "manylinux1", 12: "manylinux2010", 17: "manylinux2014"}
EPOCH = 315532800  # 1980-01-01: the zip epoch, for reproducible wheels and archives
ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "x64": "x86_64"}

# the install role's probe of a host's jiva_python (next to this file in an installed collection)
PROBE = next(
    p.read_text()
    for p in (
        Path(__file__).resolve().parent / "python_probe.py",
        ROOT / "collections/ansible_collections/jiva/storage/roles/install/files/python_probe.py",
    )
    if p.is_file()
)


class BuildError(Exception):
    pass


def target_name(version: str, arch: str, glibc: str) -> str:
    m = re.fullmatch(r"3\.(\d+)", version)
    if not m:
        raise BuildError(f"--python {version!r}: expected a CPython 3.X version such as 3.13")
    arch = ARCH_ALIASES.get(arch, arch)
    if arch not in GLIBC_MIN:
        raise BuildError(f"--platform {arch!r}: one of {', '.join(sorted(GLIBC_MIN))}")
    g = re.fullmatch(r"2\.(\d+)", glibc)
    if not g:
        raise BuildError(f"--glibc {glibc!r}: expected a glibc version such as 2.36")
    floor = int(g.group(1))
    if floor < GLIBC_MIN[arch]:
        raise BuildError(
            f"--glibc {glibc}: manylinux wheels for {arch} need glibc 2.{GLIBC_MIN[arch]} or newer"
        )
    return f"cp3{m.group(1)}-manylinux_2_{floor}_{arch}"


def platforms(target: str) -> list[str]:
    """pip --platform values a host of `target` accepts: every manylinux tag up to its glibc."""
    _, _, floor, arch = parse(target)
    out = []
    for minor in range(floor, GLIBC_MIN[arch] - 1, -1):
        out.append(f"manylinux_2_{minor}_{arch}")
        if minor in LEGACY and not (minor == 12 and arch not in ("x86_64", "i686")):
            out.append(f"{LEGACY[minor]}_{arch}")
    return out


def parse(target: str) -> tuple[int, int, int, str]:
    m = TARGET_RE.match(target)
    if not m:
        raise BuildError(f"{target!r} is not a target name like cp313-manylinux_2_36_x86_64")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)


def probe(python: str | None = None) -> dict:
    """The PROBE facts of `python` (default: the running Python)."""
    exe = python or sys.executable
    p = subprocess.run([exe, "-c", PROBE], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise BuildError(f"--for {exe}: cannot run it: {p.stderr.strip() or p.stdout.strip()}")
    return json.loads(p.stdout)


def target_of(facts: dict, who: str) -> str:
    if facts["implementation"] != "cpython":
        raise BuildError(f"{who} is {facts['implementation']}, not CPython: no wheels for it")
    if facts["libc"] != "glibc":
        raise BuildError(
            f"{who} does not run on glibc (musl?): only manylinux (glibc) hosts are supported"
        )
    return target_name(
        facts["version"], facts["machine"], ".".join(facts["libc_version"].split(".")[:2])
    )


def run(cmd: list[str], what: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        lines = (p.stdout + p.stderr).strip().splitlines()
        tail = "\n".join([x for x in lines if x.startswith("ERROR")][-6:] or lines[-12:])
        raise BuildError(f"{what} failed:\n{tail}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def src_key(py: str, target: str, prebuilt: Path | None = None) -> str:
    if prebuilt is not None:  # an installed collection's wheel: its bytes are the source
        h = hashlib.sha256(prebuilt.read_bytes())
    else:
        h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
        for f in sorted((ROOT / "jiva_engine").rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    h.update(f"{py}\0{target}".encode())
    return h.hexdigest()


def build_engine_wheel(py: str, tmp: Path) -> Path:
    """The engine wheel, built from a clean copy (no stale build/ or egg-info) reproducibly."""
    src = tmp / "src"
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src)
    readme = ROOT / "README.md"
    (src / "README.md").write_bytes(readme.read_bytes() if readme.exists() else b"# jiva-py\n")
    for f in (ROOT / "jiva_engine").rglob("*.py"):
        dest = src / f.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    os.environ.update(SOURCE_DATE_EPOCH=str(EPOCH), PIP_DISABLE_PIP_VERSION_CHECK="1")
    run(
        [py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "new"), str(src)],
        "building the engine wheel",
    )
    (whl,) = (tmp / "new").glob("jiva_py-*.whl")
    return whl


def deps_key(whl: Path, target: str) -> str:
    z = zipfile.ZipFile(whl)
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = [
        line
        for line in z.read(meta).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    return hashlib.sha256("\n".join([*lines, target, *platforms(target)]).encode()).hexdigest()


def write_tar(folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(os.listdir(folder)):
            if name.endswith(".whl"):
                info = tar.gettarinfo(str(folder / name), arcname=name)
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = (
                    EPOCH,
                    0,
                    0,
                    "",
                    "",
                    0o644,
                )
                with (folder / name).open("rb") as f:
                    tar.addfile(info, f)
    os.replace(tmp, folder.with_name(folder.name + ".tar"))


def drop_old_layout(out: Path) -> None:
    """Before per-target wheelhouses OUT itself held the wheels and OUT.tar was the archive."""
    old = [
        *out.glob("*.whl"),
        out / ".src-key",
        out / ".deps-key",
        out.with_name(out.name + ".tar"),
    ]
    for f in old:
        f.unlink(missing_ok=True)


class EngineWheel:
    """The engine wheel, built at most once per run (it is the same for every target)."""

    def __init__(self, py: str, tmp: Path, prebuilt: Path | None = None) -> None:
        self.py, self.tmp, self.prebuilt = py, tmp, prebuilt
        self.path: Path | None = prebuilt

    def __call__(self) -> Path:
        if self.path is None:
            self.path = build_engine_wheel(self.py, self.tmp)
        return self.path


def build(out: Path, target: str, py: str, wheel: EngineWheel) -> str:
    out.mkdir(parents=True, exist_ok=True)
    drop_old_layout(out)
    folder, tar = out / target, out / f"{target}.tar"
    new = not folder.exists()
    folder.mkdir(exist_ok=True)
    try:
        return _build(folder, tar, target, py, wheel)
    except BuildError:
        if new:  # no half-made wheelhouse of a target that has none
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _build(folder: Path, tar: Path, target: str, py: str, wheel: EngineWheel) -> str:
    key = src_key(py, target, wheel.prebuilt)
    if (
        (folder / ".src-key").exists()
        and (folder / ".src-key").read_text().strip() == key
        and tar.exists()
    ):
        return "unchanged"
    changed = False
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        whl = wheel()
        dkey = deps_key(whl, target)
        old_dkey = (
            (folder / ".deps-key").read_text().strip() if (folder / ".deps-key").exists() else ""
        )
        if old_dkey != dkey:
            major, minor, _, _ = parse(target)
            cmd = [py, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(tmp / "deps"),
                   "--python-version", f"{major}.{minor}", "--implementation", "cp",
                   "--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"]  # fmt: skip
            for p in platforms(target):
                cmd += ["--platform", p]
            try:
                run([*cmd, str(whl)], f"downloading the dependency wheels for {target}")
            except BuildError as e:
                raise BuildError(
                    f"no wheels for target {target} (CPython {major}.{minor}, {parse(target)[3]}, glibc "
                    f"2.{parse(target)[2]} or older) of some engine dependency, or no package index: {e}"
                ) from None
            for f in folder.glob("*.whl"):
                if not f.name.startswith("jiva_py-"):
                    f.unlink()
            for f in (tmp / "deps").glob("*.whl"):
                if not f.name.startswith("jiva_py-"):
                    shutil.copy2(f, folder / f.name)
            (folder / ".deps-key").write_text(dkey + "\n")
            changed = True
        dest = folder / whl.name
        if not dest.exists() or dest.read_bytes() != whl.read_bytes():
            for f in folder.glob("jiva_py-*.whl"):
                f.unlink()
            shutil.copy2(whl, dest)
            changed = True
    if changed or not tar.exists():
        write_tar(folder)
        changed = True
    (folder / ".src-key").write_text(key + "\n")
    return "changed" if changed else "unchanged"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="build-wheelhouse.sh", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--python", help="target CPython X.Y (default: the running Python's)")
    b.add_argument("--platform", help="target CPU: x86_64, aarch64, ... (default: this machine's)")
    b.add_argument(
        "--glibc", help="oldest glibc of the target hosts, 2.N (default: 2.17 with --platform)"
    )
    b.add_argument("--for", dest="for_python", help="build for this local interpreter's target")
    b.add_argument(
        "--target",
        action="append",
        help="a target name as the install role computes "
        "it (repeat it for several targets: the engine wheel is built once)",
    )
    b.add_argument(
        "--engine-wheel",
        type=Path,
        help="use this engine wheel (an installed collection's) instead of building one from the "
        "checkout's sources",
    )
    b.add_argument("out", type=Path, nargs="?", default=ROOT / "build" / "wheelhouse")
    sub.add_parser("probe")
    w = sub.add_parser("engine-wheel", help="build only the engine wheel into OUT_DIR; print it")
    w.add_argument("out_dir", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "probe":
            print(json.dumps(probe()))
        elif a.cmd == "engine-wheel":
            py = os.environ.get("JIVA_BUILD_PYTHON") or sys.executable
            with tempfile.TemporaryDirectory() as tmp:
                whl = build_engine_wheel(py, Path(tmp))
                a.out_dir.mkdir(parents=True, exist_ok=True)
                print(shutil.copy2(whl, a.out_dir / whl.name))
        else:
            py = os.environ.get("JIVA_BUILD_PYTHON") or sys.executable
            if a.target:
                targets = a.target
                for target in targets:
                    if parse(target)[3] not in GLIBC_MIN:
                        raise BuildError(
                            f"--target {target}: CPU {parse(target)[3]!r} has no manylinux wheels"
                        )
            elif a.for_python:
                targets = [target_of(probe(a.for_python), f"--for {a.for_python}")]
            else:
                own = probe()
                if a.python or a.platform or a.glibc:
                    glibc = a.glibc or (
                        "2.17" if a.platform else ".".join(own["libc_version"].split(".")[:2])
                    )
                    targets = [
                        target_name(a.python or own["version"], a.platform or own["machine"], glibc)
                    ]
                else:
                    targets = [target_of(own, sys.executable)]
            with tempfile.TemporaryDirectory() as tmp:
                if a.engine_wheel is not None and not a.engine_wheel.is_file():
                    raise BuildError(f"--engine-wheel {a.engine_wheel}: no such file")
                wheel = EngineWheel(py, Path(tmp), a.engine_wheel)
                for target in targets:
                    print(build(a.out, target, py, wheel), target, flush=True)
    except BuildError as e:
        print(f"build-wheelhouse: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
