from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "size", "n", "num_inference_steps", "guidance_scale", "seed", "scheduler", "output_format", "vectorize_tier", "priority", "loras", "ip_adapter_image", "ip_adapter_scale", "ip_adapter_scale_json", "image", "mask", "strength", "outpaint", "controlnets", "guidance_cutoff", "cache_interval", "model", "user", "approximate_cache", "upscale", "ip_adapters", "response_format", "output_compression", "metadata", "prompts", "character", "identity")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    NUM_INFERENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    VECTORIZE_TIER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    IP_ADAPTER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    IP_ADAPTER_SCALE_FIELD_NUMBER: _ClassVar[int]
    IP_ADAPTER_SCALE_JSON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    OUTPAINT_FIELD_NUMBER: _ClassVar[int]
    CONTROLNETS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    CACHE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_CACHE_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FIELD_NUMBER: _ClassVar[int]
    IP_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    size: str
    n: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    scheduler: str
    output_format: str
    vectorize_tier: str
    priority: str
    loras: _containers.RepeatedCompositeFieldContainer[Lora]
    ip_adapter_image: bytes
    ip_adapter_scale: float
    ip_adapter_scale_json: str
    image: _containers.RepeatedScalarFieldContainer[bytes]
    mask: bytes
    strength: float
    outpaint: Outpaint
    controlnets: _containers.RepeatedCompositeFieldContainer[ControlNet]
    guidance_cutoff: float
    cache_interval: int
    model: str
    user: str
    approximate_cache: bool
    upscale: Upscale
    ip_adapters: _containers.RepeatedCompositeFieldContainer[IpAdapter]
    response_format: str
    output_compression: int
    metadata: str
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    character: Character
    identity: Identity
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., size: _Optional[str] = ..., n: _Optional[int] = ..., num_inference_steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., scheduler: _Optional[str] = ..., output_format: _Optional[str] = ..., vectorize_tier: _Optional[str] = ..., priority: _Optional[str] = ..., loras: _Optional[_Iterable[_Union[Lora, _Mapping]]] = ..., ip_adapter_image: _Optional[bytes] = ..., ip_adapter_scale: _Optional[float] = ..., ip_adapter_scale_json: _Optional[str] = ..., image: _Optional[_Iterable[bytes]] = ..., mask: _Optional[bytes] = ..., strength: _Optional[float] = ..., outpaint: _Optional[_Union[Outpaint, _Mapping]] = ..., controlnets: _Optional[_Iterable[_Union[ControlNet, _Mapping]]] = ..., guidance_cutoff: _Optional[float] = ..., cache_interval: _Optional[int] = ..., model: _Optional[str] = ..., user: _Optional[str] = ..., approximate_cache: _Optional[bool] = ..., upscale: _Optional[_Union[Upscale, _Mapping]] = ..., ip_adapters: _Optional[_Iterable[_Union[IpAdapter, _Mapping]]] = ..., response_format: _Optional[str] = ..., output_compression: _Optional[int] = ..., metadata: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., character: _Optional[_Union[Character, _Mapping]] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("image", "face", "character", "embedding", "strength", "adapter", "pose_strength", "keypoints")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    POSE_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    face: str
    character: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    strength: float
    adapter: str
    pose_strength: float
    keypoints: bytes
    def __init__(self, image: _Optional[bytes] = ..., face: _Optional[str] = ..., character: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., strength: _Optional[float] = ..., adapter: _Optional[str] = ..., pose_strength: _Optional[float] = ..., keypoints: _Optional[bytes] = ...) -> None: ...

