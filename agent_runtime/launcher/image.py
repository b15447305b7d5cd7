"""Build the agent images without pulling anything from a registry.

    python -m agent_runtime.launcher.image build-base   # ecology-agent-base:py3.11 from the host's Python
    python -m agent_runtime.launcher.image build        # ecology-agent:latest from Dockerfile.agent
    python -m agent_runtime.launcher.image ensure       # both, only if missing (what the launcher uses)

`build-base` assembles a minimal root filesystem from the interpreter running this command:
its prefix (stdlib pruned of tests, tkinter, idle, the static library ...), the shared
libraries the interpreter and every extension module link against (found with ldd), the
site-packages of the distributions an agent needs (and their dependencies, taken from the
running environment's metadata), an /etc/passwd with the unprivileged `agent` user, and empty
mount points. Everything is byte-compiled beforehand (the root filesystem is read-only at run
time, so nothing could be cached later). The tree is streamed as a tar into `docker import`:
one layer, no registry.

`build` runs `docker build` on a small staged context (Dockerfile.agent, agent_runtime/,
ecology/, precompiled) so the image is one extra layer; the storage driver here is vfs, where
every layer is a full copy, hence the care about layer count and size.
"""

from __future__ import annotations

import argparse
import compileall
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

PY_TAG = f"py{sys.version_info.major}.{sys.version_info.minor}"
BASE_IMAGE = f"ecology-agent-base:{PY_TAG}"
from agent_runtime.launcher.base import AGENT_GID, AGENT_IMAGE, AGENT_UID  # noqa: E402
PREFIX_IN_IMAGE = "/opt/python"

ROOT = Path(__file__).resolve().parents[2]          # the project checkout
DOCKERFILE = ROOT / "Dockerfile.agent"
PACKAGES = ("agent_runtime", "ecology")             # copied into /app by Dockerfile.agent

# What an agent process imports: the SDK's dependencies (+ structlog for logs). The server-only
# dependencies (reflection, health, jsonschema, httpx) stay out of the image.
AGENT_DISTRIBUTIONS = ("grpcio", "grpcio-status", "protobuf", "googleapis-common-protos", "structlog")

_STDLIB_EXCLUDE = {
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "distutils",
    "site-packages", "__phello__", "turtle.py",
}
_SKIP_PARTS = {"tests", "test", "__pycache__"}
_SKIP_SUFFIXES = {".a", ".pyc", ".pyo", ".exe", ".whl"}


def log(msg: str) -> None:
    print(f"[image] {msg}", file=sys.stderr, flush=True)


# -- the distributions an agent needs ------------------------------------------------------

