"""The page: a key bar over four tabs (Protect, Revoke, Whole photo, Service), and its launch.

Security: the key fields are password fields and no output holds a key, nor does the browser
(Gradio's run history, which would save a call's inputs there, is off); an uploaded key file is
read into the session's state and its copy on disk removed at once; per-session state (the key
file's bytes, the enrolled template) expires after ``SESSION_TTL_S``; uploads and results in
Gradio's cache are deleted an hour after they were made; nothing is shared between sessions.
"""

from __future__ import annotations

import asyncio

import gradio as gr

from webui.connection import Connection
from webui.keys import read_key_file
from webui.service import report
from webui.views import Views

SESSION_TTL_S = 3600  # a session's key and template are forgotten an hour after they were set
CACHE_SWEEP = (600, 3600)  # every 10 min, delete the uploads and results older than an hour
MAX_UPLOAD = "100mb"  # past the service's 16 M-pixel limit for any sane encoding; refuses floods
CONCURRENT_CALLS = 16  # calls in flight to the service at once; the service batches them


def load_key_file(path: str | None) -> tuple[bytes | None, None, str]:
    if not path:
        return None, None, ""
    try:
        secret = read_key_file(path)
    except (OSError, ValueError) as exc:
        raise gr.Error(f"key file: {exc}", print_exception=False) from None
    return secret, None, f"Key file loaded ({len(secret)} bytes), kept for this browser session only."


def build(connection: Connection) -> gr.Blocks:
    views = Views(connection)
    with gr.Blocks(title="anonymixer", analytics_enabled=False, delete_cache=CACHE_SWEEP) as page:
        gr.Markdown(
            "# anonymixer — cancelable faces\n"
            f"Service `{connection.url}`. A key makes each person a new, revocable face; the same key"
            " gives the same new face again. The key is sent to the service only: never shown, stored or logged."
        )
        loaded = gr.State(None, time_to_live=SESSION_TTL_S)
        template = gr.State(None, time_to_live=SESSION_TTL_S)
        with gr.Row():
            typed = gr.Textbox(label="Key", type="password", placeholder="your secret key", elem_id="key")
            key_file = gr.File(label="…or a key file", type="filepath", height=110, elem_id="key-file")
            key_note = gr.Markdown(elem_id="key-note")
        key_file.upload(load_key_file, key_file, [loaded, key_file, key_note], api_visibility="private")

        with gr.Tab("Protect"):
            gr.Markdown(
                "Aligned, square face photos of **one person** (as `anonymixer-client protect` takes them; "
                "for whole photos use *Whole photo*). They are protected together and enrolled into a template."
            )
            photos = gr.File(label="Photos of one person", file_count="multiple", type="filepath", elem_id="photos")
            with gr.Row():
                protect_button = gr.Button("Protect", variant="primary", elem_id="protect")
                protect_stop = gr.Button("Stop", elem_id="protect-stop")
            faces = gr.Gallery(
                label="Original | protected", columns=2, height=520, object_fit="contain", format="png", elem_id="faces"
            )
            scores = gr.Markdown(elem_id="scores")
            enrolled_note = gr.Markdown(elem_id="enrolled")
            with gr.Row():
                probe = gr.File(label="Another photo to verify", type="filepath", elem_id="probe")
                threshold = gr.Slider(-1.0, 1.0, value=0.5, step=0.01, label="Match threshold (cosine)")
            verify_button = gr.Button("Verify", elem_id="verify")
            with gr.Row():
                probe_face = gr.Image(label="The probe, protected", type="pil", format="png", elem_id="probe-face")
                verdict = gr.Markdown(elem_id="verdict")
        protecting = protect_button.click(
            views.protect, [photos, typed, loaded], [faces, scores, template, enrolled_note], api_name="protect"
        )
        protect_stop.click(None, cancels=[protecting])
        verify_button.click(
            views.verify, [probe, typed, loaded, template, threshold], [probe_face, verdict], api_name="verify"
        )

        with gr.Tab("Revoke"):
            gr.Markdown("One photo under the current key and a new key: two unrelated faces.")
            revoke_photo = gr.File(label="A face photo", type="filepath", elem_id="revoke-photo")
            new_key = gr.Textbox(label="New key", type="password", elem_id="new-key")
            with gr.Row():
                revoke_button = gr.Button("Protect under both keys", variant="primary", elem_id="revoke")
                revoke_stop = gr.Button("Stop")
            with gr.Row():
                current_face = gr.Image(label="Current key", type="pil", format="png", elem_id="current-face")
                renewed_face = gr.Image(label="New key", type="pil", format="png", elem_id="new-face")
            cross = gr.Markdown(elem_id="cross-key")
        revoking = revoke_button.click(
            views.revoke, [revoke_photo, typed, loaded, new_key], [current_face, renewed_face, cross], api_name="revoke"
        )
        revoke_stop.click(None, cancels=[revoking])

        with gr.Tab("Whole photo"):
            gr.Markdown("Scene mode: every face in the photo found, protected (or blurred when small) and pasted back.")
            scene_photo = gr.File(label="A photo", type="filepath", elem_id="scene-photo")
            with gr.Row():
                scene_button = gr.Button("Replace every face", variant="primary", elem_id="scene")
                scene_stop = gr.Button("Stop")
            with gr.Row():
                scene_image = gr.Image(label="Every face replaced", type="pil", format="png", elem_id="scene-image")
                scene_boxes = gr.AnnotatedImage(label="What was found", format="png", elem_id="scene-boxes")
            scene_table = gr.Markdown(elem_id="scene-table")
        replacing = scene_button.click(
            views.scene, [scene_photo, typed, loaded], [scene_image, scene_boxes, scene_table], api_name="scene"
        )
        scene_stop.click(None, cancels=[replacing])

        with gr.Tab("Service"):
            refresh = gr.Button("Refresh", elem_id="refresh")
            status = gr.Markdown(elem_id="status")

        async def service_report() -> str:
            return await asyncio.to_thread(report, connection)

        refresh.click(service_report, None, status, api_name="service")
        page.load(service_report, None, status, api_visibility="private")
    page.queue(default_concurrency_limit=CONCURRENT_CALLS)
    return page


def launch(page: gr.Blocks, host: str, port: int, *, block: bool = True) -> str:
    """Serve ``page`` on http://host:port (never through Gradio's share tunnel); its local URL."""
    _, url, _ = page.launch(
        server_name=host,
        server_port=port,
        share=False,
        # Gradio's run history saves every call's inputs, the typed key among them, in the browser
        # (and can sync them to a Hugging Face bucket): off, which also deletes what it saved before
        run_history=False,
        mcp_server=False,
        prevent_thread_lock=not block,
        max_file_size=MAX_UPLOAD,
        quiet=not block,
    )
    return url
