"""Progress bars: widgets in JupyterLab, plain infrequent lines when run headless."""
from __future__ import annotations

import os


def progress_bar(**kwargs):
    """A tqdm bar; papermill runs (LABKIT_HEADLESS set) get a plain one that prints every 10 s at most."""
    if os.environ.get("LABKIT_HEADLESS"):
        from tqdm.std import tqdm

        return tqdm(mininterval=10, ascii=True, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(**kwargs)
