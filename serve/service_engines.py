"""The engines a start builds beside its models, by folder: finishing, the two moderators, the scorer.

One object, :class:`ServiceEngines`, carries their folders from the build (``serve/stack/build_plan.py``) through
``AppArgs.service_engines`` to what serves them; a folder is read here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from serve.finishing.upscalers import Upscalers
from serve.moderation.images import SAFETY_CHECKER_SPEC, ImageChecker
from serve.moderation.text_model import TEXT_MODERATOR_SPEC, TextModerator
from serve.scoring import Scorer, read_specs, score_names
from serve.triton.spec import EngineRunner


class ServiceEngines(BaseModel):
    """The folders ``easel up`` built for the engines that serve every model (None: not served)."""

    model_config = ConfigDict(frozen=True)

    upscalers: str | None = Field(
        None,
        description="The finishing engines' folder `--upscaler`, `--face-restorer`, `--interpolator` and `--faces` "
        "built (upscalers.json, restorers.json, interpolators.json, faces.json).",
    )
    safety_checker: str | None = Field(
        None, description="The image safety checker's folder (its CLIP processor's settings beside the engine)."
    )
    text_moderator: str | None = Field(
        None, description="The text moderator's folder (its tokenizer and labels beside the engine); None: blocklist."
    )
    scorer: str | None = Field(None, description="The scorer's folder (`--scorer`): CLIP's two engines, an aesthetic.")

    @classmethod
    def built(cls, **folders: Path | None) -> ServiceEngines:
        """The folders a build returned, by field name (None: not built)."""
        return cls(**{name: str(folder) if folder else None for name, folder in folders.items()})

    def triton_specs(self) -> list:
        """The Triton models of every engine built here (finishing's, the moderators', the scorer's)."""
        specs = self.finishing().specs  # and the face restorers and interpolators
        specs += [SAFETY_CHECKER_SPEC] if self.safety_checker else []
        specs += [TEXT_MODERATOR_SPEC] if self.text_moderator else []
        return specs + (list(read_specs(Path(self.scorer)).values()) if self.scorer else [])

    def finishing(self) -> Upscalers:
        """The upscalers, face restorers, frame interpolators and face models, ready or listed with why not."""
        return Upscalers.read(self.upscalers)

    def image_checker(self, triton_grpc_url: str | None) -> ImageChecker | None:
        """The image safety checker on the Triton at the URL (None: none served, or no Triton)."""
        return ImageChecker.on_triton(self.safety_checker, triton_grpc_url)

    def text_checker(self, triton_grpc_url: str | None) -> TextModerator | None:
        """The text moderator on the Triton at the URL (None: none served, or no Triton)."""
        return TextModerator.on_triton(self.text_moderator, triton_grpc_url)

    def score_names(self) -> tuple[str, ...]:
        """The scores the scorer gives (none without one)."""
        return score_names(self.scorer)

    def scoring(self, runner: EngineRunner) -> Scorer | None:
        """The scorer over ``runner`` (None: no scorer served)."""
        return Scorer(runner, Path(self.scorer)) if self.scorer else None
