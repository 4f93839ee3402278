"""Per-image LoRA: training, the disk cache, and the per-step scale reaching the UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

import sdedrag.lora as lora_module
from sdedrag.engine import cosine_ramp
from sdedrag.engine.schedule import SD_SCHEDULER_CONFIG
from sdedrag.errors import InputError
from sdedrag.lora import ADAPTER_NAME, LoraCache, lora_applied, save_lora, train_lora
from sdedrag.models import PixelUNet, StableDiffusion
from sdedrag.models.tiny import build_tiny_pipeline
from sdedrag.session import DragSession
from sdedrag.settings import DragParams, LoraSettings
from sdedrag.tasks.common import image_to_latent
from sdedrag.tasks.drag import DragRequest
from tests.conftest import smooth_image

PROMPT = "a photo of blobs"
# The attention-only default barely moves the random tiny UNet; with conv_out too the adapter can fit the image.
FAST = LoraSettings(
    steps=20, learning_rate=1e-2, batch_size=4, target_modules=(*LoraSettings().target_modules, "conv_out")
)


def eval_loss(model, x0, cond) -> float:
    """The eps-prediction MSE at fixed timesteps and noise."""
    timesteps = [100, 300, 500, 700, 900]
    noise = torch.randn((len(timesteps), *x0.shape[1:]), generator=torch.Generator().manual_seed(1))
    alpha = model.schedule.alpha_bar(timesteps).float()[:, None, None, None]
    noisy = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    return sum(
        torch.mean((model.predict_eps(noisy[i : i + 1], t, cond) - noise[i : i + 1]) ** 2).item()
        for i, t in enumerate(timesteps)
    ) / len(timesteps)


def test_default_settings_follow_the_paper():
    settings = LoraSettings()
    assert (settings.rank, settings.steps, settings.learning_rate, settings.lora_alpha) == (16, 100, 2e-4, 16.0)
    assert settings.target_modules == ("to_q", "to_k", "to_v", "to_out.0")


@pytest.mark.parametrize(
    "bad",
    [
        {"rank": 0}, {"rank": 1.5}, {"rank": True}, {"steps": 0}, {"learning_rate": 0.0},
        {"learning_rate": float("nan")}, {"alpha": -1.0}, {"batch_size": 0}, {"weight_decay": -0.1},
        {"target_modules": ()}, {"seed": -1},
    ],
)
def test_bad_settings_raise_input_error(bad):
    with pytest.raises(InputError):
        LoraSettings(**bad)


def test_training_learns_the_image_and_leaves_the_model_as_it_was(tmp_path, tiny32):
    image = smooth_image(64, 64)
    unet = tiny32.unet
    base = {name: value.clone() for name, value in unet.state_dict().items()}
    flags = [p.requires_grad for p in unet.parameters()]
    x0, cond = image_to_latent(tiny32, image), tiny32.condition(PROMPT)
    before = eval_loss(tiny32, x0, cond)

    state = train_lora(tiny32, image, PROMPT, FAST, progress=False)

    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    assert all(v.abs().max() > 0 for k, v in state.items() if ".lora_B." in k)  # B starts at zero
    assert not tiny32.has_lora and not unet.training and [p.requires_grad for p in unet.parameters()] == flags
    after_state = unet.state_dict()
    assert after_state.keys() == base.keys() and all(torch.equal(after_state[k], v) for k, v in base.items())
    with lora_applied(tiny32, save_lora(tmp_path, state, FAST)):
        loaded = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
        after = eval_loss(tiny32, x0, cond)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    assert before > 1.0 > 0.9 > after  # 1.0: the loss of predicting zero


def test_v_prediction_models_train():
    pipe = build_tiny_pipeline()
    pipe.scheduler = DDIMScheduler.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})
    # 64 px: the lowest UNet level has 2x2 tokens (one token's self-attention gives q and k no gradient)
    state = train_lora(StableDiffusion(pipe, "tiny-v"), smooth_image(64, 64), "", LoraSettings(steps=2), False)
    assert all(v.abs().max() > 0 for k, v in state.items() if ".lora_B." in k)


def test_cache_trains_once_and_keys_every_input(tmp_path, tiny32, tiny64, monkeypatch):
    calls = []
    real_train = lora_module.train_lora
    monkeypatch.setattr(lora_module, "train_lora", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    image, settings = smooth_image(64, 48), LoraSettings(steps=2)
    cache = LoraCache(tmp_path)

    first = cache.get_or_train(tiny32, image, PROMPT, settings, progress=False)
    second = cache.get_or_train(tiny32, image, PROMPT, settings, progress=False)
    third = LoraCache(tmp_path).get_or_train(tiny32, image.copy(), PROMPT, settings, progress=False)
    assert len(calls) == 1 and first == second == third and first.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.parent.name]  # no leftover staging folder
    assert sorted(p.name for p in first.parent.iterdir()) == ["info.json", first.name]
    with safe_open(str(first), "pt") as weights:
        assert all(k.startswith("unet.") and "lora" in k for k in weights.keys())
    with lora_applied(tiny32, first):
        assert tiny32.has_lora

    key = cache.key(tiny32, image, PROMPT, settings)
    other_keys = {
        cache.key(tiny32, image, "another prompt", settings),
        cache.key(tiny32, image, PROMPT, LoraSettings(steps=3)),
        cache.key(tiny32, image, PROMPT, LoraSettings(steps=2, seed=1)),
        cache.key(tiny32, smooth_image(64, 48, seed=1), PROMPT, settings),
        cache.key(tiny64, image, PROMPT, settings),
    }
    assert key not in other_keys and len(other_keys) == 5
    param = next(tiny32.unet.parameters())
    original = param.detach().clone()
    with torch.no_grad():
        param.mul_(1.01)
    try:
        assert cache.key(tiny32, image, PROMPT, settings) != key  # other weights, other key
    finally:
        with torch.no_grad():
            param.copy_(original)
    assert cache.key(tiny32, image, PROMPT, settings) == key


def test_failed_training_leaves_no_cache_entry(tmp_path, tiny32, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(lora_module, "train_lora", fail)
    with pytest.raises(RuntimeError):
        LoraCache(tmp_path).get_or_train(tiny32, smooth_image(32, 32), PROMPT, LoraSettings(steps=1))
    assert list(tmp_path.iterdir()) == []


def test_lora_scale_reaches_the_unet_and_exit_restores_the_base_model(tmp_path, tiny64):
    gentle = LoraSettings(steps=3)  # a small update, where the output is linear in the scale to first order
    weights = save_lora(tmp_path, train_lora(tiny64, smooth_image(32, 32), PROMPT, gentle, progress=False), gentle)
    unet, linear = tiny64.unet, tiny64.unet.down_blocks[2].attentions[0].transformer_blocks[0].attn1.to_q
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = tiny64.condition(PROMPT)

    def eps(scale: float = 1.0) -> torch.Tensor:
        return tiny64.predict_eps(x, 400, cond, guidance=2.0, lora_scale=scale)

    base = eps()
    with lora_applied(tiny64, weights):
        assert tiny64.has_lora
        full, zero, half, full_again = eps(1.0), eps(0.0), eps(0.5), eps(1.0)
    assert torch.allclose(zero, base, rtol=0, atol=1e-12)
    delta = (full - base).norm()
    assert delta > 1e-4 * base.norm()
    assert torch.equal(full, full_again)  # a scale does not stick to the layers
    assert (half - base).norm() < delta and (full - half).norm() < delta
    assert (half - (base + full) / 2).norm() < 0.01 * delta  # linear in the scale to first order

    assert not tiny64.has_lora and tiny64.unet is unet
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    assert unet.down_blocks[2].attentions[0].transformer_blocks[0].attn1.to_q is linear
    assert torch.equal(eps(), base) and torch.equal(eps(0.3), base)


def test_a_session_drag_applies_the_lora_with_the_per_step_scale(tmp_path, tiny32, monkeypatch):
    """The adapter DragSession trains changes the drag, and each step's scale of the paper's cosine ramp
    reaches the adapter's layers inside the UNet."""
    session = DragSession(tiny32, lora_cache=LoraCache(tmp_path))
    params = DragParams(steps=10, t0=0.6, lora_scale_min=0.5)
    request = DragRequest(smooth_image(64, 64), [(20, 30)], [(36, 30)], prompt=PROMPT, params=params)
    scales = []
    set_scale = LoraLayer.set_scale

    def spy(layer, adapter, scale):
        scales.append((any(m is layer for m in tiny32.unet.modules()), adapter, scale))
        return set_scale(layer, adapter, scale)

    monkeypatch.setattr(LoraLayer, "set_scale", spy)
    with_lora = session.drag(request, LoraSettings(steps=2, learning_rate=1e-2))
    monkeypatch.undo()
    without = session.drag(request, None)
    assert with_lora.timings["lora_seconds"] > 0 and not torch.allclose(with_lora.latent, without.latent, atol=1e-4)
    ramp = cosine_ramp(tiny32.schedule.grid(params.steps, params.t0), 1.0, params.lora_scale_min)
    assert scales and all(inside and adapter == ADAPTER_NAME for inside, adapter, _ in scales)
    assert sorted({round(scale, 9) for *_, scale in scales}) == sorted({round(v, 9) for v in ramp})
    assert not tiny32.has_lora


