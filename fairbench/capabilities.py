"""One check that a model, a fairness method and a post-processor fit together, before any work is done.

Models declare what they can do (:func:`fairbench.models.base.model_capabilities`, from class attributes:
no data, no weights); methods and post-processors declare what they need with their options
(``required_capabilities()``). :func:`check_compatibility` compares the two and names the model options that
would work, so ``fairbench train method=bifair model=mf`` ends with one message before data is loaded.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from fairbench.config import config_dir
from fairbench.errors import UserError
from fairbench.models.base import Recommender, model_capabilities


def model_options_with(capabilities: set[str]) -> list[str]:
    """The shipped ``model=`` options whose class has every capability in ``capabilities``."""
    from hydra.utils import get_object

    names = []
    for path in sorted((config_dir() / "model").glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        try:
            cls = get_object(str(target))
        except Exception:  # noqa: BLE001 - a broken option is reported by config validation, not here
            continue
        if capabilities <= model_capabilities(cls):
            names.append(path.stem)
    return names


def check_compatibility(
    model: type[Recommender], method: Any, postprocess: Any | None = None, model_name: str | None = None
) -> None:
    """Raise one :class:`UserError` listing what ``method`` / ``postprocess`` need and ``model`` lacks."""
    have = model_capabilities(model)
    name = model_name or model.__name__
    problems = []
    for owner, label in ((method, "method"), (postprocess, "postprocess")):
        if owner is None:
            continue
        needs = owner.required_capabilities()
        missing = {cap: why for cap, why in needs.items() if cap not in have}
        if missing:
            fitting = model_options_with(set(needs))
            reasons = "; ".join(f"{why} (capability {cap!r})" for cap, why in missing.items())
            hint = f"models that fit: {', '.join(fitting)}" if fitting else "no shipped model fits"
            problems.append(
                f"{label} {type(owner).__name__} does not work with model {name}: {reasons} ({hint})"
            )
    if problems:
        raise UserError("\n".join(problems))
