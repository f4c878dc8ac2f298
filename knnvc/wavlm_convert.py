"""Convert the original WavLM checkpoint format (``{'cfg': ..., 'model': ...}``) to transformers' ``WavLMModel``.

The published ``WavLM-Large.pt`` stores its config under the original code's names and its weights under the
original module names. This module maps both onto transformers' names so that the model itself always comes
from ``transformers.WavLMModel`` (we never copy model code).
"""

from __future__ import annotations

import ast
import re
from typing import Any

import torch
from transformers import WavLMConfig

from knnvc.errors import WeightsError

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
