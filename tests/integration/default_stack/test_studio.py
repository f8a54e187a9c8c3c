"""Easel Studio in a real browser (Debian's Chromium, driven by Playwright) against the shared default stack.

Each test opens the page at the stack's front door and leaves the stack as it found it (the key one test makes is
revoked after it). Every request the page makes is checked to go to the stack's own origin.
"""

import base64
import io
import json
import os
import re
import subprocess
import sys
import time

import av
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from build_engines.faces.random_pack import drawn_faces
from serve.access import ACTIVE_CHECK_S, open_key_store
from serve.access.keys import KeyLimits
from serve.names import DEFAULT_MODEL
from serve.paths import ICONS_DEV, PROJECT_ROOT
from serve.routes import Scope
from tests.images import dev_icon_png
from tests.studio import (
    PNG,
    accessibility_violations,
    assert_drawn_as_the_api_draws_it,
    draw,
    drawn_with_choice,
    sent_body,
    shown_call,
)

pytestmark = pytest.mark.integration

GENERATE = "/v1/images/generations"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_seeded_drawing_is_the_api_s_answer_for_the_call_it_shows_and_its_progress_reaches_the_last_step(
    studio, api, stack, tmp_path
):
    draw(studio, prompt="a red heart icon", seed=7, num_inference_steps=4, size="64x64")
    expect(studio.locator("#draw-progress")).to_have_text("step 4 of 4: done")
    image = studio.locator("#draw-images img")
    expect(image).to_have_count(1)
    assert image.get_attribute("alt") == "a red heart icon"
    body = shown_call(studio)
    assert body == {
        "prompt": "a red heart icon",
        "size": "64x64",
        "num_inference_steps": 4,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "seed": 7,
        "n": 1,
    }
    answer = api.post(GENERATE, json=body)
    assert answer.status_code == 200, answer.text
    assert image.get_attribute("src") == PNG + answer.json()["data"][0]["b64_json"]
    assert "seed 7" in studio.inner_text("#draw-time")
    curl = studio.locator("#draw-call figure").filter(has_text="Copy curl").locator("pre").inner_text()
    pasted = subprocess.run(["bash", "-c", curl], cwd=tmp_path, capture_output=True, text=True)  # into a shell
    assert pasted.returncode == 0, pasted.stderr[-2000:]
    assert PNG + base64.b64encode((tmp_path / "image.png").read_bytes()).decode() == image.get_attribute("src")
    (tmp_path / "image.png").unlink()
    shown = studio.locator("#draw-call figure").filter(has_text="Python (gRPC)").locator("pre").inner_text()
    env = {**os.environ, "EASEL_GRPC": stack.info.grpc_address, "PYTHONPATH": str(PROJECT_ROOT)}
    ran = subprocess.run(
        [sys.executable, "-c", shown], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert PNG + base64.b64encode((tmp_path / "image.png").read_bytes()).decode() == image.get_attribute("src")


def test_the_drawing_is_in_the_history_and_its_rerun_there_is_the_same_picture(studio):
    draw(studio, prompt="a blue square", seed=11, num_inference_steps=3, size="64x64")
    drawn = studio.locator("#draw-images img").get_attribute("src")
    studio.click("#tab-history")
    card = studio.locator("#history-list li.card").first
    expect(card.locator("img").first).to_have_attribute("alt", "a blue square")
    expect(card.locator(".record")).to_contain_text("seed 11")
    card.get_by_role("button", name="Rerun").click()
    rerun = card.locator("img.rerun")
    expect(rerun).to_have_count(1, timeout=60_000)
    assert rerun.get_attribute("src") == drawn
    card.get_by_role("button", name="Use seed").click()
    expect(studio.locator("#seed")).to_have_value("11")


def test_two_kept_images_side_by_side_and_a_rating_sent_to_the_feedback_route(studio, stack):
    for seed in (21, 22):
        draw(studio, prompt=f"a purple circle {seed}", seed=seed, num_inference_steps=2, size="64x64")
    studio.click("#tab-history")
    cards = studio.locator("#history-list li.card")
    expect(cards.first.locator(".prompt")).to_have_text("a purple circle 22")
    for index in (0, 1):
        cards.nth(index).locator("input.compare").check()
    compare = studio.locator("#compare")
    expect(compare.locator("img")).to_have_count(2)
    assert compare.locator("img").first.get_attribute("alt") == "a purple circle 22"
    studio.select_option("#rating-0", "4")
    compare.get_by_role("button", name="Send rating").first.click()
    expect(compare.locator("[role=status]").first).to_have_text(f"rated 4: reward 0.75 for {DEFAULT_MODEL}")
    studio.select_option("#rating-1", "2")  # the other's rating, its call shown before it is sent: sent as gRPC
    code = studio.locator("#history-call figure").filter(has_text="Python (gRPC)").locator("pre").inner_text()
    env = {**os.environ, "EASEL_GRPC": stack.info.grpc_address, "PYTHONPATH": str(PROJECT_ROOT)}
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert ran.returncode == 0 and "reward: 0.25" in ran.stdout, ran.stderr[-2000:]
    compare.get_by_role("button", name="Send rating").nth(1).click()  # rated already, by that call: the API's 409
    expect(compare.locator("[role=status]").nth(1)).not_to_be_empty()
    assert not compare.locator("[role=status]").nth(1).inner_text().startswith("rated")


def test_a_weight_out_of_range_is_the_api_s_400_shown_beside_prompt(studio, api):
    draw(studio, prompt="a (cat:11) icon", seed=1, num_inference_steps=2, size="64x64")
    refused = api.post(GENERATE, json=shown_call(studio))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt", refused.text
    expect(studio.locator("#prompt-error")).to_have_text(refused.json()["error"]["message"])
    expect(studio.locator("#prompt")).to_have_attribute("aria-invalid", "true")
    assert studio.locator("#draw-images img").count() == 0


def test_a_prompt_of_html_is_drawn_and_shown_as_text_never_run(studio):
    prompt = '<img src=x onerror="window.pwned=1">'
    draw(studio, prompt=prompt, seed=3, num_inference_steps=2, size="64x64")
    expect(studio.locator("#draw-images img")).to_have_attribute("alt", prompt)
    expect(studio.locator("#prompt-analysis .weights")).to_have_text(prompt)
    studio.click("#tab-history")
    expect(studio.locator("#history-list li.card .prompt").first).to_have_text(prompt)
    assert studio.locator("img[src='x']").count() == 0
    assert studio.evaluate("window.pwned") is None


def test_cancel_stops_a_long_drawing_and_the_next_one_is_drawn(studio):
    studio.fill("#num_inference_steps", "150")
    studio.fill("#seed", "5")
    studio.click("#draw-button")
    expect(studio.locator("#draw-progress")).to_have_text(re.compile(r"step [1-9]\d* of 150"), timeout=60_000)
    studio.click("#cancel-button")
    expect(studio.locator("#draw-progress")).to_have_text("canceled", timeout=60_000)
    assert studio.locator("#draw-images img").count() == 0
    assert re.search(r"curl -s -X POST \S+/v1/jobs/job_\w+/cancel", studio.inner_text("#draw-call"))  # its call
    draw(studio, num_inference_steps=2)
    expect(studio.locator("#draw-progress")).to_have_text("step 2 of 2: done")
    assert "/v1/images/generations" in studio.inner_text("#draw-call")  # the form's own call again


def test_the_jobs_section_follows_an_open_job_live_and_its_cancel_ends_it(studio, api, stack):
    """A job's progress moves on the page with no refresh (its event stream); its Cancel ends it, shown as such."""
    body = {"prompt": "a slow one", "num_inference_steps": 150, "size": "64x64", "seed": 9, "background": True}
    job = api.post(GENERATE, json=body).json()["id"]
    studio.click("#tab-jobs")
    progress = studio.locator(f'td[data-job="{job}"]')
    expect(progress).to_have_text(re.compile(r"[1-9]\d* of 150"), timeout=60_000)
    seen = progress.inner_text().strip()
    expect(progress).not_to_have_text(seen, timeout=30_000)  # moved on, Refresh never clicked
    studio.click(f"text=Cancel {job}")
    expect(studio.locator("#jobs-list tr", has_text=job)).to_contain_text("canceled", timeout=60_000)
    assert api.get(f"/v1/jobs/{job}").json()["status"] == "canceled"
    assert f"curl -s -X POST {stack.info.api_url}/v1/jobs/{job}/cancel" in studio.inner_text("#jobs-call")


def test_vectorize_shows_the_svg_beside_the_raster_with_its_ssim_and_bytes(studio, stack, tmp_path):
    icon = tmp_path / "icon.png"
    icon.write_bytes(dev_icon_png(ICONS_DEV / "val"))
    studio.click("#tab-vectorize")
    studio.set_input_files("#file", icon)
    expect(studio.locator("#vectorize-raster img")).to_have_attribute("alt", "icon.png")
    studio.get_by_role("button", name="Vectorize", exact=True).click()
    svg = studio.locator("#vectorize-svg img")
    expect(svg).to_have_count(1, timeout=60_000)
    source = base64.b64decode(svg.get_attribute("src").removeprefix("data:image/svg+xml;base64,")).decode()
    assert "<svg" in source and "<path" in source
    facts = studio.inner_text("#vectorize-facts")
    ssim = re.search(r"SSIM\s+(\S+)", facts)  # a simple icon can trace perfectly: 1
    assert ssim and 0 < float(ssim[1]) <= 1 and re.search(rf"bytes\s+{len(source.encode())}\b", facts), facts
    code = studio.locator("#vectorize-call figure").filter(has_text="Python (gRPC)").locator("pre").inner_text()
    env = {**os.environ, "EASEL_GRPC": stack.info.grpc_address, "PYTHONPATH": str(PROJECT_ROOT)}
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]  # the shown gRPC call, run beside the file, traces it too
    assert "<path" in (tmp_path / "image.svg").read_text()