def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_closure(names: tuple[str, ...] | list[str]) -> list[metadata.Distribution]:
    """The named distributions and everything they require (extras ignored), as installed."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"distribution {name!r} is not installed in {sys.prefix}; "
                             f"install the project first (pip install -e .)") from None
        seen[name] = dist
        for req in dist.requires or []:
            if "extra ==" in req or "extra==" in req:
                continue
            marker_ok = True
            if ";" in req:
                req, marker = req.split(";", 1)
                try:
                    from packaging.markers import Marker
                    marker_ok = Marker(marker.strip()).evaluate()
                except Exception:
                    marker_ok = "python_version <" not in marker
            if marker_ok:
                todo.append(re.split(r"[ <>=!~\[(;]", req.strip(), maxsplit=1)[0])
    return list(seen.values())


def _dist_files(dist: metadata.Distribution) -> list[Path]:
    out = []
    for f in dist.files or []:
        p = Path(dist.locate_file(f)).resolve()
        if not p.is_file():
            continue
        if p.suffix in _SKIP_SUFFIXES or _SKIP_PARTS & set(f.parts[:-1]):
            continue
        out.append(p)
    return out


# -- the root filesystem -------------------------------------------------------------------

class RootFS:
    """A staged tree: dest path in the image -> source file on the host (or bytes)."""

    def __init__(self) -> None:
        self.files: dict[str, Path | bytes] = {}
        self.modes: dict[str, int] = {}
        self.symlinks: dict[str, str] = {}
        self.dirs: dict[str, int] = {}

    def add_file(self, dest: str, src: Path | bytes, mode: int | None = None) -> None:
        self.files[dest] = src
        if mode is not None:
            self.modes[dest] = mode

    def add_tree(self, src: Path, dest: str, exclude_top: set[str] = frozenset()) -> None:
        for dirpath, dirnames, filenames in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            if rel == Path("."):
                dirnames[:] = [d for d in dirnames if d not in exclude_top]
                filenames = [f for f in filenames if f not in exclude_top]
            dirnames[:] = [d for d in dirnames if d not in _SKIP_PARTS]
            for name in filenames:
                p = Path(dirpath) / name
                if p.suffix in _SKIP_SUFFIXES:
                    continue
                d = f"{dest}/{rel / name}" if rel != Path(".") else f"{dest}/{name}"
                if p.is_symlink():
                    target = os.readlink(p)
                    if not target.startswith("/"):
                        self.symlinks[d] = target
                        continue
                    p = p.resolve()
                if p.is_file():
                    self.files[d] = p

    def write_tar(self, fileobj) -> int:
        """Write the tree as an uncompressed tar stream; returns the payload size."""
        total = 0
        with tarfile.open(fileobj=fileobj, mode="w|") as tar:
            all_dirs = dict(self.dirs)
            for path in list(self.files) + list(self.symlinks) + list(self.dirs):
                parent = os.path.dirname(path)
                while parent not in ("", "/"):
                    all_dirs.setdefault(parent, 0o755)
                    parent = os.path.dirname(parent)
            for d in sorted(all_dirs):
                ti = tarfile.TarInfo(d.lstrip("/"))
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, all_dirs[d], int(time.time())
                tar.addfile(ti)
            for link, target in sorted(self.symlinks.items()):
                ti = tarfile.TarInfo(link.lstrip("/"))
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
                tar.addfile(ti)
            for dest, src in sorted(self.files.items()):
                ti = tarfile.TarInfo(dest.lstrip("/"))
                if isinstance(src, bytes):
                    ti.size, ti.mode, ti.mtime = len(src), self.modes.get(dest, 0o644), int(time.time())
                    tar.addfile(ti, io.BytesIO(src))
                else:
                    st = src.stat()
                    ti.size, ti.mtime = st.st_size, int(st.st_mtime)
                    ti.mode = self.modes.get(dest, 0o755 if st.st_mode & 0o111 else 0o644)
                    with open(src, "rb") as f:
                        tar.addfile(ti, f)
                total += ti.size
        return total


def _ldd(paths: list[Path]) -> set[str]:
    """The shared libraries (as the loader names them) that these ELF files need."""
    libs: set[str] = set()
    for p in paths:
        try:
            out = subprocess.run(["ldd", str(p)], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in out.splitlines():
            m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
            if m:
                libs.add(m.group(1))
    return libs


def base_rootfs(extra_distributions: list[str] | None = None) -> tuple[RootFS, dict]:
    prefix = Path(sys.base_prefix).resolve()
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = prefix / "lib" / ver
    fs = RootFS()

    # The interpreter: binary, libpython, the stdlib (pruned).
    exe = prefix / "bin" / ver
    if not exe.exists():
        exe = Path(os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable))
    fs.add_file(f"{PREFIX_IN_IMAGE}/bin/{ver}", exe, 0o755)
    fs.symlinks[f"{PREFIX_IN_IMAGE}/bin/python3"] = ver
    fs.symlinks[f"{PREFIX_IN_IMAGE}/bin/python"] = ver
    fs.symlinks["/usr/local/bin/python3"] = f"{PREFIX_IN_IMAGE}/bin/{ver}"
    fs.symlinks["/usr/local/bin/python"] = f"{PREFIX_IN_IMAGE}/bin/{ver}"
    for lib in (prefix / "lib").glob("libpython*.so*"):
        if lib.is_symlink() and not os.readlink(lib).startswith("/"):
            fs.symlinks[f"{PREFIX_IN_IMAGE}/lib/{lib.name}"] = os.readlink(lib)
        else:
            fs.add_file(f"{PREFIX_IN_IMAGE}/lib/{lib.name}", lib.resolve())
    fs.add_tree(stdlib, f"{PREFIX_IN_IMAGE}/lib/{ver}",
                exclude_top=_STDLIB_EXCLUDE | {d.name for d in stdlib.glob("config-*")})
    # Extension modules nobody in an agent needs (and that drag in Tcl/Tk, test helpers ...).
    for dest in [d for d in fs.files if "/lib-dynload/" in d]:
        if re.match(r"(_tkinter|_test|_xx|xx|_ctypes_test|_testcapi|_testbuffer|_testimportmultiple"
                    r"|_testinternalcapi|_testmultiphase|_curses|_curses_panel|_dbm|_gdbm|readline"
                    r"|nis|ossaudiodev|spwd)", os.path.basename(dest)):
            del fs.files[dest]

    # The distributions an agent imports.
    dists = distribution_closure(list(AGENT_DISTRIBUTIONS) + list(extra_distributions or []))
    site_dest = f"{PREFIX_IN_IMAGE}/lib/{ver}/site-packages"
    for dist in dists:
        base = Path(dist.locate_file("")).resolve()
        for f in _dist_files(dist):
            try:
                rel = f.relative_to(base)
            except ValueError:
                continue
            fs.add_file(f"{site_dest}/{rel}", f)

    # Shared libraries of the interpreter and of every extension module, kept at the path the
    # loader resolves them to; the host's /lib, /lib64 ... symlinks (merged /usr) are mirrored.
    elves = [exe] + [p for p in fs.files.values() if isinstance(p, Path) and (".so" in p.name)]
    prefix_str = str(prefix)
    for lib in sorted(_ldd(elves)):
        if lib.startswith(prefix_str):
            continue
        real = os.path.realpath(lib)
        fs.add_file(os.path.join(os.path.realpath(os.path.dirname(lib)), os.path.basename(lib)), Path(real))
    for top in ("/lib", "/lib64", "/bin", "/sbin"):
        if os.path.islink(top):
            fs.symlinks[top] = os.readlink(top)

    # Users, mount points.
    fs.add_file("/etc/passwd", (f"root:x:0:0:root:/root:/sbin/nologin\n"
                                f"agent:x:{AGENT_UID}:{AGENT_GID}:agent:/tmp:/sbin/nologin\n"
                                f"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n").encode())
    fs.add_file("/etc/group", f"root:x:0:\nagent:x:{AGENT_GID}:\nnogroup:x:65534:\n".encode())
    fs.add_file("/etc/hostname", b"agent\n")
    for d, mode in (("/tmp", 0o1777), ("/app", 0o755), ("/run/ecology", 0o755),
                    ("/run/secrets", 0o755), ("/proc", 0o755), ("/sys", 0o755), ("/dev", 0o755),
                    ("/etc", 0o755), ("/root", 0o700)):
        fs.dirs[d] = mode
    info = {"python": sys.version.split()[0], "prefix": prefix_str,
            "distributions": sorted(f"{d.metadata['Name']}=={d.version}" for d in dists)}
    return fs, info


def _strip_elves(fs: RootFS, stage: Path) -> None:
    """Strip debug symbols from the ELF files (libpython 23 MB -> 6 MB) when `strip` exists."""
    strip = shutil.which("strip")
    if not strip:
        return
    for dest, src in list(fs.files.items()):
        if not isinstance(src, Path) or not (".so" in src.name or dest.endswith("/bin/" + src.name)):
            continue
        with open(src, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        target = stage / "elf" / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        if subprocess.run([strip, "--strip-unneeded", str(target)], capture_output=True).returncode == 0:
            fs.files[dest] = target


def _zip_pure_python(fs: RootFS, stage: Path, ver: str) -> int:
    """Move the pure-Python parts of the tree into two zip files on sys.path.

    Docker's vfs driver copies the whole root filesystem file by file for every container it
    creates (~3 ms per file here), so the file count is what makes a container start slow.
    The stdlib goes to lib/python3XY.zip (on the default sys.path), pure-Python distributions
    to site-packages/_ecology_deps.zip (added by a .pth file). Packages with extension modules
    (grpc, google/_upb) and lib-dynload stay as files. Returns the number of files moved."""
    import py_compile
    import zipfile

    lib = f"{PREFIX_IN_IMAGE}/lib/{ver}/"
    site = lib + "site-packages/"
    zips = {f"{PREFIX_IN_IMAGE}/lib/python{sys.version_info.major}{sys.version_info.minor}.zip": lib,
            site + "_ecology_deps.zip": site}
    with_ext: set[str] = set()
    for dest in fs.files:
        if dest.startswith(site) and ".so" in os.path.basename(dest):
            rel = dest[len(site):].split("/")
            with_ext.add("/".join(rel[:2]) if rel[0] == "google" else rel[0])   # namespace pkg

    def zip_for(dest: str) -> str | None:
        if dest.startswith(site):
            rel = dest[len(site):]
            parts = rel.split("/")
            if len(parts) == 1 and not rel.endswith(".py"):
                return None
            key = "/".join(parts[:2]) if parts[0] == "google" else parts[0]
            return None if key in with_ext else site + "_ecology_deps.zip"
        if dest.startswith(lib) and not dest.startswith(lib + "lib-dynload/"):
            if dest == lib + "os.py":                      # the stdlib landmark stays a file
                return None
            return f"{PREFIX_IN_IMAGE}/lib/python{sys.version_info.major}{sys.version_info.minor}.zip"
        return None

    moved = 0
    handles = {name: zipfile.ZipFile(stage / os.path.basename(name), "w", zipfile.ZIP_DEFLATED,
                                     compresslevel=6) for name in zips}
    tmp_pyc = stage / "tmp.pyc"
    for dest in sorted(fs.files):
        target = zip_for(dest)
        src = fs.files[dest]
        if target is None or not isinstance(src, Path):
            continue
        arc = dest[len(zips[target]):]
        zf = handles[target]
        if dest.endswith(".py"):
            try:
                py_compile.compile(str(src), cfile=str(tmp_pyc), dfile=f"{target}/{arc}", doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                zf.write(tmp_pyc, arc + "c")
            except py_compile.PyCompileError:
                pass                                        # e.g. lib2to3 test data: keep the source only
        zf.write(src, arc)
        del fs.files[dest]
        moved += 1
    # zipimport does not combine namespace-package portions with a directory's, so the zipped
    # part of a split namespace package (google/, with google/_upb a directory) gets an
    # __init__ that extends its __path__ to the directory portion.
    # Nor does it find namespace packages at all (google/rpc has no __init__.py): inside the
    # zips they become regular packages.
    deps = handles[site + "_ecology_deps.zip"]
    split = {k.split("/")[0] for k in with_ext if "/" in k}
    for zf in handles.values():
        names = set(zf.namelist())
        pkgs = {os.path.dirname(n) for n in names if n.endswith(".py") and "/" in n}
        for pkg in list(pkgs):
            while "/" in pkg:
                pkg = os.path.dirname(pkg)
                pkgs.add(pkg)
        for pkg in sorted(pkgs):
            if f"{pkg}/__init__.py" in names or not pkg or ".dist-info" in pkg:
                continue
            body = ("__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"
                    if zf is deps and pkg in split else "")
            zf.writestr(f"{pkg}/__init__.py", body)
    for name, zf in handles.items():
        zf.close()
        fs.files[name] = stage / os.path.basename(name)
    fs.files[site + "_ecology_deps.pth"] = f"{site}_ecology_deps.zip\n".encode()
    return moved


def _compile_tree(fs: RootFS, stage: Path) -> None:
    """Byte-compile the .py files of the tree (as they will be named in the image) and add
    the .pyc files (unchecked hash based, so file times do not matter)."""
    stage = stage / "py"
    py = {d: s for d, s in fs.files.items() if d.endswith(".py") and isinstance(s, Path)}
    for dest, src in py.items():
        target = stage / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
    compileall.compile_dir(str(stage), quiet=2, workers=os.cpu_count() or 1, stripdir=str(stage),
                           prependdir="/", invalidation_mode=_unchecked())
    for pyc in stage.rglob("*.pyc"):
        fs.files["/" + str(pyc.relative_to(stage))] = pyc


def _unchecked():
    import py_compile
    return py_compile.PycInvalidationMode.UNCHECKED_HASH


# -- docker --------------------------------------------------------------------------------

def _docker(*args: str, input_stream=None, check: bool = True, capture: bool = False):
    cmd = ["docker", *args]
    if input_stream is not None:
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, check=check, capture_output=capture, text=True)


NO_ENGINE_FIX = ("start one (as root: scripts/ensure_docker.sh, which installs docker.io if missing) "
                 "or point DOCKER_HOST at one")


def engine_problem() -> str | None:
    """None when a Docker engine answers the `docker` CLI, else one line saying why not."""
    if shutil.which("docker") is None:
        return f"the docker command is not installed (apt-get install docker.io); {NO_ENGINE_FIX}"
    try:
        r = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"the Docker engine at {os.environ.get('DOCKER_HOST') or 'the default socket'} does not answer"
    if r.returncode == 0 and r.stdout.strip():
        return None
    where = os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
    detail = (r.stderr.strip().splitlines() or [""])[-1][:200]
    return f"no Docker engine answers at {where} ({detail}); {NO_ENGINE_FIX}"


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def build_base(tag: str = BASE_IMAGE, extra: list[str] | None = None) -> float:
    t0 = time.monotonic()
    fs, info = base_rootfs(extra)
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="ecology-base-") as tmp:
        _strip_elves(fs, Path(tmp))
        _zip_pure_python(fs, Path(tmp), ver)
        _compile_tree(fs, Path(tmp))
        changes = [
            f"ENV PATH={PREFIX_IN_IMAGE}/bin:/usr/local/bin:/usr/bin:/bin",
            f"ENV LD_LIBRARY_PATH={PREFIX_IN_IMAGE}/lib",
            f"ENV PYTHONHOME={PREFIX_IN_IMAGE}",
            "ENV LANG=C.UTF-8",
            "ENV PYTHONDONTWRITEBYTECODE=1",
            "ENV PYTHONUNBUFFERED=1",
            f"USER {AGENT_UID}:{AGENT_GID}",
            "WORKDIR /tmp",
            'CMD ["python3"]',
        ]
        args = ["import"]
        for c in changes:
            args += ["--change", c]
        args += ["--message", f"ecology agent base from host Python {info['python']}", "-", tag]
        proc = _docker(*args, input_stream=True)
        try:
            size = fs.write_tar(proc.stdin)
            proc.stdin.close()
        except BrokenPipeError:             # docker import ended early: its stderr says why
            size = 0
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        err = proc.stderr.read()
        proc.stdout.read()
        proc.wait()
        if proc.returncode != 0:
            raise SystemExit(f"docker import failed: {err.decode(errors='replace')}")
    dt = time.monotonic() - t0
    log(f"built {tag} from {info['prefix']} (Python {info['python']}): {len(fs.files)} files, "
        f"{size / 1e6:.1f} MB, {dt:.1f}s; distributions: {', '.join(info['distributions'])}")
    return dt


def stage_context(dest: Path) -> None:
    """Dockerfile.agent + the agent packages, without caches/tests, precompiled for /app."""
    shutil.copy2(DOCKERFILE, dest / "Dockerfile.agent")
    app = dest / "app"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, app / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
    compileall.compile_dir(str(app), quiet=2, stripdir=str(app), prependdir="/app",
                           invalidation_mode=_unchecked())


def source_hash() -> str:
    """A digest of what the agent image copies in (and of Dockerfile.agent): the image is
    rebuilt by `ensure` when the checkout's agent code no longer matches it."""
    import hashlib

    h = hashlib.sha256(DOCKERFILE.read_bytes())
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def image_label(name: str, label: str) -> str | None:
    r = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", name],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    import json
    return (json.loads(r.stdout or "null") or {}).get(label)


