"""What a run needs before it starts, each step skipped when already done (see bench/README.md)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .config import (
    BENCH,
    BUILD,
    GIN_SRC,
    GO_BIN,
    GO_REFERENCE,
    LOADGEN,
    MAIN_VENV,
    REDIS_SERVER,
    ROOT,
    TWISTD,
    VENV,
    VPY,
    log,
)


def ensure_loadgen() -> None:
    src = BENCH / "loadgen.c"
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= src.stat().st_mtime:
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    log(f"building {LOADGEN.relative_to(ROOT)} with {cc}")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(LOADGEN), str(src)], check=True)


def ensure_venv() -> None:
    req = BENCH / "requirements.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    if VPY.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return
    base = MAIN_VENV / "bin" / "python"
    base_py = str(base) if base.exists() else sys.executable
    if not VPY.exists():
        log(f"creating {VENV.relative_to(ROOT)}")
        subprocess.run([base_py, "-m", "venv", str(VENV)], check=True)
    log("installing bench/requirements.txt into bench/.venv")
    subprocess.run([str(VPY), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    stamp.write_text(digest + "\n")


def ensure_go() -> str | None:
    """Build the Go/gin original offline in GOPATH mode; return a note if skipped."""
    go = shutil.which("go")
    if not go:
        return "go-gin skipped: `go` not installed (Debian: golang-go)"
    if not GIN_SRC.is_dir():
        return "go-gin skipped: gin source missing (Debian: golang-github-gin-gonic-gin-dev)"
    if not GO_REFERENCE.exists():
        return f"go-gin skipped: reference source {GO_REFERENCE} not found"
    main_go = BENCH / "go" / "main.go"
    newest = max(GO_REFERENCE.stat().st_mtime, main_go.stat().st_mtime)
    if GO_BIN.exists() and GO_BIN.stat().st_mtime >= newest:
        return None
    gopath = BUILD / "gopath"
    api = gopath / "src" / "ssebench" / "api"
    cmd = gopath / "src" / "ssebench" / "cmd"
    api.mkdir(parents=True, exist_ok=True)
    cmd.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GO_REFERENCE, api / "sse.go")
    shutil.copyfile(main_go, cmd / "main.go")
    env = dict(
        os.environ,
        GO111MODULE="off",
        GOPATH=f"{gopath}:/usr/share/gocode",
        GOCACHE=str(BUILD / "gocache"),
        GOFLAGS="",
        GOPROXY="off",
    )
    log("building the Go/gin reference server (GOPATH mode, offline)")
    try:
        subprocess.run(["gofmt", "-w", str(api / "sse.go")], check=True, env=env, timeout=120)
        subprocess.run(
            ["go", "build", "-o", str(GO_BIN), "ssebench/cmd"], check=True, env=env, timeout=600
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as e:
        return f"go-gin skipped: build failed ({e})"
    return None


def sse_twisted_available() -> tuple[bool, str]:
    if not TWISTD.exists():
        return False, f"{TWISTD} missing"
    try:
        r = subprocess.run(
            [str(TWISTD), "sse", "--help"], capture_output=True, timeout=60, cwd=str(BUILD)
        )
    except subprocess.TimeoutExpired:
        return False, "`twistd sse --help` timed out"
    if r.returncode != 0:
        return False, "`twistd sse --help` failed: " + r.stderr.decode(errors="replace").strip()[
            -200:
        ]
    return True, ""


def redis_available() -> tuple[bool, str]:
    """The scale-out scenarios need redis-server and sse_twisted's `redis` extra (hiredis;
    txredisapi in builds from before the project's own client)."""
    if not Path(REDIS_SERVER).exists():
        return False, "`redis-server` not installed (Debian: redis-server)"
    ok, why = sse_twisted_available()
    if not ok:
        return False, why
    py = MAIN_VENV / "bin" / "python"
    try:
        check = "import importlib.util as u, sys; sys.exit(not (u.find_spec('hiredis') or u.find_spec('txredisapi')))"
        r = subprocess.run([str(py), "-c", check], capture_output=True, timeout=60)
    except (subprocess.TimeoutExpired, OSError) as e:
        return False, f"cannot check the redis extra: {e}"
    if r.returncode != 0:
        return (
            False,
            "the redis extra (hiredis) is missing in /work/main/.venv (pip install '.[redis]')",
        )
    return True, ""