def test_faces_are_drawn_over_their_image_and_two_images_first_faces_compared_as_the_api_answers(studio, api, tmp_path):
    """The stack serves face models (``--faces``): its Faces tab shows; a field the API refuses is shown beside it."""
    files = []
    for name, pixels in (
        ("a.png", drawn_faces([(80, 100, 40), (220, 120, 50)])),
        ("b.png", drawn_faces([(300, 200, 120)], (640, 400))),
    ):
        Image.fromarray(pixels).save(tmp_path / name)
        files.append(tmp_path / name)
    studio.click("#tab-faces")
    studio.set_input_files("#face-a", files[0])
    studio.set_input_files("#face-b", files[1])
    studio.get_by_role("button", name="Analyze", exact=True).click()
    expect(studio.locator("#faces-status")).to_have_text("done", timeout=60_000)
    answers = [
        api.post("/v1/faces/analyze", json={"image": base64.b64encode(f.read_bytes()).decode(), "max_faces": 16}).json()
        for f in files
    ]
    assert all(answer["data"] for answer in answers)
    expect(studio.locator("#faces-a .face-box")).to_have_count(len(answers[0]["data"]))
    expect(studio.locator("#faces-b .face-point")).to_have_count(5 * len(answers[1]["data"]))
    cosine = float(np.dot(answers[0]["data"][0]["embedding"], answers[1]["data"][0]["embedding"]))
    expect(studio.locator("#faces-cosine")).to_have_text(f"cosine of A's first face and B's: {cosine:.4f}")
    curl = studio.locator("#faces-call pre").first.inner_text()
    assert "/v1/faces/analyze" in curl and '"max_faces":16' in curl, curl
    studio.fill("#max_faces", "17")
    studio.get_by_role("button", name="Analyze", exact=True).click()
    expect(studio.locator("#max_faces-error")).to_contain_text("less than or equal to 16")
    expect(studio.locator("#max_faces")).to_have_attribute("aria-invalid", "true")


