"""WavLM up to transformer layer 6 (or deeper): raw 16 kHz waveform in, (T, D) frames at 50 Hz out.

The model is transformers' ``WavLMModel`` cut to its first 6 transformer layers (``depth``; deeper when a match
layer asks for it, ``knnvc.options.ConvertOptions.match_layer``). With the pre-LN ("stable layer
norm") encoder of WavLM-Large the encoder's final layer norm is replaced by the identity, so the model's last
hidden state is exactly ``hidden_states[6]`` of the full model: the output of the 6th transformer block, which
is what kNN-VC matches on. The waveform goes in raw, never layer-normalised, as the published vocoder expects.

Precision: ``WavLMEncoder.cast`` casts the network but keeps an fp32 island at the input: the raw waveform and
the first convolution stay fp32 (bf16 would keep 8 bits of a 16-bit sample).

This module does no file I/O and does not import transformers: ``knnvc.weights.formats`` builds the model from files.
"""

from __future__ import annotations

import logging
import re
import types
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from knnvc.options import HOP, RECEPTIVE_FIELD, WAVLM_LAYER

if TYPE_CHECKING:  # transformers is imported by whoever builds the model (knnvc.weights.formats), not here
    from transformers import WavLMModel
from knnvc.errors import AudioError
from knnvc.files import sha256

log = logging.getLogger(__name__)

_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")


def num_frames(num_samples: int) -> int:
    """Frames WavLM emits for ``num_samples`` samples at 16 kHz: one per 320 once the first 400 are in."""
    if num_samples < RECEPTIVE_FIELD:
        return 0
    return (num_samples - RECEPTIVE_FIELD) // HOP + 1


def truncate_wavlm(model: WavLMModel, layer: int = WAVLM_LAYER) -> WavLMModel:
    """Keep transformer layers ``1..layer`` so the last hidden state equals ``hidden_states[layer]``.

    Works in place and returns the model, in eval mode.
    """
    n_layers = len(model.encoder.layers)
    if not 1 <= layer <= n_layers:
        raise ValueError(f"layer must be within 1..{n_layers}, got {layer}")
    model.encoder.layers = nn.ModuleList(list(model.encoder.layers)[:layer])
    if model.config.do_stable_layer_norm:
        # Pre-LN encoders apply their layer norm after the last layer; hidden_states[layer] has none.
        model.encoder.layer_norm = nn.Identity()  # type: ignore[assignment]
    model.config.num_hidden_layers = layer
    return model.eval()


