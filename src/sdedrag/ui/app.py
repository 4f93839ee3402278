"""The gradio page: upload, brush the editable mask, click point pairs, run a streamed drag, download the run.

``build_app`` wires the widgets to the functions in ``handlers.py`` around one :class:`DragSession`, so the
model stays loaded; runs go through gradio's queue one at a time (the session's LoRA state is shared).
"""

from __future__ import annotations

import contextlib
import html
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from sdedrag.errors import InputError, SdedragError
from sdedrag.session import DragSession
from sdedrag.settings import MAX_LORA_STEPS
from sdedrag.settings import DragParams, LoraSettings
from sdedrag.ui import DEFAULT_MAX_PIXELS, handlers
from sdedrag.ui.handlers import OPTION_TYPES, Points

log = logging.getLogger(__name__)
VIEW_HEIGHT = 420

INTRO = """# SDE-Drag
Drag image content with the stochastic sampler of *The Blessing of Randomness: SDE Beats ODE in General
Diffusion-based Image Editing* (ICLR 2024). **1.** Upload an image and brush the area that may change (no
brush: everything may change). **2.** Click a source point, then where it should go; repeat for more pairs.
**3.** Describe the image and press **Run**.
"""
# Small results are enlarged for display (gradio only ever shrinks images); points view clicks rely on that
# never-enlarge rule, so the points view is enlarged on the server instead (handlers.view_scale).
CSS = """
#result img { object-fit: contain; }
#run-status { min-height: 4.5em; }
"""


@contextlib.contextmanager
def shown_in_page() -> Iterator[None]:
    """Show bad input as a message in the page; anything unexpected as a short message, logged in full.
    (Messages are HTML-escaped: gradio renders them as HTML.)"""
    try:
        yield
    except SdedragError as err:
        raise gr.Error(html.escape(str(err)), print_exception=False) from None
    except Exception as err:  # the page gets one line, the server log the traceback
        log.exception("drag UI handler failed")
        message = f"the drag failed: {type(err).__name__}: {err} (details in the server log)"
        raise gr.Error(html.escape(message), print_exception=False) from None