def test_an_input_image_with_a_painted_mask_upscaled_is_the_api_s_answer_and_can_be_used_again(studio, api, tmp_path):
    icon = tmp_path / "icon.png"
    icon.write_bytes(dev_icon_png(ICONS_DEV))
    studio.click("#more summary")
    studio.set_input_files("#image", icon)
    mask = studio.locator("#mask")
    expect(mask).to_be_visible()
    mask.scroll_into_view_if_needed()  # the mouse paints where the window shows
    box = mask.bounding_box()
    studio.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    studio.mouse.down()
    studio.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=5)
    studio.mouse.up()
    studio.select_option("#upscale", "general")
    studio.select_option("#restore_faces", "face")
    draw(studio, prompt="a green leaf icon", seed=9, num_inference_steps=3)
    image = studio.locator("#draw-images img")
    expect(image).to_have_count(1)
    body = sent_body(studio)
    assert body["image"] == [base64.b64encode(icon.read_bytes()).decode()] and body["seed"] == 9
    assert body["upscale"] == {"upscaler": "general"} and body["restore_faces"] == {"restorer": "face"}
    alpha = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]))).convert("RGBA"))[..., 3]
    assert alpha.shape == Image.open(icon).size[::-1] and (alpha == 0).any() and (alpha == 255).any()
    answer = api.post(GENERATE, json=body)
    assert answer.status_code == 200, answer.text
    assert image.get_attribute("src") == PNG + answer.json()["data"][0]["b64_json"]
    shown = studio.locator("#draw-call pre").first.inner_text()
    assert "characters: Copy has them all)" in shown and body["image"][0] not in shown
    studio.locator("#draw-images").get_by_role("button", name="Use as input").click()
    side = Image.open(io.BytesIO(base64.b64decode(answer.json()["data"][0]["b64_json"]))).size
    expect(studio.locator("#image-name")).to_have_text(f"{side[0]}x{side[1]}")
    assert sent_body(studio)["image"] == [answer.json()["data"][0]["b64_json"]] and "mask" not in sent_body(studio)
    studio.click("#image-clear")
    studio.select_option("#upscale", "")
    studio.select_option("#restore_faces", "")
    assert {"image", "mask", "upscale", "restore_faces"}.isdisjoint(sent_body(studio))


