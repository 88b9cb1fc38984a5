"""The Gradio app: ``app.py`` builds it with :func:`demo.ui.build_app`."""
