"""Mutual self-attention control (MasaCtrl, as DragDiffusion decodes) through diffusers attention processors.

The UNet's batch is made of pairs [reference, edited] (repeated, as classifier-free guidance repeats it).
From denoising step ``start_step`` and self-attention layer ``start_layer`` on (both counted from 0, in
call order), the edited sample's self-attention queries attend to its reference's keys and values, and
the reference attends to itself as before. The wrapper hands the reference's tokens to the model's own
processor as the attention context, so the processor (SDPA, xformers, ...) and any LoRA in the
projections work unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

from sdedrag.errors import InputError


@dataclass
class MutualSelfAttention:
    """Where the control applies, and the counters that place each self-attention call."""

    start_step: int = 0
    start_layer: int = 10
    step: int = 0  # UNet calls finished
    layer: int = 0  # self-attention calls so far in the current UNet call

    def applies(self, layer: int) -> bool:
        return self.step >= self.start_step and layer >= self.start_layer

    def begin_call(self, module: nn.Module, args: Any) -> None:
        self.layer = 0

    def end_call(self, module: nn.Module, args: Any, output: Any) -> None:
        self.step += 1


def reference_tokens(attn: Attention, hidden_states: Tensor) -> Tensor:
    """Each pair's reference input as ``attn`` turns its own input into keys and values (flattened to
    tokens, group-normed if the layer has a group norm), repeated for every member of the pair."""
    if attn.spatial_norm is not None:
        raise InputError("mutual self-attention does not support attention layers with a spatial norm")
    tokens = hidden_states.flatten(2).transpose(1, 2) if hidden_states.ndim == 4 else hidden_states
    if attn.group_norm is not None:
        tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
    pairs = tokens.unflatten(0, (-1, 2))
    return pairs[:, :1].expand_as(pairs).flatten(0, 1)


class MutualSelfAttentionProcessor:
    """Wraps an attention processor: self-attention under ``control`` takes its keys and values from the reference."""

    def __init__(self, processor: Any, control: MutualSelfAttention):
        self.processor, self.control = processor, control

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        layer = self.control.layer
        self.control.layer += 1
        if encoder_hidden_states is None and self.control.applies(layer):
            encoder_hidden_states = reference_tokens(attn, hidden_states)
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


def self_attention_layers(unet: nn.Module) -> list[Attention]:
    """The UNet's self-attention modules."""
    return [m for m in unet.modules() if isinstance(m, Attention) and not m.is_cross_attention]


@contextlib.contextmanager
def mutual_self_attention(unet: nn.Module, start_step: int = 0, start_layer: int = 10) -> Iterator[MutualSelfAttention]:
    """Within the block, every UNet call runs under mutual self-attention control; the processors are restored after."""
    control = MutualSelfAttention(start_step, start_layer)
    layers = self_attention_layers(unet)
    originals = [layer.processor for layer in layers]
    hooks = [unet.register_forward_pre_hook(control.begin_call), unet.register_forward_hook(control.end_call)]
    try:
        for layer, processor in zip(layers, originals):
            layer.set_processor(MutualSelfAttentionProcessor(processor, control))
        yield control
    finally:
        for layer, processor in zip(layers, originals):
            layer.set_processor(processor)
        for hook in hooks:
            hook.remove()
