"""`diffenhance ui`: a local web app around `diffenhance enhance`.

Upload an image, pick a task and model, pick a preset of the model's fidelity <-> detail knob
(fidelity, balanced, detail: those its checkpoint records; steps, samples and detail can still
be set by hand over it), follow the run (and cancel it), compare before and after, download
the result. The page is one static file (static/index.html: plain JS and CSS, nothing fetched
from elsewhere); the server (`app`) runs each request through the CLI's own enhance path
(`jobs.enhance_upload`), so the file it serves has the bytes `diffenhance enhance` writes for
the same image and settings. Every knob the API takes is bounded and every job time-limited
(`jobs.Limits`), so no request can tie the server up.

    diffenhance ui                     # http://127.0.0.1:7860/
"""

from diffenhance.ui.app import create_app
from diffenhance.ui.jobs import Limits

__all__ = ["Limits", "create_app"]