class Character(_message.Message):
    __slots__ = ("name", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("prompt", "seed")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    seed: int
    def __init__(self, prompt: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class IpAdapter(_message.Message):
    __slots__ = ("name", "images", "references", "scale", "scale_json", "masks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SCALE_JSON_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    references: _containers.RepeatedScalarFieldContainer[str]
    scale: float
    scale_json: str
    masks: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, name: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., references: _Optional[_Iterable[str]] = ..., scale: _Optional[float] = ..., scale_json: _Optional[str] = ..., masks: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Upscale(_message.Message):
    __slots__ = ("upscaler", "scale", "denoise")
    UPSCALER_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    DENOISE_FIELD_NUMBER: _ClassVar[int]
    upscaler: str
    scale: float
    denoise: float
    def __init__(self, upscaler: _Optional[str] = ..., scale: _Optional[float] = ..., denoise: _Optional[float] = ...) -> None: ...

class Outpaint(_message.Message):
    __slots__ = ("left", "top", "right", "bottom")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    left: int
    top: int
    right: int
    bottom: int
    def __init__(self, left: _Optional[int] = ..., top: _Optional[int] = ..., right: _Optional[int] = ..., bottom: _Optional[int] = ...) -> None: ...

class ControlNet(_message.Message):
    __slots__ = ("name", "image", "scale", "start", "end", "preprocess", "low_threshold", "high_threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HIGH_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: bytes
    scale: float
    start: float
    end: float
    preprocess: str
    low_threshold: float
    high_threshold: float
    def __init__(self, name: _Optional[str] = ..., image: _Optional[bytes] = ..., scale: _Optional[float] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., preprocess: _Optional[str] = ..., low_threshold: _Optional[float] = ..., high_threshold: _Optional[float] = ...) -> None: ...

class Lora(_message.Message):
    __slots__ = ("name", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    step: int
    total: int
    def __init__(self, step: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "tier", "ssim", "id", "moderation", "url", "prompt_index")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SSIM_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    MODERATION_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    tier: str
    ssim: float
    id: str
    moderation: Moderation
    url: str
    prompt_index: int
    def __init__(self, data: _Optional[bytes] = ..., tier: _Optional[str] = ..., ssim: _Optional[float] = ..., id: _Optional[str] = ..., moderation: _Optional[_Union[Moderation, _Mapping]] = ..., url: _Optional[str] = ..., prompt_index: _Optional[int] = ...) -> None: ...

class Moderation(_message.Message):
    __slots__ = ("flagged", "categories", "category_scores")
    class CategoriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    class CategoryScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_SCORES_FIELD_NUMBER: _ClassVar[int]
    flagged: bool
    categories: _containers.ScalarMap[str, bool]
    category_scores: _containers.ScalarMap[str, float]
    def __init__(self, flagged: _Optional[bool] = ..., categories: _Optional[_Mapping[str, bool]] = ..., category_scores: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Images(_message.Message):
    __slots__ = ("seed", "images", "model", "experiment", "steps_skipped", "prompt_tokens_truncated")
    SEED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    STEPS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    seed: int
    images: _containers.RepeatedCompositeFieldContainer[Image]
    model: str
    experiment: str
    steps_skipped: int
    prompt_tokens_truncated: int
    def __init__(self, seed: _Optional[int] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., model: _Optional[str] = ..., experiment: _Optional[str] = ..., steps_skipped: _Optional[int] = ..., prompt_tokens_truncated: _Optional[int] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: Images
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[Images, _Mapping]] = ...) -> None: ...

class VectorizeRequest(_message.Message):
    __slots__ = ("image", "tier", "validate", "priority", "time_budget_ms", "target_quality", "prefer", "model_version", "experiment", "user")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PREFER_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    tier: str
    validate: bool
    priority: str
    time_budget_ms: float
    target_quality: float
    prefer: str
    model_version: int
    experiment: str
    user: str
    def __init__(self, image: _Optional[bytes] = ..., tier: _Optional[str] = ..., validate: _Optional[bool] = ..., priority: _Optional[str] = ..., time_budget_ms: _Optional[float] = ..., target_quality: _Optional[float] = ..., prefer: _Optional[str] = ..., model_version: _Optional[int] = ..., experiment: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class VectorizeReply(_message.Message):
    __slots__ = ("svg", "tier", "requested_tier", "why", "ssim", "fallback", "model_version", "experiment", "id")
    SVG_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_TIER_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    SSIM_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    svg: str
    tier: str
    requested_tier: str
    why: str
    ssim: float
    fallback: str
    model_version: int
    experiment: str
    id: str
    def __init__(self, svg: _Optional[str] = ..., tier: _Optional[str] = ..., requested_tier: _Optional[str] = ..., why: _Optional[str] = ..., ssim: _Optional[float] = ..., fallback: _Optional[str] = ..., model_version: _Optional[int] = ..., experiment: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class TierPrediction(_message.Message):
    __slots__ = ("tier", "ssim", "bytes")
    TIER_FIELD_NUMBER: _ClassVar[int]
    SSIM_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tier: str
    ssim: float
    bytes: int
    def __init__(self, tier: _Optional[str] = ..., ssim: _Optional[float] = ..., bytes: _Optional[int] = ...) -> None: ...

class AnalyzeReply(_message.Message):
    __slots__ = ("features", "image_class", "class_confidence", "familiar", "requested_tier", "tier", "why", "check", "predicted", "parameters_json", "model_version")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PredictedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TierPrediction
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TierPrediction, _Mapping]] = ...) -> None: ...
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CLASS_FIELD_NUMBER: _ClassVar[int]
    CLASS_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FAMILIAR_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_TIER_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    features: _containers.ScalarMap[str, float]
    image_class: str
    class_confidence: float
    familiar: bool
    requested_tier: str
    tier: str
    why: str
    check: bool
    predicted: _containers.MessageMap[str, TierPrediction]
    parameters_json: str
    model_version: int
    def __init__(self, features: _Optional[_Mapping[str, float]] = ..., image_class: _Optional[str] = ..., class_confidence: _Optional[float] = ..., familiar: _Optional[bool] = ..., requested_tier: _Optional[str] = ..., tier: _Optional[str] = ..., why: _Optional[str] = ..., check: _Optional[bool] = ..., predicted: _Optional[_Mapping[str, TierPrediction]] = ..., parameters_json: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("image_id", "job_id", "reward", "rating")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    job_id: str
    reward: float
    rating: int
    def __init__(self, image_id: _Optional[str] = ..., job_id: _Optional[str] = ..., reward: _Optional[float] = ..., rating: _Optional[int] = ...) -> None: ...

class FeedbackReply(_message.Message):
    __slots__ = ("id", "reward", "model", "experiment")
    ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    reward: float
    model: str
    experiment: str
    def __init__(self, id: _Optional[str] = ..., reward: _Optional[float] = ..., model: _Optional[str] = ..., experiment: _Optional[str] = ...) -> None: ...

class VideoRequest(_message.Message):
    __slots__ = ("prompt", "model", "size", "seconds", "frames", "fps", "seed", "steps", "scheduler", "guidance_scale", "negative_prompt", "loras", "motion_adapter", "priority", "input_reference", "strength", "interpolate", "upscale", "character", "motion_bucket_id", "noise_aug_strength", "decode_chunk_size", "min_guidance_scale", "ip_adapters", "identity")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    MOTION_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    INPUT_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATE_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    MOTION_BUCKET_ID_FIELD_NUMBER: _ClassVar[int]
    NOISE_AUG_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    DECODE_CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    IP_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    size: str
    seconds: int
    frames: int
    fps: int
    seed: int
    steps: int
    scheduler: str
    guidance_scale: float
    negative_prompt: str
    loras: _containers.RepeatedCompositeFieldContainer[Lora]
    motion_adapter: str
    priority: str
    input_reference: bytes
    strength: float
    interpolate: Interpolate
    upscale: Upscale
    character: Character
    motion_bucket_id: int
    noise_aug_strength: float
    decode_chunk_size: int
    min_guidance_scale: float
    ip_adapters: _containers.RepeatedCompositeFieldContainer[IpAdapter]
    identity: Identity
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ..., size: _Optional[str] = ..., seconds: _Optional[int] = ..., frames: _Optional[int] = ..., fps: _Optional[int] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., scheduler: _Optional[str] = ..., guidance_scale: _Optional[float] = ..., negative_prompt: _Optional[str] = ..., loras: _Optional[_Iterable[_Union[Lora, _Mapping]]] = ..., motion_adapter: _Optional[str] = ..., priority: _Optional[str] = ..., input_reference: _Optional[bytes] = ..., strength: _Optional[float] = ..., interpolate: _Optional[_Union[Interpolate, _Mapping]] = ..., upscale: _Optional[_Union[Upscale, _Mapping]] = ..., character: _Optional[_Union[Character, _Mapping]] = ..., motion_bucket_id: _Optional[int] = ..., noise_aug_strength: _Optional[float] = ..., decode_chunk_size: _Optional[int] = ..., min_guidance_scale: _Optional[float] = ..., ip_adapters: _Optional[_Iterable[_Union[IpAdapter, _Mapping]]] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ...) -> None: ...

class InterpolateVideoRequest(_message.Message):
    __slots__ = ("video_id", "interpolate")
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATE_FIELD_NUMBER: _ClassVar[int]
    video_id: str
    interpolate: Interpolate
    def __init__(self, video_id: _Optional[str] = ..., interpolate: _Optional[_Union[Interpolate, _Mapping]] = ...) -> None: ...

class Interpolate(_message.Message):
    __slots__ = ("factor", "interpolator")
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATOR_FIELD_NUMBER: _ClassVar[int]
    factor: int
    interpolator: str
    def __init__(self, factor: _Optional[int] = ..., interpolator: _Optional[str] = ...) -> None: ...

class VideoId(_message.Message):
    __slots__ = ("video_id",)
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    video_id: str
    def __init__(self, video_id: _Optional[str] = ...) -> None: ...

class VideoContentRequest(_message.Message):
    __slots__ = ("video_id", "variant")
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    video_id: str
    variant: str
    def __init__(self, video_id: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class VideoContent(_message.Message):
    __slots__ = ("data", "content_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    content_type: str
    def __init__(self, data: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class VideoError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Video(_message.Message):
    __slots__ = ("id", "status", "progress", "model", "seconds", "size", "prompt", "created_at", "completed_at", "frames", "fps", "seed", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    progress: int
    model: str
    seconds: str
    size: str
    prompt: str
    created_at: int
    completed_at: int
    frames: int
    fps: int
    seed: int
    error: VideoError
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., progress: _Optional[int] = ..., model: _Optional[str] = ..., seconds: _Optional[str] = ..., size: _Optional[str] = ..., prompt: _Optional[str] = ..., created_at: _Optional[int] = ..., completed_at: _Optional[int] = ..., frames: _Optional[int] = ..., fps: _Optional[int] = ..., seed: _Optional[int] = ..., error: _Optional[_Union[VideoError, _Mapping]] = ...) -> None: ...
