"""Priority: Triton's levels, and the gate that holds lower-priority steps while a higher-priority one is in flight."""

import asyncio

from serve.priority import TRITON_DEFAULT_LEVEL, TRITON_PRIORITY_LEVELS, Priority, PriorityGate
from serve.text_to_image.spec import UNET_BATCHING
from serve.triton.spec import ModelSpec


def test_levels_put_high_first_and_every_text_to_image_engine_queues_by_them():
    assert [p.triton_level for p in Priority] == [1, 2, 3] and TRITON_DEFAULT_LEVEL == Priority.NORMAL.triton_level
    spec = ModelSpec(name="unet", inputs=(), outputs=(), max_batch_size=32, dynamic_batching=UNET_BATCHING)
    batching = spec.to_model_config().dynamic_batching
    assert (batching.priority_levels, batching.default_priority_level) == (TRITON_PRIORITY_LEVELS, 2)


def test_lower_priority_steps_wait_while_a_higher_priority_generation_is_in_flight():
    gate = PriorityGate()
    steps = []

    async def generation(name: str, priority: Priority, count: int, start_after_s: float = 0.0) -> None:
        await asyncio.sleep(start_after_s)
        async with gate.active(priority):
            for _ in range(count):
                await gate.turn(priority)
                steps.append(name)
                await asyncio.sleep(0.01)

    async def scenario() -> None:
        await asyncio.gather(
            generation("normal", Priority.NORMAL, 6),
            generation("low", Priority.LOW, 2),
            generation("high", Priority.HIGH, 3, start_after_s=0.025),
        )

    asyncio.run(scenario())
    first_high = steps.index("high")
    assert steps[first_high : first_high + 3] == ["high"] * 3  # nobody else stepped while it ran
    assert steps[-2:] == ["low", "low"]  # low waited for normal too
    assert steps.count("low") == 2 and steps.count("normal") == 6