def fold_weight_norm(model: nn.Module) -> None:
    """Replace weight-norm parametrizations (the positional conv's) with plain weights, in place."""
    for module in model.modules():
        if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            torch.nn.utils.parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def _fused_attention(
    self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None, gated_position_bias: Tensor
) -> tuple[Tensor, None]:
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    Stands in for transformers' ``WavLMAttention.torch_multi_head_self_attention``, which asks torch for the
    attention weights and so forbids fused kernels. Same maths: the gated relative position bias (computed by
    transformers, unchanged) is added to the scaled scores and padded keys are masked.
    hidden_states (B, T, C); gated_position_bias (B * heads, T, T); attention_mask (B, T) with 1 = valid.
    """
    batch, length, width = hidden_states.shape
    heads = int(self.num_heads)  # type: ignore[arg-type]

    def split(x: Tensor) -> Tensor:
        return x.view(batch, length, heads, width // heads).transpose(1, 2)

    q, k, v = (split(proj(hidden_states)) for proj in (self.q_proj, self.k_proj, self.v_proj))  # type: ignore[operator]
    bias = gated_position_bias.view(batch, heads, length, length).to(q.dtype)
    if attention_mask is not None:
        bias = bias.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return self.out_proj(out.transpose(1, 2).reshape(batch, length, width)), None  # type: ignore[operator]


def use_fused_attention(model: WavLMModel) -> None:
    """Route every attention layer of ``model`` through ``_fused_attention`` (in place)."""
    for layer in model.encoder.layers:
        attention: Any = layer.attention
        attention.torch_multi_head_self_attention = types.MethodType(_fused_attention, attention)


def _conv_2d(conv: nn.Conv1d) -> nn.Conv2d:
    """The same convolution over (B, C, 1, L), weights (O, I, 1, k) in channels-last layout (oneDNN's fastest)."""
    (kernel,), (stride,), (dilation,) = conv.kernel_size, conv.stride, conv.dilation
    padding = conv.padding
    if not isinstance(padding, tuple):
        raise ValueError(f"only numeric padding converts, got {padding!r}")
    two_d = nn.Conv2d(conv.in_channels, conv.out_channels, (1, kernel), (1, stride), (0, padding[0]),
                      (1, dilation), conv.groups, bias=conv.bias is not None)  # fmt: skip
    weight = conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
    two_d.weight = nn.Parameter(weight, requires_grad=False)
    if conv.bias is not None:
        two_d.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
    return two_d.to(conv.weight.device).train(conv.training)


def _conv_layer_channels_last(self: nn.Module, hidden: Tensor) -> Tensor:
    """A layer-norm conv layer (conv, layer norm over channels, GELU) in channels-last layout, no transposes.

    hidden (B, C_in, 1, L) channels-last (memory (B, 1, L, C_in)) -> (B, C_out, 1, L') channels-last.
    """
    hidden = self.conv(hidden)  # type: ignore[operator]
    normed = self.layer_norm(hidden.permute(0, 2, 3, 1))  # type: ignore[operator]  # (B, 1, L', C): contiguous
    out: Tensor = self.activation(normed).permute(0, 3, 1, 2)  # type: ignore[operator]
    return out


def _first_layer_channels_last(self: nn.Module, hidden: Tensor) -> Tensor:
    """The one-channel first conv layer as frames times weights (an unfold and one matmul), then layer norm and
    GELU: hidden (B, 1, 1, N) -> (B, C, 1, T) channels-last. oneDNN writes this convolution's output
    channels-first, and the layer norm would then need a transposed copy."""
    conv: Any = self.conv
    (kernel,), (stride,) = conv.kernel_size, conv.stride
    frames = hidden[:, 0, 0].unfold(-1, kernel, stride)  # (B, T, kernel), a view
    out = F.linear(frames, conv.weight[:, 0], conv.bias)  # (B, T, C)
    activated: Tensor = self.activation(self.layer_norm(out))  # type: ignore[operator]
    return activated[:, None].permute(0, 3, 1, 2)


def _feature_encoder_channels_last(self: nn.Module, input_values: Tensor) -> Tensor:
    """The conv stack in channels-last layout: (B, N) raw 16 kHz -> (B, C, T), a view of (B, T, C) memory.

    transformers' ``WavLMModel`` transposes the result to (B, T, C), which is then contiguous: no copy.
    """
    hidden = input_values[:, None, None, :]
    for layer in self.conv_layers:  # type: ignore[union-attr]
        hidden = layer(hidden)
    return hidden.squeeze(2)


def _positional_conv_channels_last(self: nn.Module, hidden: Tensor) -> Tensor:
    """The positional convolution (grouped, GELU) in channels-last layout: (B, T, C) -> (B, T, C), no copies.

    The conv pads both sides by ``k // 2``; an even kernel gives one frame too many, dropped on the right
    (transformers' ``WavLMSamePadLayer``).
    """
    length = hidden.shape[1]
    out = self.conv(hidden[:, None].permute(0, 3, 1, 2))  # type: ignore[operator]  # (B, C, 1, T'), channels-last
    activated: Tensor = self.activation(out[..., :length])  # type: ignore[operator]
    return activated.squeeze(2).transpose(1, 2)


def channels_last(model: WavLMModel) -> None:
    """Run the feature extractor's and the positional convolutions as 2-D channels-last convolutions (in place).

    Same arithmetic (outputs agree to float rounding); on a CPU oneDNN runs them faster, and the layer norms over
    channels read the conv outputs in place instead of through transposed copies. For inference after
    ``fold_weight_norm``; only the layer-norm conv stack (WavLM-Large's) converts, a group-norm stack stays 1-D.
    Idempotent.
    """
    if is_channels_last(model):
        return
    if str(model.config.feat_extract_norm) == "layer":
        extractor: Any = model.feature_extractor
        first, *rest = extractor.conv_layers
        first.forward = types.MethodType(_first_layer_channels_last, first)  # stays a Conv1d: its weights as a matrix
        for layer in rest:
            layer.conv = _conv_2d(layer.conv)
            layer.forward = types.MethodType(_conv_layer_channels_last, layer)
        extractor.forward = types.MethodType(_feature_encoder_channels_last, extractor)
    positional: Any = model.encoder.pos_conv_embed
    positional.conv = _conv_2d(positional.conv)
    positional.forward = types.MethodType(_positional_conv_channels_last, positional)


def is_channels_last(model: WavLMModel) -> bool:
    """Whether ``channels_last`` converted ``model``."""
    return isinstance(model.encoder.pos_conv_embed.conv, nn.Conv2d)


def _input_to_weight_dtype(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Forward pre-hook of a conv layer: its input in its own weight's dtype (fp32 island, then the network's)."""
    weight: Tensor = module.conv.weight  # type: ignore[union-attr,assignment]
    return (args[0].to(weight.dtype), *args[1:])


def fingerprint(model: nn.Module, layers: int = WAVLM_LAYER) -> str:
    """A short, stable hash of the weights, used to refuse voices built with another encoder.

    Hashes every tensor's name and shape and a strided sample of its values (fast even at full size), up to
    transformer layer ``layers``: the same weights give the same fingerprint however deep the model was cut.
    """
    return sha256(_fingerprint_parts(model, layers))[:16]


def _fingerprint_parts(model: nn.Module, layers: int) -> Iterator[bytes]:
    """Per tensor up to transformer layer ``layers``, sorted by name: its name, shape and ~256 values (fp32)."""
    for name, tensor in sorted(model.state_dict().items()):
        found = _LAYER_KEY.match(name)
        if found is not None and int(found.group(1)) >= layers:
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        yield name.encode()
        yield str(tuple(tensor.shape)).encode()
        yield flat[::step].to("cpu", torch.float32).contiguous().numpy().tobytes()


class WavLMEncoder(nn.Module):
    """Layer-6 WavLM features. ``name`` says where the weights came from; ``fingerprint`` identifies them.

    Args:
        model: a ``WavLMModel`` with at least ``depth`` transformer layers.
        name: where the weights came from, for messages.
        layer: the layer ``encode`` returns by default (6: what the vocoder was trained on).
        depth: transformer layers kept and run (default ``layer``); ``encode_batch(..., layers=)`` can return
            any layer up to it.
        num_layers: layers the checkpoint has (default: the model's), for messages about deeper layers.
        layout_2d: run the convolutions in channels-last 2-D layout (``channels_last``; the same maths, faster in
            oneDNN on a CPU); False keeps transformers' 1-D layout, for comparisons.
    """

    def __init__(
        self,
        model: WavLMModel,
        name: str,
        layer: int = WAVLM_LAYER,
        *,
        depth: int | None = None,
        num_layers: int | None = None,
        layout_2d: bool = True,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers or len(model.encoder.layers)
        self.depth = max(layer, depth or layer)
        self.model = truncate_wavlm(model, self.depth)
        # Hash the weights as stored, before folding weight norm: the folded values depend on the reduction
        # order of the thread count in use, and a voice must stay compatible across machines.
        self.fingerprint = fingerprint(self.model, min(self.depth, WAVLM_LAYER))
        fold_weight_norm(self.model)
        use_fused_attention(self.model)
        if layout_2d:
            channels_last(self.model)
        for conv_layer in list(self.model.feature_extractor.conv_layers)[:2]:  # into and out of the fp32 island
            conv_layer.register_forward_pre_hook(_input_to_weight_dtype)
        self.name = name
        self.layer = layer

    def cast(self, dtype: torch.dtype) -> WavLMEncoder:
        """Cast the network to ``dtype`` in place, keeping the first convolution layer fp32; returns ``self``."""
        nn.Module.to(self.model, dtype)
        self.model.feature_extractor.conv_layers[0].float()
        return self

    @property
    def layout_2d(self) -> bool:
        """True when the convolutions run in channels-last 2-D layout (``channels_last``, the default)."""
        return is_channels_last(self.model)

    @property
    def dim(self) -> int:
        """Feature width D (1024 for WavLM-Large)."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The network's dtype (the first convolution layer is always fp32)."""
        return self.model.feature_projection.projection.weight.dtype

    def check_layers(self, layers: Sequence[int]) -> None:
        """Raise ``ValueError`` unless every layer is within 1..depth (the layers this encoder runs)."""
        for layer in layers:
            if not 1 <= layer <= self.depth:
                raise ValueError(f"layer {layer} is not within 1..{self.depth}, the layers this encoder runs")

    def forward(
        self, wavs: Tensor, lengths: Tensor | None = None, layers: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode a right-padded batch.

        Args:
            wavs: (B, N) raw waveforms at 16 kHz, zero-padded on the right; fed to the fp32 island as fp32.
            lengths: (B,) valid samples per item; ``None`` means every item fills N (no mask).
            layers: the layers to return (default: ``(self.layer,)``), each within 1..depth.

        Returns:
            features (B, T, len(layers) * D) at 50 Hz in the network's dtype, the layers side by side in the order
            asked (split them with ``split_layers``), and (B,) valid frames per item (computed on the device, so
            nothing waits for it). Frames past an item's valid count are padding and carry no meaning.
        """
        layers = tuple(layers or (self.layer,))
        self.check_layers(layers)
        batch, total = wavs.shape
        mask = None
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.long, device=wavs.device)
        else:
            positions = torch.arange(total, device=wavs.device)
            mask = (positions[None, :] < lengths[:, None]).long()
        whole = torch.div(lengths - RECEPTIVE_FIELD, HOP, rounding_mode="floor") + 1
        frames = torch.where(lengths >= RECEPTIVE_FIELD, whole, 0)
        with warnings.catch_warnings():
            # torch warns that transformers mixes a bool padding mask with a float position bias; it is exact.
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
            if layers == (self.depth,):
                return self.model(wavs.float(), attention_mask=mask).last_hidden_state, frames
            out = self.model(wavs.float(), attention_mask=mask, output_hidden_states=True)
        # hidden_states[i] is block i's output (the final layer norm is the identity, see truncate_wavlm)
        return torch.cat([out.hidden_states[i] for i in layers], dim=-1), frames

    @torch.inference_mode()
    def encode_batch(self, wavs: Sequence[Tensor], layers: Sequence[int] | None = None) -> list[Tensor]:
        """Encode several 1-D waveforms at once; each result equals encoding that waveform alone.

        Args:
            wavs: 1-D raw waveforms at 16 kHz, each at least 400 samples (25 ms).
            layers: layers to return side by side (default: ``(self.layer,)``), as for ``forward``.

        Returns:
            one (T_i, len(layers) * D) tensor at 50 Hz per input, on the encoder's device.
        """
        if not wavs:
            return []
        for wav in wavs:
            if wav.dim() != 1:
                raise AudioError(f"expected a 1-D waveform, got shape {tuple(wav.shape)}")
            if wav.numel() < RECEPTIVE_FIELD:
                raise AudioError(
                    f"audio of {wav.numel()} samples is shorter than one WavLM frame ({RECEPTIVE_FIELD} samples, "
                    "25 ms at 16 kHz)"
                )
        sizes = [w.numel() for w in wavs]  # host-side lengths: slicing below needs no device sync
        # Assemble the batch on the host (pinned when a GPU waits for it), then copy it over in one transfer.
        on_gpu = self.device.type == "cuda"
        padded = torch.zeros(len(wavs), max(sizes), dtype=torch.float32, pin_memory=on_gpu)
        for i, wav in enumerate(wavs):
            padded[i, : wav.numel()] = wav
        padded = padded.to(self.device, non_blocking=on_gpu)
        lengths = None
        if min(sizes) < max(sizes):
            lengths = torch.tensor(sizes, dtype=torch.long, pin_memory=on_gpu).to(self.device, non_blocking=on_gpu)
        feats, _ = self(padded, lengths, layers)
        return [feats[i, : num_frames(n)] for i, n in enumerate(sizes)]

    @property
    def frame_local_frontend(self) -> bool:
        """Whether ``frontend`` frames depend only on their own 400 samples (layer-norm conv stack, as Large)."""
        return str(self.model.config.feat_extract_norm) == "layer"

    @torch.inference_mode()
    def frontend(self, wav: Tensor) -> Tensor:
        """The per-frame half of the encoder (conv stack + projection): (N,) raw 16 kHz -> (T, D), T = num_frames(N).

        With ``frame_local_frontend``, frame t depends only on samples [320 t, 320 t + 400), so the frames of
        overlapping spans are equal and a stream computes each once (``knnvc.stream``).
        """
        feats = self.model.feature_extractor(wav.to(self.device, torch.float32)[None]).transpose(1, 2)
        hidden, _ = self.model.feature_projection(feats)
        return hidden[0]

    @torch.inference_mode()
    def contextualise(self, hidden: Tensor, layers: Sequence[int] | None = None) -> Tensor:
        """The other half: (T, D) ``frontend`` frames -> (T, len(layers) * D), as ``encode`` of their samples."""
        layers = tuple(layers or (self.layer,))
        self.check_layers(layers)
        if layers == (self.depth,):
            return self.model.encoder(hidden[None]).last_hidden_state[0]
        out = self.model.encoder(hidden[None], output_hidden_states=True)
        return torch.cat([out.hidden_states[i][0] for i in layers], dim=-1)

    def encode(self, wav: Tensor, layers: Sequence[int] | None = None) -> Tensor:
        """Encode one raw waveform: (N,) at 16 kHz -> (T, len(layers) * D) at 50 Hz, T = (N - 400) // 320 + 1."""
        return self.encode_batch([wav], layers)[0]


def split_layers(features: Tensor, layers: Sequence[int]) -> dict[int, Tensor]:
    """Side-by-side layers (T, len(layers) * D), as ``encode_batch`` returns them -> {layer: (T, D)}."""
    return dict(zip(layers, features.chunk(len(layers), dim=-1), strict=True))
