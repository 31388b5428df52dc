"""Download every wheel `gpu_suite.py` needs on a GPU machine without network, into benchmarks/wheels/.

    make gpu-wheels [GPU_PYTHON=3.12]     # where there is network; then bring the repo, wheels included

What lands there:
- trl==1.12.0, the TRL side of the PPO comparison (the suite installs it with `--no-deps` over the
  running environment: `trl_ppo.install_trl_layer`);
- the project's runtime dependencies (pyproject.toml) with theirs, pinned by one pip resolution and
  listed in `requirements.txt`, WITHOUT torch, triton and the nvidia-*/cuda-* libraries: the GPU
  machine's own CUDA build of torch must match its driver (and is several GB);
- setuptools, for an offline `pip install -e .`.

On the GPU machine, into the Python that holds CUDA torch:
    python -m pip install --no-index --find-links benchmarks/wheels -r benchmarks/wheels/requirements.txt
Wheels are for Linux x86_64 (manylinux) and one CPython version: this interpreter's, or --python-version.
Uses only the standard library and pip.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "wheels"
TRL_PIN = "trl==1.12.0"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# torch and what only torch pulls in from the CUDA side: the GPU machine brings its own.
NOT_DOWNLOADED = re.compile(r"^(torch|triton|pytorch-triton.*|nvidia-.*|cuda-.*)$", re.IGNORECASE)


def project_requirements() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def target_args(python_version: str) -> list[str]:
    return ["--only-binary=:all:", "--python-version", python_version,
            *[arg for platform in PLATFORMS for arg in ("--platform", platform)]]


def resolve(requirements: list[str], python_version: str) -> list[tuple[str, str]]:
    """(name, version) of everything pip would install for `requirements` on the target (no download)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), "--target", str(Path(tmp) / "target"),
                        *target_args(python_version), *requirements], check=True)
        installs = json.loads(report.read_text())["install"]
    return sorted((item["metadata"]["name"], item["metadata"]["version"]) for item in installs)


def download(pins: list[str], dest: Path, python_version: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest),
                    *target_args(python_version), *pins], check=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=WHEELS)
    p.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="CPython version of the GPU machine (default: this interpreter's)")
    args = p.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    resolved = resolve(project_requirements() + ["setuptools>=69"], args.python_version)
    pins = [f"{name}=={version}" for name, version in resolved if not NOT_DOWNLOADED.match(name)]
    skipped = [f"{name}=={version}" for name, version in resolved if NOT_DOWNLOADED.match(name)]
    download(pins, args.dest, args.python_version)
    download([TRL_PIN], args.dest, args.python_version)  # apart: pins trl 1.16 too
    (args.dest / "requirements.txt").write_text(
        "# Resolved by benchmarks/gpu_wheels.py for CPython " + args.python_version + "; torch and its CUDA\n"
        "# libraries are left to the GPU machine: " + ", ".join(skipped) + "\n" + "".join(f"{pin}\n" for pin in pins))
    print(f"{len(pins) + 1} wheels in {args.dest} (CPython {args.python_version}, Linux x86_64); "
          f"not downloaded: {', '.join(skipped)}")


if __name__ == "__main__":
    main()
