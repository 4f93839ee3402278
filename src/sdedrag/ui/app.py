"""The gradio page: upload, brush the editable mask, click point pairs, run a streamed drag, download the run.

``build_app`` wires the widgets to the functions in ``handlers.py`` around one :class:`DragSession`, so the
model stays loaded; runs go through gradio's queue one at a time (the session's LoRA state is shared).
"""

from __future__ import annotations

import contextlib
import html
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from sdedrag.errors import InputError, SdedragError
from sdedrag.runs import settings_args
from sdedrag.session import DragSession
from sdedrag.settings import FAST_PRESET, MAX_LORA_STEPS
from sdedrag.shapes.bench import DragCase, is_text_model, scene_prompt
from sdedrag.ui import DEFAULT_MAX_PIXELS, handlers
from sdedrag.ui.handlers import OPTION_TYPES, Points

log = logging.getLogger(__name__)
VIEW_HEIGHT = 420
COST_OPTIONS = ("method", "steps", "t0", "step_size", "lora", "lora_steps")
"""The options a run's cost depends on."""

INTRO = """# SDE-Drag
Drag image content with the stochastic sampler of *The Blessing of Randomness: SDE Beats ODE in General
Diffusion-based Image Editing* (ICLR 2024). **1.** Upload an image (or, on the `shapes` and `shapes-sd` models,
press **New scene**) and brush the area that may change, or upload a mask (no mask: everything may change).
**2.** Click a source point, then where it should go; repeat for more pairs. **3.** Describe the image and press
**Run**, or **Compare SDE vs ODE** for both methods side by side.
"""
# Small results are enlarged for display (gradio only ever shrinks images); points view clicks rely on that
# never-enlarge rule, so the points view is enlarged on the server instead (handlers.view_scale).
CSS = """
#result img { object-fit: contain; }
#run-status { min-height: 4.5em; }
.pixelated img { image-rendering: pixelated; }
#editor-placeholder { min-height: 12em; border: 2px dashed var(--border-color-primary); border-radius: 8px;
                      padding: 1em; display: flex; align-items: center; }
"""
FAST_LABEL = "Fast: {steps} steps, deep-feature reuse {reuse}".format(**FAST_PRESET)


