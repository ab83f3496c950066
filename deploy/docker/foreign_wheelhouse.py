"""Make a wheelhouse for the PicoLM-only image of another architecture, without
compiling anything: the project's own wheel (pure Python) and PyPI's wheels of its
dependencies for that architecture (``pip download --platform ... --only-binary``).

    python deploy/docker/foreign_wheelhouse.py ARCH DEST     (ARCH: arm64, armhf, amd64)

Where PyPI has no wheel for the architecture, Debian's package stands in, installed in
the base image (deploy/docker/debian-base.sh) and seen by the image's venv through
``--system-site-packages``: :data:`FROM_DEBIAN`. The compiled wheels it fetched are
listed at the end.
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

PYTHON_VERSION = "3.11"
ABI = "cp311"
# Debian architecture -> the machine name of PyPI's wheel tags.
MACHINES = {"arm64": "aarch64", "armhf": "armv7l", "amd64": "x86_64"}
# Debian bookworm's glibc is 2.36: every manylinux tag up to it runs there.
MANYLINUX = ("manylinux_2_36", "manylinux_2_31", "manylinux_2_28", "manylinux_2_17", "manylinux2014")
# Dependencies PyPI has no wheel of for an architecture, and Debian's package for them.
FROM_DEBIAN = {"armhf": {"pyyaml": "python3-yaml"}}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def requirements(wheel: Path) -> list[str]:
    """The wheel's dependencies without extras (Requires-Dist)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    return [r for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r]


def main(arch: str, dest: Path) -> int:
    machine = MACHINES[arch]
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), "."], check=True)
    project = next(dest.glob("picolm_server-*.whl"))
    skipped = FROM_DEBIAN.get(arch, {})
    wanted = [r for r in requirements(project) if _name(r) not in skipped]
    platforms = [arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_{machine}")]
    subprocess.run(
        [
            *pip, "download", "--quiet", "--only-binary=:all:", "--python-version",
            PYTHON_VERSION, "--implementation", "cp", "--abi", ABI, *platforms,
            "--dest", str(dest), *wanted,
        ],
        check=True,
    )  # fmt: skip
    compiled = sorted(p.name for p in dest.glob("*.whl") if not p.name.endswith("-none-any.whl"))
    print(f"{arch}: {len(list(dest.glob('*.whl')))} wheels in {dest}; compiled ones:")
    for name in compiled:
        print(f"  {name}")
    for package, debian in skipped.items():
        print(f"  {package}: no wheel for {machine} on PyPI; Debian's {debian} in the base image")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
