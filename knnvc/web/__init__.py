"""``knnvc serve``: a local page (Gradio) and an HTTP API (``POST /api/convert``) over the Python API.

``service.Service`` holds the loaded pipeline, the saved voices, the limits, the temp folders and the queue;
``app.create_app`` puts the API and the page in front of it; ``page`` is the Gradio layout; ``controls`` reads the
controls from ``ConvertOptions``. Needs the ``web`` extra (``pip install 'knnvc[web]'``).
"""