def page_options(values: Sequence[Any]) -> dict[str, Any]:
    """The run options from the widgets' values in OPTION_TYPES order (a hidden prompt box sends None)."""
    options = dict(zip(OPTION_TYPES, values))
    return {**options, "prompt": options["prompt"] or ""}


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
    folder by default). On a shapes model the page offers ShapesBench scenes and starts at their settings."""
    runs_dir = Path(runs_dir or tempfile.mkdtemp(prefix="sdedrag-ui-"))
    handlers.limit_decoding(max_pixels)
    model = session.model
    shapes = handlers.is_shapes_model(model)
    drag_defaults, lora_defaults, lora_default = handlers.page_defaults(model)
    pixelated = ["pixelated"] if shapes else None

    def view(image: Image.Image | None, editor: dict | None, points: Points, case: DragCase | None,
             preset: np.ndarray | None) -> tuple[Image.Image | None, str]:
        if image is None:
            return None, "Upload an image first."
        mask = handlers.page_mask(editor, image.size, preset)
        status = handlers.points_status(points)
        if case is None:
            return handlers.points_view(image, points, mask), status
        return handlers.points_view(image, points, mask, case.target), f"{handlers.scene_task(case)} {status}"

    def shown(image: Image.Image, mask: np.ndarray | None = None) -> tuple[Any, Any]:
        """The brush editor with ``image`` (and ``mask`` painted), the placeholder hidden."""
        return gr.update(value=handlers.editor_value(image, mask), visible=True), gr.update(visible=False)

    def on_upload(path: str) -> tuple[Any, ...]:
        with shown_in_page():
            image = handlers.open_upload(path, max_pixels)
        return image, None, None, *shown(image), [], *view(image, None, [], None, None)

    def on_scene() -> tuple[Any, ...]:
        case = handlers.new_scene(model)
        image = case.scene.pil()
        return (image, case, case.editable, *shown(image, case.editable), [],
                *view(image, None, [], case, case.editable), case.radius(model.latent_scale),
                scene_prompt(model, case.scene))

    def on_mask(path: str, image: Image.Image | None, points: Points, case: DragCase | None) -> tuple[Any, ...]:
        with shown_in_page():
            mask = handlers.open_mask(path, image, max_pixels)
        return mask, gr.update(value=handlers.editor_value(image, mask)), *view(image, None, points, case, mask)

    def on_select(image: Image.Image | None, editor: dict | None, points: Points, case: DragCase | None,
                  preset: np.ndarray | None, event: gr.SelectData) -> tuple[Any, ...]:
        points = handlers.add_point(points, event.index, image.size if image else None)
        return points, *view(image, editor, points, case, preset)

    def on_undo(image: Image.Image | None, editor: dict | None, points: Points, case: DragCase | None,
                preset: np.ndarray | None) -> tuple[Any, ...]:
        points = handlers.undo_point(points)
        return points, *view(image, editor, points, case, preset)

    def on_clear(image: Image.Image | None, editor: dict | None, case: DragCase | None,
                 preset: np.ndarray | None) -> tuple[Any, ...]:
        return [], *view(image, editor, [], case, preset)

    def on_cost(image: Image.Image | None, points: Points, *values: Any) -> str:
        return handlers.run_cost(model, image.size if image else None, points, dict(zip(COST_OPTIONS, values)))

    def streamed(updates: Iterator[handlers.RunUpdate], progress: gr.Progress) -> Iterator[tuple[Any, ...]]:
        with shown_in_page():
            for update in updates:
                for warning in update.warnings:
                    gr.Warning(html.escape(warning))
                if update.moves:
                    progress((update.move, update.moves), desc=update.message, unit="moves")
                else:
                    progress(None, desc=update.message)
                gallery = [(image, caption) for image, caption in update.gallery] or None
                yield (update.image, [str(path) for path in update.files] or None, update.message, gallery,
                       update.measures)

    def on_run(image: Image.Image | None, editor: dict | None, points: Points, case: DragCase | None,
               preset: np.ndarray | None, *values: Any,
               progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:  # noqa: B008 (gradio's idiom)
        options = page_options(values)
        updates = handlers.run_drag(session, runs_dir, image, editor, points, options, case, preset)
        yield from streamed(updates, progress)

    def on_compare(image: Image.Image | None, editor: dict | None, points: Points, case: DragCase | None,
                   preset: np.ndarray | None, *values: Any,
                   progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:  # noqa: B008
        options = page_options(values)
        yield from streamed(handlers.compare_drags(session, image, editor, points, options, case, preset), progress)

    with gr.Blocks(title="sdedrag: SDE-Drag") as app:
        gr.Markdown(INTRO)
        gr.Markdown(handlers.model_notice(model), elem_id="model-notice")
        image = gr.State(None)
        points = gr.State([])
        case = gr.State(None)
        preset = gr.State(None)  # a scene's or an uploaded mask, joined with the brushed area
        with gr.Row(equal_height=False):
            with gr.Column():
                with gr.Row():
                    upload = gr.UploadButton("Upload an image", file_types=["image"], type="filepath",
                                             variant="primary", elem_id="upload")
                    scene = gr.Button("New scene", variant="primary", visible=shapes, elem_id="new-scene")
                    mask_upload = gr.UploadButton("Upload a mask", file_types=["image"], type="filepath",
                                                  elem_id="mask-upload")
                placeholder = gr.Markdown(
                    "No image yet. " + ("Press **New scene** or upload an image" if shapes else "Upload an image")
                    + " to brush the area that may change here.", elem_id="editor-placeholder")
                editor = gr.ImageEditor(
                    label="1 · Brush the area that may change", type="pil", image_mode="RGBA", sources=(),
                    transforms=(), layers=False, format="png", visible="hidden",  # mounted, so brushing fires change
                    brush=gr.Brush(colors=[("#ff5a1f", 0.55)], color_mode="fixed"), elem_id="editor",
                    elem_classes=pixelated,
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
                                  interactive=False, buttons=["download", "fullscreen"], elem_id="result",
                                  elem_classes=pixelated)
                run_status = gr.Markdown("", elem_id="run-status")
                files = gr.File(label="Downloads: result, trajectory GIF, run.json, input, mask",
                                file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt (describe the image)", scale=3, elem_id="prompt",
                                visible=not shapes or is_text_model(model))
            method = gr.Radio([("SDE-Drag", "sde"), ("ODE-Drag", "ode"), ("DragDiffusion", "dragdiffusion")],
                              value=drag_defaults.method,
                              label="Method", scale=1, elem_id="method")
            run = gr.Button("Run", variant="primary", scale=1, elem_id="run-button")
            compare = gr.Button("Compare SDE vs ODE (runs both)", scale=1, elem_id="compare-button")
        with gr.Row(equal_height=True):
            initial_args = {**settings_args(drag_defaults, lora_defaults), "lora": lora_default}
            cost = gr.Markdown(handlers.run_cost(model, None, [], {name: initial_args[name] for name in COST_OPTIONS}),
                               elem_id="cost")
            fast = gr.Button(FAST_LABEL, size="sm", scale=0, elem_id="fast")
            defaults = gr.Button("Default settings", size="sm", scale=0, elem_id="defaults")
        gallery = gr.Gallery(label="Side by side (with a scene's ground truth)", format="png", columns=4,
                             height="auto", object_fit="contain", interactive=False, elem_id="comparison",
                             elem_classes=pixelated)
        measures = gr.Markdown(elem_id="measures")
        settings_note = "ShapesBench's" if shapes else "the paper's"
        with gr.Accordion(f"Drag parameters (defaults: {settings_note})", open=False):
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
                reuse = gr.Slider(1, 10, drag_defaults.reuse, step=1, label="Deep features every N-th UNet call",
                                  elem_id="reuse")
                paste_back = gr.Checkbox(drag_defaults.paste_back, label="Keep the input's pixels outside the mask",
                                         elem_id="paste-back")
                seed_box = gr.Number(seed, precision=0, label="Seed", elem_id="seed")
        with gr.Accordion("LoRA (fine-tuned once per image, then cached)", open=False), gr.Row():
            lora = gr.Checkbox(lora_default, label="Use LoRA", elem_id="lora")
            lora_steps = gr.Number(lora_defaults.steps, precision=0, minimum=1, maximum=MAX_LORA_STEPS,
                                   label="Training steps", elem_id="lora-steps")
            lora_rank = gr.Number(lora_defaults.rank, precision=0, minimum=1, label="Rank", elem_id="lora-rank")
            lora_lr = gr.Number(lora_defaults.learning_rate, label="Learning rate", elem_id="lora-lr")

        options = {
            "prompt": prompt, "method": method, "steps": steps, "t0": t0, "step_size": step_size, "radius": radius,
            "alpha": alpha, "beta": beta, "guidance": guidance, "lora_scale_min": lora_scale_min, "order": order,
            "reuse": reuse, "paste_back": paste_back, "lora": lora, "lora_steps": lora_steps, "lora_rank": lora_rank,
            "lora_lr": lora_lr, "seed": seed_box,
        }
        initial = {"steps": drag_defaults.steps, "t0": drag_defaults.t0, "step_size": drag_defaults.step_size,
                   "radius": drag_defaults.radius, "alpha": drag_defaults.alpha, "beta": drag_defaults.beta,
                   "guidance": drag_defaults.guidance, "lora_scale_min": drag_defaults.lora_scale_min,
                   "order": drag_defaults.order, "reuse": drag_defaults.reuse, "paste_back": drag_defaults.paste_back}
        view_outputs = [points, view_image, points_status]
        shown_outputs = [editor, placeholder]
        cost_inputs = [image, points, *(options[name] for name in COST_OPTIONS)]
        run_inputs = [image, editor, points, case, preset, *(options[name] for name in OPTION_TYPES)]
        run_outputs = [result, files, run_status, gallery, measures]
        upload.upload(on_upload, upload, [image, case, preset, *shown_outputs, *view_outputs], show_progress="hidden")
        scene.click(on_scene, None, [image, case, preset, *shown_outputs, *view_outputs, radius, prompt],
                    show_progress="hidden")
        mask_upload.upload(on_mask, [mask_upload, image, points, case], [preset, editor, view_image, points_status],
                           show_progress="hidden")
        editor.change(view, [image, editor, points, case, preset], [view_image, points_status], show_progress="hidden")
        view_image.select(on_select, [image, editor, points, case, preset], view_outputs, show_progress="hidden")
        undo.click(on_undo, [image, editor, points, case, preset], view_outputs, show_progress="hidden")
        clear.click(on_clear, [image, editor, case, preset], view_outputs, show_progress="hidden")
        for trigger in (points, *(options[name] for name in COST_OPTIONS)):
            trigger.change(on_cost, cost_inputs, cost, show_progress="hidden")
        method.change(lambda choice: handlers.method_settings(session.model, choice), method,
                      [steps, t0, lora_steps, lora_lr], show_progress="hidden")
        fast.click(lambda: tuple(FAST_PRESET.values()), None, [options[name] for name in FAST_PRESET],
                   show_progress="hidden")
        defaults.click(lambda: tuple(initial.values()), None, [options[name] for name in initial],
                       show_progress="hidden")
        run.click(on_run, run_inputs, run_outputs, concurrency_limit=1, concurrency_id="drag",
                  show_progress_on=run_status)
        compare.click(on_compare, run_inputs, run_outputs, concurrency_limit=1, concurrency_id="drag",
                      show_progress_on=run_status)
    return app


def serve(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, max_file_size: str | int = "25mb") -> None:
    """Serve ``app`` (blocking) with runs queued; a port that is taken is reported as one line."""
    try:
        app.queue().launch(server_name=host, server_port=port, max_file_size=max_file_size, ssr_mode=False,
                           footer_links=[], css=CSS, quiet=True)
    except OSError as err:
        raise InputError(f"cannot serve on {host}:{port}: the port is taken or the address is not this "
                         "machine's; choose another with --port / --host") from err
