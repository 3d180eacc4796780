"""Compiler wrapper that caches the objects of Verilator's runtime library.

Every Verilator model compiles the same runtime sources (``verilated.cpp``,
``verilated_vpi.cpp``, ``verilated_threads.cpp``, ``verilated_dpi.cpp``, ...) into its own
build directory: about 20 CPU seconds per model, identical each time. :mod:`hw.simulate`
makes verilated.mk run their compiles through this script (``OBJCACHE``, the command prefix
verilated.mk keeps for ccache), which compiles each distinct command once into
``<cache>/<key>/`` and copies the object (and its ``-MMD`` dependency file) for every later
build. Usage: ``python objcache.py <cache dir> <compiler command...>``.

The key is the whole command line (flags, defines, optimisation; the ``-o`` file by its
name only), the compiler's version and target, and the name, size and time of every file in
the source's directory (Verilator's ``include/``: a different Verilator means a different
key). An object whose dependency file names anything outside absolute paths (e.g. a header
in the model's own build directory) is not stored. Any other command, or one this script
cannot key, runs unchanged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def _key(cmd: list[str], src: Path, out: str) -> str | None:
    try:
        ver = subprocess.run([cmd[0], "-dumpfullversion", "-dumpmachine"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if ver.returncode != 0:
        return None
    files = []
    for d in (src.parent, src.parent / "vltstd"):
        if d.is_dir():
            for e in sorted(os.scandir(d), key=lambda e: e.name):
                if e.is_file():
                    st = e.stat()
                    files.append([str(d / e.name), st.st_size, st.st_mtime_ns])
    line = [os.path.basename(a) if i > 0 and cmd[i - 1] == "-o" else a
            for i, a in enumerate(cmd)]
    text = json.dumps([line, str(src.resolve()), ver.stdout, files])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _deps_ok(dfile: Path) -> bool:
    """Every prerequisite in the ``-MMD`` file is an absolute path (none in the build dir)."""
    if not dfile.exists():
        return True
    body = dfile.read_text().replace("\\\n", " ")
    _, _, deps = body.partition(":")
    return all(os.path.isabs(d) for d in deps.split())


def _cached(cache: Path, key: str, cmd: list[str], out: Path) -> int:
    entry = cache / key
    dfile = out.with_suffix(".d")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (entry / "obj.o").exists():
            rc = subprocess.run(cmd).returncode
            if rc == 0 and out.exists() and _deps_ok(dfile):
                try:
                    tmp = cache / f"{key}.tmp{os.getpid()}"
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir()
                    shutil.copyfile(out, tmp / "obj.o")
                    if dfile.exists():
                        shutil.copyfile(dfile, tmp / "obj.d")
                    (tmp / "cmd.json").write_text(json.dumps(cmd) + "\n")
                    tmp.rename(entry)
                except OSError:
                    pass                # not stored; the object itself is in place
            return rc
    shutil.copyfile(entry / "obj.o", out)
    if (entry / "obj.d").exists():
        shutil.copyfile(entry / "obj.d", dfile)
    return 0


def main(argv: list[str]) -> int:
    cache, cmd = Path(argv[0]), argv[1:]
    srcs = [a for a in cmd if a.endswith(".cpp")]
    key = None
    if "-c" in cmd and "-o" in cmd[:-1] and len(srcs) == 1:
        src, out = Path(srcs[0]), Path(cmd[cmd.index("-o") + 1])
        if (src.name.startswith("verilated") and src.parent.name == "include"
                and src.is_absolute() and src.is_file()):
            key = _key(cmd, src, out.name)
    if key is not None:
        try:
            return _cached(cache, key, cmd, out)
        except OSError as e:            # the cache is unusable: compile as if it were not there
            print(f"hw/objcache.py: {e}; compiling without the cache", file=sys.stderr)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
