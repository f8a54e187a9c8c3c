"""AnimateDiff's own pipeline, the reference videos are checked against (unit and integration tests), and a served
video's frames as the tests read them."""

import io
import time
import zipfile

import numpy as np
import torch
from PIL import Image

from serve.text_to_image.samplers import NOISE_SAMPLERS


def animatediff(diffusers_pipeline, motion_adapter):
    """diffusers' ``AnimateDiffPipeline`` over ``diffusers_pipeline``'s weights and the ``MotionAdapter`` folder."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    adapter = MotionAdapter.from_pretrained(motion_adapter)
    pipeline = AnimateDiffPipeline.from_pipe(diffusers_pipeline, motion_adapter=adapter)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def video_to_video(animatediff_pipeline):
    """diffusers' ``AnimateDiffVideoToVideoPipeline`` on the same weights: image-to-video's reference."""
    from diffusers import AnimateDiffVideoToVideoPipeline

    pipeline = AnimateDiffVideoToVideoPipeline.from_pipe(animatediff_pipeline)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def reference_frames(pipeline, scheduler: str, frames: int, seed: int, **kwargs) -> np.ndarray:
    """uint8 frames (F, H, W, 3) from AnimateDiff with Easel's sampler ``scheduler``."""
    pipeline.scheduler = NOISE_SAMPLERS[scheduler].build(pipeline.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    video = pipeline(num_frames=frames, generator=generator, output_type="np", **kwargs).frames[0]
    return (np.asarray(video) * 255).round().astype(np.uint8)


def reference_frames_from(pipeline, scheduler: str, image, frames: int, seed: int, **kwargs) -> np.ndarray:
    """uint8 frames from ``AnimateDiffVideoToVideoPipeline`` given ``image`` (PIL) repeated as every frame."""
    pipeline.scheduler = NOISE_SAMPLERS[scheduler].build(pipeline.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    answer = pipeline(video=[image] * frames, decode_chunk_size=frames, generator=generator, output_type="np", **kwargs)
    return (np.asarray(answer.frames[0]) * 255).round().astype(np.uint8)


def rife_reference(net, frames: np.ndarray, factor: int) -> np.ndarray:
    """uint8 frames (F', H, W, 3): ``frames`` with IFNet's in between, as Practical-RIFE's ``inference_video.py``
    makes them at ``--multi factor``: each side zero-padded to a multiple of 128, timesteps ``k / factor``."""
    import torch.nn.functional as F

    height, width = frames.shape[1:3]
    pad = (0, -width % 128, 0, -height % 128)
    tensors = [F.pad(torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255, pad) for f in frames]
    out = [frames[0]]
    with torch.no_grad():
        for index, (first, second) in enumerate(zip(tensors, tensors[1:], strict=False)):
            for k in range(1, factor):
                middle = net(first, second, torch.tensor([[k / factor]]))[0, :, :height, :width]
                out.append((middle.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
            out.append(frames[index + 1])
    return np.stack(out)


def png(image: Image.Image) -> bytes:
    """``image`` as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def finished(client, video_id: str, timeout_s: float = 120.0):
    """The video once it is over (polled with the ``openai`` client's ``retrieve``)."""
    deadline = time.monotonic() + timeout_s
    while (video := client.videos.retrieve(video_id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, f"video {video_id} still {video.status}"
        time.sleep(0.2)
    return video


def frames(api, video_id: str) -> np.ndarray:
    """The video's exact frames (``variant=frames``: PNGs in a zip), (F, H, W, 3) uint8."""
    answer = api.get(f"/v1/videos/{video_id}/content", params={"variant": "frames"})
    assert answer.status_code == 200, answer.text
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n)))) for n in sorted(archive.namelist())])
