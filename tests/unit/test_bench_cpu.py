"""``easel bench cpu``'s seconds-long smoke on the embedded model: its engine rows, every kind of column."""

import json

from click.testing import CliRunner

from loadtests.benchmarks.cpu_cells import COLUMNS, ROWS
from serve.cli.main import main


def test_the_cpu_bench_times_each_column_and_says_why_a_column_did_not_run(tmp_path, engine_dir, openvino_engine_dir):
    out = tmp_path / "cpu.json"
    columns = "diffusers-fp32,genai-fp32,easel-onnxruntime-fp32,easel-openvino-fp32"
    arguments = ["bench", "cpu", "--size", "64", "--columns", columns, "--rows", "unet,vae", "--concurrency", "1,2"]
    result = CliRunner().invoke(main, [*arguments, "--repeats", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cells = json.loads(out.read_text())["cells"]
    assert len(cells) == 4 * 2 * 2
    for cell in cells:
        if cell["column"].startswith("genai"):  # no Python with openvino_genai was named: said, not timed
            assert cell["p50_s"] is None and cell["note"]
        else:
            assert cell["p50_s"] > 0 and cell["images_per_s"] > 0 and cell["peak_gb"] > 0, cell
            assert cell["note"] == "" and len(cell["load"].split()) == 3
    assert all(name in result.output for name in columns.split(","))


def test_an_unknown_column_or_row_is_one_line_naming_the_known_ones():
    for option, known in (("--columns", COLUMNS), ("--rows", ROWS)):
        result = CliRunner().invoke(main, ["bench", "cpu", option, "easel,unet"])
        assert result.exit_code == 2
        error = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(error) == 1 and all(name in error[0] for name in known), result.output


def test_the_savings_row_asks_easel_for_its_saving_and_other_columns_say_they_run_the_plain_row(tmp_path):
    from loadtests.benchmarks.cpu_cells import SAVINGS_ONLY, CpuBenchSettings
    from loadtests.benchmarks.cpu_columns import _body, genai_cells

    settings = CpuBenchSettings(tmp_path, rows=("ddim20", "ddim20-cutoff"), concurrency=(1,), genai_python=None)
    plain, saving = _body(settings, ROWS["ddim20"]), _body(settings, ROWS["ddim20-cutoff"])
    assert saving == plain | {"guidance_cutoff": 0.5} and "guidance_cutoff" not in plain
    cells = {cell.row: cell for cell in genai_cells("genai-fp32", COLUMNS["genai-fp32"], settings, None, tmp_path)}
    assert cells["ddim20-cutoff"].note == SAVINGS_ONLY and cells["ddim20"].note.startswith("skipped")
