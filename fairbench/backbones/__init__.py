"""Text encoders for item titles (sentence-transformers, Hugging Face pooled LMs) and the cached item vectors.

Public entry points::

    from fairbench.backbones import item_vectors, embed
    Z = item_vectors(cfg.backbone, data.items, cache_dir=Path(cfg.paths.cache_dir), device="cpu")  # [I, d]

Nothing heavy is imported here: torch / transformers / sentence-transformers load only on a cache miss.
"""

from fairbench.backbones.base import TextEncoder
from fairbench.backbones.cache import (
    BACKBONE_KEYS,
    DEFAULT_CHUNK_SIZE,
    BackboneSpec,
    EmbedResult,
    backbone_spec,
    build_encoder,
    cache_key,
    embed,
    item_vectors,
)
from fairbench.backbones.templates import DEFAULT_TEMPLATE, render_item_texts, template_fields

__all__ = [
    "BACKBONE_KEYS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_TEMPLATE",
    "BackboneSpec",
    "EmbedResult",
    "TextEncoder",
    "backbone_spec",
    "build_encoder",
    "cache_key",
    "embed",
    "item_vectors",
    "render_item_texts",
    "template_fields",
]
