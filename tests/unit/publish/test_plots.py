"""Graphs (generator/publish/plots.py): text from records is drawn as plain text."""
from __future__ import annotations

import pytest

from tests.support.sample import record  # noqa: F401

MATH = ["costs $5 or $10", "6.1.0-$\\frac{1}{0}$", "$\\undefinedcommand{x}$", "$^^^$", "$" + "{" * 3000 + "$",
        "$" + "x^" * 2000 + "x$"]


@pytest.mark.filterwarnings("ignore:Tight layout not applied")
def test_graph_text_is_plain_text_never_mathtext():
    """Guest kernels (the series' label when the manifest names none) and host names with '$' reach the
    graphs' titles and legends: every graph still renders, and its text is not parsed as math."""
    import matplotlib.text

    from generator.publish import plots
    from generator.publish.series import build_series

    recs = []
    for i, kernel in enumerate(MATH):
        for memory in (1024, 2048, 32768):
            r = record("precise", memory, 1)
            recs.append(dict(r, guest=f"g{i}", guest_kernel=kernel, host=f"h$^{i}$"))
    series = build_series(recs, {}, 2)
    assert "Linux costs $5 or $10" in {s.guest_label for s in series}
    for s in series:
        assert plots.series_png(s.lean())[:8] == b"\x89PNG\r\n\x1a\n", s.title
    assert plots.all_series_png([s.lean() for s in series])[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.lost_png([s.lean() for s in series], [s.fit() for s in series])[:8] == b"\x89PNG\r\n\x1a\n"
    plt = plots._pyplot()
    fig = plt.figure()
    try:
        t = fig.text(0, 0, "costs $5 or $10")
        assert isinstance(t, matplotlib.text.Text) and t._preprocess_math(t.get_text()) == ("costs $5 or $10", False)
    finally:
        plt.close(fig)
