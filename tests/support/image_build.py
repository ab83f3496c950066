"""Building the image for the image tests (``make docker-test``, ``make
docker-test-arm``): the build context's PicoLM checkout, a tiny LLaMA GGUF served by
nginx on loopback as ``MODEL_URL`` (with its ``MODEL_SHA256``), and ``docker build`` on
the host network, timed.

    python -m tests.support.image_build --tag TAG --target full|picolm [--picolm-src DIR]
        [--base IMAGE] [--build-image IMAGE] [--wheelhouse DIR] [--venv-options OPTS]

The checkout is PicoLM's when ``--picolm-src`` names one. Without it (CI has no PicoLM
source) it is the stand-in's: a folder laid out as PicoLM's repository whose Makefile
makes ``tests/support/fake_picolm.py`` the ``picolm`` program for any of PicoLM's
targets, so that the image build runs its PicoLM stage as it does for PicoLM, and the
image carries the stand-in as ``/usr/local/bin/picolm``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.nginx import run_file_server
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = REPO / "build" / "picolm-src"
FAKE_PICOLM = Path(__file__).with_name("fake_picolm.py")
# Every target of PicoLM's Makefile that the image build may ask for.
STANDIN_MAKEFILE = """\
# The stand-in (fake_picolm.py) as the picolm program, whatever the target.
pi pi-arm32 picolm native static riscv:
\t{ echo '#!/usr/bin/env python3'; cat fake_picolm.py; } > picolm
\tchmod 755 picolm

clean:
\trm -f picolm

.PHONY: pi pi-arm32 picolm native static riscv clean
"""


def standin_checkout(dest: Path) -> None:
    folder = dest / "picolm"
    folder.mkdir(parents=True)
    shutil.copyfile(FAKE_PICOLM, folder / "fake_picolm.py")
    (folder / "Makefile").write_text(STANDIN_MAKEFILE)


def prepare_checkout(source: Path | None) -> str:
    """Fill build/picolm-src; say what it holds."""
    shutil.rmtree(CHECKOUT, ignore_errors=True)
    if source is None:
        standin_checkout(CHECKOUT)
        return "the stand-in"
    shutil.copytree(source, CHECKOUT, ignore=shutil.ignore_patterns(".git"))
    return f"PicoLM from {source}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.image_build")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--target", choices=["full", "picolm"], default="full")
    parser.add_argument("--picolm-src", type=Path)
    parser.add_argument("--base", default="python:3.11-slim")
    parser.add_argument("--build-image", default="")
    parser.add_argument("--wheelhouse", default="build/wheelhouse")
    parser.add_argument("--venv-options", default="")
    parser.add_argument("--docker", default=shutil.which("docker") or "docker")
    args = parser.parse_args(argv)
    picolm = prepare_checkout(args.picolm_src)
    with tempfile.TemporaryDirectory(prefix="image-model-") as work:
        root = Path(work) / "files"
        root.mkdir()
        root.chmod(0o755)
        model = build_tiny_llama_gguf(root / "tiny.gguf")
        sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
        with run_file_server(root, Path(work) / "nginx") as nginx:
            command = [
                args.docker, "build", "--network", "host", "--target", args.target,
                "--build-arg", f"BASE_IMAGE={args.base}",
                "--build-arg", f"BUILD_IMAGE={args.build_image or args.base}",
                "--build-arg", f"WHEELHOUSE={args.wheelhouse}",
                "--build-arg", f"VENV_OPTIONS={args.venv_options}",
                "--build-arg", f"MODEL_URL={nginx.base_url}/tiny.gguf",
                "--build-arg", f"MODEL_SHA256={sha256}",
                "--tag", args.tag, str(REPO),
            ]  # fmt: skip
            print(" ".join(command), flush=True)
            started = time.monotonic()
            returncode = subprocess.run(command, check=False).returncode
            seconds = time.monotonic() - started
    status = "built" if returncode == 0 else f"FAILED ({returncode}):"
    print(f"{status} {args.tag} ({args.target}, {picolm}) in {seconds:.0f} s", flush=True)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
