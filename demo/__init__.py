"""The Gradio app (tracker issue 6): ``app.py`` builds it with :func:`demo.ui.build_app`."""
