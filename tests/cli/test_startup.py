"""`caltrain --help` and argument errors answer at once: building the parser imports no heavy library (a command
imports what it needs when it runs). Checked in a fresh interpreter, since this test process has them all."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "numpy", "faiss", "fastapi", "httpx", "uvicorn", "cryptography", "pydantic", "sklearn", "scipy")


def test_building_the_parser_imports_no_heavy_library() -> None:
    probe = (
        "import json, sys\n"
        "from caltrain.cli.main import build_parser\n"
        "build_parser()\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(done.stdout) == []
