"""Icon styles: roles keep training, held-out and reserved sets apart; rendering an Iconify icon."""

import pytest
from click.testing import CliRunner

from build_engines.vectorize.styles import BY_NAME, STYLES, Role, _spread, render_svg, styles_with
from serve.cli.vectorize import eval_vectorize


def test_reserved_sets_are_never_training_or_heldout_styles():
    assert BY_NAME["noto"].role is Role.RESERVED and BY_NAME["papirus"].role is Role.RESERVED
    reserved_packages = {s.package for s in styles_with(Role.RESERVED)}
    assert not reserved_packages & {s.package for s in STYLES if s.role is not Role.RESERVED}
    for style in STYLES:  # no other style names a package that carries Noto or Papirus
        if style.role is not Role.RESERVED:
            assert "noto" not in style.package.lower() and "papirus" not in style.package.lower()
    assert len(styles_with(Role.HELDOUT)) >= 2
    assert {s.package for s in styles_with(Role.TRAIN)}.isdisjoint(s.package for s in styles_with(Role.HELDOUT))


def test_every_registry_style_is_pinned():
    assert all(s.version for s in STYLES if s.source != "dev")


def test_reserved_styles_need_the_final_flag():
    result = CliRunner().invoke(eval_vectorize, ["--style", "noto"])
    assert result.exit_code == 2 and "--final" in result.output


def test_spread_is_even_and_deterministic():
    names = [f"n{i:03d}" for i in range(100)]
    picked = _spread(names, 5)
    assert picked == ["n000", "n025", "n050", "n074", "n099"] and _spread(names[:3], 5) == names[:3]


@pytest.mark.parametrize("colour", ["currentColor", "#c00"])
def test_render_svg_fits_the_icon_on_white(colour):
    rect = f'<rect width="24" height="6" fill="{colour}"/>'
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 12">{rect}</svg>'
    pixels = render_svg(svg, 64)
    assert pixels.shape == (64, 64, 3)
    # the 2:1 icon is centred (rows 16-48), its rect fills the upper half of it; the rest is white
    assert pixels[18:30].max() < 250 and pixels[:14].min() == 255 and pixels[34:].min() == 255
