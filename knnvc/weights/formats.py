"""Turn weight files into models: the original and Hugging Face WavLM formats, the published vocoders, and the
converted copies that make later starts fast.

``knnvc.weights.hub`` finds the files (registry, cache, download); this module reads them (``torch.load`` with
``weights_only=True`` only), converts the original WavLM layout (``{'cfg': ..., 'model': ...}``, as
``WavLM-Large.pt``) to transformers' ``WavLMModel`` names, and builds the modules, with strict key matching
so that a partial or foreign checkpoint fails loudly instead of running with random weights. The model itself
always comes from ``transformers.WavLMModel`` (we never copy model code).

Converted copies: ``WavLM-Large.pt`` is a 1.2 GB pickle of all 24 layers in the original key names; reading and
converting it takes seconds. The first load writes the layers kNN-VC runs, in transformers' key names, as a
safetensors file in the cache (``<cache>/converted/``, through the one atomic writer); later loads map that file
(no copy, no unpickling). A vocoder is kept with its weight norm already folded. A copy is keyed by its source's
absolute path, size and modification time, so an edited checkpoint converts again; a copy that cannot be read is
ignored and written anew.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import WavLMConfig, WavLMModel
from transformers.utils import logging as hf_logging

from knnvc.errors import UsageError, WeightsError
from knnvc.nn.encoder import WavLMEncoder
from knnvc.options import WAVLM_LAYER
from knnvc.progress import OnProgress
from knnvc.weights.hub import cache_dir, resolve_vocoder, resolve_wavlm, with_local_default
from vocoder import Generator, HifiganConfig, UnsafeCheckpointError, VocoderLoadError, load_generator, read_checkpoint
from vocoder.atomic import write_atomically

log = logging.getLogger(__name__)

# Defaults of the original WavLM code for keys a checkpoint's cfg may omit (see tests/fixtures/README.md).
ORIGINAL_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
    "normalize": False,
}

# Original module names -> transformers' names, applied in order to each key.
_RENAMES: list[tuple[str, str]] = [
    (r"^mask_emb$", "masked_spec_embed"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.", r"feature_extractor.conv_layers.\1.layer_norm."),
    (r"^feature_extractor\.conv_layers\.0\.2\.", "feature_extractor.conv_layers.0.layer_norm."),
    (r"^layer_norm\.", "feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "feature_projection.projection."),
    (r"^encoder\.pos_conv\.0\.weight_g$", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv\.0\.weight_v$", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"^encoder\.pos_conv\.0\.bias$", "encoder.pos_conv_embed.conv.bias"),
    (r"\.self_attn\.grep_a$", ".attention.gru_rel_pos_const"),
    (r"\.self_attn\.grep_linear\.", ".attention.gru_rel_pos_linear."),
    (r"\.self_attn\.relative_attention_bias\.", ".attention.rel_attn_embed."),
    (r"\.self_attn\.(q|k|v|out)_proj\.", r".attention.\1_proj."),
    (r"\.self_attn_layer_norm\.", ".layer_norm."),
    (r"\.fc1\.", ".feed_forward.intermediate_dense."),
    (r"\.fc2\.", ".feed_forward.output_dense."),
]
_COMPILED = [(re.compile(pattern), repl) for pattern, repl in _RENAMES]


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate a ``conv_feature_layers`` string such as ``"[(512,10,5)] + [(512,3,2)] * 4"`` safely.

    Only list/tuple literals of integers combined with ``+`` and ``*`` are allowed; nothing is executed.
    """

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [walk(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = walk(node.left), walk(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise WeightsError(f"unsupported conv_feature_layers expression: {spec!r}")

    try:
        layers = walk(ast.parse(spec, mode="eval"))
    except SyntaxError as exc:
        raise WeightsError(f"cannot parse conv_feature_layers {spec!r}: {exc}") from exc
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise WeightsError(f"conv_feature_layers must be a list of (channels, kernel, stride): {spec!r}")
    return [(int(c), int(k), int(s)) for c, k, s in layers]


def hf_config_from_original(cfg: dict[str, Any]) -> WavLMConfig:
    """Translate an original WavLM ``cfg`` dict into a transformers ``WavLMConfig``."""
    full = {**ORIGINAL_DEFAULTS, **cfg}
    if not full["relative_position_embedding"] or not full["gru_rel_pos"]:
        raise WeightsError(
            "this WavLM checkpoint has no gated relative position bias; transformers' WavLMModel (and kNN-VC) "
            "need relative_position_embedding and gru_rel_pos"
        )
    conv = parse_conv_layers(full["conv_feature_layers"])
    return WavLMConfig(
        conv_dim=[c for c, _, _ in conv],
        conv_kernel=[k for _, k, _ in conv],
        conv_stride=[s for _, _, s in conv],
        conv_bias=bool(full["conv_bias"]),
        feat_extract_norm="layer" if full["extractor_mode"] == "layer_norm" else "group",
        feat_extract_activation="gelu",
        hidden_size=int(full["encoder_embed_dim"]),
        num_hidden_layers=int(full["encoder_layers"]),
        num_attention_heads=int(full["encoder_attention_heads"]),
        intermediate_size=int(full["encoder_ffn_embed_dim"]),
        hidden_act=str(full["activation_fn"]),
        do_stable_layer_norm=bool(full["layer_norm_first"]),
        num_conv_pos_embeddings=int(full["conv_pos"]),
        num_conv_pos_embedding_groups=int(full["conv_pos_groups"]),
        num_buckets=int(full["num_buckets"]),
        max_bucket_distance=int(full["max_distance"]),
        layer_norm_eps=1e-5,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
    )


def rename_original_key(key: str) -> str:
    """Map one original WavLM state-dict key to transformers' name."""
    for pattern, repl in _COMPILED:
        key = pattern.sub(repl, key)
    return key


def convert_original_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key of an original WavLM state dict to transformers' ``WavLMModel`` names."""
    return {rename_original_key(k): v for k, v in state.items()}

_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")


def _keep_key(key: str, layer: int) -> bool:
    match = _LAYER_KEY.match(key)
    return match is None or int(match.group(1)) < layer


def _check_keys(name: str, expected: dict[str, torch.Size], got: dict[str, torch.Tensor]) -> None:
    """Strict key and shape matching between a converted state dict and the full-depth model."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys (first: {missing[0]})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys (first: {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} shape mismatches (first: {k} {tuple(got[k].shape)} vs {tuple(expected[k])})")
    if problems:
        raise WeightsError(f"{name}: not a WavLM checkpoint of the layout its config describes: {'; '.join(problems)}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A dict checkpoint read on CPU with ``torch.load(weights_only=True)`` (``vocoder.read_checkpoint``, the
    one place anything is unpickled): pickled code is refused."""
    try:
        return read_checkpoint(path, "cpu")
    except UnsafeCheckpointError as exc:
        raise WeightsError(f"{exc}; refused: use a checkpoint of plain tensors from a source you trust") from exc
    except VocoderLoadError as exc:
        raise WeightsError(f"{exc}; download it again (delete the file first) or check the path") from exc


def read_original(path: Path) -> tuple[WavLMConfig, dict[str, torch.Tensor]]:
    """An original-format WavLM checkpoint as a transformers config and a renamed state dict.

    Every key and shape is checked strictly against the full-depth model its config describes.
    """
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "cfg" not in ckpt or "model" not in ckpt:
        raise WeightsError(f"{path}: not an original WavLM checkpoint (expected the keys 'cfg' and 'model')")
    config = hf_config_from_original(dict(ckpt["cfg"]))
    state = convert_original_state_dict(ckpt["model"])
    with torch.device("meta"):
        full = WavLMModel(config)
    _check_keys(str(path), {k: v.shape for k, v in full.state_dict().items()}, state)
    return config, state


def wavlm_model(config: WavLMConfig, state: dict[str, torch.Tensor], layers: int) -> WavLMModel:
    """A ``WavLMModel`` with its first ``layers`` transformer layers, every tensor taken from ``state``."""
    config.num_hidden_layers = layers
    with torch.device("meta"):
        model = WavLMModel(config)  # no random init: the weights come from the checkpoint
    kept = {k: v.float() for k, v in state.items() if _keep_key(k, layers)}
    model.load_state_dict(kept, strict=True, assign=True)
    return model.float()


def check_depth(name: str, num_layers: int, layer: int, depth: int) -> None:
    """Refuse a checkpoint too shallow for kNN-VC (``WeightsError``) or for a deeper match layer (``UsageError``)."""
    if num_layers < layer:
        raise WeightsError(f"{name}: has {num_layers} layers, kNN-VC needs {layer}")
    if num_layers < depth:
        raise UsageError(f"match layer {depth}: {name} has {num_layers} layers; choose a match layer of 1-{num_layers}")


def wavlm_from_original(path: Path, layer: int = WAVLM_LAYER, depth: int | None = None) -> WavLMEncoder:
    """Load an original-format WavLM checkpoint (``{'cfg': ..., 'model': ...}``, as ``WavLM-Large.pt``).

    ``depth``: transformer layers to build and run (default ``layer``), for a deeper match layer. The first load
    keeps a converted, memory-mappable copy of the layers used in the cache (see the module's docstring).
    """
    depth = max(layer, depth or layer)
    found = _read_converted(path, f"l{depth}")
    if found is None:
        config, state = read_original(path)
        check_depth(str(path), int(config.num_hidden_layers), layer, depth)
        state = {k: v for k, v in state.items() if _keep_key(k, depth)}
        _write_converted(path, f"l{depth}", config.to_dict(), state)
    else:
        config, state = WavLMConfig.from_dict(found[0]), found[1]
    num_layers = int(config.num_hidden_layers)
    check_depth(str(path), num_layers, layer, depth)
    model = wavlm_model(config, state, depth)
    return WavLMEncoder(model, name=str(path), layer=layer, depth=depth, num_layers=num_layers)


def wavlm_from_hf(location: Path, name: str, layer: int = WAVLM_LAYER, depth: int | None = None) -> WavLMEncoder:
    """Load a Hugging Face ``WavLMModel`` folder, building only the first ``depth`` (default ``layer``) layers."""
    config = WavLMConfig.from_pretrained(location)
    num_layers = int(config.num_hidden_layers)
    layer_count = max(layer, depth or layer)
    check_depth(name, num_layers, layer, layer_count)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused deeper layers are expected; strictness is checked below
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        loaded: Any = WavLMModel.from_pretrained(
            location, num_hidden_layers=layer_count, output_loading_info=True, dtype=torch.float32
        )
        model: WavLMModel = loaded[0]
        info: dict[str, list[Any]] = loaded[1]
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{name}: cannot load as a Hugging Face WavLM model: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    unexpected = [k for k in info["unexpected_keys"] if _keep_key(k, layer_count)]
    problems = list(info["missing_keys"]) + unexpected + [str(m) for m in info.get("mismatched_keys", [])]
    if problems:
        raise WeightsError(f"{name}: weights do not match WavLMModel strictly: {sorted(problems)[:5]}")
    return WavLMEncoder(model.float(), name=name, layer=layer, depth=layer_count, num_layers=num_layers)


def load_encoder(
    id_or_path: str | Path, *, offline: bool | None = None, layer: int = WAVLM_LAYER, depth: int | None = None
) -> WavLMEncoder:
    """Load WavLM from a hub id, a local HF folder or an original-format ``.pt`` file; on CPU, fp32.

    ``depth``: transformer layers to run (default ``layer``, 6); a deeper match layer needs that many. A depth
    the checkpoint lacks is a ``UsageError`` raised before the model is built.
    """
    location = resolve_wavlm(id_or_path, offline=offline)
    location = Path(location)
    if location.is_file():
        return wavlm_from_original(location, layer, depth)
    return wavlm_from_hf(location, name=str(with_local_default(id_or_path)), layer=layer, depth=depth)


def load_vocoder(
    name_or_path: str | Path, *, offline: bool | None = None, progress: OnProgress | None = None
) -> Generator:
    """Load a HiFi-GAN generator by registry name or path; eval mode, weight norm folded, on CPU. The first load
    keeps a folded copy in the cache (see the module's docstring)."""
    path = resolve_vocoder(name_or_path, offline=offline, progress=progress)
    found = _converted_vocoder(path)
    if found is not None:
        return found
    try:
        model = load_generator(path)
    except VocoderLoadError as exc:
        raise WeightsError(f"{exc}; pass vocoder='prematched', or a g_*.pt generator checkpoint you trust") from exc
    _write_converted(path, "folded", model.config.to_dict(), model.state_dict())
    return model


def original_to_hf(path: str | Path, out_dir: str | Path) -> Path:
    """Convert an original-format WavLM checkpoint (all layers) into a Hugging Face model folder."""
    config, state = read_original(Path(path))
    wavlm_model(config, state, config.num_hidden_layers).save_pretrained(out_dir)
    return Path(out_dir)


# -- converted copies -------------------------------------------------------------------------------------------

CONVERTED_FORMAT = 1  # bump when the converted layout changes


def converted_path(source: Path, tag: str) -> Path:
    """Where the converted copy of ``source`` (``tag``: what was kept, e.g. ``l6``) lives in the cache."""
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{tag}|{CONVERTED_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "converted" / f"{source.stem}-{tag}-{digest}.safetensors"


def _read_converted(source: Path, tag: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The config and memory-mapped tensors of a converted copy, or None when there is none (or it is unreadable)."""
    from safetensors import safe_open

    path = converted_path(source, tag)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["config"])
            state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        log.warning("ignoring the unreadable converted copy %s (%s); converting again", path, exc)
        return None
    return meta, state


def _converted_vocoder(source: Path) -> Generator | None:
    """A folded vocoder from its converted copy (eval mode, on CPU), or None when there is none."""
    found = _read_converted(source, "folded")
    if found is None:
        return None
    with torch.device("meta"):
        model = Generator(HifiganConfig.from_dict(found[0])).fold_weight_norm()
    try:
        model.load_state_dict(found[1], strict=True, assign=True)
    except RuntimeError as exc:
        log.warning("ignoring the converted copy of %s (%s); converting again", source, exc)
        return None
    return model.eval()


def _write_converted(source: Path, tag: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Keep a converted copy (the one atomic writer); a cache that cannot be written only keeps loads slow.

    The file is built in memory first (safetensors writes bytes or a path, not a stream): a one-off peak of the
    copy's size, about 300 MB for WavLM-Large's 6 layers, on the first load of a checkpoint only.
    """
    from safetensors.torch import save

    path = converted_path(source, tag)
    tensors = {k: v.contiguous() for k, v in state.items()}
    data = save(tensors, metadata={"config": json.dumps(config), "source": str(source)})
    try:
        write_atomically(path, data)
    except OSError as exc:
        log.info("could not keep a converted copy of %s in %s (%s); loads stay slow", source, path.parent, exc)
