"""`diffenhance ui`: a local web app around `diffenhance enhance`.

Upload an image, pick a task and model, set the fidelity <-> sharpness knob (steps, samples),
follow the run, compare before and after, download the result. The page is one static file
(static/index.html: plain JS and CSS, nothing fetched from elsewhere); the server (`app`)
runs each request through the CLI's own enhance path (`jobs.enhance_upload`), so the file it
serves has the bytes `diffenhance enhance` writes for the same image and settings.

    diffenhance ui                     # http://127.0.0.1:7860/
"""

from diffenhance.ui.app import create_app

__all__ = ["create_app"]