def test_candidates_are_scored_and_the_best_is_the_api_s_answer_with_its_scores(studio, api):
    studio.click("#more summary")
    studio.fill("#candidates", "3")
    studio.select_option("#best_of", "clip_score")
    studio.check("#scores")
    draw(studio, prompt="a yellow sun icon", seed=5, num_inference_steps=2, size="64x64")
    image = studio.locator("#draw-images img")
    expect(image).to_have_count(1)
    body = shown_call(studio)
    assert body["candidates"] == 3 and body["best_of"] == "clip_score" and body["scores"] is True
    answer = api.post(GENERATE, json=body).json()
    assert image.get_attribute("src") == PNG + answer["data"][0]["b64_json"]
    expect(studio.locator("#draw-images .scores")).to_contain_text("clip_score")
    assert f"seed {answer['data'][0]['seed']}" in studio.inner_text("#draw-images figcaption")


def test_a_character_chosen_in_draw_is_drawn_as_the_api_draws_it(studio, api):
    picture = base64.b64encode(_png(drawn_faces([(160, 120, 60)]))).decode()
    made = api.post(
        "/v1/characters", json={"name": "zed", "images": [picture], "face": "largest", "trigger_words": "zed"}
    )
    assert made.status_code == 200, made.text
    try:
        fields = {"prompt": "a portrait", "seed": 4, "num_inference_steps": 2, "size": "64x64"}
        image = drawn_with_choice(studio, "character", "zed", **fields)
        assert_drawn_as_the_api_draws_it(studio, api, image, "character", {"name": "zed"})  # its trigger words drew
    finally:
        assert api.delete("/v1/characters/zed").status_code == 200


def test_every_section_has_no_serious_accessibility_violation_on_a_desktop_or_a_phone(studio):
    """axe-core on each section as an admin sees it, a picture drawn and listed, at a desktop's size and a phone's."""
    draw(studio, prompt="a blue anchor icon", seed=3, num_inference_steps=2, size="64x64")
    studio.click("#more summary")  # the images, finishing and best-of controls too
    tabs = ("draw", "history", "vectorize", "faces", "characters", "video", "jobs", "operate")
    for width, height in ((1280, 800), (390, 844)):
        studio.set_viewport_size({"width": width, "height": height})
        for tab in tabs:
            studio.click(f"#tab-{tab}")
            expect(studio.locator(f"section#{tab}")).to_be_visible()
            assert accessibility_violations(studio) == [], f"{tab} at {width}x{height}"
    assert len(tabs) == studio.locator("[role=tab]:visible").count()  # every section the page has was checked
    studio.evaluate("document.body.append(Object.assign(document.createElement('img'), {src: 'data:,'}))")
    assert any(v.startswith("image-alt") for v in accessibility_violations(studio))  # the check sees one


def test_operate_adds_a_model_sets_its_fallback_chain_and_removes_it(studio, api, stack):
    """On an open stack (every caller administers it): a model added from an engine folder, its chain set in its row,
    then removed there; each change is the API's (its model entry), and the stack is left as it was."""
    try:
        studio.click("#tab-operate")
        studio.fill("#model-name", "studio")
        studio.fill("#model-engine_dir", str(stack.models.default.folder.path))
        studio.click("#model-add")
        expect(studio.locator("#model-status")).to_have_text("studio: added", timeout=120_000)
        studio.fill("#chain-studio", DEFAULT_MODEL)
        studio.get_by_role("button", name="Set chain of studio").click()
        expect(studio.locator("#models-status")).to_have_text(f"studio's fallback chain: {DEFAULT_MODEL}")
        assert api.get("/v1/models/studio").json()["fallback"] == [DEFAULT_MODEL]
        shown = studio.inner_text("#model-call")  # the call the row made
        assert "-X PUT" in shown and "/v1/models/studio/fallback" in shown
        assert f'{{"chain":["{DEFAULT_MODEL}"]}}' in shown
        studio.fill("#chain-studio", "studio")  # the model itself: a 400 naming chain
        studio.get_by_role("button", name="Set chain of studio").click()
        expect(studio.locator("#models-error")).to_contain_text("chain")
        studio.get_by_role("button", name="Remove studio").click()
        expect(studio.locator("#models-status")).to_have_text("studio removed")
        expect(studio.get_by_role("button", name="Remove studio")).to_have_count(0)
        assert api.get("/v1/models/studio").status_code == 404
        studio.click("#model-add")  # the same name and folder again, then a name served already: a 409 shown
        expect(studio.locator("#model-status")).to_have_text("studio: added", timeout=120_000)
        studio.click("#model-add")
        expect(studio.locator("#model-status")).to_have_text("refused")
        assert studio.inner_text("#model-name-error") or studio.inner_text("#model-error")
    finally:
        api.delete("/v1/models/studio")


