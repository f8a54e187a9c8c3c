"""``easel bench speedups``' stream and verdict (the benchmark itself runs a stack: `easel bench speedups`)."""

from build_engines.text_to_image.icons import TEMPLATES, held_out
from loadtests.benchmarks.speedups import BASELINE, SpeedupSettings, acceptance, format_table, stream


def test_the_stream_holds_eval_generate_s_prompts_and_near_repeats_in_a_fixed_order():
    settings = SpeedupSettings(pairings=6)
    prompts = stream(settings)
    assert prompts == stream(settings) and len(prompts) == 6 * (settings.seeds + settings.near_repeats)
    evaluated = {(p.pairing, p.seed) for p in prompts if p.evaluated}
    assert evaluated == {(pairing, seed) for pairing in held_out()[:6] for seed in range(settings.seeds)}
    assert all(p.text == p.pairing.caption() for p in prompts if p.evaluated)
    near = [p for p in prompts if not p.evaluated]
    assert all(p.text != p.pairing.caption() and p.text == p.pairing.caption(TEMPLATES[p.template]) for p in near)
    assert [p.evaluated for p in prompts] != sorted(p.evaluated for p in prompts)  # shuffled, not grouped


def test_techniques_start_from_the_baseline_and_only_the_approximate_ones_opt_in():
    techniques = SpeedupSettings().techniques()
    assert next(iter(techniques)) == BASELINE and techniques[BASELINE]["approximate_cache"] is False
    assert techniques[BASELINE] == {"num_inference_steps": 20, "scheduler": "ddim", "approximate_cache": False}
    assert {name for name, fields in techniques.items() if fields["approximate_cache"]} == {
        name for name in techniques if "approximate" in name
    }


def _row(name, rows, cpu, colour, icon):
    return {
        "technique": name,
        "unet_rows_per_image": rows,
        "cpu_s_per_image": cpu,
        "p50_s": cpu,
        "steps_skipped_per_image": 0.0,
        "colour_pct": colour,
        "icon_pct": icon,
        "psnr_db": 30.0,
        "ssim": 0.9,
    }


def test_the_verdict_is_the_fewest_rows_that_keep_both_scores_within_2_points():
    rows = [
        _row(BASELINE, 40, 1.0, 100, 99),
        _row("cheap but worse", 4, 0.1, 97, 99),
        _row("keeps the scores", 16, 0.45, 98, 97),
        _row("keeps them, costs more", 30, 0.8, 100, 99),
    ]
    verdict = acceptance(rows)
    assert verdict["best"] == "keeps the scores" and verdict["met"] and verdict["rows_share"] == 0.4
    assert not acceptance([*rows[:2], _row("slow", 30, 0.8, 100, 99)])["met"]
    assert acceptance(rows[:2]) == {"met": False, "best": None}
    assert "keeps the scores" in format_table(rows)
