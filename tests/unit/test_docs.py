"""The docs a newcomer reads: a short README, guides under 400 lines, references that cannot drift, sound links."""

import json
import re
from pathlib import Path

import jsonschema
import pytest

from serve.cli.reference import DOCS, generated, served_app
from serve.contract.examples import EXAMPLES
from serve.paths import PROJECT_ROOT
from serve.routes import ROUTES
from tests.doc_blocks import RUN_ORDER, every_runnable_block, runnable_blocks

README = PROJECT_ROOT / "README.md"
GENERATED = {DOCS / "API.md", DOCS / "CLI.md"}
MARKDOWN = [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", sorted(generated()), ids=lambda path: path.name)
def test_each_generated_reference_is_what_its_generator_writes_now(path):
    assert path.read_text() == generated()[path](), f"{path.name} is stale: run `python -m serve.cli.reference`"


def test_every_route_has_a_request_and_an_answer_and_json_requests_fit_their_schema():
    document = served_app().openapi()
    assert set(EXAMPLES) == {(route.method, route.path) for route in ROUTES}
    for (method, path), example in EXAMPLES.items():
        assert example["request"].startswith(f"{method.upper()} ") and example["answer"], (method, path)
        head, _, body = example["request"].partition("\n\n")
        if "Content-Type: application/json" not in head:
            continue
        schema = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        jsonschema.validate(json.loads(body), {**schema, "components": document["components"]})


def test_the_readme_is_a_front_door_with_the_two_set_up_commands_first():
    text = README.read_text()
    assert len(text.splitlines()) <= 200 and len(text) <= 15_000, (len(text.splitlines()), len(text))
    first = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("  #")[0].strip() for line in first.splitlines()]
    assert commands == [
        "pip install -e . && easel up",
        'pip install -e ".[test]" && pip install --no-deps insightface==2.1 spandrel-extra-arches==0.2.0 '
        "&& python -m pytest",
    ]
    assert commands[1] in (PROJECT_ROOT / ".ci" / "run").read_text()  # CI runs the README's test command


def test_no_doc_is_over_400_lines_but_the_generated_references():
    long = {p.relative_to(PROJECT_ROOT): len(p.read_text().splitlines()) for p in MARKDOWN if p not in GENERATED}
    assert {path: lines for path, lines in long.items() if lines > 400} == {}


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of the markdown file at ``path``."""
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", plain).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(PROJECT_ROOT)))
def test_every_link_stays_in_the_repository_and_resolves(path):
    broken = []
    for link in _links(path):
        if re.match(r"^[a-z]+:", link) or link.startswith("/"):
            broken.append(f"{link}: outside the repository")
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.exists() or not resolved.is_relative_to(PROJECT_ROOT):
            broken.append(f"{link}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{link}: no heading #{anchor}")
    assert broken == []


def test_the_quick_start_is_runnable_and_shows_what_each_step_prints():
    quick_start = runnable_blocks("README.md")
    assert [block.language for block in quick_start] == ["bash", "bash", "python", "python"]
    assert quick_start[0].code.startswith("easel up --detach") and all(b.output for b in quick_start)
    blocks = every_runnable_block()
    assert {b.language for b in blocks} == {"bash", "python"} and len(blocks) > len(quick_start)
    for relative in RUN_ORDER:  # every file with runnable blocks is run; every guide's blocks are found
        assert runnable_blocks(relative), relative
    marked = {str(p.relative_to(PROJECT_ROOT)) for p in MARKDOWN if "```bash run" in p.read_text()}
    marked |= {str(p.relative_to(PROJECT_ROOT)) for p in MARKDOWN if "```python run" in p.read_text()}
    assert marked <= set(RUN_ORDER), marked - set(RUN_ORDER)


def test_the_recipe_for_an_engine_backed_route_names_files_that_exist():
    """docs/guides/development.md's recipe walks real files: each path it names, in order, is one of the checkout."""
    guide = (PROJECT_ROOT / "docs" / "guides" / "development.md").read_text()
    recipe = guide.split("## Adding an engine-backed route", 1)[1]
    named = re.findall(r"`((?:serve|build_engines|tests|docs)/[\w/.-]+\.(?:py|md))`", recipe)
    assert len(named) >= 15, named
    assert [path for path in named if not (PROJECT_ROOT / path).is_file()] == []
