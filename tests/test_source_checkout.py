"""``python -m ebcap`` from the root of a source checkout.

There the folder ``ebcap/`` comes first on sys.path and shadows the installed
package, whose subpackages (``ebcap.format``...) live in other folders of the
tree; the package must still find them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from synthetic import write_capture

CHECKOUT = Path(__file__).resolve().parent.parent


def test_python_m_ebcap_runs_from_the_checkout_root(tmp_path: Path) -> None:
    capture = tmp_path / "synthetic.arrow"
    write_capture(capture)
    done = subprocess.run(
        [sys.executable, "-m", "ebcap", "info", "--json", str(capture)],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert '"format_version"' in done.stdout
    assert "Traceback" not in done.stderr
