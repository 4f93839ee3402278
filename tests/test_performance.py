"""The hot loop's structure (one batched UNet call per step, no text encoding, no per-call LoRA walk, device
timesteps) and the ``--fast`` preset. No timings: these fail when the structure regresses."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import smooth_image
from peft.tuners.lora import LoraLayer

from sdedrag.cli import build_parser, main
from sdedrag.lora import lora_applied, save_lora, train_lora
from sdedrag.settings import FAST_PRESET, DragParams, LoraSettings
from sdedrag.tasks.drag import DragRequest, drag

PROMPT = "a photo of blobs"


class CallLog:
    """Batch sizes and timestep arguments of every forward of a module."""

    def __init__(self, module: torch.nn.Module):
        self.batches: Counter = Counter()
        self.timesteps: list = []
        self.kwargs: list[dict] = []
        self.handle = module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("sample", kwargs.get("input_ids"))
        self.batches[int(sample.shape[0])] += 1
        if len(args) > 1:
            self.timesteps.append(args[1])
        self.kwargs.append(kwargs)

    @property
    def calls(self) -> int:
        return sum(self.batches.values())


def drag_inputs():
    image = smooth_image(64, 64)
    return image, [(20.0, 30.0)], [(52.0, 30.0)]  # 32 px = 4 latent px: 2 moves at step size 2


@pytest.mark.parametrize("method, guidance, batches", [
    ("sde", 3.0, {4: 1}),  # edited + recorded latent, x conditional + unconditional, in one call
    ("sde", 1.0, {2: 1}),  # no unconditional half without guidance
    ("ode", 3.0, {1: 1, 2: 1}),  # DDIM inversion (at inversion guidance 1) + decoding (one latent x CFG)
])
def test_one_batched_unet_call_per_step_and_no_text_encoding(tiny32, method, guidance, batches):
    image, sources, targets = drag_inputs()
    params = DragParams(method=method, steps=10, guidance=guidance)
    request = DragRequest(image, sources, targets, prompt=PROMPT, params=params)
    drag(tiny32, request)  # the prompt's embeddings are now known
    unet, text = CallLog(tiny32.unet), CallLog(tiny32.pipe.text_encoder)
    try:
        result = drag(tiny32, request)
    finally:
        unet.handle.remove()
        text.handle.remove()
    steps = tiny32.schedule.grid(10, params.t0).num_steps
    assert result.moves == 2 and unet.batches == {batch: result.moves * n * steps for batch, n in batches.items()}
    assert text.calls == 0
    assert all(torch.is_tensor(t) and t.device == tiny32.device and t.ndim == 0 for t in unet.timesteps)
    assert all(kwargs.get("cross_attention_kwargs") is None for kwargs in unet.kwargs)


def test_attention_runs_on_pytorch_sdpa_with_and_without_lora(tmp_path, tiny32):
    def processors() -> set[str]:
        return {type(p).__name__ for p in tiny32.unet.attn_processors.values()}

    assert processors() == {"AttnProcessor2_0"}
    settings = LoraSettings(steps=1)
    weights = save_lora(tmp_path, train_lora(tiny32, smooth_image(32, 32), PROMPT, settings, False), settings)
    with lora_applied(tiny32, weights):
        assert processors() == {"AttnProcessor2_0"}


def test_guided_embeddings_are_built_once(tiny32):
    cond = tiny32.condition(PROMPT)
    embeddings, extra = cond.guided()
    assert cond.guided()[0] is embeddings and extra is None
    assert torch.equal(embeddings, torch.cat([cond.uncond, cond.cond]))


def test_lora_scale_matches_diffusers_per_call_scaling_across_adapters(tmp_path, tiny64, monkeypatch):
    """predict_eps sets the adapter scale on the LoRA layers directly (only when it changes); the result must be
    diffusers' own cross_attention_kwargs scaling, also for a second adapter loaded after the first is removed."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = tiny64.condition(PROMPT)
    for seed in (0, 1):
        settings = LoraSettings(steps=2, seed=seed, learning_rate=1e-2)
        weights = save_lora(tmp_path / str(seed), train_lora(tiny64, smooth_image(32, 32), PROMPT, settings, False),
                            settings)
        with lora_applied(tiny64, weights):
            for scale in (0.5, 0.5, 1.0, 0.0, 0.8):
                ours = tiny64.predict_eps(x, 400, cond, guidance=1.0, lora_scale=scale)
                tiny64._set_lora_scale(1.0)
                theirs = tiny64.unet(x, 400, encoder_hidden_states=cond.cond,
                                     cross_attention_kwargs={"scale": scale}).sample
                assert torch.allclose(ours, theirs, rtol=0, atol=1e-12), (seed, scale)
            base_scale = tiny64.predict_eps(x, 400, cond, lora_scale=0.0)
            calls = []
            monkeypatch.setattr(LoraLayer, "set_scale", lambda self, adapter, scale: calls.append(scale))
            tiny64.predict_eps(x, 400, cond, lora_scale=0.0)  # unchanged: the layers are not touched
            assert calls == []
            monkeypatch.undo()
        assert torch.allclose(tiny64.predict_eps(x, 400, cond), base_scale, rtol=0, atol=1e-12)
        assert tiny64._lora is None  # no references to removed LoRA layers are kept


def test_fast_preset_sets_order_steps_and_reuse_unless_given():
    defaults = DragParams()
    for argv, steps, order, reuse in [
        ([], None, defaults.order, defaults.reuse),  # --steps defaults by method (None until resolved)
        (["--fast"], FAST_PRESET["steps"], FAST_PRESET["order"], FAST_PRESET["reuse"]),
        (["--fast", "--steps", "30"], 30, 1, 2),
        (["--steps", "30", "--order", "2", "--fast"], 30, 2, 2),
        (["--reuse", "3", "--fast"], 25, 1, 3),
    ]:
        for command in (["drag"], ["bench", "run"]):
            parser, _ = build_parser(command[0])
            args = parser.parse_args([*command, *argv])
            assert (args.steps, args.order, args.reuse) == (steps, order, reuse), (command, argv)
    assert FAST_PRESET == {"order": 1, "steps": 25, "reuse": 2}


def test_fast_drag_records_what_it_ran_and_its_cost_per_move(tmp_path, image_file):
    out = tmp_path / "fast"
    argv = ["drag", "--image", str(image_file), "--source", "20,30", "--target", "52,30", "--model", "tiny",
            "--no-lora", "--fast", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    args, results = record["args"], record["results"]
    assert (args["steps"], args["order"], args["reuse"]) == (25, 1, 2) and "fast" not in args
    assert results["unet_calls_per_move"] == 15  # round(0.6 * 25) decoding steps; Cycle-SDE's encoding calls none
    assert 8 < results["unet_call_equivalents_per_move"] < 11  # 8 full calls and 7 at a fraction of a full one
    again = tmp_path / "again"
    assert main(["drag", "--config", str(out / "run.json"), "--out", str(again)]) == 0
    assert (again / "result.png").read_bytes() == (out / "result.png").read_bytes()
