"""Image/text encoders: which model a spec names, and the encoder that runs it.

The package is split so that serving an exported model never imports torch:

* :mod:`.spec` — model specs, hub and local resolution, the model a data dir uses (no torch);
* :mod:`.clip_loading` — open_clip models built from a spec (torch, open_clip);
* :mod:`.torch_encoder` — :class:`Encoder`: batched, padding-trimmed encoding, int8 text tower;
* :mod:`.cpu` — CPU precision (bfloat16 where the hardware has it) and torch threads.

Importing ``figsearch.encoders`` loads only :mod:`.spec`; the torch names (``Encoder``,
``load_model``, ...) are imported on first access (module ``__getattr__``), so
``from figsearch.encoders import load_model`` keeps working and pulls in torch only then.
:func:`load_encoder` picks the implementation by backend: ``torch`` or ``onnx``
(:mod:`figsearch.onnx_encoder`, ONNX Runtime only).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from figsearch.encoders.spec import (  # noqa: F401 - re-exported
    BIOMEDCLIP_HUB_ID,
    CONFIG_FILE,
    HF_HUB_PREFIX,
    HF_RENAMES,
    LOCAL_DIR_PREFIX,
    SPEC_ALIASES,
    TOKENIZER_FILES,
    TRAIN_HINT,
    WEIGHT_FILES,
    LoadedClip,
    ModelLoadError,
    _local_hf_copies,
    available_configs,
    image_size,
    model_config_dir,
    normalise_spec,
    resolve_model_spec,
)

if TYPE_CHECKING:  # what __getattr__ serves, for type checkers
    from figsearch.encoders.clip_loading import (  # noqa: F401
        create_clip,
        create_from_config,
        find_weights,
        load_model_dir,
        make_transform,
    )
    from figsearch.encoders.cpu import (  # noqa: F401
        PRECISIONS,
        cpu_precision,
        fast_bf16_cpu,
        release_freed_memory,
        set_torch_threads,
    )
    from figsearch.encoders.torch_encoder import (  # noqa: F401
        LENGTH_STEP,
        ROW_STEP,
        Encoder,
        _clip_text_prefix,
        _has_builtin_text_transformer,
        _row_buckets,
        bucket,
        default_device,
        load_model,
        quantize_text_tower,
        row_bucket,
        text_tower,
    )

#: names served lazily, by the submodule that defines them (each needs torch or open_clip,
#: except release_freed_memory, which lives beside the CPU settings it follows)
_LAZY = {
    **dict.fromkeys(("create_clip", "create_from_config", "find_weights", "load_model_dir",
                     "make_transform"), "clip_loading"),
    **dict.fromkeys(("PRECISIONS", "cpu_precision", "fast_bf16_cpu", "release_freed_memory",
                     "set_torch_threads"), "cpu"),
    **dict.fromkeys(("LENGTH_STEP", "ROW_STEP", "Encoder", "_clip_text_prefix",
                     "_has_builtin_text_transformer", "_row_buckets", "bucket", "default_device",
                     "load_model", "quantize_text_tower", "row_bucket", "text_tower"),
                    "torch_encoder"),
}
BACKENDS = ("torch", "onnx")



def __getattr__(name: str) -> Any:
    """The torch-side names, imported from their submodule on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'figsearch.encoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"figsearch.encoders.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def load_encoder(spec: str, backend: str, *, device: str | None = None, batch_size: int = 64,
                 precision: str = "float32", onnx_root: Path | None = None,
                 threads: int = 0) -> Any:
    """The query/build encoder for ``spec`` on ``backend``: one entry point for both.

    ``torch``: ``spec`` is a model spec (:func:`normalise_spec`), loaded with open_clip on
    ``device`` at ``precision``. ``onnx``: ``spec`` is the model key of an export under
    ``onnx_root`` (``figsearch export-onnx``, or the build's own export), run on ONNX Runtime
    with ``threads`` (0: its default) and never importing torch. Both give ``encode_texts``,
    ``encode_images``, ``warm_up``, ``model_key`` and ``dim``.
    """
    if backend == "onnx":
        if onnx_root is None:
            raise ValueError("the onnx backend needs onnx_root, the folder of the exports")
        from figsearch.onnx_encoder import load_onnx_encoder

        return load_onnx_encoder(Path(onnx_root), spec, threads=threads, batch_size=batch_size)
    if backend != "torch":
        raise ValueError(f"encoder backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from figsearch.encoders.torch_encoder import load_model

    return load_model(spec, device=device, batch_size=batch_size, precision=precision)


def start_query_encoding(encoder: Any, text: str) -> Callable[[], np.ndarray]:
    """Start encoding one query text; the returned call waits for its (1, dim) float32 row.

    An encoder that batches on the model thread (``start_text``,
    :class:`figsearch.api.batching.BatchingEncoder`) starts now, so the caller can search
    keywords meanwhile; any other encoder encodes when the call is made."""
    start_text = getattr(encoder, "start_text", None)
    row = start_text(text) if start_text is not None else None

    def vector() -> np.ndarray:
        found = row() if row is not None else encoder.encode_texts([text])
        return np.asarray(found, np.float32).reshape(1, -1)

    return vector