def build_agent(tag: str = AGENT_IMAGE, base: str = BASE_IMAGE) -> float:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ecology-agent-ctx-") as tmp:
        stage_context(Path(tmp))
        # -f is resolved against the working directory, not the context: give it absolute.
        r = subprocess.run(["docker", "build", "-q", "-f", str(Path(tmp) / "Dockerfile.agent"),
                            "--build-arg", f"BASE={base}",
                            "--label", f"ecology.source_hash={source_hash()}",
                            "-t", tag, tmp], capture_output=True, text=True,
                           env={**os.environ, "DOCKER_BUILDKIT": "0"})
        if r.returncode != 0:
            raise SystemExit(f"docker build failed:\n{r.stdout}\n{r.stderr}")
    dt = time.monotonic() - t0
    log(f"built {tag} on {base} in {dt:.1f}s")
    return dt


def ensure(tag: str = AGENT_IMAGE, base: str = BASE_IMAGE, rebuild: bool = False) -> None:
    if rebuild or not image_exists(base):
        build_base(base)
    if rebuild or image_label(tag, "ecology.source_hash") != source_hash():
        build_agent(tag, base)      # missing, or the agent code changed since it was built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent_runtime.launcher.image", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-base", help="build the base image from the host's Python")
    b.add_argument("--tag", default=BASE_IMAGE)
    b.add_argument("--with", dest="extra", action="append", default=[],
                   help="an extra installed distribution to include (repeatable)")
    a = sub.add_parser("build", help="build the agent image from Dockerfile.agent")
    a.add_argument("--tag", default=AGENT_IMAGE)
    a.add_argument("--base", default=BASE_IMAGE)
    e = sub.add_parser("ensure", help="build whichever of the two images is missing")
    e.add_argument("--rebuild", action="store_true", help="rebuild both")
    args = ap.parse_args(argv)
    problem = engine_problem()
    if problem:
        print(f"[image] {problem}", file=sys.stderr, flush=True)
        return 1
    if args.cmd == "build-base":
        build_base(args.tag, args.extra)
    elif args.cmd == "build":
        if not image_exists(args.base):
            raise SystemExit(f"base image {args.base} not found: run build-base first (or pass --base)")
        build_agent(args.tag, args.base)
    else:
        t0 = time.monotonic()
        ensure(rebuild=args.rebuild)
        log(f"images ready in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