def test_operate_is_an_admin_s_and_a_generate_key_sees_none_of_it(studio, stack):
    expect(studio.locator("#tab-operate")).to_be_visible()  # an open API: every caller may administer it
    studio.click("#tab-operate")
    expect(studio.locator("#models")).to_contain_text("easel-default")
    expect(studio.locator("#readiness")).to_contain_text("ready")
    store = open_key_store(stack.options.store)
    record, key = store.create("studio", {Scope.GENERATE}, KeyLimits())
    try:
        time.sleep(ACTIVE_CHECK_S + 0.5)  # each replica re-reads whether keys exist
        studio.reload()
        expect(studio.locator("#key-status")).to_have_text(re.compile("needs an API key"), timeout=30_000)
        studio.fill("#key", key)
        studio.click("#key-form button[type=submit]")
        expect(studio.locator("#key-status")).to_have_text("Key in use.", timeout=30_000)
        expect(studio.locator("#tab-operate")).to_be_hidden()
        expect(studio.locator("#operate")).to_be_hidden()
        assert studio.inner_text("#models") == "" and studio.inner_text("#readiness") == ""
        assert studio.evaluate("[sessionStorage.getItem('easel.key'), localStorage.length]") == [key, 0]
        draw(studio, prompt="a green circle", seed=2, num_inference_steps=2, size="64x64")  # no jobs scope: no steps
        expect(studio.locator("#draw-progress")).to_have_text("done")
        expect(studio.locator("#draw-images img")).to_have_count(1)
    finally:
        store.revoke(record.id)
        time.sleep(ACTIVE_CHECK_S + 0.5)


def test_a_video_is_played_when_done_then_interpolated_and_the_call_is_the_api_s(studio, api, stack, tmp_path):
    studio.click("#tab-video")
    for field, value in {"frames": 4, "fps": 4, "steps": 2, "seed": 5}.items():
        studio.fill(f"#video-{field}", str(value))
    curl = studio.locator("#video-call pre").first.inner_text()
    body = json.loads(re.search(r"-d '(.*)'", curl).group(1))
    assert body == {"prompt": "a red fox running", "frames": 4, "fps": 4, "steps": 2, "seed": 5}
    env = {**os.environ, "EASEL_GRPC": stack.info.grpc_address, "PYTHONPATH": str(PROJECT_ROOT)}
    for client in ("Python (openai)", "Python (gRPC)"):  # each shown call, run, saves the video's MP4
        code = studio.locator("#video-call figure").filter(has_text=client).locator("pre").inner_text()
        ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert ran.returncode == 0, f"{client}: {ran.stderr[-2000:]}"
        with av.open(str(tmp_path / "video.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == 4, client
        (tmp_path / "video.mp4").unlink()
    studio.click("#video-form button[type=submit]")
    player = studio.locator("#video-player video")
    expect(player).to_have_count(1, timeout=120_000)
    assert player.get_attribute("src").startswith("blob:")
    expect(studio.locator("#video-facts")).to_contain_text("4 at 4 fps")
    studio.select_option("#video-more-factor", "2")
    studio.click("#video-interpolate-finished")  # the finished video's frames multiplied: a new video
    assert "/interpolate" in studio.inner_text("#video-call") and '{"factor":2}' in studio.inner_text("#video-call")
    expect(studio.locator("#video-facts")).to_contain_text("7 at 8 fps", timeout=120_000)  # shown from its creation
    expect(studio.locator("#video-status")).to_have_text("completed: 100%", timeout=120_000)
    shown = studio.locator("#video-facts dd").first.inner_text()
    assert api.get(f"/v1/videos/{shown}").json()["frames"] == 7
    studio.click("#video-interpolate-finished")  # interpolated already: the API's 400, shown
    expect(studio.locator("#video-error")).to_contain_text("interpolated already")