def test_adapter_is_removed_when_the_block_raises_and_nesting_is_refused(tmp_path, tiny32):
    weights = save_lora(tmp_path, train_lora(tiny32, smooth_image(32, 32), "", LoraSettings(steps=1), False),
                        LoraSettings(steps=1))
    with pytest.raises(RuntimeError, match="inside"):
        with lora_applied(tiny32, weights):
            with pytest.raises(InputError, match="already carries"):
                with lora_applied(tiny32, weights):
                    pass
            with pytest.raises(InputError, match="already carries"):
                train_lora(tiny32, smooth_image(32, 32), "", LoraSettings(steps=1), False)
            assert tiny32.has_lora
            raise RuntimeError("inside")
    assert not tiny32.has_lora and not any(isinstance(m, BaseTunerLayer) for m in tiny32.unet.modules())
    with pytest.raises(InputError, match="not found"):
        with lora_applied(tiny32, tmp_path / "missing.safetensors"):
            pass


def test_pixel_models_and_bad_targets_are_refused(tiny32):
    unet = UNet2DModel(
        sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8,
    )
    pixel = PixelUNet(unet, dict(SD_SCHEDULER_CONFIG), "pixel")
    with pytest.raises(InputError, match="--no-lora"):
        train_lora(pixel, smooth_image(16, 16), "", LoraSettings(steps=1), False)
    with pytest.raises(InputError, match="LoRA adapter"):
        train_lora(tiny32, smooth_image(32, 32), "", LoraSettings(steps=1, target_modules=("no_such_layer",)), False)
    assert not tiny32.has_lora