def build_app(
    session: DragSession,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    runs_dir: Path | None = None,
    seed: int = 0,
) -> gr.Blocks:
    """The page for ``session``; each run's files go to a fresh folder under ``runs_dir`` (a new temporary
    folder by default)."""
    runs_dir = Path(runs_dir or tempfile.mkdtemp(prefix="sdedrag-ui-"))
    drag_defaults, lora_defaults = DragParams(), LoraSettings()

    def view(image: Image.Image | None, editor: dict | None, points: Points) -> tuple[Image.Image | None, str]:
        if image is None:
            return None, "Upload an image first."
        mask = handlers.editor_mask(editor, image.size)
        return handlers.points_view(image, points, mask), handlers.points_status(points)

    def on_upload(path: str) -> tuple[Any, ...]:
        with shown_in_page():
            image = handlers.open_upload(path, max_pixels)
        return image, handlers.editor_value(image), [], *view(image, None, [])

    def on_select(image: Image.Image | None, editor: dict | None, points: Points,
                  event: gr.SelectData) -> tuple[Any, ...]:
        points = handlers.add_point(points, event.index, image.size if image else None)
        return points, *view(image, editor, points)

    def on_undo(image: Image.Image | None, editor: dict | None, points: Points) -> tuple[Any, ...]:
        points = handlers.undo_point(points)
        return points, *view(image, editor, points)

    def on_clear(image: Image.Image | None, editor: dict | None) -> tuple[Any, ...]:
        return [], *view(image, editor, [])

    def on_run(image: Image.Image | None, editor: dict | None, points: Points, *values: Any,
               progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:  # noqa: B008 (gradio's idiom)
        options = dict(zip(OPTION_TYPES, values))
        with shown_in_page():
            for update in handlers.run_drag(session, runs_dir, image, editor, points, options):
                for warning in update.warnings:
                    gr.Warning(html.escape(warning))
                progress((update.move, update.moves or None), desc=update.message)
                yield update.image, [str(path) for path in update.files] or None, update.message

    with gr.Blocks(title="sdedrag: SDE-Drag") as app:
        gr.Markdown(INTRO)
        image = gr.State(None)
        points = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column():
                upload = gr.UploadButton("Upload an image", file_types=["image"], type="filepath", variant="primary",
                                         elem_id="upload")
                editor = gr.ImageEditor(
                    label="1 · Brush the area that may change", type="pil", image_mode="RGBA", sources=(),
                    transforms=(), layers=False, format="png", placeholder="Upload an image with the button above",
                    brush=gr.Brush(colors=[("#ff5a1f", 0.55)], color_mode="fixed"), elem_id="editor",
                )
            with gr.Column():
                view_image = gr.Image(
                    label="2 · Click a source point, then its target", type="pil", format="png",
                    interactive=False, buttons=[], height=VIEW_HEIGHT, elem_id="points-view",
                )
                points_status = gr.Markdown("Upload an image first.", elem_id="points-status")
                with gr.Row():
                    undo = gr.Button("Undo point", size="sm", elem_id="undo")
                    clear = gr.Button("Clear points", size="sm", elem_id="clear")
            with gr.Column():
                result = gr.Image(label="Result (streamed move by move)", type="pil", format="png", height=VIEW_HEIGHT,
                                  interactive=False, buttons=["download", "fullscreen"], elem_id="result")
                run_status = gr.Markdown("", elem_id="run-status")
                files = gr.File(label="Downloads: result, trajectory GIF, run.json, input, mask",
                                file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt (describe the image)", scale=3, elem_id="prompt")
            method = gr.Radio([("SDE-Drag", "sde"), ("ODE-Drag", "ode")], value=drag_defaults.method,
                              label="Method", scale=1, elem_id="method")
            run = gr.Button("Run", variant="primary", scale=1, elem_id="run-button")
        with gr.Accordion("Drag parameters (defaults: the paper's)", open=False):
            with gr.Row():
                steps = gr.Slider(1, 500, drag_defaults.steps, step=1, label="Steps over [0, T]", elem_id="steps")
                t0 = gr.Slider(0.05, 1.0, drag_defaults.t0, step=0.01, label="t0 (edit time / T)", elem_id="t0")
                step_size = gr.Slider(0.5, 10, drag_defaults.step_size, step=0.5,
                                      label="Step size (latent pixels per move)", elem_id="step-size")
                radius = gr.Slider(1, 20, drag_defaults.radius, step=1, label="Patch radius (latent pixels)",
                                   elem_id="radius")
            with gr.Row():
                alpha = gr.Slider(0.5, 2.0, drag_defaults.alpha, step=0.05, label="alpha (patch gain: target = alpha x source)",
                                  elem_id="alpha")
                beta = gr.Slider(0.0, 1.0, drag_defaults.beta, step=0.05, label="beta (source signal kept)",
                                 elem_id="beta")
                guidance = gr.Slider(1.0, 10.0, drag_defaults.guidance, step=0.5, label="Guidance at t0",
                                     elem_id="guidance")
                lora_scale_min = gr.Slider(0.0, 1.0, drag_defaults.lora_scale_min, step=0.05,
                                           label="LoRA scale at t0", elem_id="lora-scale-min")
            with gr.Row():
                order = gr.Radio([("1: DDIM / DDPM", 1), ("2: DPM-Solver++(2M)", 2)], value=drag_defaults.order,
                                 label="Solver order", elem_id="order")
                paste_back = gr.Checkbox(drag_defaults.paste_back, label="Keep the input's pixels outside the mask",
                                         elem_id="paste-back")
                seed_box = gr.Number(seed, precision=0, label="Seed", elem_id="seed")
        with gr.Accordion("LoRA (fine-tuned once per image, then cached)", open=False), gr.Row():
            lora = gr.Checkbox(True, label="Use LoRA", elem_id="lora")
            lora_steps = gr.Number(lora_defaults.steps, precision=0, minimum=1, maximum=MAX_LORA_STEPS,
                                   label="Training steps", elem_id="lora-steps")
            lora_rank = gr.Number(lora_defaults.rank, precision=0, minimum=1, label="Rank", elem_id="lora-rank")
            lora_lr = gr.Number(lora_defaults.learning_rate, label="Learning rate", elem_id="lora-lr")

        options = {
            "prompt": prompt, "method": method, "steps": steps, "t0": t0, "step_size": step_size, "radius": radius,
            "alpha": alpha, "beta": beta, "guidance": guidance, "lora_scale_min": lora_scale_min, "order": order,
            "paste_back": paste_back, "lora": lora, "lora_steps": lora_steps, "lora_rank": lora_rank,
            "lora_lr": lora_lr, "seed": seed_box,
        }
        view_outputs = [points, view_image, points_status]
        upload.upload(on_upload, upload, [image, editor, *view_outputs], show_progress="hidden")
        editor.change(view, [image, editor, points], [view_image, points_status], show_progress="hidden")
        view_image.select(on_select, [image, editor, points], view_outputs, show_progress="hidden")
        undo.click(on_undo, [image, editor, points], view_outputs, show_progress="hidden")
        clear.click(on_clear, [image, editor], view_outputs, show_progress="hidden")
        run.click(on_run, [image, editor, points, *(options[name] for name in OPTION_TYPES)],
                  [result, files, run_status], concurrency_limit=1, concurrency_id="drag", show_progress_on=run_status)
    return app


def serve(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, max_file_size: str | int = "25mb") -> None:
    """Serve ``app`` (blocking) with runs queued; a port that is taken is reported as one line."""
    try:
        app.queue().launch(server_name=host, server_port=port, max_file_size=max_file_size, ssr_mode=False,
                           footer_links=[], css=CSS, quiet=True)
    except OSError as err:
        raise InputError(f"cannot serve on {host}:{port}: the port is taken or the address is not this "
                         "machine's; choose another with --port / --host") from err
