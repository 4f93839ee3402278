"""Print versions, the compute device, and which models can be loaded from here."""

from __future__ import annotations

import argparse
import json
import os

from sdedrag.settings import BUILTIN_MODELS, DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--check-hub", action="store_true", help="also ask the Hub (5 s timeout) whether the default model is reachable"
    )


def cached_pipelines() -> list[str]:
    """Diffusers pipelines (repos with a model_index.json) in the local Hugging Face cache."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    try:
        repos = scan_cache_dir().repos
    except Exception:  # noqa: BLE001 - a missing or unreadable cache simply holds no models
        return []
    return sorted(
        repo.repo_id
        for repo in repos
        if repo.repo_type == "model" and isinstance(try_to_load_from_cache(repo.repo_id, "model_index.json"), str)
    )


def hub_status(model_id: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return "not checked (HF_HUB_OFFLINE is set)"
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(model_id, timeout=5)
        return "reachable"
    except Exception as err:  # noqa: BLE001 - any failure means: not reachable from here
        return f"not reachable ({type(err).__name__})"


def gather(check_hub: bool) -> dict:
    import torch

    from sdedrag.io import environment

    cuda = torch.cuda.is_available()
    cached = cached_pipelines()
    models = {name: "built in, always available" for name in BUILTIN_MODELS}
    models[DEFAULT_MODEL] = "in local cache" if DEFAULT_MODEL in cached else "not in local cache"
    if check_hub:
        models[DEFAULT_MODEL] += f"; Hub: {hub_status(DEFAULT_MODEL)}"
    models.update({repo: "in local cache" for repo in cached if repo != DEFAULT_MODEL})
    return {
        **environment(),
        "device": {
            "default": "cuda" if cuda else "cpu",
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "cpu_threads": torch.get_num_threads(),
        },
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE", "0"),
        "models": models,
    }


def run(args: argparse.Namespace) -> int:
    facts = gather(args.check_hub)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print("  ".join(f"{name} {version}" for name, version in facts["versions"].items()))
    print(f"python {facts['python']} on {facts['platform']}")
    device = facts["device"]
    gpus = ", ".join(device["cuda_devices"]) or "no CUDA device"
    print(f"device: {device['default']} ({gpus}; {device['cpu_threads']} CPU threads)")
    print(f"HF_HUB_OFFLINE={facts['hf_hub_offline']}")
    print("models:")
    for name, status in facts["models"].items():
        print(f"  {name:<48} {status}")
    return 0
