"""The drag web UI (gradio): ``app.build_app`` builds the page around a loaded ``DragSession``."""

DEFAULT_MAX_PIXELS = 1024 * 1024  # the largest upload accepted unless `sdedrag ui --max-pixels` says otherwise
