#!/usr/bin/env python3
"""Check that `pip install clibd` needs no compiler anywhere the project declares it runs.

For every Python version in pyproject's classifiers and every platform below, pip resolves the
core dependencies (markers evaluated for that platform) with ``--only-binary :all:``: the resolution
succeeds only if a binary wheel exists for every package of the install, transitive ones included.
``--dry-run`` with a ``--report`` fetches metadata only, not the wheels (onnxruntime-gpu alone is
~300 MB per Python version).  On a failure it names the requirement that has no wheel.

Caveat: pip evaluates the markers of *transitive* dependencies on this machine, not the target; the
project's own requirements are evaluated here for the target (packaging.markers), and the
transitive ones that are platform-conditional (colorama on Windows…) are pure Python.

Usage: python .ci/check_wheels.py [--python 3.12 ...] [--platform windows ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip's vendored copy is the same library
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# pip --platform tags, newest first; pip accepts a wheel tagged with any of them.
PLATFORMS = {
    "linux-x86_64": {"tags": ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                              "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"],
                     "env": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                             "os_name": "posix"}},
    "macos-arm64": {"tags": [f"macosx_{v}_0_arm64" for v in (15, 14, 13, 12, 11)] + ["macosx_11_0_universal2"],
                    "env": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                            "os_name": "posix"}},
    "macos-x86_64": {"tags": [f"macosx_{v}_0_x86_64" for v in (15, 14, 13, 12, 11)]
                     + [f"macosx_10_{v}_x86_64" for v in (15, 14, 13, 12, 9)] + ["macosx_10_9_universal2"],
                     "env": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64",
                             "os_name": "posix"}},
    "windows-amd64": {"tags": ["win_amd64"],
                      "env": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                              "os_name": "nt"}},
}


def declared_pythons(project: dict) -> list[str]:
    versions = [m.group(1) for c in project.get("classifiers", [])
                if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))]
    if not versions:
        sys.exit("pyproject.toml declares no 'Programming Language :: Python :: 3.N' classifiers")
    return versions


def requirements_for(project: dict, python: str, platform: str) -> list[str]:
    env = {**default_environment(), **PLATFORMS[platform]["env"], "python_version": python,
           "python_full_version": f"{python}.0", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    out = []
    for text in project["dependencies"]:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            out.append(str(req))
    return out


def pip_resolve(requirements: list[str], python: str, platform: str, no_deps: bool = False) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--only-binary", ":all:", "--implementation", "cp", "--python-version", python,
                   "--target", str(Path(tmp) / "target"), "--report", str(report)]
        for tag in PLATFORMS[platform]["tags"]:
            command += ["--platform", tag]
        if no_deps:
            command.append("--no-deps")
        done = subprocess.run(command + requirements, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            return False, (errors[0] if errors else done.stderr.strip()[-300:])
        installed = json.loads(report.read_text())["install"]
        return True, f"{len(installed)} wheels"


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", help="only these versions (default: the classifiers')")
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS))
    args = parser.parse_args()
    pythons = args.python or declared_pythons(project)
    platforms = args.platform or list(PLATFORMS)
    failures = 0
    for python in pythons:
        for platform in platforms:
            requirements = requirements_for(project, python, platform)
            ok, detail = pip_resolve(requirements, python, platform)
            if not ok:
                failures += 1
                missing = [r for r in requirements if not pip_resolve([r], python, platform, no_deps=True)[0]]
                detail = f"no wheel for {', '.join(missing) or 'a transitive dependency'}: {detail}"
            print(f"{'ok  ' if ok else 'FAIL'} python {python} {platform:14} {detail}", flush=True)
    print(f"{failures} of {len(pythons) * len(platforms)} targets cannot install without a compiler")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
