"""The browser front end (``anonymixer ui``): a Gradio page that speaks to the service through
``anonymixer_client`` only, like any other client — no torch, no wire format of its own.

:mod:`webui.connection` (where the service is), :mod:`webui.keys` (a user's key, never shown),
:mod:`webui.views` (what each tab does), :mod:`webui.service` (the Service tab's report),
:mod:`webui.app` (the page and its launch).
"""
